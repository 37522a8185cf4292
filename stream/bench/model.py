"""``stream-bench model``: the fused I3D on every available backend against eager PyTorch.

For each input size and batch size, every backend is timed in PAIRS with eager PyTorch (the
reference): eager, backend, backend, eager, eager, backend, ... so that load from other processes
on a shared machine hits both sides of a pair alike. The reported speed-up is the median of the
per-pair ratios; latencies and clips/s are medians over all timed runs of that backend.

Speed does not depend on the weights, so without ``--model`` a randomly initialised model with
``--classes`` classes is used. For each size the model is saved to a temporary directory with a
card for that size and exported to ONNX there (the onnxruntime graph is built for one size).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stream.engine import KIND_ONNXRUNTIME, KIND_TENSORRT, KIND_TORCH, Engine, EngineConfig, open_engine, write_onnx
from stream.engine.onnx_cache import write_beside_manifest
from stream.errors import UserError
from stream.flow import FlowConfig
from stream.model import FusedI3D
from stream.modelfile import ModelCard, load_model, save_model
from stream.preprocess import DEFAULT_MODEL_FPS

__all__ = ["add_arguments", "run", "VARIANTS", "BenchResult", "paired_times"]

log = logging.getLogger(__name__)

REFERENCE = "torch-eager"
# name -> (EngineConfig fields, when it is available by default). Eager is plain FP32 PyTorch:
# no freezing, no half precision, no CUDA graphs; every ratio is against it.
VARIANTS: dict[str, dict[str, object]] = {
    "torch-eager": {"kind": KIND_TORCH, "optimize": False, "half": False, "cuda_graphs": False, "channels_last": False},
    "torch": {"kind": KIND_TORCH},  # CPU: TorchScript-frozen FP32; CUDA: FP16, channels-last, CUDA graphs
    "torch-compile": {"kind": KIND_TORCH, "compile": True},
    "onnxruntime": {"kind": KIND_ONNXRUNTIME},
    "tensorrt": {"kind": KIND_TENSORRT},
}
# torch.compile takes minutes per shape on 2 CPU cores, so it only runs by default on a GPU.
DEFAULT_CPU = ("torch-eager", "torch", "onnxruntime")
DEFAULT_CUDA = ("torch-eager", "torch", "torch-compile", "onnxruntime", "tensorrt")
MIN_REPEATS = 1


@dataclass(frozen=True)
class BenchResult:
    size_px: int
    batch: int
    backend: str  # the variant asked for
    engine: str  # the engine's own name, e.g. torch-cpu-frozen
    median_ms: float
    clips_per_s: float
    ratio_to_eager: float  # median of paired eager/backend time ratios; 1.0 for the reference


def _csv_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: values must be >= 1")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: random weights; speed does not depend on them)")
    parser.add_argument("--classes", type=int, default=3, help="classes of the random model (default 3)")
    parser.add_argument(
        "--backends",
        default="auto",
        help=f"comma-separated subset of {','.join(VARIANTS)} (default: those present; {REFERENCE} always runs as the reference)",
    )
    parser.add_argument("--batch", type=_csv_ints, default=[1, 8], help="batch sizes (default 1,8)")
    parser.add_argument("--size", type=_csv_ints, default=[112, 224], help="input sizes in px (default 112,224)")
    parser.add_argument("--repeats", type=int, default=6, help="timed pairs per backend and setting (default 6)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when present")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this file")


def _choose_variants(text: str, cuda: bool) -> list[str]:
    import importlib.util

    if text == "auto":
        names = list(DEFAULT_CUDA if cuda else DEFAULT_CPU)
        present = {
            "onnxruntime": importlib.util.find_spec("onnxruntime") is not None,
            "tensorrt": cuda and importlib.util.find_spec("torch_tensorrt") is not None,
        }
        names = [n for n in names if present.get(n, True)]
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            raise UserError(f"--backends {text}: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return [REFERENCE] + [n for n in names if n != REFERENCE]


def paired_times(
    reference: Callable[[], object], candidate: Callable[[], object], repeats: int
) -> tuple[list[float], list[float]]:
    """Time ``reference`` and ``candidate`` alternately (ABBA order); seconds per call for each."""
    ref_s: list[float] = []
    cand_s: list[float] = []
    for i in range(repeats):
        order = ((reference, ref_s), (candidate, cand_s))
        for fn, sink in order if i % 2 == 0 else reversed(order):
            start = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - start)
    return ref_s, cand_s


def _prepare_model_dir(root: Path, model: FusedI3D, card: ModelCard, size_px: int, need_onnx: bool) -> Path:
    directory = root / f"{size_px}px"
    sized = dataclasses.replace(card, input_size_px=size_px, weights_sha256="", created_utc="")
    save_model(model, sized, directory)
    if need_onnx:
        start = time.perf_counter()
        write_onnx(model, directory / "model.onnx", card=sized)
        write_beside_manifest(directory / "model.onnx", sized, size_px)  # signed: else the engine re-exports it
        log.info("exported %s px ONNX in %.1f s", size_px, time.perf_counter() - start)
    return directory


def _clips(card: ModelCard, batch: int, size_px: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    t = card.clip_frames
    return (
        rng.uniform(-1, 1, (batch, 3, t, size_px, size_px)).astype(np.float32),
        rng.uniform(-1, 1, (batch, 2, t, size_px, size_px)).astype(np.float32),
    )


def _open(name: str, model_dir: Path, device: str, threads: int | None, batch: int) -> Engine | None:
    fields = dict(VARIANTS[name])
    fixed = fields.get("kind") == KIND_TENSORRT or (device == "cuda" and fields.get("cuda_graphs", True))
    config = EngineConfig(device=device, threads=threads, batch_size=batch if fixed else None, **fields)  # type: ignore[arg-type]
    try:
        return open_engine(model_dir, config)
    except UserError as exc:
        if name == REFERENCE:
            raise
        log.warning("skipping %s: %s", name, exc)
        return None


def run(args: argparse.Namespace) -> int:
    if args.repeats < MIN_REPEATS:
        raise UserError(f"--repeats {args.repeats}: must be at least {MIN_REPEATS}")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU visible to PyTorch; use --device cpu")
    device = "cuda" if cuda else "cpu"
    names = _choose_variants(args.backends, cuda)
    if args.model is not None:
        model, card = load_model(args.model, device="cpu")
    else:
        torch.manual_seed(0)
        model = FusedI3D(num_classes=args.classes)
        card = ModelCard(
            name="bench-random", view="side", classes=[f"c{i}" for i in range(args.classes)], immobile_classes=[],
            input_size_px=min(args.size), fps=DEFAULT_MODEL_FPS, flow=dataclasses.asdict(FlowConfig()), flow_weight=0.5, init="random (benchmark only)",
        )  # fmt: skip
    print(f"stream-bench model: device {device} ({torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} torch threads'}), "
          f"backends {', '.join(names)}, {args.repeats} pairs each, reference {REFERENCE}")  # fmt: skip
    header = f"{'size':>5} {'batch':>5}  {'backend':<14} {'engine':<26} {'median ms':>10} {'clips/s':>9} {'x eager':>8}"
    print(header)
    results: list[BenchResult] = []
    with tempfile.TemporaryDirectory(prefix="stream-bench-model-") as tmp:
        for size_px in args.size:
            model_dir = _prepare_model_dir(Path(tmp), model, card, size_px, "onnxruntime" in names)
            for batch in args.batch:
                rgb, flow = _clips(card, batch, size_px)
                engines = {name: _open(name, model_dir, device, args.threads, batch) for name in names}
                ref = engines[REFERENCE]
                assert ref is not None
                for engine in engines.values():
                    if engine is not None:
                        engine.warmup(batch)
                ref_all: list[float] = []
                rows: list[tuple[str, Engine, list[float], float]] = []
                for name in names[1:]:
                    engine = engines[name]
                    if engine is None:
                        continue
                    log.info("timing %s vs %s at %d px, batch %d: %d pairs", engine.name, ref.name, size_px, batch, args.repeats)
                    ref_s, cand_s = paired_times(lambda: ref.predict(rgb, flow), lambda e=engine: e.predict(rgb, flow), args.repeats)
                    ref_all += ref_s
                    ratio = statistics.median(r / c for r, c in zip(ref_s, cand_s))
                    rows.append((name, engine, cand_s, ratio))
                if not ref_all:  # only the reference asked for
                    ref_all = [_time(lambda: ref.predict(rgb, flow)) for _ in range(args.repeats)]
                rows.insert(0, (REFERENCE, ref, ref_all, 1.0))
                for name, engine, times, ratio in rows:
                    median_s = statistics.median(times)
                    result = BenchResult(size_px, batch, name, engine.name, median_s * 1e3, batch / median_s, ratio)
                    results.append(result)
                    print(f"{size_px:>5} {batch:>5}  {name:<14} {engine.name:<26} {result.median_ms:>10.1f} {result.clips_per_s:>9.2f} {ratio:>7.2f}x", flush=True)
                for engine in engines.values():
                    if engine is not None:
                        engine.close()
    if args.json is not None:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
