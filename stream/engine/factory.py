"""One factory for every engine: ``build_engine(kind, model_dir, ...)`` / ``open_engine(model_dir, config)``.

``auto`` picks tensorrt > torch-cuda > onnxruntime-cpu > torch-cpu and logs the choice and why; for a
card trained for streaming (``trained_for: "streaming"``) the streaming engine, the only one that
computes what it was trained for (the clip-wise engines refuse such a card).
Each backend module is imported only when its kind is built, and a backend's heavy package
(onnxruntime, torch-tensorrt) only inside it, so a machine without them never pays for them.

Adding a kind is a constant in ``stream.engine.base`` (or the module that defines it) plus one row
in ``BACKENDS``: the kind, the module and the class, which takes ``(model_dir, config)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import time
from pathlib import Path

import torch

from stream.engine.base import (
    BACKENDS,
    KIND_AUTO,
    KIND_ONNXRUNTIME,
    KIND_STREAMING,
    KIND_STREAMING_TORCH,
    KIND_TENSORRT,
    KIND_TORCH,
    ONNXRUNTIME_INSTALL_HINT,
    TENSORRT_INSTALL_HINT,
    Engine,
    EngineConfig,
)
from stream.engine.cache import with_weights_digest
from stream.engine.onnx_cache import cached_onnx_path, onnx_path
from stream.errors import UserError
from stream.modelfile import TRAINED_FOR_STREAMING, ModelCard, load_card

__all__ = ["BACKENDS", "STEPWISE_KINDS", "backend_class", "build_engine", "choose_backend", "open_engine", "runs_stepwise"]

log = logging.getLogger("stream.engine")

STEPWISE_KINDS = (KIND_STREAMING, KIND_STREAMING_TORCH)  # fed frame by frame (Engine.stepwise)


def runs_stepwise(kind: str, card: ModelCard) -> bool:
    """Whether ``open_engine`` builds a step-wise engine for ``card`` under ``kind``: the streaming kinds,
    and ``auto`` for a card trained for streaming (a motion card always gets the clip-wise motion engine).
    Lets a start refuse what that engine cannot run (``require_live_crop``) before it opens anything."""
    if card.kind == "motion":
        return False
    return kind in STEPWISE_KINDS or (kind == KIND_AUTO and card.trained_for == TRAINED_FOR_STREAMING)



def backend_class(kind: str) -> type[Engine]:
    """The engine class for ``kind``, importing its module now."""
    module, name = BACKENDS[kind]
    return getattr(importlib.import_module(module), name)


def _has_module(name: str) -> bool:
    """Whether an optional package is installed, without importing it (imports are slow)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def choose_backend(model_dir: str | Path, device: str | None = None) -> tuple[str, str, str]:
    """``auto``'s choice as (kind, device, reason): tensorrt > torch-cuda > onnxruntime-cpu > torch-cpu."""
    want_cpu = device == "cpu"
    cuda = not want_cpu and torch.cuda.is_available()
    if device is not None and device.startswith("cuda") and not cuda:
        raise UserError(f"device {device}: no CUDA GPU visible to PyTorch; use --device cpu or leave it out")
    if cuda:
        gpu = torch.cuda.get_device_name(torch.device(device or "cuda"))
        if _has_module("torch_tensorrt"):
            return KIND_TENSORRT, device or "cuda", f"CUDA GPU {gpu} and torch-tensorrt present"
        return KIND_TORCH, device or "cuda", f"CUDA GPU {gpu} present; torch-tensorrt not installed ({TENSORRT_INSTALL_HINT.split(' (')[0]})"
    why_cpu = "device cpu asked for" if want_cpu else "no CUDA GPU"
    if not _has_module("onnxruntime"):
        return KIND_TORCH, "cpu", f"{why_cpu}; onnxruntime not installed ({ONNXRUNTIME_INSTALL_HINT.split(' (')[0]})"
    card = with_weights_digest(model_dir, load_card(model_dir))
    found = onnx_path(model_dir, card, card.input_size_px)
    if found is None:
        return KIND_ONNXRUNTIME, "cpu", f"{why_cpu}; onnxruntime present, exporting the model once to {cached_onnx_path(card, card.input_size_px)}"
    return KIND_ONNXRUNTIME, "cpu", f"{why_cpu}; onnxruntime and {found} present"


def open_engine(model_dir: str | Path, config: EngineConfig) -> Engine:
    """Build the engine ``config`` describes for the model directory ``model_dir``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: no such model directory; pass a directory holding card.json and model.safetensors")
    if load_card(model_dir).kind == "motion":  # the flow-threshold baseline: no network (stream/engine/motion.py)
        from stream.engine.motion import MotionEngine

        return MotionEngine(model_dir, config)
    kind = config.kind
    if kind == KIND_AUTO and runs_stepwise(kind, load_card(model_dir)):
        kind = KIND_STREAMING  # the only engine that computes what it was trained for (stream/causal_i3d.py)
        log.info("engine auto: chose %s because the card says trained_for %r", kind, TRAINED_FOR_STREAMING)
        config = dataclasses.replace(config, kind=kind)
    elif kind == KIND_AUTO:
        kind, device, reason = choose_backend(model_dir, config.device)
        log.info("engine auto: chose %s on %s because %s", kind, device, reason)
        config = dataclasses.replace(config, kind=kind, device=device)
    start = time.perf_counter()
    engine = backend_class(kind)(model_dir, config)
    log.info("engine %s on %s ready in %.1f s (%s)", engine.name, engine.device, time.perf_counter() - start, model_dir)
    return engine


def build_engine(
    kind: str = KIND_AUTO,
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
    """Build an engine of ``kind`` (auto|tensorrt|torch|onnxruntime|streaming|streaming-torch); see ``EngineConfig`` for options."""
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
