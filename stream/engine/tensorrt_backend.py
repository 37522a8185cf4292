"""The ``tensorrt`` backend: the fused model compiled by torch-tensorrt (FP16 by default) for one
GPU, batch and input size. UNVERIFIED on the development machine (no GPU, no TensorRT there).

Engines are cached next to the model under ``tensorrt/``, keyed by GPU name, TensorRT version,
input shape, precision and weights, so a changed GPU, driver stack or model rebuilds instead of
loading a stale engine. An engine file is read with ``torch.export.load``, which may unpickle, so
it is opened only when its signed manifest (``stream.engine.cache``) vouches that this user's
swim-stream built it; any other file (copied in with a model folder, truncated, replaced) is
rebuilt without being opened. torch-tensorrt is imported only when this backend is built.
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream.engine.base import KIND_TENSORRT, TENSORRT_INSTALL_HINT, Engine, EngineConfig, FusedProbs
from stream.engine.cache import load_or_build_cached, with_weights_digest
from stream.errors import UserError
from stream.modelfile import load_card, load_model, verify_weights

__all__ = ["TENSORRT_DIRNAME", "TensorRTCacheKey", "TensorRTEngine", "load_or_build_cached", "tensorrt_cache_path"]


TENSORRT_DIRNAME = "tensorrt"  # engines are cached here, inside the model directory


@dataclass(frozen=True)
class TensorRTCacheKey:
    """Everything a compiled TensorRT engine depends on; any change means a rebuild."""

    gpu_name: str
    tensorrt_version: str
    input_shape: tuple[int, int, int]  # (batch, clip frames, size px)
    precision: str  # "fp16" | "fp32"
    weights_sha256: str

    def facts(self) -> dict[str, str | int]:
        """What the cache manifest records and checks (JSON scalars only: they round-trip exactly)."""
        b, t, s = self.input_shape
        return {"gpu_name": self.gpu_name, "tensorrt_version": self.tensorrt_version, "batch": b, "clip_frames": t,
                "input_size_px": s, "precision": self.precision, "weights_sha256": self.weights_sha256}

    def filename(self) -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu_name.lower()).strip("-") or "gpu"
        trt = re.sub(r"[^0-9a-z.]+", "-", self.tensorrt_version.lower())
        b, t, s = self.input_shape
        if not self.weights_sha256:
            raise ValueError("TensorRTCacheKey without weights_sha256 (use with_weights_digest)")
        return f"fused-{gpu}-trt{trt}-b{b}x{t}x{s}-{self.precision}-{self.weights_sha256[:12]}.ep"


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


class TensorRTEngine(Engine):
    """The fused model compiled by torch-tensorrt for one GPU, batch and input size (UNVERIFIED here)."""

    backend = KIND_TENSORRT

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
            weights_sha256=with_weights_digest(model_dir, card).weights_sha256,  # never "": it names the file
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
            # torch.export.load may unpickle: only reached once the signed manifest vouched for the file
            return torch.export.load(str(path)).module()

        self._module = load_or_build_cached(self.cache_path, build, load, facts=self.key.facts())

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

