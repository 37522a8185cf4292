"""ONNX graphs exported on the fly into the user's cache, for ``--engine auto``/``onnxruntime``.

When a model directory has no ``model.onnx`` (as shipped, or as ``export-train`` writes it), the
first start exports the fused model once into ``$SWIM_STREAM_CACHE`` (else the XDG cache), keyed
by the weights' digest and input size, so that a CPU machine gets onnxruntime's speed without a
manual ``export-model`` and without writing into a (possibly read-only) model folder. Later starts
reuse it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from stream.engine.onnx_export import ONNX_FILENAME, write_onnx
from stream.errors import UserError
from stream.modelfile import ModelCard, load_model

__all__ = ["cached_onnx_path", "export_to_cache", "onnx_cache_dir", "onnx_path"]

log = logging.getLogger("stream.engine")

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

