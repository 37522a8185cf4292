"""``stream-bench flow``: our TV-L1 against OpenCV's DualTVL1 on the same frames, in one run.

For each flow setting and frame size, OpenCV runs the frame pairs one after the other (it has
no batch form), then our ``TVL1`` runs them in batches of each requested size on each device.
Printed per row: frame pairs per second, the ratio to OpenCV's frame pairs per second measured
in the same run with the same setting and thread count, and two accuracy figures, both mean
endpoint errors in pixels over the pairs:

* ``epe_vs_cv``: ours vs OpenCV with the same setting (does our implementation match?);
* ``epe_vs_cv_default``: this row's flow vs OpenCV with its defaults, the flow the model was
  trained on (what a cheaper setting costs; "equal accuracy" = rows with the same setting).

Threads: OpenCV runs on its own thread count; ours on ``TVL1``'s ``cpu_threads`` (1 by default,
why: ``stream.flow``). ``--threads N`` sets both to N. Both are printed in the header.

Frames: consecutive pairs (centre square crop, grey, resized) from ``--video``, else from the
video named by the environment variable ``SWIM_STREAM_BENCH_VIDEO`` (the project's measurements
used the real top-view recording ``openfield_m3v1.mp4``), else a synthetic textured image shifted by
a sub-pixel amount; the header line says which. Nothing is looked up outside the package: an
installed copy or a fresh clone has no video beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import torch

from stream.bench.arguments import int_list
from stream.errors import UserError
from stream.flow import TVL1, FlowConfig

__all__ = ["add_arguments", "run", "SETTINGS", "VIDEO_ENV"]

VIDEO_ENV = "SWIM_STREAM_BENCH_VIDEO"  # a video to benchmark on when --video is not given
VIDEO_START_FRAME = 300  # skip the first seconds: the mouse is placed in the arena then
SYNTHETIC_SHIFT_PX = (0.6, -0.35)  # sub-pixel, like most frame-to-frame motion at 15-30 fps

SETTINGS: dict[str, FlowConfig] = {
    "default": FlowConfig(),  # OpenCV's defaults and early stopping: what the model was trained on
    "default-fixed": FlowConfig(fixed_iterations=True),  # same, no early stopping (graph/compile form)
    "fast": FlowConfig.fast(),  # 3 scales, 1 warp, 10 iterations, fixed: the live candidate
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="112,224", help="square frame sides in px, comma-separated (default 112,224)")
    parser.add_argument("--batches", default="1,8", help="pairs per TVL1 call, comma-separated (default 1,8)")
    parser.add_argument("--settings", default="default,fast",
                        help=f"flow settings, comma-separated, from {','.join(SETTINGS)} (default default,fast)")
    parser.add_argument("--devices", default="auto", help="cpu, cuda or auto (cpu, plus cuda when present)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row, best kept (default 3)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for OpenCV and for our TV-L1 (default: OpenCV as is, ours 1)")
    parser.add_argument("--video", type=Path, default=None,
                        help=f"video to take frame pairs from (default: ${VIDEO_ENV} when set, else synthetic frames)")
    parser.add_argument("--synthetic", action="store_true", help=f"use synthetic frames even if ${VIDEO_ENV} is set")


def _video_pairs(path: Path, count: int, size_px: int) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise UserError(f"{path}: cannot open the video; pass --synthetic or another --video")
    cap.set(cv2.CAP_PROP_POS_FRAMES, VIDEO_START_FRAME)
    frames = []
    while len(frames) < count + 1:
        ok, frame = cap.read()
        if not ok:
            break
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        h, w = grey.shape
        side = min(h, w)
        square = grey[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
        frames.append(cv2.resize(square, (size_px, size_px), interpolation=cv2.INTER_AREA))
    cap.release()
    if len(frames) < count + 1:
        raise UserError(f"{path}: fewer than {count + 1} frames after frame {VIDEO_START_FRAME}")
    stack = np.stack(frames)
    return stack[:-1], stack[1:]


def _synthetic_pairs(count: int, size_px: int) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    rng = np.random.default_rng(0)
    prev, nxt = [], []
    ys, xs = np.mgrid[0:size_px, 0:size_px].astype(np.float32)
    for _ in range(count):
        coarse = rng.random((size_px // 8 + 2, size_px // 8 + 2)).astype(np.float32)
        img = cv2.resize(coarse, (size_px, size_px), interpolation=cv2.INTER_CUBIC)
        img = cv2.GaussianBlur(img + 0.2 * rng.random(img.shape).astype(np.float32), (0, 0), 1.0)
        img = (img - img.min()) / (img.max() - img.min()) * 255
        moved = cv2.remap(img, xs - SYNTHETIC_SHIFT_PX[0], ys - SYNTHETIC_SHIFT_PX[1], cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REFLECT)
        prev.append(img.astype(np.uint8))
        nxt.append(np.clip(moved, 0, 255).astype(np.uint8))
    return np.stack(prev), np.stack(nxt)


def _epe(a: np.ndarray, b: np.ndarray) -> float:
    """Mean endpoint error (px) between two (N, H, W, 2) flows."""
    return float(np.sqrt(((a - b) ** 2).sum(axis=-1)).mean())


def _opencv(config: FlowConfig, prev: np.ndarray, nxt: np.ndarray, repeats: int) -> tuple[float, np.ndarray]:
    """Best seconds per pair and the (N,H,W,2) flows of OpenCV's DualTVL1 on the pairs."""
    algo = config.to_opencv()
    best = float("inf")
    flows = []
    for _ in range(repeats):
        start = time.perf_counter()
        flows = [algo.calc(a, b, None) for a, b in zip(prev, nxt)]
        best = min(best, (time.perf_counter() - start) / len(prev))
    return best, np.stack(flows)


def _ours(config: FlowConfig, device: str, prev: np.ndarray, nxt: np.ndarray, batch: int,
          repeats: int, cuda_graphs: bool = True, cpu_threads: int = 1) -> tuple[float, np.ndarray, int]:
    """Best seconds per pair, (N,H,W,2) flows and iterations of the last call of our TVL1."""
    tvl1 = TVL1(config, device=device, cuda_graphs=cuda_graphs, cpu_threads=cpu_threads)
    prev_t = torch.from_numpy(prev).to(device)
    nxt_t = torch.from_numpy(nxt).to(device)
    starts = list(range(0, len(prev) - batch + 1, batch))
    tvl1(prev_t[:batch], nxt_t[:batch])  # warm-up: allocator, resize matrices, CUDA kernels
    best = float("inf")
    flows: list[torch.Tensor] = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        flows = [tvl1(prev_t[i : i + batch], nxt_t[i : i + batch]) for i in starts]
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / (len(starts) * batch))
    out = torch.cat(flows).permute(0, 2, 3, 1).cpu().numpy()
    return best, out, tvl1.last_iterations


def run(args: argparse.Namespace) -> int:
    sizes = int_list(args.sizes, "--sizes", minimum=16, example="112,224")
    batches = int_list(args.batches, "--batches", example="1,8")
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown or not settings:
        raise UserError(f"--settings {args.settings!r}: choose from {','.join(SETTINGS)}")
    if args.devices == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    elif args.devices in ("cpu", "cuda"):
        devices = [args.devices]
        if args.devices == "cuda" and not torch.cuda.is_available():
            raise UserError("--devices cuda: no CUDA device visible to torch; use --devices cpu")
    else:
        raise UserError(f"--devices {args.devices!r}: expected cpu, cuda or auto")
    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats}: expected >= 1")
    import cv2

    if args.threads < 0:
        raise UserError(f"--threads {args.threads}: expected >= 1 (or 0: the defaults)")
    saved_threads = cv2.getNumThreads()  # ours: TVL1 sets and restores torch's threads itself
    if args.threads > 0:
        cv2.setNumThreads(args.threads)
    try:
        _measure(args, sizes, batches, settings, devices)
    finally:  # callers in the same process (tests) keep their thread settings
        cv2.setNumThreads(saved_threads)
    return 0


def _frame_source(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The video to read (None: synthetic frames) and how the header names the frames' source."""
    synthetic = "synthetic shifted texture"
    if args.synthetic:
        return None, f"{synthetic} (--synthetic)"
    if args.video is not None:
        return args.video, f"{args.video.name} frames {VIDEO_START_FRAME}.."
    from_env = os.environ.get(VIDEO_ENV, "").strip()
    if from_env:
        return Path(from_env), f"{Path(from_env).name} frames {VIDEO_START_FRAME}.. (${VIDEO_ENV})"
    return None, f"{synthetic} (no --video and ${VIDEO_ENV} unset: the figures are not from a real recording)"


def _measure(args: argparse.Namespace, sizes: list[int], batches: list[int], settings: list[str],
             devices: list[str]) -> None:
    import cv2

    pairs = max(batches)
    ours_threads = args.threads if args.threads > 0 else 1
    video, source = _frame_source(args)
    print(f"stream-bench flow: {pairs} frame pairs from {source}; torch {torch.__version__} "
          f"(ours on the CPU: {ours_threads} thread{'s' if ours_threads > 1 else ''}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
          f"OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads); best of {args.repeats}")
    has_cv = hasattr(cv2, "optflow")
    if not has_cv:
        print("OpenCV here has no contrib optflow module (pip install opencv-contrib-python-headless): "
              "no OpenCV rows, ratios or errors")
    header = (f"{'setting':<14}{'size':>5}{'impl':>18}{'batch':>6}{'pairs/s':>10}{'ms/call':>9}{'x cv':>7}"
              f"{'epe_vs_cv':>10}{'epe_vs_cv_default':>18}{'iters':>7}")
    print(header)
    for size in sizes:
        prev, nxt = _video_pairs(video, pairs, size) if video is not None else _synthetic_pairs(pairs, size)
        reference = None
        for name in settings:
            config = SETTINGS[name]
            cv_s, cv_flow = float("nan"), None
            if has_cv:
                cv_s, cv_flow = _opencv(config, prev, nxt, args.repeats)
                if name == "default":
                    reference = cv_flow
                elif reference is None:
                    reference = _opencv(SETTINGS["default"], prev, nxt, 1)[1]
                print(f"{name:<14}{size:>5}{'opencv':>18}{1:>6}{1 / cv_s:>10.1f}{cv_s * 1e3:>9.2f}{1.0:>7.2f}"
                      f"{0.0:>10.3f}{_epe(cv_flow, reference):>18.3f}{'':>7}")
            variants = [(d, True) for d in devices]
            if "cuda" in devices:  # what the CUDA graphs buy, in the same run
                variants.append(("cuda", False))
            for device, graphs in variants:
                impl = f"ours-{device}" + ("" if graphs else "-no-graph")
                for batch in batches:
                    s, flow, iters = _ours(config, device, prev, nxt, batch, args.repeats, cuda_graphs=graphs,
                                            cpu_threads=ours_threads)
                    if cv_flow is not None and reference is not None:
                        errors = (f"{cv_s / s:>7.2f}{_epe(flow, cv_flow[: len(flow)]):>10.3f}"
                                  f"{_epe(flow, reference[: len(flow)]):>18.3f}")
                    else:
                        errors = f"{'-':>7}{'-':>10}{'-':>18}"
                    print(f"{name:<14}{size:>5}{impl:>18}{batch:>6}{1 / s:>10.1f}{s * batch * 1e3:>9.2f}{errors}{iters:>7}")
    print("settings: " + "; ".join(f"{n}={dataclasses.asdict(SETTINGS[n])}" for n in settings))
