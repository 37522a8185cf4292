"""Inference engines: the live loop calls one object, the fastest backend the machine has sits behind it.

::

    rgb clips  (B, 3, 16, S, S) ─┐                     ┌─> fused probabilities (B, K)   <- predict()
                                 ├─> Engine.predict_all ├─> rgb probabilities   (B, K)
    flow clips (B, 2, 16, S, S) ─┘                     └─> flow probabilities  (B, K)

Backends (``build_engine(kind, model_dir)``):

* ``tensorrt``: the fused model compiled by torch-tensorrt (FP16 by default), cached next to the
  model under ``tensorrt/`` and keyed by GPU name, TensorRT version, input shape, precision and
  weights, so a changed GPU, driver stack or model rebuilds it instead of loading a stale engine.
* ``torch``: PyTorch on CUDA (half precision, channels-last-3d, CUDA graphs for a fixed batch) or
  on the CPU (TorchScript trace + freeze + ``optimize_for_inference``, which folds batch norm into
  the convolutions and keeps weights in oneDNN layout: 1.1-1.5x eager on 2 shared cores, but
  10-30 s to build). ``compile=True`` uses ``torch.compile`` instead (minutes to compile on 2 CPU
  cores: opt-in); ``optimize=False`` gives plain eager PyTorch, the benchmark's reference.
* ``onnxruntime``: ``<model_dir>/model.onnx`` written by ``export-model`` on the CPU provider
  (the CUDA provider when onnxruntime-gpu is installed), sessions tuned for few cores: 1.5-2.7x
  eager at 112 px batch 1 on 2 cores (``stream-bench model``), ready in under a second.

``auto`` picks tensorrt > torch-cuda > onnxruntime-cpu > torch-cpu and logs the choice and why.
When ``model.onnx`` is missing ``auto`` does not export on the fly (the model directory may be
read-only, and an export costs 10-30 s of 2 cores at every start of a new model): it falls back
to the frozen torch-cpu backend and logs that ``export-model DIR`` gives the faster one.

Heavy optional packages (onnxruntime, torch-tensorrt) are imported only when their backend is
built. Every backend runs the same graph, :class:`FusedProbs`, so they all return the same
numbers within ``FP32_ATOL`` (FP32) or ``HALF_ATOL`` (FP16, CUDA only).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import importlib.util
import inspect
import logging
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stream.cuda_graph import CudaGraph
from stream.errors import UserError
from stream.model import FusedI3D, fuse
from stream.modelfile import ModelCard, load_card, load_model, verify_weights
from stream.numerics import flush_denormals

__all__ = [
    "ENGINE_KINDS",
    "ONNX_FILENAME",
    "ONNX_INPUT_NAMES",
    "ONNX_OUTPUT_NAMES",
    "ONNX_OPSET",
    "FP32_ATOL",
    "HALF_ATOL",
    "Engine",
    "EngineConfig",
    "FusedProbs",
    "OnnxRuntimeEngine",
    "Prediction",
    "TensorRTCacheKey",
    "TensorRTEngine",
    "TorchEngine",
    "build_engine",
    "choose_backend",
    "open_engine",
    "tensorrt_cache_path",
    "write_onnx",
]

log = logging.getLogger(__name__)
flush_denormals()  # before any parallel op: see stream.numerics

ENGINE_KINDS = ("auto", "tensorrt", "torch", "onnxruntime")
ONNX_FILENAME = "model.onnx"
ONNX_INPUT_NAMES = ("rgb", "flow")
ONNX_OUTPUT_NAMES = ("probs", "rgb_probs", "flow_probs")
# 17 is the first opset with every op this graph needs in its current form and is what
# onnxruntime >= 1.14 and TensorRT 8.6+ all read; higher gains nothing for Conv3d/Pad/pooling.
ONNX_OPSET = 17
TENSORRT_DIRNAME = "tensorrt"  # engines are cached here, inside the model directory
# FP32 backends differ only in summation order; measured differences on random clips are ~1e-6.
FP32_ATOL = 1e-4
# FP16 keeps a 10-bit mantissa: through ~60 layers probabilities move by ~1e-2 on the test model.
HALF_ATOL = 3e-2
# CPU half precision would be bfloat16 (no fast FP16 convolutions on CPUs). It was 1.4x eager on
# this machine's AVX512-BF16 cores but moved per-stream probabilities by up to 0.17 on the test
# model (7-bit mantissa through ~60 layers), enough to flip labels, so it is not offered.
CPU_HALF_REFUSAL = "half precision runs on CUDA only (CPU bfloat16 moved probabilities by up to 0.17 in tests); drop --half or use a GPU"
WARMUP_RUNS = 2  # first runs pay for allocation, oneDNN primitive creation and autotuning
TENSORRT_INSTALL_HINT = "pip install swim-stream[tensorrt] (needs a CUDA GPU), or use --engine torch"
ONNXRUNTIME_INSTALL_HINT = "pip install onnxruntime (or swim-stream[gpu] for CUDA), or use --engine torch"


# --------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class EngineConfig:
    """How to run the fused model. Validated once here so that a bad flag fails at start-up."""

    kind: str = "auto"  # one of ENGINE_KINDS
    device: str | None = None  # "cpu", "cuda", "cuda:1"; None = the best present
    half: bool | None = None  # None = FP16 on CUDA/TensorRT, FP32 on CPU; True on CPU is refused
    compile: bool = False  # torch backend: torch.compile instead of TorchScript freezing / eager
    optimize: bool = True  # torch backend: False = plain eager PyTorch (the benchmark reference)
    batch_size: int | None = None  # fixed batch for CUDA graphs / TensorRT; None = any batch (1 on CUDA)
    cuda_graphs: bool = True  # torch-cuda: replay a captured CUDA graph for the fixed batch
    channels_last: bool = True  # torch-cuda: channels-last-3d, which cuDNN's fastest 3D kernels want
    threads: int | None = None  # onnxruntime intra-op threads; None = all cores of this machine
    input_size_px: int | None = None  # None = the card's; the ONNX/TensorRT graphs are built for one size

    def __post_init__(self) -> None:
        if self.kind not in ENGINE_KINDS:
            raise UserError(f"engine {self.kind!r}: choose one of {', '.join(ENGINE_KINDS)}")
        if self.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise UserError(f"device {self.device!r}: use cpu, cuda or cuda:N")
        if self.batch_size is not None and self.batch_size < 1:
            raise UserError(f"batch size {self.batch_size}: must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"threads {self.threads}: must be at least 1")
        if self.input_size_px is not None and self.input_size_px < 32:
            # below 32 px the stride-32 I3D body has nothing left to pool
            raise UserError(f"input size {self.input_size_px} px: must be at least 32")


@dataclass(frozen=True)
class Prediction:
    """Per-clip probabilities from one batch; rows follow the input order."""

    fused: np.ndarray  # (B, K) float32, what decisions use
    rgb: np.ndarray  # (B, K) float32, softmax of the RGB stream alone
    flow: np.ndarray  # (B, K) float32, softmax of the flow stream alone


# ---------------------------------------------------------------------------------- the graph


class FusedProbs(nn.Module):
    """The one graph every backend runs: fused and per-stream probabilities.

    Softmax and fusion happen in FP32 even when the body runs in FP16/BF16, so that the fused
    probabilities of a half-precision backend stay within ``HALF_ATOL`` of the FP32 ones.
    """

    def __init__(self, model: FusedI3D) -> None:
        super().__init__()
        self.model = model
        self.flow_weight = float(model.flow_weight)

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _, rgb_logits, flow_logits = self.model(rgb, flow)  # (B, K) each
        rgb_logits = rgb_logits.float()
        flow_logits = flow_logits.float()
        probs = fuse(rgb_logits, flow_logits, self.flow_weight)
        return probs, rgb_logits.softmax(-1), flow_logits.softmax(-1)


def write_onnx(
    model: FusedI3D,
    path: str | Path,
    *,
    card: ModelCard,
    input_size_px: int | None = None,
    opset: int = ONNX_OPSET,
) -> Path:
    """Export the fused model to ONNX with a dynamic batch axis; return the written path.

    Uses the TorchScript exporter (``dynamo=False``): the dynamo exporter needs onnxscript, which
    is not a dependency, and gains nothing for a static CNN. The card's weights digest, classes and
    input size go into the ONNX metadata so that the onnxruntime backend can refuse a stale file.
    Writes atomically (temp file + rename) so a crash never leaves a truncated ``model.onnx``.
    """
    import onnx  # a core dependency, but only export needs it

    size_px = input_size_px or card.input_size_px
    path = Path(path)
    module = FusedProbs(model.float().cpu().eval()).eval()
    rgb = torch.zeros(1, 3, card.clip_frames, size_px, size_px)
    flow = torch.zeros(1, 2, card.clip_frames, size_px, size_px)
    tmp = path.with_name(path.name + ".partial")
    dynamic = {name: {0: "batch"} for name in (*ONNX_INPUT_NAMES, *ONNX_OUTPUT_NAMES)}
    with warnings.catch_warnings():
        # tracing warns that the TF-"SAME" pad amounts become constants: they are, for this size
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                module,
                (rgb, flow),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=list(ONNX_INPUT_NAMES),
                output_names=list(ONNX_OUTPUT_NAMES),
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
    proto = onnx.load(str(tmp))
    meta = {
        "weights_sha256": card.weights_sha256,
        "classes": ",".join(card.classes),
        "input_size_px": str(size_px),
        "clip_frames": str(card.clip_frames),
        "flow_weight": repr(float(model.flow_weight)),
        "producer": "swim-stream export-model",
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path


def onnx_cache_dir() -> Path:
    """Where ONNX graphs exported on the fly are kept: ``$SWIM_STREAM_CACHE`` or the XDG cache."""
    root = os.environ.get("SWIM_STREAM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "swim-stream"
    )
    return Path(root) / "onnx"


def cached_onnx_path(card: ModelCard, input_size_px: int) -> Path:
    """Keyed by the weights' digest and the input size: another model or size never reuses it."""
    return onnx_cache_dir() / f"{card.weights_sha256[:20] or card.name}-{input_size_px}px.onnx"


def onnx_path(model_dir: str | Path, card: ModelCard, input_size_px: int) -> Path | None:
    """The ONNX graph to run: ``model.onnx`` beside the weights (export-model), else the cache."""
    beside = Path(model_dir) / ONNX_FILENAME
    if beside.is_file():
        return beside
    cached = cached_onnx_path(card, input_size_px)
    return cached if cached.is_file() else None


def export_to_cache(model_dir: str | Path, card: ModelCard, input_size_px: int) -> Path:
    """Export once into the user's cache, so ``--engine auto`` gets onnxruntime on a CPU machine
    without a manual ``export-model`` and without writing into a (possibly read-only) model folder.
    Written atomically; the graph carries the weights' digest, which the engine checks on load."""
    path = cached_onnx_path(card, input_size_px)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path.parent}: cannot create the ONNX cache ({exc.strerror}); set SWIM_STREAM_CACHE to a writable folder or run `export-model {model_dir}`") from None
    start = time.perf_counter()
    model, card = load_model(model_dir, device="cpu")
    log.info("exporting %s to ONNX once (%s); later starts reuse it", model_dir, path)
    write_onnx(model, path, card=card, input_size_px=input_size_px)
    log.info("ONNX export took %.1f s", time.perf_counter() - start)
    return path


# ------------------------------------------------------------------------------------ engines


def _has_module(name: str) -> bool:
    """Whether an optional package is installed, without importing it (imports are slow)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


class Engine(abc.ABC):
    """A loaded model ready to classify clips. Use as a context manager or call ``close()``.

    Subclasses implement ``_run`` for one batch; this class checks shapes, splits inputs into
    the backend's fixed batch (padding the last chunk with zeros) and converts the results to
    numpy float32.
    """

    backend: str = "engine"

    def __init__(self, card: ModelCard, config: EngineConfig, model_dir: Path) -> None:
        self.card = card
        self.config = config
        self.model_dir = Path(model_dir)
        self._input_size_px = config.input_size_px or card.input_size_px
        self._closed = False

    # -- description -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Backend and its options, e.g. ``torch-cuda-fp16-graphs``; shown in logs and benchmarks."""
        return self.backend

    @property
    @abc.abstractmethod
    def device(self) -> str: ...

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.card.classes)

    @property
    def input_size_px(self) -> int:
        return self._input_size_px

    @property
    def fixed_batch(self) -> int | None:
        """Batch the backend always runs (CUDA graphs, TensorRT); None = any batch."""
        return None

    # -- running -----------------------------------------------------------------------------
    def warmup(self, batch_size: int | None = None) -> None:
        """Run zeros through the model so the first real clip does not pay for set-up."""
        n = batch_size or self.fixed_batch or 1
        t, s = self.card.clip_frames, self.input_size_px
        rgb = np.zeros((n, 3, t, s, s), np.float32)
        flow = np.zeros((n, 2, t, s, s), np.float32)
        start = time.perf_counter()
        for _ in range(WARMUP_RUNS):
            self.predict_all(rgb, flow)
        log.debug("%s warm-up: %.2f s", self.name, time.perf_counter() - start)

    def predict(self, rgb_clips: np.ndarray | torch.Tensor, flow_clips: np.ndarray | torch.Tensor) -> np.ndarray:
        """Fused class probabilities (B, K) float32 for rgb (B,3,T,S,S) and flow (B,2,T,S,S) clips."""
        return self.predict_all(rgb_clips, flow_clips).fused

    def predict_all(self, rgb_clips: np.ndarray | torch.Tensor, flow_clips: np.ndarray | torch.Tensor) -> Prediction:
        """Fused and per-stream probabilities; inputs numpy or torch float, any batch size."""
        if self._closed:
            raise RuntimeError(f"{self.name} engine is closed")
        self._check_shapes(tuple(rgb_clips.shape), tuple(flow_clips.shape))
        n = rgb_clips.shape[0]
        step = self.fixed_batch or n
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for start in range(0, n, step):
            rgb, flow = rgb_clips[start : start + step], flow_clips[start : start + step]
            valid = rgb.shape[0]
            if valid < step:
                rgb, flow = self._pad(rgb, step), self._pad(flow, step)
            outs = self._run(rgb, flow)
            parts.append(tuple(_to_numpy(o)[:valid] for o in outs))  # type: ignore[arg-type]
        fused, rgb_p, flow_p = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return Prediction(fused=fused, rgb=rgb_p, flow=flow_p)

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} on {self.device}, {self.input_size_px} px, classes={list(self.classes)}>"

    # -- for subclasses ----------------------------------------------------------------------
    @abc.abstractmethod
    def _run(self, rgb: np.ndarray | torch.Tensor, flow: np.ndarray | torch.Tensor) -> tuple[Any, Any, Any]:
        """Probabilities (fused, rgb, flow) for one batch of exactly the size given."""

    def _check_shapes(self, rgb: tuple[int, ...], flow: tuple[int, ...]) -> None:
        t, s = self.card.clip_frames, self.input_size_px
        if len(rgb) != 5 or rgb[1:] != (3, t, s, s) or len(flow) != 5 or flow[1:] != (2, t, s, s) or rgb[0] != flow[0]:
            raise ValueError(
                f"{self.name}: expected rgb (B,3,{t},{s},{s}) and flow (B,2,{t},{s},{s}), got {rgb} and {flow}"
            )

    @staticmethod
    def _pad(x: np.ndarray | torch.Tensor, n: int) -> np.ndarray | torch.Tensor:
        missing = n - x.shape[0]
        if isinstance(x, torch.Tensor):
            return torch.cat([x, x.new_zeros((missing, *x.shape[1:]))])
        return np.concatenate([x, np.zeros((missing, *x.shape[1:]), x.dtype)])


class TorchEngine(Engine):
    """PyTorch on CUDA or CPU, with the optimisations each device rewards."""

    backend = "torch"

    def __init__(self, model_dir: Path, config: EngineConfig) -> None:
        model, card = load_model(model_dir, device="cpu")
        super().__init__(card, config, model_dir)
        self._device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("device cuda: no CUDA GPU visible to PyTorch; use --device cpu")
        cuda = self._device.type == "cuda"
        # optimize=False is plain eager PyTorch: FP32 unless half is asked for, no graphs, no layout change
        plain = not config.optimize and not config.compile
        half = config.half if config.half is not None else (cuda and not plain)
        if half and not cuda:
            raise UserError(CPU_HALF_REFUSAL)
        self._dtype = torch.float16 if half else torch.float32
        self._channels_last = cuda and config.channels_last and not plain
        graphs = cuda and config.cuda_graphs and not plain
        self._batch = config.batch_size or (1 if graphs else None)
        module: nn.Module = FusedProbs(model).eval().to(self._device, self._dtype)
        if self._channels_last:
            module = module.to(memory_format=torch.channels_last_3d)
        self._tags: list[str] = [self._device.type]
        if self._dtype != torch.float32:
            self._tags.append("fp16")
        self._module = module
        self._runner: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]] = module
        if config.compile:
            self._runner = self._compile(module)
            self._tags.append("compile")
        elif config.optimize and not cuda:
            self._runner = self._freeze(module)
            self._tags.append("frozen")
        elif not config.optimize:
            self._tags.append("eager")
        if cuda and self._dtype == torch.float32:
            self._runner = _without_tf32(self._runner)
        self._graph: CudaGraph | None = None
        if graphs and self._batch is not None:
            self._graph = CudaGraph(self._runner, self._example(self._batch))
            self._tags.append("graphs")

    @property
    def name(self) -> str:
        return "-".join([self.backend, *self._tags])

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def fixed_batch(self) -> int | None:
        return self._batch if self._graph is not None else None

    def _example(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        t, s = self.card.clip_frames, self.input_size_px
        rgb = torch.zeros(n, 3, t, s, s, device=self._device, dtype=self._dtype)
        flow = torch.zeros(n, 2, t, s, s, device=self._device, dtype=self._dtype)
        return self._layout(rgb), self._layout(flow)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last_3d) if self._channels_last else x

    def _freeze(self, module: nn.Module) -> Callable[..., tuple[torch.Tensor, ...]]:
        """TorchScript trace + freeze + optimize_for_inference: folds BN, prepacks oneDNN weights."""
        example = self._example(1)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings about the constant SAME-pad amounts
            traced = torch.jit.trace(module, example, check_trace=False)  # the check re-traces: 4x the time
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        return frozen

    def _compile(self, module: nn.Module) -> Callable[..., tuple[torch.Tensor, ...]]:
        # freezing lets inductor fold batch norm and constant-propagate the weights (inference
        # only); inductor's own CUDA graphs stay off (its default) because CudaGraph wraps this.
        # Compiling takes minutes on 2 CPU cores: it is opt-in, never chosen by auto.
        return torch.compile(module, dynamic=False, options={"freezing": True})

    @torch.inference_mode()
    def _run(self, rgb: np.ndarray | torch.Tensor, flow: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, ...]:
        rgb_t = self._layout(torch.as_tensor(rgb).to(self._device, self._dtype, non_blocking=True))
        flow_t = self._layout(torch.as_tensor(flow).to(self._device, self._dtype, non_blocking=True))
        if self._graph is not None:
            return self._graph(rgb_t, flow_t)
        return self._runner(rgb_t, flow_t)

    def close(self) -> None:
        self._graph = None
        self._runner = self._module = None  # type: ignore[assignment]
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        super().close()


def _without_tf32(fn: Callable[..., tuple[torch.Tensor, ...]]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Run ``fn`` with cuDNN's TF32 convolutions off: PyTorch turns them on by default, and their
    10-bit mantissa moved an FP32 engine's probabilities by 0.036 from the CPU's on an H200, more
    than FP16 did. An engine asked for FP32 computes in FP32; FP16 is the fast choice."""

    def run(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            return fn(*args)
        finally:
            torch.backends.cudnn.allow_tf32 = saved

    return run


class OnnxRuntimeEngine(Engine):
    """``model.onnx`` on onnxruntime: CPU provider tuned for few cores, CUDA provider if installed."""

    backend = "onnxruntime"

    def __init__(self, model_dir: Path, config: EngineConfig) -> None:
        card = load_card(model_dir)
        super().__init__(card, config, model_dir)
        try:
            ort = importlib.import_module("onnxruntime")
        except ImportError:
            raise UserError(f"onnxruntime is not installed: {ONNXRUNTIME_INSTALL_HINT}") from None
        verify_weights(model_dir, card)  # the ONNX graph may be cached: still refuse damaged weights
        path = onnx_path(model_dir, card, self.input_size_px)
        if path is None:
            path = export_to_cache(model_dir, card, self.input_size_px)
        available = ort.get_available_providers()
        want_cuda = (config.device or "").startswith("cuda") or (
            config.device is None and "CUDAExecutionProvider" in available and torch.cuda.is_available()
        )
        if want_cuda and "CUDAExecutionProvider" not in available:
            raise UserError("onnxruntime has no CUDA provider: pip install swim-stream[gpu], or use --device cpu")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"]
        self._device_name = "cuda" if want_cuda else "cpu"
        options = ort.SessionOptions()
        # one op at a time, each spread over all cores: the graph is a chain of big convolutions,
        # so op-level parallelism only makes the two streams fight for the same 2 cores
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = config.threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        # constant folding, Conv+BN / Conv+ReLU fusion and layout changes: most of the CPU speed-up
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # spinning worker threads would steal the cores the TV-L1 flow thread needs between calls
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: warnings about unused initialisers are noise
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/RuntimeException types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"{path}: not a valid ONNX model ({first[:160]}); re-write it with `export-model {model_dir}`"
            ) from None
        self._check_metadata(path, self._session.get_modelmeta().custom_metadata_map)

    def _check_metadata(self, path: Path, meta: dict[str, str]) -> None:
        fix = f"re-write it with `export-model {self.model_dir}`"
        sha = meta.get("weights_sha256", "")
        if sha and self.card.weights_sha256 and sha != self.card.weights_sha256:
            raise UserError(f"{path}: exported from other weights than {self.card.weights_file}; {fix}")
        classes = meta.get("classes")
        if classes is not None and classes.split(",") != list(self.card.classes):
            raise UserError(f"{path}: classes {classes} disagree with card.json {list(self.card.classes)}; {fix}")
        size = meta.get("input_size_px")
        if size is not None and int(size) != self.input_size_px:
            raise UserError(
                f"{path}: exported for {size} px input, engine asked for {self.input_size_px} px; "
                f"{fix} --size {self.input_size_px}"
            )

    @property
    def name(self) -> str:
        return f"{self.backend}-{self._device_name}"

    @property
    def device(self) -> str:
        return self._device_name

    def _run(self, rgb: np.ndarray | torch.Tensor, flow: np.ndarray | torch.Tensor) -> tuple[np.ndarray, ...]:
        feeds = {ONNX_INPUT_NAMES[0]: _to_numpy(rgb), ONNX_INPUT_NAMES[1]: _to_numpy(flow)}
        return tuple(self._session.run(list(ONNX_OUTPUT_NAMES), feeds))

    def close(self) -> None:
        self._session = None
        super().close()


# ---------------------------------------------------------------------------------- TensorRT


@dataclass(frozen=True)
class TensorRTCacheKey:
    """Everything a compiled TensorRT engine depends on; any change means a rebuild."""

    gpu_name: str
    tensorrt_version: str
    input_shape: tuple[int, int, int]  # (batch, clip frames, size px)
    precision: str  # "fp16" | "fp32"
    weights_sha256: str

    def filename(self) -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu_name.lower()).strip("-") or "gpu"
        trt = re.sub(r"[^0-9a-z.]+", "-", self.tensorrt_version.lower())
        b, t, s = self.input_shape
        return f"fused-{gpu}-trt{trt}-b{b}x{t}x{s}-{self.precision}-{self.weights_sha256[:12] or 'nosha'}.ep"


def tensorrt_cache_path(model_dir: str | Path, key: TensorRTCacheKey) -> Path:
    """Where the engine for ``key`` lives: ``<model_dir>/tensorrt/<key>.ep``."""
    return Path(model_dir) / TENSORRT_DIRNAME / key.filename()


def _import_torch_tensorrt() -> Any:
    try:
        return importlib.import_module("torch_tensorrt")
    except ImportError:
        raise UserError(f"torch-tensorrt is not installed: {TENSORRT_INSTALL_HINT}") from None


def _tensorrt_version(torch_tensorrt: Any) -> str:
    try:
        return str(importlib.import_module("tensorrt").__version__)
    except ImportError:
        return str(getattr(torch_tensorrt, "__version__", "unknown"))


def load_or_build_cached(
    path: Path,
    build: Callable[[Path], None],
    load: Callable[[Path], Any],
    *,
    what: str = "TensorRT engine",
) -> Any:
    """Load ``path``, building it first (atomically: temp file + rename) when it is missing.

    A file that exists but does not load is reported, not silently rebuilt: it may be a
    half-copied file from a deployment script, and the user should know.
    """
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".partial" + path.suffix)
        log.info("building %s %s (first start on this GPU / TensorRT / input shape; minutes)", what, path)
        build(tmp)
        os.replace(tmp, path)
    try:
        return load(path)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: corrupt {what} ({first[:160]}); delete the file and it is rebuilt on the next start") from None


class TensorRTEngine(Engine):
    """The fused model compiled by torch-tensorrt for one GPU, batch and input size (UNVERIFIED here)."""

    backend = "tensorrt"

    def __init__(self, model_dir: Path, config: EngineConfig) -> None:
        trt = _import_torch_tensorrt()
        if not torch.cuda.is_available():
            raise UserError("TensorRT needs a CUDA GPU and none is visible; use --engine torch or onnxruntime")
        card = load_card(model_dir)
        verify_weights(model_dir, card)  # a cached engine must not hide damaged weights
        super().__init__(card, config, model_dir)
        self._device = torch.device(config.device or "cuda")
        self._dtype = torch.float32 if config.half is False else torch.float16
        self._batch = config.batch_size or 1
        self.key = TensorRTCacheKey(
            gpu_name=torch.cuda.get_device_name(self._device),
            tensorrt_version=_tensorrt_version(trt),
            input_shape=(self._batch, card.clip_frames, self.input_size_px),
            precision="fp16" if self._dtype == torch.float16 else "fp32",
            weights_sha256=card.weights_sha256,
        )
        self.cache_path = tensorrt_cache_path(model_dir, self.key)
        example = self._example()

        def build(tmp: Path) -> None:
            model, _ = load_model(model_dir, device="cpu")
            module = FusedProbs(model).eval().to(self._device, self._dtype)
            options: dict[str, Any] = {"min_block_size": 1}
            # torch-tensorrt >= 2.9 takes the precision from the module and input dtypes
            # ("explicit typing") and deprecates enabled_precisions; older versions need it
            compile_fn = getattr(getattr(trt, "dynamo", None), "compile", None)
            if compile_fn is None or "use_explicit_typing" not in inspect.signature(compile_fn).parameters:
                options["enabled_precisions"] = {self._dtype}
            compiled = trt.compile(module, ir="dynamo", inputs=list(example), **options)
            trt.save(compiled, str(tmp), inputs=list(example))

        def load(path: Path) -> Any:
            return torch.export.load(str(path)).module()

        self._module = load_or_build_cached(self.cache_path, build, load)

    def _example(self) -> tuple[torch.Tensor, torch.Tensor]:
        t, s = self.card.clip_frames, self.input_size_px
        return (
            torch.zeros(self._batch, 3, t, s, s, device=self._device, dtype=self._dtype),
            torch.zeros(self._batch, 2, t, s, s, device=self._device, dtype=self._dtype),
        )

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.key.precision}"

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def fixed_batch(self) -> int | None:
        return self._batch

    @torch.inference_mode()
    def _run(self, rgb: np.ndarray | torch.Tensor, flow: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, ...]:
        rgb_t = torch.as_tensor(rgb).to(self._device, self._dtype, non_blocking=True)
        flow_t = torch.as_tensor(flow).to(self._device, self._dtype, non_blocking=True)
        return tuple(self._module(rgb_t, flow_t))

    def close(self) -> None:
        self._module = None
        super().close()


# ----------------------------------------------------------------------------------- factory


def choose_backend(model_dir: str | Path, device: str | None = None) -> tuple[str, str, str]:
    """``auto``'s choice as (kind, device, reason): tensorrt > torch-cuda > onnxruntime-cpu > torch-cpu."""
    want_cpu = device == "cpu"
    cuda = not want_cpu and torch.cuda.is_available()
    if device is not None and device.startswith("cuda") and not cuda:
        raise UserError(f"device {device}: no CUDA GPU visible to PyTorch; use --device cpu or leave it out")
    if cuda:
        gpu = torch.cuda.get_device_name(torch.device(device or "cuda"))
        if _has_module("torch_tensorrt"):
            return "tensorrt", device or "cuda", f"CUDA GPU {gpu} and torch-tensorrt present"
        return "torch", device or "cuda", f"CUDA GPU {gpu} present; torch-tensorrt not installed ({TENSORRT_INSTALL_HINT.split(' (')[0]})"
    why_cpu = "device cpu asked for" if want_cpu else "no CUDA GPU"
    if not _has_module("onnxruntime"):
        return "torch", "cpu", f"{why_cpu}; onnxruntime not installed ({ONNXRUNTIME_INSTALL_HINT.split(' (')[0]})"
    card = load_card(model_dir)
    found = onnx_path(model_dir, card, card.input_size_px)
    if found is None:
        return "onnxruntime", "cpu", f"{why_cpu}; onnxruntime present, exporting the model once to {cached_onnx_path(card, card.input_size_px)}"
    return "onnxruntime", "cpu", f"{why_cpu}; onnxruntime and {found} present"


_BACKENDS: dict[str, type[Engine]] = {
    "torch": TorchEngine,
    "onnxruntime": OnnxRuntimeEngine,
    "tensorrt": TensorRTEngine,
}


def open_engine(model_dir: str | Path, config: EngineConfig) -> Engine:
    """Build the engine ``config`` describes for the model directory ``model_dir``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: no such model directory; pass a directory holding card.json and model.safetensors")
    if load_card(model_dir).kind == "motion":  # the flow-threshold baseline: no network (stream/motion.py)
        from stream.motion import MotionEngine

        return MotionEngine(model_dir, config)
    kind = config.kind
    if kind == "auto":
        kind, device, reason = choose_backend(model_dir, config.device)
        log.info("engine auto: chose %s on %s because %s", kind, device, reason)
        config = dataclasses.replace(config, kind=kind, device=device)
    start = time.perf_counter()
    engine = _BACKENDS[kind](model_dir, config)
    log.info("engine %s on %s ready in %.1f s (%s)", engine.name, engine.device, time.perf_counter() - start, model_dir)
    return engine


def build_engine(
    kind: str = "auto",
    model_dir: str | Path = ".",
    *,
    device: str | None = None,
    half: bool | None = None,
    compile: bool = False,
    batch_size: int | None = None,
    optimize: bool = True,
    cuda_graphs: bool = True,
    channels_last: bool = True,
    threads: int | None = None,
    input_size_px: int | None = None,
) -> Engine:
    """Build an engine of ``kind`` (auto|tensorrt|torch|onnxruntime); see ``EngineConfig`` for options."""
    config = EngineConfig(
        kind=kind,
        device=device,
        half=half,
        compile=compile,
        optimize=optimize,
        batch_size=batch_size,
        cuda_graphs=cuda_graphs,
        channels_last=channels_last,
        threads=threads,
        input_size_px=input_size_px,
    )
    return open_engine(model_dir, config)
