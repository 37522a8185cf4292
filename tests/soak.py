"""Soak run of `stream-run`: a long simulated 4-arena test paced like a camera (issue 8).

Not collected by pytest (no ``test_`` prefix): run it by hand or in a nightly job::

    python tests/soak.py                      # 10 min, 4 arenas, tiny untrained model
    python tests/soak.py --duration-s 30      # a quick look
    python tests/soak.py --model trained_models/fst-side-64 --stride 4

It writes a simulated video (2x2 arenas, a blob per arena that swims and floats), runs
``stream-run --video ... --realtime`` on it (frames arrive at the model's fps, like a camera, so
a pipeline that cannot keep up drops frames and says so), samples the process's resident memory
every few seconds and scrapes its Prometheus endpoint, then prints a JSON report: RSS at the first
processed frame and at the end, its growth per minute over the second half, frames captured,
processed and dropped. Exit status 1 when memory grows or frames were dropped (``--strict``), or
when stream-run failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

DEFAULT_DURATION_S = 600.0  # issue 8: a 10-minute run
DEFAULT_ARENAS = 4  # issue 8: 4 arenas, the most a station films with one camera
ARENA_SIZE_PX = 64  # per-arena crop in the simulated picture; the model resizes anyway
MODEL_FPS = 15.0
SAMPLE_EVERY_S = 2.0  # RSS/metrics sampling; fine enough for a minutes-long trend
START_TIMEOUT_S = 900.0  # engine build (TorchScript freeze) can take minutes on a busy CPU
STOP_TIMEOUT_S = 120.0
# Flat memory: after warm-up the RSS may wander by allocator noise, not climb. 5 MB/min would be
# 50 MB over a 10-min test and 2.9 GB over a 10-hour day: clearly a leak.
MAX_RSS_GROWTH_MB_PER_MIN = 5.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_simulated_video(path: Path, *, seconds: float, arenas: int, fps: float) -> list[str]:
    """A grid of arenas, each with a bright blob that alternates swimming and floating."""
    import cv2

    cols = int(np.ceil(np.sqrt(arenas)))
    rows = int(np.ceil(arenas / cols))
    width, height = cols * ARENA_SIZE_PX, rows * ARENA_SIZE_PX
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise SystemExit(f"soak: cannot write {path}")
    rng = np.random.default_rng(0)
    positions = rng.uniform(15, ARENA_SIZE_PX - 15, size=(arenas, 2))
    phase = rng.uniform(0, 20, size=arenas)  # each arena floats at different times
    for i in range(int(seconds * fps)):
        t = i / fps
        frame = np.full((height, width, 3), 50, np.uint8)
        for a in range(arenas):
            floating = ((t + phase[a]) % 20.0) > 12.0  # 12 s swimming, 8 s floating
            if not floating:
                positions[a] += rng.normal(0, 2.0, size=2)
                positions[a] = np.clip(positions[a], 10, ARENA_SIZE_PX - 10)
            x0 = (a % cols) * ARENA_SIZE_PX
            y0 = (a // cols) * ARENA_SIZE_PX
            cx, cy = (positions[a] + (x0, y0)).astype(int)
            cv2.ellipse(frame, (int(cx), int(cy)), (7, 4), (i * 7) % 180 if not floating else 0, 0, 360,
                        (230, 230, 230), -1)
        writer.write(frame)
    writer.release()
    return [f"{(a % cols) * ARENA_SIZE_PX},{(a // cols) * ARENA_SIZE_PX},{ARENA_SIZE_PX},{ARENA_SIZE_PX}"
            for a in range(arenas)]


def tiny_model(directory: Path) -> Path:
    from stream.flow import FlowConfig
    from stream.model import FusedI3D
    from stream.modelfile import ModelCard, save_model

    flow = FlowConfig(nscales=1, warps=1, inner_iterations=5, outer_iterations=1)
    card = ModelCard(name="tiny-soak", view="side", classes=["swim", "struggle", "float"],
                     immobile_classes=["float"], input_size_px=32, fps=MODEL_FPS,
                     flow=dataclasses.asdict(flow), flow_weight=0.5, init="random",
                     training={"note": "untrained soak fixture"})
    return save_model(FusedI3D(num_classes=3), card, directory, half=True)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def scrape(port: int) -> dict[str, float]:
    """Sums of the counters we report, from the live Prometheus endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    # a labelled counter shows no sample until its first increment: no sample means 0
    totals: dict[str, float] = {"swim_stream_frames_dropped_total": 0.0, "swim_stream_capture_gaps_total": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("swim_stream_frames_captured_total", "swim_stream_frames_processed_total",
                               "swim_stream_frames_dropped_total", "swim_stream_capture_gaps_total",
                               "swim_stream_fps"):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares RSS trend over the second half of the run (after warm-up settles)."""
    half = samples[len(samples) // 2:]
    if len(half) < 3:
        return None
    t = np.array([s[0] for s in half]) / 60.0
    rss = np.array([s[1] for s in half])
    return float(np.polyfit(t, rss, 1)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=DEFAULT_DURATION_S)
    parser.add_argument("--arenas", type=int, default=DEFAULT_ARENAS)
    parser.add_argument("--model", type=Path, help="model directory (default: a tiny untrained fixture)")
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="keep outputs in this folder (default: a temp folder)")
    parser.add_argument("--strict", action="store_true", help="exit 1 on dropped frames or memory growth")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="swim-soak-"))
    try:
        video = work / "simulated.mp4"
        rois = write_simulated_video(video, seconds=args.duration_s, arenas=args.arenas, fps=MODEL_FPS)
        model = args.model or tiny_model(work / "model")
        out = args.keep or work / "out"
        port = free_port()
        script = Path(sys.executable).with_name("stream-run")
        command = [str(script)] if script.exists() else [
            sys.executable, "-c", "import sys; from stream.run import main; sys.exit(main())"]
        command += ["--video", str(video), "--realtime", "--model", str(model), "--out", str(out),
                    "--no-zmq", "--metrics-port", str(port), "--stride", str(args.stride), "-q"]
        for roi in rois:
            command += ["--roi", roi]
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        samples: list[tuple[float, float]] = []  # (seconds since the first processed frame, RSS MB)
        first_frame_at = None
        last_metrics: dict[str, float] = {}
        try:
            while process.poll() is None:
                if time.monotonic() - started > START_TIMEOUT_S + args.duration_s * 2:
                    process.send_signal(signal.SIGTERM)
                    break
                metrics = scrape(port)
                rss = rss_mb(process.pid)
                if metrics:
                    last_metrics = metrics
                if first_frame_at is None and metrics.get("swim_stream_frames_processed_total", 0) > 0:
                    first_frame_at = time.monotonic()
                if first_frame_at is not None and rss is not None:
                    samples.append((time.monotonic() - first_frame_at, rss))
                time.sleep(SAMPLE_EVERY_S)
            _, err = process.communicate(timeout=STOP_TIMEOUT_S)
        except BaseException:
            process.kill()
            raise
        summaries = [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.summary.json"))]
        capture = summaries[0]["run"]["capture"] if summaries else {}
        growth = slope_mb_per_min(samples)
        dropped = last_metrics.get("swim_stream_frames_dropped_total")
        first = samples[0][1] if samples else None
        last = samples[-1][1] if samples else None
        report = {
            "duration_s": args.duration_s,
            "arenas": args.arenas,
            "stride": args.stride,
            "exit_code": process.returncode,
            "wall_s": round(time.monotonic() - started, 1),
            "start_up_s": round(first_frame_at - started, 1) if first_frame_at else None,
            "rss_mb_at_first_frame": None if first is None else round(first, 1),
            "rss_mb_at_end": None if last is None else round(last, 1),
            "rss_mb_max": round(max(s[1] for s in samples), 1) if samples else None,
            "rss_growth_mb_per_min_second_half": None if growth is None else round(growth, 2),
            "frames_captured": last_metrics.get("swim_stream_frames_captured_total"),
            "frames_processed": last_metrics.get("swim_stream_frames_processed_total"),
            "frames_dropped_metric": dropped,
            "frames_dropped_queue_full": capture.get("frames_dropped_queue_full"),
            "capture_gaps": last_metrics.get("swim_stream_capture_gaps_total"),
            "fps_last": last_metrics.get("swim_stream_fps"),
            "decisions_per_arena": [s.get("counters", {}).get("frames_classified") for s in summaries],
            "note": "the metrics are the last scrape, up to 2 s before the end",
        }
        print(json.dumps(report, indent=2))
        if process.returncode != 0:
            print(f"soak: stream-run exited {process.returncode}: {err.strip()[-2000:]}", file=sys.stderr)
            return 1
        if args.strict and ((growth or 0.0) > MAX_RSS_GROWTH_MB_PER_MIN or (dropped or 0) > 0
                            or (capture.get("frames_dropped_queue_full") or 0) > 0):
            return 1
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
