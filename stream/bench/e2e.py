"""``stream-bench e2e``: the whole pipeline, decode to decision, for 1 and 4 arenas.

For each arena count it measures, on a generated video decoded by the real capture thread:

* throughput: frames/s with the file read as fast as possible (offline mode, nothing dropped);
  every frame carries all arenas, so arena-frames/s = frames/s x arenas;
* capture-to-decision latency: the same video paced at the model's frame rate (a camera), from
  the moment a frame is read to the moment its decision is emitted. It contains the 7-frame
  look-ahead (7 / fps) by construction; the processing part is reported separately.

References measured in the same run: real time (the model's fps) and the engine alone on the same
batch (model-only frames/s at that stride), so the ratios say how far from real time the pipeline
is and how much flow, decode and bookkeeping cost on top of the model.

Targets (issue 7): GPU >= 120 frames/s per arena at 224 px with 4 arenas; CPU real time for one
arena at 112 px and 15 fps with ``--stride 4``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from stream.arenas import Arena
from stream.errors import UserError
from stream.preprocess import DEFAULT_MODEL_FPS, Roi

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)

VIDEO_SIZE = (640, 480)  # a typical acquisition camera; arenas tile it
DEFAULT_FRAMES = 96  # ~6 s of video at 15 fps: 16-frame warm-up of the ring plus a steady stretch
DEFAULT_LATENCY_FRAMES = 60  # 4 s paced at 15 fps
MODEL_ONLY_REPEATS = 3  # engine-only reference: a few batches are enough, it is steady
MIN_REFERENCE_S = 0.5  # and at least this long, so a fast GPU batch is not timed once
BENCH_QUEUE_FRAMES = 256  # a file read ahead this far never waits on the disk while the pipeline is timed


DEFAULT_RANDOM_SIZE_PX = 112  # the input size the issue sets the CPU real-time target at

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None,
                        help="model directory (default: the bundled model; random weights if --size-px is given or it is absent)")
    parser.add_argument("--size-px", type=int, default=None,
                        help=f"measure a random-weight model of this input size instead of the bundled one (default without a bundled model: {DEFAULT_RANDOM_SIZE_PX})")
    parser.add_argument("--engine", default="auto",
                        help="engine kind, or several comma-separated to compare in one run, e.g. streaming,auto "
                             "(kinds: auto, torch, onnxruntime, tensorrt, streaming, streaming-torch: the streaming step in PyTorch, "
                             "the reference for streaming's onnxruntime step)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N")
    parser.add_argument("--arenas", default="1,4", help="comma-separated arena counts")
    parser.add_argument("--stride", type=int, default=1, help="model on every k-th frame (as stream-run --stride)")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="frames in the throughput run")
    parser.add_argument("--latency-frames", type=int, default=DEFAULT_LATENCY_FRAMES,
                        help="frames in the paced latency run (0: skip it)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")


def _random_model(directory: Path, size_px: int) -> Path:
    import torch

    from stream.flow import FlowConfig
    from stream.model import FusedI3D
    from stream.modelfile import ModelCard, save_model

    torch.manual_seed(0)
    card = ModelCard(name=f"random-{size_px}", view="side", classes=["swim", "struggle", "float"],
                     immobile_classes=["float"], input_size_px=size_px, fps=DEFAULT_MODEL_FPS, flow=asdict(FlowConfig.fast()),
                     flow_weight=0.5, init="random", training={"note": "random weights: for speed measurements only"})
    save_model(FusedI3D(num_classes=3), card, directory / card.name)
    return directory / card.name


def _write_video(path: Path, frames: int, fps: float, arenas: int) -> list[Arena]:
    """Grey background, a moving blob per arena, a little noise: flow has something to track."""
    w, h = VIDEO_SIZE
    cols = int(np.ceil(np.sqrt(arenas)))
    rows = int(np.ceil(arenas / cols))
    aw, ah = w // cols, h // rows
    rois = [Roi((i % cols) * aw, (i // cols) * ah, aw, ah) for i in range(arenas)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise UserError(f"cannot write the benchmark video {path}")
    rng = np.random.default_rng(0)
    for t in range(frames):
        img = np.full((h, w, 3), 90, np.uint8)
        for i, r in enumerate(rois):
            cx = r.x + r.w // 2 + int(r.w / 4 * np.sin(t / (6 + i)))
            cy = r.y + r.h // 2 + int(r.h / 5 * np.cos(t / (9 + i)))
            cv2.ellipse(img, (cx, cy), (r.w // 10, r.h // 16), t * 3 % 180, 0, 360, (220, 220, 220), -1)
        img = cv2.add(img, rng.integers(0, 12, img.shape, dtype=np.uint8))
        writer.write(img)
    writer.release()
    return [Arena(f"A{i + 1}", r) for i, r in enumerate(rois)]


def _pipeline_pass(engine, card, arenas: list[Arena], video: Path, stride: int, *, realtime: bool,
                   max_frames: int | None, outputs: tuple = ()):
    """One pass of the live path (``stream.runner.run_video``) with decisions as plain as they come."""
    from stream.run_config import RunConfig
    from stream.runner import run_video

    config = RunConfig.make(source={"videos": (str(video),), "realtime": realtime, "max_frames": max_frames,
                                    "queue_frames": BENCH_QUEUE_FRAMES},
                            model={"stride": stride},
                            decisions={"smoothing": "none", "min_bout_s": 0.0},
                            outputs={"zmq": None, "metrics_port": 0, "quiet": True})
    return run_video(config, card, engine, arenas, outputs=outputs)


def _model_only_fps(engine, n_arenas: int, stride: int) -> float:
    """Frames/s if the model were the only cost: one batch of all arenas per ``stride`` frames
    (a step-wise engine: one step of all arenas per frame, whatever the stride)."""
    s, t = engine.input_size_px, 16
    rng = np.random.default_rng(0)
    if engine.stepwise:
        stream = engine.open_stream(n_arenas)
        rgb = rng.uniform(-1, 1, (n_arenas, 3, s, s)).astype(np.float32)
        flow = rng.uniform(-0.1, 0.1, (n_arenas, 2, s, s)).astype(np.float32)
        stream.push(rgb, flow)  # the first push also steps the 8 repeats of a segment start
        return _calls_per_s(lambda: stream.push(rgb, flow))
    rgb = rng.uniform(-1, 1, (n_arenas, 3, t, s, s)).astype(np.float32)
    flow = rng.uniform(-0.1, 0.1, (n_arenas, 2, t, s, s)).astype(np.float32)
    engine.predict(rgb, flow)
    return stride * _calls_per_s(lambda: engine.predict(rgb, flow))


def _calls_per_s(call: Callable[[], object]) -> float:
    """Calls a second of ``call``: at least MODEL_ONLY_REPEATS calls and MIN_REFERENCE_S, at most 50 calls."""
    runs, start = 0, time.perf_counter()
    while runs < MODEL_ONLY_REPEATS or time.perf_counter() - start < MIN_REFERENCE_S:
        call()
        runs += 1
        if runs >= 50:
            break
    return runs / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> int:
    from stream.capture import quiet_opencv_logging
    from stream.engine import build_engine
    from stream.modelfile import load_card
    from stream.pipeline import look_ahead_s
    from stream.runner import default_model_dir

    quiet_opencv_logging()
    try:
        counts = sorted({int(x) for x in str(args.arenas).split(",") if x.strip()})
    except ValueError as exc:
        raise UserError(f"--arenas {args.arenas}: expected comma-separated integers like 1,4") from exc
    if not counts or min(counts) < 1:
        raise UserError(f"--arenas {args.arenas}: counts must be >= 1")
    from stream.engine import ENGINE_KINDS

    kinds = [k.strip() for k in str(args.engine).split(",") if k.strip()]
    unknown = [k for k in kinds if k not in ENGINE_KINDS]
    if not kinds or unknown:
        raise UserError(f"--engine {args.engine}: choose from {', '.join(ENGINE_KINDS)} (comma-separated to compare)")
    if args.stride < 1 or args.frames < 24 or args.latency_frames < 0:
        raise UserError("--stride must be >= 1, --frames >= 24 (16-frame clips + look-ahead), --latency-frames >= 0")
    with tempfile.TemporaryDirectory(prefix="stream-bench-e2e-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = args.model
        random_weights = False
        if model_dir is None:
            model_dir = default_model_dir()
            if args.size_px is not None or not model_dir.is_dir():
                # speed does not depend on the weights: a random model measures any input size
                model_dir = _random_model(tmp, args.size_px or DEFAULT_RANDOM_SIZE_PX)
                random_weights = True
        card = load_card(model_dir)
        rows = []
        for kind, n in ((k, n) for k in kinds for n in counts):
            arenas_frames = max(args.frames, args.latency_frames)
            video = tmp / f"bench-{n}.mp4"
            arenas = _write_video(video, arenas_frames, card.fps, n)
            engine = build_engine(kind, model_dir, device=args.device, batch_size=n)
            try:
                engine.warmup(n)
                result, stats = _pipeline_pass(engine, card, arenas, video, args.stride, realtime=False,
                                               max_frames=args.frames)
                reference = _model_only_fps(engine, n, args.stride)
                row = {
                    "arenas": n,
                    "engine": engine.name,
                    "device": str(engine.device),
                    "input_size_px": engine.input_size_px,
                    "stride": args.stride,
                    "frames": result.frames_processed,
                    "frames_per_s": round(result.fps, 2),
                    "arena_frames_per_s": round(result.fps * n, 2),
                    "x_realtime": round(result.fps / card.fps, 3),
                    "model_only_frames_per_s": round(reference, 2),
                    "vs_model_only": round(result.fps / reference, 3) if reference else None,
                    "flow_s_per_frame": round(result.flow_s / max(1, result.frames_processed), 5),
                    "model_s_per_call": round(result.model_s / max(1, result.model_calls), 5),
                    # where the time goes (profile): shares of the pipeline's wall time
                    "flow_share": round(result.flow_s / result.wall_s, 3) if result.wall_s else None,
                    "model_share": round(result.model_s / result.wall_s, 3) if result.wall_s else None,
                }
                if args.latency_frames:
                    paced, pstats = _pipeline_pass(engine, card, arenas, video, args.stride, realtime=True,
                                                   max_frames=args.latency_frames)
                    lat = paced.latency_percentiles_s()
                    ahead = look_ahead_s(card.fps)
                    row.update({
                        "latency_p50_s": _r(lat["p50"]),
                        "latency_p95_s": _r(lat["p95"]),
                        "look_ahead_s": round(ahead, 4),
                        "processing_p50_s": _r(None if lat["p50"] is None else lat["p50"] - ahead),
                        "paced_dropped": pstats.dropped_queue_full + paced.frames_missing,
                    })
                rows.append(row)
            finally:
                engine.close()
        report = {"model": card.name, "random_weights": random_weights, "model_fps": card.fps,
                  "video": f"{VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} mp4v", "results": rows,
                  "realtime": realtime_summary(rows)}
    _print(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def realtime_summary(rows: list[dict]) -> list[dict]:
    """Per engine (and device): the largest arena count measured that kept real time, and the arenas'
    worth of real time its best throughput holds (arena-frames/s over the model's fps)."""
    out: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["engine"], r["device"])
        entry = out.setdefault(key, {"engine": r["engine"], "device": r["device"], "stride": r["stride"],
                                     "largest_realtime_arenas": 0, "realtime_capacity_arenas": 0.0})
        if r["x_realtime"] >= 1.0:
            entry["largest_realtime_arenas"] = max(entry["largest_realtime_arenas"], r["arenas"])
        entry["realtime_capacity_arenas"] = max(entry["realtime_capacity_arenas"],
                                                round(r["x_realtime"] * r["arenas"], 2))
    return list(out.values())


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _print(report: dict) -> None:
    print(f"stream-bench e2e: model {report['model']}{' (random weights)' if report['random_weights'] else ''}, "
          f"{report['model_fps']:g} fps, video {report['video']}")
    head = ["arenas", "engine", "size", "stride", "frames/s", "x realtime", "model-only f/s", "vs model",
            "latency p50", "p95", "of which look-ahead", "dropped (paced)"]
    lines = []
    for r in report["results"]:
        lines.append([str(r["arenas"]), f"{r['engine']}/{r['device']}", str(r["input_size_px"]), str(r["stride"]),
                      f"{r['frames_per_s']:.1f}", f"{r['x_realtime']:.2f}", f"{r['model_only_frames_per_s']:.1f}",
                      f"{r['vs_model_only']:.2f}" if r["vs_model_only"] is not None else "-",
                      _s(r.get("latency_p50_s")), _s(r.get("latency_p95_s")), _s(r.get("look_ahead_s")),
                      str(r.get("paced_dropped", "-"))])
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    fmt = "  ".join("{:>%d}" % w for w in widths)
    print(fmt.format(*head))
    for x in lines:
        print(fmt.format(*x))
    for r in report["results"]:
        print(f"  {r['arenas']} arena(s) {r['engine']}: flow {100 * (r['flow_share'] or 0):.0f} % and model "
              f"{100 * (r['model_share'] or 0):.0f} % of the wall time")
    for e in report.get("realtime", []):
        print(f"real time at stride {e['stride']}: {e['engine']}/{e['device']} kept {e['largest_realtime_arenas']} "
              f"arena(s) of those measured; capacity {e['realtime_capacity_arenas']:.2f} arenas' worth of real time")


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}s"
