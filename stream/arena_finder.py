"""``stream-arenas``: propose the arenas (one ROI per cylinder) from a camera, stream or video.

Typing ``--roi x,y,w,h`` by hand and checking it with a full model run is slow and error-prone. This
grabs a second or two of frames, takes their median (a swimming mouse moves, the cylinders do not,
so the median is the empty rig), finds the cylinders and writes the arena file plus a PNG with each
ROI drawn and labelled, for a person to check at a glance::

    side view: dark, thin, vertical walls -> black-hat (closing - image) with a wide horizontal kernel
               keeps thin dark vertical lines -> column profile -> peaks = walls -> walls in pairs
    top view:  the cylinder's rim is a circle -> Hough circles on the blurred grey median

Each ROI is the cylinder plus a margin (``WALL_MARGIN`` of its width: the wall, the mouse's
reflection on it), cut at the frame and halfway to the next cylinder. ``--view auto`` takes circles
when they are found, walls otherwise. ``stream-run --check-arenas`` draws the arenas in use the
same way and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from stream.arenas import Arena
from stream.atomic import atomic_path, atomic_write
from stream.errors import UserError, cli_main
from stream.preprocess import Roi
from stream.version import add_version_argument
from stream.web.security import DEFAULT_WEB_ADDR

__all__ = ["arena_tools", "detect_arenas", "draw_arenas", "grab_median_frame", "iou", "main", "save_arenas",
           "write_arena_file"]

log = logging.getLogger(__name__)

GRAB_FRAMES = 30  # 2 s at 15 fps: the mouse moves enough for the median to show the empty rig
WALL_MARGIN = 0.125  # of the wall-to-wall width, each side: the wall and the mouse's reflection on it
RIM_MARGIN = 0.09  # of the rim radius: the rim's thickness and a little floor around it
WALL_PEAK_FRACTION = 0.35  # a wall column is at least this fraction of the darkest line's strength
MIN_WALL_GAP_FRACTION = 0.05  # of the frame width: closer dark lines are one wall
MIN_RADIUS_FRACTION = 0.15  # of the frame's short side: smaller circles are reflections, not cylinders
MAX_RADIUS_FRACTION = 0.6
BLACKHAT_KERNEL_FRACTION = 0.04  # of the frame width: wider than a wall, narrower than a cylinder
LABEL_BGR = (0, 220, 255)


def iou(a: Roi, b: Roi) -> float:
    """Intersection over union of two ROIs."""
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / float(a.w * a.h + b.w * b.h - inter)


def grab_median_frame(source: str | int, frames: int = GRAB_FRAMES) -> np.ndarray:
    """The median of the first ``frames`` frames of a camera index, URL or video file."""
    cap = cv2.VideoCapture(source)
    try:
        if not cap.isOpened():
            raise UserError(f"cannot open {source}")
        got = []
        while len(got) < frames:
            ok, img = cap.read()
            if not ok:
                break
            got.append(img)
    finally:
        cap.release()
    if not got:
        raise UserError(f"{source}: no frame could be read")
    return np.median(np.stack(got), axis=0).astype(np.uint8)


def _side_walls(grey: np.ndarray) -> list[int]:
    h, w = grey.shape
    k = max(3, int(w * BLACKHAT_KERNEL_FRACTION) | 1)
    blackhat = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (k, 1)))
    band = blackhat[int(0.1 * h): int(0.9 * h)].astype(np.float32)
    # a wall is dark along most of its height: the median over rows ignores a mouse passing by
    profile = np.median(band, axis=0)
    profile = np.convolve(profile, np.ones(3) / 3, mode="same")
    if profile.max() <= 0:
        return []
    threshold = WALL_PEAK_FRACTION * profile.max()
    gap = max(2, int(MIN_WALL_GAP_FRACTION * w))
    walls: list[int] = []
    for x in np.argsort(-profile):
        if profile[x] < threshold:
            break
        if all(abs(int(x) - other) >= gap for other in walls):
            walls.append(int(x))
    return sorted(walls)


def _detect_side(grey: np.ndarray) -> list[Roi]:
    h, w = grey.shape
    walls = _side_walls(grey)
    if len(walls) % 2:
        log.warning("found %d cylinder walls (an odd number): the last one is left out", len(walls))
        walls = walls[:-1]
    pairs = [(walls[i], walls[i + 1]) for i in range(0, len(walls), 2)]
    rois = []
    for j, (left, right) in enumerate(pairs):
        pad = WALL_MARGIN * (right - left)
        lo = 0 if j == 0 else (pairs[j - 1][1] + left) // 2
        hi = w if j == len(pairs) - 1 else (right + pairs[j + 1][0]) // 2
        x0, x1 = max(lo, int(round(left - pad))), min(hi, int(round(right + pad)))
        rois.append(Roi(x0, 0, x1 - x0, h))  # side view: a cylinder fills the frame's height
    return rois


def _detect_top(grey: np.ndarray) -> list[Roi]:
    h, w = grey.shape
    short = min(h, w)
    blurred = cv2.GaussianBlur(grey, (0, 0), 2)
    circles = cv2.HoughCircles(blurred, cv2.HOUGH_GRADIENT, dp=1.2, minDist=2 * MIN_RADIUS_FRACTION * short,
                               param1=100, param2=40, minRadius=int(MIN_RADIUS_FRACTION * short),
                               maxRadius=int(MAX_RADIUS_FRACTION * short))
    if circles is None:
        return []
    found = sorted(circles[0].tolist(), key=lambda c: -c[2])
    kept: list[list[float]] = []
    for cx, cy, r in found:  # largest first; drop circles inside an accepted one (the water line, a reflection)
        if all(np.hypot(cx - k[0], cy - k[1]) > 0.8 * (r + k[2]) for k in kept):
            kept.append([cx, cy, r])
    rois = []
    for cx, cy, r in kept:
        half = r * (1 + RIM_MARGIN)
        x0, y0 = max(0, int(round(cx - half))), max(0, int(round(cy - half)))
        x1, y1 = min(w, int(round(cx + half))), min(h, int(round(cy + half)))
        rois.append(Roi(x0, y0, x1 - x0, y1 - y0))
    return rois


def detect_arenas(image: np.ndarray, view: str = "auto") -> list[Arena]:
    """Arenas ``A1``.. (left to right, top to bottom) of the cylinders in ``image`` (BGR)."""
    if view not in ("auto", "side", "top"):
        raise UserError(f"--view {view}: choose auto, side or top")
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    rois: list[Roi] = []
    if view in ("auto", "top"):
        rois = _detect_top(grey)
    if not rois and view in ("auto", "side"):
        rois = _detect_side(grey)
    rois.sort(key=lambda r: (round(r.y / max(1, r.h)), r.x))
    return [Arena(f"A{i + 1}", r) for i, r in enumerate(rois)]


def draw_arenas(image: np.ndarray, arenas: Sequence[Arena], path: Path) -> Path:
    """A PNG of ``image`` with each ROI drawn and labelled (atomic write)."""
    canvas = image.copy()
    scale = max(1.0, 480 / max(1, min(canvas.shape[:2])))
    if scale > 1:
        canvas = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    h, w = canvas.shape[:2]
    for a in arenas:
        r = a.roi or Roi(0, 0, image.shape[1], image.shape[0])
        x0, y0 = int(r.x * scale), int(r.y * scale)
        x1, y1 = int((r.x + r.w) * scale) - 1, int((r.y + r.h) * scale) - 1
        cv2.rectangle(canvas, (x0, y0), (x1, y1), LABEL_BGR, 2)
        text = f"{a.id} {r.x},{r.y},{r.w},{r.h}"
        size = max(0.4, min(0.8, (x1 - x0) / 260))
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, 1)
        cv2.rectangle(canvas, (x0 + 2, y0 + 2), (min(w - 1, x0 + 8 + tw), y0 + 8 + th), (0, 0, 0), -1)
        cv2.putText(canvas, text, (x0 + 5, y0 + 5 + th), cv2.FONT_HERSHEY_SIMPLEX, size, LABEL_BGR, 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), canvas):
            raise UserError(f"cannot write {path}")
    return path


def write_arena_file(arenas: Sequence[Arena], path: Path, *, source: str, view: str) -> Path:
    body = {"arenas": [{"id": a.id, "roi": [a.roi.x, a.roi.y, a.roi.w, a.roi.h]} for a in arenas if a.roi],
            "proposed_by": {"program": "stream-arenas", "source": source, "view": view}}
    return atomic_write(path, json.dumps(body, indent=1) + "\n")


def save_arenas(arenas: Sequence[Arena], path: Path, image: np.ndarray | None, source: str, *,
                view: str = "web page") -> Path:
    """The arena file and, when there is a picture, the PNG with the ROIs beside it (what the page saves)."""
    write_arena_file(arenas, path, source=source, view=view)
    if image is not None:
        draw_arenas(image, arenas, path.with_suffix(".png"))
    return path


def arena_tools():
    """The detector and the writer, for the web page's arena editor (``stream.web.ArenaTools``)."""
    from stream.web import ArenaTools

    return ArenaTools(detect=detect_arenas, save=save_arenas)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stream-arenas", description="propose the arenas (cylinders) of a rig")
    add_version_argument(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--camera", type=int, metavar="N")
    src.add_argument("--url")
    src.add_argument("--video", type=Path)
    p.add_argument("--view", default="auto", choices=("auto", "side", "top"),
                   help="side: vertical walls; top: circular rims; auto: circles if any (default)")
    p.add_argument("--out", type=Path, required=True, metavar="ARENAS.json",
                   help="arena file to write (for stream-run --arenas); the PNG goes beside it")
    p.add_argument("--frames", type=int, default=GRAB_FRAMES, help="frames whose median is searched")
    p.add_argument("--web", nargs="?", const=DEFAULT_WEB_ADDR, default=None, metavar="ADDR",
                   help=f"check, draw and drag the arenas on a web page (default {DEFAULT_WEB_ADDR}) and save them to "
                        "--out from there; runs until Ctrl-C")
    p.add_argument("--web-token-file", type=Path, default=None, metavar="FILE",
                   help="the page asks for the token in FILE (required beyond loopback)")
    return p


def _serve_web(args: argparse.Namespace, image: np.ndarray, arenas: list[Arena], source: str) -> int:
    """``--web``: the page's arena editor on the median picture, saving to ``--out``, until a signal."""
    import signal
    import threading

    from stream.web import WebState, start_web

    state = WebState(mode="arenas", arena_file=args.out, source=source, arenas=arenas, arena_tools=arena_tools())
    state.set_frame(image, 0, 0.0)
    server = start_web(args.web, args.web_token_file, state)
    stop = threading.Event()
    old = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"stream-arenas: {len(arenas)} arena(s) proposed; edit and save them on {server.url} (Ctrl-C to end)",
          flush=True)
    try:
        stop.wait()
    finally:
        server.close()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 0


@cli_main("stream-arenas")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.frames < 1:
        raise UserError(f"--frames must be >= 1, got {args.frames}")
    if args.video is not None and not args.video.is_file():
        raise UserError(f"video {args.video}: no such file")
    source: str | int = args.camera if args.camera is not None else (args.url or str(args.video))
    image = grab_median_frame(source, args.frames)
    arenas = detect_arenas(image, args.view)
    if args.web is not None:
        return _serve_web(args, image, arenas, str(source))
    if args.web_token_file is not None:
        raise UserError("--web-token-file goes with --web [ADDR]")
    if not arenas:
        raise UserError(f"no cylinder found in {source} (--view {args.view}); give the ROIs with --roi x,y,w,h")
    write_arena_file(arenas, args.out, source=str(source), view=args.view)
    png = draw_arenas(image, arenas, args.out.with_suffix(".png"))
    for a in arenas:
        print(f"{a.id}: roi {a.roi.x},{a.roi.y},{a.roi.w},{a.roi.h}")
    print(f"stream-arenas: {len(arenas)} arenas -> {args.out}; check them in {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
