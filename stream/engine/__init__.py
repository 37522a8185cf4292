"""Inference engines: the live loop calls one object, the fastest backend the machine has sits behind it.

::

    rgb clips  (B, 3, 16, S, S) ─┐                     ┌─> fused probabilities (B, K)   <- predict()
                                 ├─> Engine.predict_all ├─> rgb probabilities   (B, K)
    flow clips (B, 2, 16, S, S) ─┘                     └─> flow probabilities  (B, K)

One module per idea:

* ``base``: ``EngineConfig``, ``Prediction``, the graph every backend runs (``FusedProbs``), the
  ``Engine`` base class (warmup / predict / predict_all / close) and the engine kinds.
* ``torch_backend``: PyTorch eager, TorchScript-frozen (CPU), ``torch.compile``, CUDA graphs.
* ``onnxruntime_backend``: the ONNX graph on onnxruntime (CPU, or CUDA with onnxruntime-gpu).
* ``tensorrt_backend``: torch-tensorrt engines cached beside the model (UNVERIFIED on the
  development machine: no GPU or TensorRT there).
* ``motion``: the motion-threshold baseline (``"kind": "motion"`` in the card), an engine without
  a network: thresholds on the mean flow magnitude of each clip (fitted by ``export-fit-motion``).
* ``streaming``: one column per layer per new frame (continual I3D), fed frame by frame through
  ``open_stream``; close to the clip model, not equal (see its docstring and the README).
* ``streaming_onnx``: that engine's step as one ONNX graph with its rings as state inputs and
  outputs, on onnxruntime (kind ``streaming`` on the CPU when onnxruntime is installed; kind
  ``streaming-torch`` is the PyTorch step).
* ``onnx_export``: the one ONNX writer (``export-model`` and the cache use it).
* ``onnx_cache``: on a model without ``model.onnx``, ``auto`` and ``onnxruntime`` export the graph
  once into the user's cache on first start, verify it against PyTorch, and reuse it afterwards.
* ``cache``: the signed sha256 manifest beside every cached file (ONNX, TensorRT); a file whose
  manifest does not vouch for it is rebuilt without being opened (TensorRT files unpickle).
* ``verify``: probe clips that exercise both streams, for checking a graph against PyTorch.
* ``factory``: ``build_engine(kind, ...)`` / ``open_engine``; ``auto`` picks tensorrt >
  torch-cuda > onnxruntime-cpu > torch-cpu and logs why. Backend modules, and their heavy
  packages (onnxruntime, torch-tensorrt), are imported only when that kind is built.

Every backend runs the same graph, so they all return the same numbers within ``FP32_ATOL``
(FP32) or ``HALF_ATOL`` (FP16, CUDA only). ``from stream.engine import X`` works for every name
below; the backend classes load their module on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stream.engine.base import (
    CPU_HALF_REFUSAL,
    ENGINE_KINDS,
    FP32_ATOL,
    HALF_ATOL,
    KIND_AUTO,
    KIND_ONNXRUNTIME,
    KIND_STREAMING,
    KIND_STREAMING_TORCH,
    KIND_TENSORRT,
    KIND_TORCH,
    ONNXRUNTIME_INSTALL_HINT,
    TENSORRT_INSTALL_HINT,
    WARMUP_RUNS,
    Engine,
    EngineConfig,
    FusedProbs,
    Prediction,
)
from stream.engine.cache import cache_root, load_or_build_cached, manifest_path, manifest_problem, write_manifest
from stream.engine.factory import build_engine, choose_backend, open_engine
from stream.engine.onnx_cache import cached_onnx_path, export_to_cache, onnx_cache_dir, onnx_path
from stream.engine.onnx_export import ONNX_FILENAME, ONNX_INPUT_NAMES, ONNX_OPSET, ONNX_OUTPUT_NAMES, write_onnx

if TYPE_CHECKING:
    from stream.engine.onnxruntime_backend import OnnxRuntimeEngine
    from stream.engine.tensorrt_backend import (
        TENSORRT_DIRNAME,
        TensorRTCacheKey,
        TensorRTEngine,
        tensorrt_cache_path,
    )
    from stream.engine.streaming import StreamingEngine
    from stream.engine.streaming_onnx import StreamingOnnxEngine
    from stream.engine.torch_backend import TorchEngine

__all__ = [
    "CPU_HALF_REFUSAL",
    "ENGINE_KINDS",
    "FP32_ATOL",
    "HALF_ATOL",
    "KIND_AUTO",
    "KIND_ONNXRUNTIME",
    "KIND_STREAMING",
    "KIND_STREAMING_TORCH",
    "KIND_TENSORRT",
    "KIND_TORCH",
    "ONNXRUNTIME_INSTALL_HINT",
    "ONNX_FILENAME",
    "ONNX_INPUT_NAMES",
    "ONNX_OPSET",
    "ONNX_OUTPUT_NAMES",
    "TENSORRT_DIRNAME",
    "TENSORRT_INSTALL_HINT",
    "WARMUP_RUNS",
    "Engine",
    "EngineConfig",
    "FusedProbs",
    "OnnxRuntimeEngine",
    "Prediction",
    "StreamingEngine",
    "StreamingOnnxEngine",
    "TensorRTCacheKey",
    "TensorRTEngine",
    "TorchEngine",
    "build_engine",
    "cache_root",
    "cached_onnx_path",
    "choose_backend",
    "export_to_cache",
    "load_or_build_cached",
    "manifest_path",
    "manifest_problem",
    "onnx_cache_dir",
    "onnx_path",
    "open_engine",
    "tensorrt_cache_path",
    "write_manifest",
    "write_onnx",
]

# names that live in a backend module, imported on first access (PEP 562)
_LAZY: dict[str, str] = {
    "TorchEngine": "stream.engine.torch_backend",
    "StreamingEngine": "stream.engine.streaming",
    "StreamingOnnxEngine": "stream.engine.streaming_onnx",
    "OnnxRuntimeEngine": "stream.engine.onnxruntime_backend",
    "TensorRTEngine": "stream.engine.tensorrt_backend",
    "TensorRTCacheKey": "stream.engine.tensorrt_backend",
    "TENSORRT_DIRNAME": "stream.engine.tensorrt_backend",
    "tensorrt_cache_path": "stream.engine.tensorrt_backend",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
