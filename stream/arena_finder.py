"""``stream-arenas``: propose the arenas (one ROI per cylinder) from a camera, stream or video.

Typing ``--roi x,y,w,h`` by hand and checking it with a full model run is slow and error-prone. This
grabs a second or two of frames, takes their median (a swimming mouse moves, the cylinders do not,
so the median is the empty rig) and their temporal spread (the motion: water and mouse, inside the
cylinders only), finds the cylinders and writes the arena file plus a PNG with each
ROI drawn and labelled, for a person to check at a glance::

    side view: pairs of walls that start and end together, closed by rims (stream/arena_walls.py),
               with motion at the rim and base above and below the moving water (stream/arena_ends.py)
    top view:  circles whose rim edge runs all the way round, all of one size (stream/arena_rims.py)

Each ROI is the cylinder's bounding box (side: rim to base between the walls; top: the circle), as
``export-synth`` writes the truth and as the models were trained. ``--view auto`` runs both and
takes the rims when they run round, the walls otherwise. ``stream-run --check-arenas`` draws the
arenas in use the same way and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from stream.arena_motion import above_noise, share_inside
from stream.arena_rims import TopFind, find_top_cylinders
from stream.arena_walls import find_side_cylinders
from stream.arenas import Arena
from stream.atomic import atomic_path, atomic_write
from stream.errors import UserError, cli_main
from stream.preprocess import Roi
from stream.version import add_version_argument
from stream.web.security import DEFAULT_WEB_ADDR

__all__ = ["arena_tools", "detect_arenas", "draw_arenas", "grab_frames", "grab_median_frame", "iou", "main",
           "median_frame", "motion_map", "save_arenas", "write_arena_file"]

log = logging.getLogger(__name__)

GRAB_FRAMES = 30  # 2 s at 15 fps: the mouse moves enough for the median to show the empty rig
# --view auto: circles are a top view when their rims run round at least AUTO_TOP_SURE, or at least
# AUTO_TOP_SUPPORT while covering AUTO_TOP_COVER of the frame (top-view cylinders fill 11-35 % of the
# 20 randomized top rigs; the round clutter of side views, up to 0.84 support, covers <= 20 % at <= 0.54
# support and <= 5 % above it)
AUTO_TOP_SURE = 0.9
# a side view's "circle" (its base ellipse and the water above it) is up to this much wider than the
# cylinder's box (side seed 6: 1.22, now that the box is the cylinder's own width)
CIRCLE_IN_BOX_WIDTH = 1.35
SIDE_TALLER_THAN_WIDE = 1.1  # a side-view cylinder's box is taller than wide (aspect 1.15-2 and rims)
AUTO_TOP_SUPPORT = 0.56
# circles that look like a top-view rig and run round at least this far are rims seen from above
# even where the side finder's boxes hold them (160 rigs per view: top rigs whose circles lay in the
# side boxes scored 0.59, 0.72, 0.83 and 0.87; side rigs whose circles look top and lie in its boxes
# 0.57-0.68)
AUTO_TOP_CLEAR = 0.7
AUTO_TOP_COVER = 0.1
LABEL_BGR = (0, 220, 255)
# --view auto: side boxes holding this many times the circles' motion are the rig (40 top rigs:
# 0.71-1.01; side rigs whose circles look top: 0.99-2.2, most >= 1.2)
SIDE_MOTION_RATIO = 1.2
MIN_MOTION_GREY = 8.0  # temporal spread (grey levels) of something that moves: a swimming mouse gives
# tens, H.264 noise and flicker of a static rig 1-3


def iou(a: Roi, b: Roi) -> float:
    """Intersection over union of two ROIs."""
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / float(a.w * a.h + b.w * b.h - inter)


def grab_median_frame(source: str | int, frames: int = GRAB_FRAMES) -> np.ndarray:
    """The median of the first ``frames`` frames of a camera index, URL or video file."""
    return median_frame(grab_frames(source, frames))


def median_frame(frames: Sequence[np.ndarray]) -> np.ndarray:
    """The empty rig: a swimming mouse moves, the cylinders do not."""
    return np.median(np.stack(frames), axis=0).astype(np.uint8)


def motion_map(frames: Sequence[np.ndarray]) -> np.ndarray | None:
    """Per-pixel temporal standard deviation of the grey frames: water ripples and the mouse move
    inside the cylinders, the lines of the background do not. None for fewer than 3 frames or when
    nothing moves (an empty rig): the finders then work on the median alone."""
    if len(frames) < 3:
        return None
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) if f.ndim == 3 else f for f in frames]).astype(np.float32)
    spread = grey.std(axis=0)
    return spread if float(spread.max()) >= MIN_MOTION_GREY else None


def grab_frames(source: str | int, frames: int = GRAB_FRAMES) -> list[np.ndarray]:
    """The first ``frames`` frames of a camera index, URL or video file."""
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
    return got


def detect_arenas(image: np.ndarray, view: str = "auto", motion: np.ndarray | None = None) -> list[Arena]:
    """Arenas ``A1``.. (left to right, top to bottom) of the cylinders in ``image`` (BGR).

    ``motion`` (``motion_map`` of the frames whose median ``image`` is) tells the water from the
    room: side boxes must hold it and the rig covers it; the top finder looks again for rims there.
    ``auto`` takes the circles when their rims run round (``AUTO_TOP_SURE``; one such circle only
    if it is not beside two or more side-view cylinders holding more motion), or when they look
    like a top-view rig (``_looks_top``), do not sit inside the side finder's cylinders (unless they
    run round at least ``AUTO_TOP_CLEAR``) and are not
    one uncertain circle beside a side rig of two or more; otherwise the side finder's walls, if any, else whatever circles there are.
    """
    if view not in ("auto", "side", "top"):
        raise UserError(f"--view {view}: choose auto, side or top")
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    top = find_top_cylinders(grey, motion) if view in ("auto", "top") else None
    sure = top is not None and top.score >= AUTO_TOP_SURE
    if view == "top" or (sure and len(top.rois) != 1):
        return _arenas(list(top.rois))
    side = find_side_cylinders(grey, motion)
    if sure:  # one round circle: a top view, or a round thing on a side rig
        lone_decoy = len(_tall(side.rois)) >= 2 and _side_holds_more_motion(top.rois, side.rois, motion)
        return _arenas(list(side.rois if lone_decoy else top.rois))
    if view == "side" or not top.rois:
        return _arenas(list(side.rois))
    if (_looks_top(top, grey.size)
            and (top.score >= AUTO_TOP_CLEAR or not _circles_inside_side_cylinders(top.rois, side.rois))
            and not _one_circle_beside_a_rig(top, side.rois)
            and not _side_holds_more_motion(top.rois, side.rois, motion)):
        return _arenas(list(top.rois))
    return _arenas(list(side.rois or top.rois))


def _arenas(rois: list[Roi]) -> list[Arena]:
    return [Arena(f"A{i + 1}", r) for i, r in enumerate(_reading_order(rois))]


def _looks_top(top: TopFind, frame_px: int) -> bool:
    cover = sum(math.pi / 4 * r.w * r.h for r in top.rois) / frame_px
    return bool(top.rois) and (top.score >= AUTO_TOP_SURE or (top.score >= AUTO_TOP_SUPPORT and cover >= AUTO_TOP_COVER))


def _circles_inside_side_cylinders(circles: Sequence[Roi], cylinders: Sequence[Roi]) -> bool:
    """Every circle lies in a side-view cylinder (a box taller than wide), and no box holds two
    separate circles: the circles are walls and rims seen as round, not a top-view rig (whose
    columns of circles, which never overlap, the side finder may take for tall boxes)."""
    def inside(c: Roi, b: Roi) -> bool:
        cx, cy = c.x + c.w / 2, c.y + c.h / 2
        return b.x <= cx <= b.x + b.w and b.y <= cy <= b.y + b.h and c.w <= CIRCLE_IN_BOX_WIDTH * b.w

    tall = _tall(cylinders)
    return (bool(tall) and all(any(inside(c, b) for b in tall) for c in circles)
            and not any(_separate(c, d) and inside(c, b) and inside(d, b)
                        for b in tall for i, c in enumerate(circles) for d in circles[i + 1:]))


def _side_holds_more_motion(circles: Sequence[Roi], cylinders: Sequence[Roi], motion: np.ndarray | None) -> bool:
    """The side finder's boxes hold clearly more of what moves than the circles do: round shapes
    on a side rig (a rim and a base ellipse, the water of two neighbours) leave the water of other
    cylinders out, while the boxes the side finder may make of a top rig's columns of circles hold
    no more than the circles themselves."""
    if motion is None or not cylinders:
        return False
    m = above_noise(motion)
    if float(m.sum()) <= 0:
        return False

    def held(rois: Sequence[Roi]) -> float:
        return share_inside(m, [(r.x, r.y, r.x + r.w, r.y + r.h) for r in rois])

    return held(cylinders) >= SIDE_MOTION_RATIO * held(circles)


def _one_circle_beside_a_rig(top: TopFind, cylinders: Sequence[Roi]) -> bool:
    """One uncertain circle against two or more side-view cylinders (boxes taller than wide): the
    round shapes of a side rig (a base ellipse, the water of two cylinders side by side) make such a
    circle, while a top-view cylinder's rim runs round (``AUTO_TOP_SURE``) and the columns of circles
    the side finder may take for tall boxes come with a circle each."""
    return len(top.rois) == 1 and top.score < AUTO_TOP_SURE and len(_tall(cylinders)) >= 2


def _tall(cylinders: Sequence[Roi]) -> list[Roi]:
    """The boxes taller than wide: side-view cylinders (aspect 1.15-2 and rims)."""
    return [b for b in cylinders if b.h >= SIDE_TALLER_THAN_WIDE * b.w]


def _separate(c: Roi, d: Roi) -> bool:
    """Two circles (given by their boxes) that do not overlap: two cylinders seen from above."""
    return math.hypot(c.x + c.w / 2 - d.x - d.w / 2, c.y + c.h / 2 - d.y - d.h / 2) >= (c.w + d.w) / 2


def _reading_order(rois: list[Roi]) -> list[Roi]:
    """Rows top to bottom (a centre more than half a box lower starts a row), each left to right."""
    rows: list[list[Roi]] = []
    for r in sorted(rois, key=lambda r: r.y + r.h / 2):
        if rows and r.y + r.h / 2 - (rows[-1][0].y + rows[-1][0].h / 2) <= rows[-1][0].h / 2:
            rows[-1].append(r)
        else:
            rows.append([r])
    return [r for row in rows for r in sorted(row, key=lambda r: r.x)]


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
    frames = grab_frames(source, args.frames)
    image = median_frame(frames)
    arenas = detect_arenas(image, args.view, motion_map(frames))
    if args.web is not None:
        return _serve_web(args, image, arenas, str(source))
    if args.web_token_file is not None:
        raise UserError("--web-token-file goes with --web [ADDR]")
    if not arenas:
        raise UserError(f"no cylinder found in {source} (--view {args.view}); try the other --view, or give the "
                        "ROIs to stream-run yourself: --roi x,y,w,h (once per arena) or --arenas FILE")
    write_arena_file(arenas, args.out, source=str(source), view=args.view)
    png = draw_arenas(image, arenas, args.out.with_suffix(".png"))
    for a in arenas:
        print(f"{a.id}: roi {a.roi.x},{a.roi.y},{a.roi.w},{a.roi.h}")
    print(f"stream-arenas: {len(arenas)} arenas -> {args.out}; check them in {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
