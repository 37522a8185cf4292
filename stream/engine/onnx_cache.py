"""Which ONNX graph the onnxruntime backend runs, and the per-user cache that exports one on the fly.

A model directory without ``model.onnx`` (as shipped, or as ``export-train`` writes it) gets its
graph exported on first start into ``<cache_root()>/onnx/``, keyed by the weights' digest and the
input size: a CPU machine gets onnxruntime's speed without a manual ``export-model`` and without
writing into a (possibly read-only) model folder, and later starts reuse the file (an export costs
10-30 s of 2 cores). That first build is checked like ``export-model`` checks its graph: against
eager PyTorch on probe clips that exercise both streams (``stream.engine.verify``); a graph that
disagrees is deleted and the start refused. A verified graph gets a signed manifest
(``stream.engine.cache``); a cached file whose manifest is missing, does not verify or does not
match is rebuilt with a log line, as is one that onnxruntime cannot read.

``model.onnx`` beside the weights (``export-model``) is used as it is: when its manifest is there
its sha256 must match, and its embedded metadata must match the card (checked by the backend).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from stream.engine.base import FP32_ATOL, first_line, to_numpy
from stream.engine.cache import cache_root, manifest_path, manifest_problem, write_manifest
from stream.engine.onnx_export import ONNX_FILENAME, ONNX_INPUT_NAMES, ONNX_OUTPUT_NAMES, write_onnx
from stream.engine.verify import STREAMS, degenerate_streams, max_diffs, probe_clips, reference_probs
from stream.errors import UserError
from stream.modelfile import ModelCard, load_model

__all__ = [
    "ONNX_CACHE_DIRNAME",
    "beside_onnx_problem",
    "cached_onnx_facts",
    "cached_onnx_path",
    "discard_cached",
    "export_to_cache",
    "onnx_cache_dir",
    "onnx_for_engine",
    "onnx_path",
]

log = logging.getLogger("stream.engine")

ONNX_CACHE_DIRNAME = "onnx"  # inside cache_root()
VERIFY_THREADS = 1  # the first-start check runs once; one thread leaves the other core to the rest


def onnx_cache_dir() -> Path:
    """Where ONNX graphs exported on the fly are kept: ``<cache_root()>/onnx``."""
    return cache_root() / ONNX_CACHE_DIRNAME


def cached_onnx_path(card: ModelCard, input_size_px: int) -> Path:
    """Keyed by the weights' digest and the input size: another model or size never reuses it."""
    return onnx_cache_dir() / f"{card.weights_sha256[:20] or card.name}-{input_size_px}px.onnx"


def cached_onnx_facts(card: ModelCard, input_size_px: int) -> dict[str, Any]:
    """What a cached graph's manifest must record (JSON scalars only)."""
    return {"weights_sha256": card.weights_sha256, "input_size_px": int(input_size_px), "batch": "dynamic",
            "precision": "fp32", "clip_frames": int(card.clip_frames), "classes": ",".join(card.classes)}


def onnx_path(model_dir: str | Path, card: ModelCard, input_size_px: int) -> Path | None:
    """The ONNX file present for this model and size (beside the weights, else cached), or None.

    Presence only, for ``auto``'s reason; ``onnx_for_engine`` decides whether it is used.
    """
    beside = Path(model_dir) / ONNX_FILENAME
    if beside.is_file():
        return beside
    cached = cached_onnx_path(card, input_size_px)
    return cached if cached.is_file() else None


def beside_onnx_problem(path: Path) -> str | None:
    """For ``model.onnx`` from export-model: why it must not be used, or None.

    Its manifest is unsigned (it travels with the model); a missing one (an export made before
    manifests existed) is allowed, since the graph's metadata is still checked against the card
    (``export-model --check`` says when the manifest is missing).
    """
    if not manifest_path(path).is_file():
        log.debug("%s: no manifest beside it (an older export-model?); its sha256 is not checked", path)
        return None
    return manifest_problem(path, signed=False)


def onnx_for_engine(model_dir: str | Path, card: ModelCard, input_size_px: int) -> tuple[Path, bool]:
    """The graph the onnxruntime backend should load, as (path, whether it is a cache file).

    Exports (and verifies) into the cache when there is no usable graph.
    """
    model_dir = Path(model_dir)
    beside = model_dir / ONNX_FILENAME
    if beside.is_file():
        problem = beside_onnx_problem(beside)
        if problem is not None:
            raise UserError(f"{beside}: refused, {problem}; re-write it with `export-model {model_dir}`")
        return beside, False
    cached = cached_onnx_path(card, input_size_px)
    if cached.is_file():
        problem = manifest_problem(cached, cached_onnx_facts(card, input_size_px))
        if problem is None:
            return cached, True
        log.warning("%s: cached ONNX graph refused: %s; exporting it again", cached, problem)
    return export_to_cache(model_dir, card, input_size_px), True


def discard_cached(path: Path) -> None:
    """Remove a cache file and its manifest (a corrupt graph, before rebuilding it)."""
    manifest_path(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def export_to_cache(model_dir: str | Path, card: ModelCard, input_size_px: int, *, atol: float = FP32_ATOL) -> Path:
    """Export the graph into the cache, verify it against PyTorch, then rename it and sign its manifest.

    Refused with one line (and nothing left in the cache) when the graph disagrees with PyTorch.
    """
    path = cached_onnx_path(card, input_size_px)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{path.parent}: cannot create the ONNX cache ({exc.strerror}); set SWIM_STREAM_CACHE to a writable folder or run `export-model {model_dir}`") from None
    start = time.perf_counter()
    model, card = load_model(model_dir, device="cpu")
    log.info("exporting %s to ONNX once (%s); later starts reuse it", model_dir, path)
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    try:
        write_onnx(model, tmp, card=card, input_size_px=input_size_px)
        rgb, flow = probe_clips(card.clip_frames, input_size_px)
        want = reference_probs(model, rgb, flow)
        got = _run_onnx_cpu(tmp, rgb.numpy(), flow.numpy())
        diffs = max_diffs(got, want)
        weak = degenerate_streams(want)
        # info, not a warning: an untrained or collapsed model gives such outputs for any clip,
        # which is the model's property, not a fault of the export; the log still says so
        log.info("ONNX check against PyTorch on %d probe clips: max abs diff %s (limit %.0e)%s", rgb.shape[0],
                 ", ".join(f"{name} {d:.1e}" for name, d in zip(STREAMS, diffs)), atol,
                 f"; PyTorch's {', '.join(weak)} output(s) are the same for every probe clip, so the check says little about them" if weak else "")
        if not max(diffs) <= atol:  # also catches NaN
            raise UserError(f"{model_dir}: the ONNX export differs from PyTorch by {max(diffs):.2e} > {atol:.0e}; "
                            "use --engine torch, and report it with the model card")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    write_manifest(path, cached_onnx_facts(card, input_size_px))
    log.info("ONNX export and check took %.1f s", time.perf_counter() - start)
    return path


def _run_onnx_cpu(path: Path, rgb: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, ...]:
    """The graph's three outputs on onnxruntime's CPU provider (the check, not the live engine)."""
    import onnxruntime as ort  # only reached from the onnxruntime backend, which imported it already

    options = ort.SessionOptions()
    options.intra_op_num_threads = VERIFY_THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outs = session.run(list(ONNX_OUTPUT_NAMES), {ONNX_INPUT_NAMES[0]: rgb, ONNX_INPUT_NAMES[1]: flow})
    except Exception as exc:  # onnxruntime's own error types
        raise UserError(f"{path}: the fresh ONNX export does not run ({first_line(exc)}); use --engine torch") from None
    return tuple(to_numpy(o) for o in outs)
