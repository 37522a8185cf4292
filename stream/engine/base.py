"""What every backend shares: the configuration, the one graph they all run, and ``Engine``.

``Engine`` owns the parts that do not depend on the backend (shape checks, splitting a batch into
the backend's fixed batch, padding, numpy conversion, warm-up); a backend implements ``_run`` for
one batch. Kinds are the constants below: import them, do not retype the strings.
"""

from __future__ import annotations

import abc
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stream.errors import UserError
from stream.model import FusedI3D, fuse
from stream.modelfile import TRAINED_FOR_STREAMING, ModelCard, require_live_crop
from stream.numerics import flush_denormals

__all__ = [
    "BACKENDS",
    "CPU_HALF_REFUSAL",
    "ENGINE_KINDS",
    "FP32_ATOL",
    "HALF_ATOL",
    "KIND_AUTO",
    "KIND_ONNXRUNTIME",
    "KIND_TENSORRT",
    "KIND_STREAMING",
    "KIND_STREAMING_TORCH",
    "KIND_TORCH",
    "ONNXRUNTIME_INSTALL_HINT",
    "STREAM_RECEPTIVE_FRAMES",
    "TENSORRT_INSTALL_HINT",
    "WARMUP_RUNS",
    "Engine",
    "EngineConfig",
    "FusedProbs",
    "Prediction",
    "first_line",
    "to_numpy",
    "torch_device",
]

log = logging.getLogger("stream.engine")
flush_denormals()  # before any parallel op: see stream.numerics

KIND_AUTO = "auto"  # the fastest backend present (stream.engine.factory.choose_backend)
KIND_TENSORRT = "tensorrt"
KIND_TORCH = "torch"
KIND_ONNXRUNTIME = "onnxruntime"
# one column per layer per new frame (stream.engine.streaming); close to, not equal to, the clip model
KIND_STREAMING = "streaming"
# the same streaming step in PyTorch only; ``streaming`` runs it on onnxruntime when installed (CPU)
KIND_STREAMING_TORCH = "streaming-torch"
# frames before now a streaming output depends on (stream/causal_i3d.py: Conv3d_1a 3, Conv3d_2c 2,
# Mixed_3 2 x 2, pool 2, Mixed_4 5 x 4, pool 4, Mixed_5 2 x 8, the final 2-column mean 8)
STREAM_RECEPTIVE_FRAMES = 59
ENGINE_KINDS = (KIND_AUTO, KIND_TENSORRT, KIND_TORCH, KIND_ONNXRUNTIME, KIND_STREAMING, KIND_STREAMING_TORCH)
# kind -> (module, class): the factory imports a backend on first use only (stream.engine.factory).
# A new backend is its module plus one kind above and one line here.
BACKENDS: dict[str, tuple[str, str]] = {
    KIND_TORCH: ("stream.engine.torch_backend", "TorchEngine"),
    KIND_ONNXRUNTIME: ("stream.engine.onnxruntime_backend", "OnnxRuntimeEngine"),
    KIND_TENSORRT: ("stream.engine.tensorrt_backend", "TensorRTEngine"),
    KIND_STREAMING: ("stream.engine.streaming_onnx", "StreamingOnnxEngine"),  # the torch step without onnxruntime
    KIND_STREAMING_TORCH: ("stream.engine.streaming", "StreamingEngine"),
}
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
MESSAGE_CHARS = 160  # a third-party error quoted in a one-line message is cut to this


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type), short enough for a one-line error."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:MESSAGE_CHARS]


# --------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class EngineConfig:
    """How to run the fused model. Validated once here so that a bad flag fails at start-up."""

    kind: str = KIND_AUTO  # one of ENGINE_KINDS
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


def torch_device(config: EngineConfig) -> torch.device:
    """The device a PyTorch-run backend uses: the one asked for, else CUDA where PyTorch sees a GPU.

    Asking for CUDA on a machine without one is a user mistake (one line), not a CUDA traceback.
    """
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {config.device}: no CUDA GPU visible to PyTorch; use --device cpu")
    return device


def to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
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
    # A step-wise engine (stream.engine.streaming) is fed one frame at a time through
    # ``open_stream(num_arenas)``, whose object has ``push(rgb (N,3,S,S), flow (N,2,S,S))`` and
    # ``flush()``; the pipeline asks this flag instead of the engine's class.
    stepwise: bool = False

    def __init__(self, card: ModelCard, config: EngineConfig, model_dir: Path) -> None:
        if card.trained_for == TRAINED_FOR_STREAMING and not self.stepwise:
            raise UserError(f"{model_dir}: trained for the streaming engine (card trained_for {TRAINED_FOR_STREAMING!r}); "
                            f"the {self.backend} engine's {card.clip_frames}-frame clip cannot compute its causal function "
                            f"(it reads {STREAM_RECEPTIVE_FRAMES} frames back): use --engine {KIND_STREAMING} or auto")
        require_live_crop(card, model_dir, stepwise=self.stepwise)  # a step-wise engine cannot follow a mouse window
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
            parts.append(tuple(to_numpy(o)[:valid] for o in outs))  # type: ignore[arg-type]
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

