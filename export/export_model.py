"""Write the deployable artefacts of a trained model directory (CLI ``export-model``).

::

    MODEL_DIR/model.safetensors + card.json
        ├─> MODEL_DIR/model.onnx            fused two-stream graph, dynamic batch, checked with
        │                                   onnx.checker and verified against PyTorch with onnxruntime
        └─> MODEL_DIR/tensorrt/<key>.ep     torch-tensorrt engine (FP16 default) when torch-tensorrt
                                            and a CUDA GPU are present; keyed by GPU, TensorRT
                                            version, input shape, precision and weights

The ONNX file is written next to the weights only after it passed both checks (the comparison uses
probe clips that exercise both streams, ``stream.engine.verify``), with a manifest holding its
sha256 and the weights' sha256 (``model.onnx.manifest.json``), signed with this user's cache key
as the cache's manifests are, so the engines never run an unverified, altered or foreign graph.
Without a ``model.onnx`` its manifest vouches for (none, or one copied from another machine),
the onnxruntime engine exports and verifies one into the user's cache on first start instead
(``stream.engine.onnx_cache``). ``--check`` re-verifies the artefacts that are already there
without writing anything; a ``model.onnx`` this user did not write is not checked but refused
(run ``export-model`` to write one, or let the cache export it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from stream.engine import (
    FP32_ATOL,
    HALF_ATOL,
    KIND_ONNXRUNTIME,
    KIND_TENSORRT,
    ONNX_FILENAME,
    ONNX_OPSET,
    EngineConfig,
    OnnxRuntimeEngine,
    TensorRTEngine,
    write_onnx,
)
from stream.engine.cache import manifest_path, with_weights_digest
from stream.engine.onnx_cache import beside_onnx_problem, write_beside_manifest
from stream.engine.verify import PROBE_CLIPS, degenerate_streams, max_diffs, probe_clips, reference_probs
from stream.errors import UserError, cli_main
from stream.model import FusedI3D
from stream.modelfile import ModelCard, load_model
from stream.version import add_version_argument

__all__ = ["main", "verify_onnx", "VERIFY_CLIPS"]

log = logging.getLogger("export-model")

VERIFY_CLIPS = PROBE_CLIPS  # probe clips compared per check: a batch > 1 also exercises the dynamic batch axis


def _probe_clips(card: ModelCard, size_px: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips that exercise both streams (see ``stream.engine.verify``: uniform noise saturated the
    trained model's flow stream, so a check on it compared nothing)."""
    return probe_clips(card.clip_frames, size_px, n)


def _reference(model: FusedI3D, rgb: torch.Tensor, flow: torch.Tensor) -> tuple[np.ndarray, ...]:
    return reference_probs(model, rgb, flow)


def _max_diffs(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> tuple[float, ...]:
    return max_diffs(got, want)


def verify_onnx(model: FusedI3D, card: ModelCard, model_dir: Path, size_px: int, *, atol: float = FP32_ATOL) -> float:
    """Run ``model_dir/model.onnx`` and PyTorch on the same probe clips; return the max abs diff.

    Raises ``UserError`` when the graph disagrees by more than ``atol`` on any output. Warns when
    PyTorch's output of a stream is the same for every probe clip (the check says little there).
    """
    rgb, flow = _probe_clips(card, size_px, VERIFY_CLIPS)
    want = _reference(model, rgb, flow)
    weak = degenerate_streams(want)
    if weak:
        print(f"note: PyTorch's {', '.join(weak)} output(s) are the same for every probe clip; the check says little about them")
    with OnnxRuntimeEngine(model_dir, EngineConfig(kind=KIND_ONNXRUNTIME, device="cpu", input_size_px=size_px)) as engine:
        got = engine.predict_all(rgb.numpy(), flow.numpy())
    diffs = _max_diffs((got.fused, got.rgb, got.flow), want)
    print(f"onnxruntime vs PyTorch on {VERIFY_CLIPS} probe clips: max abs diff fused {diffs[0]:.2e}, rgb {diffs[1]:.2e}, flow {diffs[2]:.2e} (limit {atol:.0e})")
    worst = max(diffs)
    if not worst <= atol:  # also catches NaN
        raise UserError(
            f"{model_dir / ONNX_FILENAME}: onnxruntime differs from PyTorch by {worst:.2e} > {atol:.0e}; "
            "the export is wrong for this model, report it with the model card"
        )
    return worst


def export_onnx(model: FusedI3D, card: ModelCard, model_dir: Path, size_px: int, opset: int, atol: float) -> Path:
    """Write, check and verify ``model.onnx``; only a graph that passed replaces the old file."""
    import onnx

    final = model_dir / ONNX_FILENAME
    staging = model_dir / f".{ONNX_FILENAME}.unverified"
    start = time.perf_counter()
    try:
        write_onnx(model, staging, card=card, input_size_px=size_px, opset=opset)
        onnx.checker.check_model(str(staging), full_check=True)
        os.replace(staging, final)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    print(f"wrote {final} ({final.stat().st_size / 1e6:.1f} MB, opset {opset}, {size_px} px, dynamic batch) in {time.perf_counter() - start:.1f} s; onnx.checker passed")
    try:
        # signed with this user's key: the engines use a model.onnx only when its manifest vouches
        # for it, so it is signed before the check below can run it through the engine
        write_beside_manifest(final, with_weights_digest(model_dir, card), size_px)
        verify_onnx(model, card, model_dir, size_px, atol=atol)
    except BaseException:
        final.unlink(missing_ok=True)  # never leave a graph that failed verification where auto finds it
        manifest_path(final).unlink(missing_ok=True)
        raise
    print(f"wrote {manifest_path(final)} (sha256 of the verified graph and of the weights, signed)")
    return final


def export_tensorrt(model: FusedI3D, card: ModelCard, model_dir: Path, size_px: int, batches: list[int], fp32: bool) -> list[Path]:
    """Build (or find cached) TensorRT engines and compare them with PyTorch. UNVERIFIED: no TensorRT here."""
    paths = []
    for batch in batches:
        config = EngineConfig(kind=KIND_TENSORRT, half=not fp32, batch_size=batch, input_size_px=size_px)
        with TensorRTEngine(model_dir, config) as engine:
            rgb, flow = _probe_clips(card, size_px, batch)
            got = engine.predict_all(rgb.numpy(), flow.numpy())
            diffs = _max_diffs((got.fused, got.rgb, got.flow), _reference(model, rgb, flow))
            limit = FP32_ATOL * 10 if fp32 else HALF_ATOL  # TF32 tactics may be chosen even for FP32
            print(f"TensorRT engine {engine.cache_path} (batch {batch}): max abs diff vs PyTorch {max(diffs):.2e} (limit {limit:.0e})")
            if not max(diffs) <= limit:
                raise UserError(f"{engine.cache_path}: TensorRT differs from PyTorch by {max(diffs):.2e}; delete it and try --fp32")
            paths.append(engine.cache_path)
    return paths


def _tensorrt_possible() -> tuple[bool, str]:
    import importlib.util

    if importlib.util.find_spec("torch_tensorrt") is None:
        return False, "torch-tensorrt is not installed: pip install swim-stream[tensorrt] (on a machine with a CUDA GPU)"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible"
    return True, ""


def _batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated batch sizes, e.g. 1,8") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be >= 1")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="export-model", description=__doc__.splitlines()[0])
    add_version_argument(parser)
    parser.add_argument("model_dir", type=Path, help="trained model directory (card.json + model.safetensors)")
    parser.add_argument("--size", type=int, default=None, help="input size in px the graphs are built for (default: the card's)")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET})")
    parser.add_argument("--atol", type=float, default=FP32_ATOL, help=f"max abs difference onnxruntime vs PyTorch (default {FP32_ATOL:.0e})")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX graph")
    parser.add_argument(
        "--tensorrt",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="build TensorRT engines (default: when torch-tensorrt and a CUDA GPU are present)",
    )
    parser.add_argument("--fp32", action="store_true", help="TensorRT in FP32 instead of FP16")
    parser.add_argument("--batch", type=_batches, default=[1], help="TensorRT batch sizes to build, comma-separated (default 1)")
    parser.add_argument("--check", action="store_true", help="verify the artefacts already in MODEL_DIR; write nothing")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


@cli_main("export-model")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model_dir: Path = args.model_dir
    model, card = load_model(model_dir, device="cpu")  # checks sha256 and classes vs weights
    size_px = args.size or card.input_size_px
    if size_px < 32:
        raise UserError(f"--size {size_px}: must be at least 32 px (I3D downsamples by 32)")
    if args.opset < ONNX_OPSET:
        raise UserError(f"--opset {args.opset}: need {ONNX_OPSET} or newer")

    if args.check:
        onnx_path = model_dir / ONNX_FILENAME
        if not onnx_path.is_file():
            raise UserError(f"{onnx_path}: not found; run `export-model {model_dir}` to write it")
        import onnx

        problem = beside_onnx_problem(onnx_path, with_weights_digest(model_dir, card).weights_sha256)
        if problem is not None:
            raise UserError(f"{onnx_path}: {problem}; run `export-model {model_dir}` to re-write it")
        try:
            onnx.checker.check_model(str(onnx_path), full_check=True)
        except Exception as exc:  # onnx raises ValidationError, DecodeError, ...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"{onnx_path}: not a valid ONNX model ({first[:160]}); run `export-model {model_dir}` to re-write it") from None
        verify_onnx(model, card, model_dir, size_px, atol=args.atol)
        print(f"{onnx_path}: OK")
        return 0

    if args.onnx:
        export_onnx(model, card, model_dir, size_px, args.opset, args.atol)
    possible, why_not = _tensorrt_possible()
    if args.tensorrt is True and not possible:
        if "not installed" in why_not:
            raise UserError(f"--tensorrt: {why_not}")
        raise UserError(f"--tensorrt: {why_not}; TensorRT engines are built on the GPU that runs them")
    if args.tensorrt is None and not possible:
        print(f"TensorRT engine skipped: {why_not}", file=sys.stderr)
    elif args.tensorrt is not False:
        export_tensorrt(model, card, model_dir, size_px, args.batch, args.fp32)
    return 0
