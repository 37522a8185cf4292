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

``model.onnx`` beside the weights (``export-model``) is used only when its manifest vouches for it
as the cache's do: signed with this user's key, the graph's sha256, and built from these weights
(the weights' sha256); its embedded metadata must then match the card (checked by the backend).
Any other graph there (no manifest, a manifest from another machine or for other weights: a
foreign graph once scored 20.0 s of immobility under fst-side-64's name where the model gives
10.4 s) is not run: the start logs why and runs a graph exported from the weights instead.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from stream.atomic import atomic_path
from stream.engine.base import FP32_ATOL, first_line, to_numpy
from stream.engine.cache import cache_root, make_private_dir, manifest_path, manifest_problem, with_weights_digest, write_manifest
from stream.engine.onnx_export import ONNX_FILENAME, ONNX_INPUT_NAMES, ONNX_OUTPUT_NAMES, write_onnx
from stream.engine.verify import STREAMS, degenerate_streams, max_diffs, probe_clips, reference_probs
from stream.errors import UserError
from stream.modelfile import ModelCard, load_model

__all__ = [
    "GRAPHS",
    "GRAPH_CLIP",
    "GRAPH_STREAM",
    "ONNX_CACHE_DIRNAME",
    "beside_onnx_facts",
    "beside_onnx_problem",
    "cached_onnx_facts",
    "cached_onnx_path",
    "discard_cached",
    "export_to_cache",
    "onnx_cache_dir",
    "onnx_for_engine",
    "onnx_path",
    "write_beside_manifest",
]

log = logging.getLogger("stream.engine")

ONNX_CACHE_DIRNAME = "onnx"  # inside cache_root()
# which graph of a model: the clip-wise fused model (stream.engine.onnx_export) or one step of the
# streaming engine with its rings as state inputs and outputs (stream.engine.streaming_onnx)
GRAPH_CLIP = "clip"
GRAPH_STREAM = "stream"
GRAPHS = (GRAPH_CLIP, GRAPH_STREAM)
VERIFY_THREADS = 1  # the first-start check runs once; one thread leaves the other core to the rest


def onnx_cache_dir() -> Path:
    """Where ONNX graphs exported on the fly are kept: ``<cache_root()>/onnx``."""
    return cache_root() / ONNX_CACHE_DIRNAME


def cached_onnx_path(card: ModelCard, input_size_px: int, *, graph: str = GRAPH_CLIP) -> Path:
    """Keyed by the weights' digest, the input size and the graph: another model, size or graph never reuses it.

    ``card`` must carry the digest (``with_weights_digest``): a card's name is no key.
    """
    if not card.weights_sha256:
        raise ValueError(f"{card.name}: no weights_sha256 to key the ONNX cache by (use with_weights_digest)")
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    suffix = "" if graph == GRAPH_CLIP else f"-{graph}"  # the clip graph keeps the name older caches have
    return onnx_cache_dir() / f"{card.weights_sha256[:20]}-{input_size_px}px{suffix}.onnx"


def cached_onnx_facts(card: ModelCard, input_size_px: int, *, graph: str = GRAPH_CLIP) -> dict[str, Any]:
    """What a cached graph's manifest must record (JSON scalars only)."""
    facts = {"weights_sha256": card.weights_sha256, "input_size_px": int(input_size_px), "batch": "dynamic",
             "precision": "fp32", "clip_frames": int(card.clip_frames), "classes": ",".join(card.classes)}
    return facts if graph == GRAPH_CLIP else {**facts, "graph": graph}  # older clip manifests have no "graph"


def beside_onnx_facts(card: ModelCard, input_size_px: int) -> dict[str, Any]:
    """What export-model's manifest beside ``model.onnx`` records (``card`` carrying the digest)."""
    return {"weights_sha256": card.weights_sha256, "input_size_px": int(input_size_px), "batch": "dynamic", "precision": "fp32"}


def write_beside_manifest(path: Path, card: ModelCard, input_size_px: int) -> Path:
    """Sign ``model.onnx`` (just written and verified from ``card``'s weights) for this user's starts."""
    return write_manifest(path, beside_onnx_facts(card, input_size_px))


def onnx_path(model_dir: str | Path, card: ModelCard, input_size_px: int) -> Path | None:
    """The ONNX file the onnxruntime backend would use now (beside the weights, else cached), or None.

    For ``auto``'s reason; ``onnx_for_engine`` decides (and exports when there is none).
    """
    card = with_weights_digest(model_dir, card)
    beside = Path(model_dir) / ONNX_FILENAME
    if beside.is_file() and beside_onnx_problem(beside, card.weights_sha256) is None:
        return beside
    cached = cached_onnx_path(card, input_size_px)
    return cached if cached.is_file() else None


def beside_onnx_problem(path: Path, weights_sha256: str) -> str | None:
    """For ``model.onnx`` beside the weights: why it must not be used, or None.

    Its manifest must be signed with this user's key (as the cache's are), match the graph's
    sha256 and name the weights it was exported from: the input size is the metadata's to
    check (its refusal names the fix).
    """
    if not weights_sha256:
        raise ValueError("beside_onnx_problem needs the weights' sha256 (with_weights_digest)")
    return manifest_problem(path, {"weights_sha256": weights_sha256})


def onnx_for_engine(model_dir: str | Path, card: ModelCard, input_size_px: int) -> tuple[Path, bool]:
    """The graph the onnxruntime backend should load, as (path, whether it is a cache file).

    A graph beside the weights that its manifest does not vouch for is not used (a log line says
    why); the cache's graph is used instead, exported (and verified) when there is none.
    """
    model_dir = Path(model_dir)
    card = with_weights_digest(model_dir, card)
    beside = model_dir / ONNX_FILENAME
    if beside.is_file():
        problem = beside_onnx_problem(beside, card.weights_sha256)
        if problem is None:
            return beside, False
        log.warning("%s: not used (%s); running a graph exported from %s instead (`export-model %s` writes a signed one)",
                    beside, problem, card.weights_file, model_dir)
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
    card = with_weights_digest(model_dir, card)
    path = cached_onnx_path(card, input_size_px)
    facts = cached_onnx_facts(card, input_size_px)
    try:
        make_private_dir(path.parent)
    except OSError as exc:
        raise UserError(f"{path.parent}: cannot create the ONNX cache ({exc.strerror}); set SWIM_STREAM_CACHE to a writable folder or run `export-model {model_dir}`") from None
    start = time.perf_counter()
    model, _ = load_model(model_dir, device="cpu")
    log.info("exporting %s to ONNX once (%s); later starts reuse it", model_dir, path)
    # a temporary name of its own: two first starts of one model (stream-run beside export-validate)
    # export side by side, and a shared name let one rename the other's graph away mid-check
    with atomic_path(path, suffix=path.suffix) as tmp:
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
    write_manifest(path, facts)
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
