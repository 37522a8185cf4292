"""Side-view cylinders: pairs of walls that start and end together, with a rim between them.

A cylinder seen from the side is two near-vertical lines (its walls) of the same extent, closed at
the top and bottom by the rim ellipses. The room behind it (tiles, stripes, a wood grain) also has
long vertical lines, and a transparent cylinder shows them through its walls; what tells a wall
apart is that it *ends*: its edge is strong between the rim and the base and absent just above and
below, where a line of the background goes on. So, on a copy scaled to ``WORK_WIDTH_PX``::

    |d/dx| of the blurred grey, sheared by each of ANGLES_DEG (camera roll, keystone)
      -> for every row range (y0, y1): mean edge inside minus the stronger of the bands above/below
      -> the best columns (walls) of each row range, paired by the rig's aspect range
      -> plus the rim score: horizontal edge between the walls at both ends, absent just outside
      -> non-maximum suppression, then the largest set of same-sized, side-by-side cylinders

Each ROI is the cylinder's bounding box from rim to base (what ``export-synth`` writes as the
truth and what the models were trained on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from stream.arena_ends import RIM_PER_WIDTH, CylinderEnds, on_two_lines, same_height, shear
from stream.arena_motion import above_noise, share_inside
from stream.preprocess import Roi

__all__ = ["SideFind", "find_side_cylinders"]

WORK_WIDTH_PX = 320  # walls are >= 1 px at this width for rigs up to 1280 px wide; a search takes ~1-3 s
ANGLES_DEG = tuple(np.arange(-6.0, 6.1, 1.5))  # camera roll and keystone tilt the walls by up to ~5 deg
MIN_HEIGHT_FRACTION = 0.15  # of the frame height: a shorter cylinder is too small to score anyway
ASPECT_RANGE = (0.7, 3.2)  # wall length / cylinder width of FST cylinders (10-20 cm wide, 20-40 cm tall)
PEAKS_PER_ROW_RANGE = 24  # wall candidates kept per (angle, y0, y1): up to 8 walls, their reflections, texture
MIN_WALL_SCORE = 0.1  # of the image's 99th-percentile edge: weaker "walls" are texture
MIN_SCORE = 0.2  # walls + rims: below this no cylinder is reported
MAX_CANDIDATES = 4000  # pairs kept (the best by walls + rims) for suppression and the rig
MIN_BAND_ROWS = 3  # rows of the bands above and below a wall that must be in the frame (it ends there)
RIM_REACH_FRACTION = 0.03  # of the work width: how far the rim ellipse reaches above a wall's top
NMS_IOU = 0.85  # boxes overlapping more are one cylinder (a box sharing one wall with it is another candidate)
SAME_SIZE = (0.8, 1.25)  # the cylinders of one rig have the same size (ratio to the best one)
# with the frames' motion the heights are set afterwards from rim and base (stream.arena_ends: the
# walls' own ends often stop at the water line or run on into the room) and the widths made one
# (_same_width), so a rig is chosen by width alone and a wider tolerance, to let a box with a wrong wall in
SAME_WIDTH_MOVING = (0.74, 1.35)
SAME_WIDTH = 0.1  # a rig's box whose width is further than this from the median has a wrong wall
# a cylinder the rig lacks (_completed): a run of motion in the rig's rows outside its boxes,
COMPLETE_MOTION = 0.15  # of the rig's mean motion per column (a mouse and its ripples: 1, the room: ~0)
COMPLETE_RUN = 0.3  # at least this many rig widths long (a mouse is 0.3-0.6 widths, ripples run wall to wall)
COMPLETE_GAP = 0.1  # rig widths: runs closer than this are one
MAX_COMPLETED = 7  # cylinders added at most (a rig has up to 8)
COMPLETE_WALLS = 0.5  # its walls stand out at least this fraction of the rig's weakest wall
# ... and its motion is water: at least this share of it within WATER_BAND of the rig's height around
# the rig's water line (100 side rigs: cylinders added rightly 0.9-0.96; a tiled panel's flickering
# grid, half-width boxes beside the glass's highlights 0.00-0.29, one 0.55; the rig's own 0.25-0.9)
COMPLETE_WATER = 0.4
WATER_BAND = 0.1
SAME_ROW_OVERLAP = 0.5  # of the shorter box's height: the cylinders of one rig stand side by side
SET_SCORE_FRACTION = 0.35  # a cylinder of the rig scores at least this fraction of the best one
SAME_WALLS_X_IOU = 0.8  # two boxes this aligned across share their walls
SYMMETRY_POWER = 0.5  # weight of the mirror correlation in a cylinder's score
# motion (the frames' temporal spread): water ripples and the mouse move inside the cylinders, the
# background's lines do not
MIN_MOTION_SHARE = 0.03  # of the frame's motion: a box with less holds no water (a tile column, the gap)
MOTION_FILL = 0.05  # of a box's busiest column: a column with less motion is outside the water
MOTION_FIT_POWER = 2.0  # weight of how well the walls bracket the motion (a box 10 % too wide scores 0.81)
MOTION_SURE_FIT = 0.8  # walls that bracket the motion this well need only MOTION_MIN_SCORE of walls + rims
MOTION_MIN_SCORE = 0.05  # faint walls (dark outlines on a busy background) around the water's motion
MOTION_POWER = 2.0  # weight of the share of motion a rig covers in its score (a missed cylinder costs)
TALLER_FRACTION = 0.6  # a taller box between the same walls wins when it scores this much of the shorter
RIG_ANCHORS = 10  # candidates tried as the rig's first cylinder (size and height of the others)
# each wall of the rig's boxes, looked for again alone once rim and base are known (_refit_walls): the
# pair search gives both walls one tilt and scores them with the rims, so a tapered cylinder, a wall
# that leans apart from its partner or an inner reflection leaves a box a few columns narrow
REFIT_REACH = 0.12  # of the cylinder's width, either side of the wall found (0.08-0.18 did the same)
REFIT_TANS = np.tan(np.radians(np.arange(-7.5, 7.6, 0.75)))  # the wall's own tilt


@dataclass(frozen=True)
class SideFind:
    """Cylinders found and how clearly: ``score`` is the best cylinder's walls + rims (0 = none)."""

    rois: tuple[Roi, ...]
    score: float


def _strip_mean(cs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Mean of each row's [lo, hi) columns from its cumulative sum ``cs`` (rows, w + 1); 0 where empty."""
    w = cs.shape[-1] - 1
    lo, hi = np.clip(lo, 0, w), np.clip(hi, 0, w)
    n = hi - lo
    total = np.take_along_axis(cs, hi, -1) - np.take_along_axis(cs, lo, -1)
    return np.where(n > 0, total / np.maximum(n, 1), 0.0)


def _rim(cs: np.ndarray, xl: np.ndarray, xr: np.ndarray) -> np.ndarray:
    """Rim evidence of wall pairs: the horizontal edge between the walls (their inner 70 %), minus
    the same just outside them (a line of the background goes on; a neighbour's rim is outside a
    box that spans the gap between two cylinders)."""
    width = xr - xl
    inset, gap, reach = (0.15 * width).astype(int), np.maximum(1, (0.05 * width).astype(int)), \
        np.maximum(2, (0.3 * width).astype(int))
    inside = _strip_mean(cs, xl + inset, xr - inset)
    left = _strip_mean(cs, xl - reach, xl - gap)
    right = _strip_mean(cs, xr + gap, xr + reach)
    return inside - np.maximum(left, right)


def _wall_pairs(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Rows (walls + rims, angle, y0, y1, x_left, x_right) in sheared coordinates."""
    h, w = gx.shape
    min_h = max(6, int(MIN_HEIGHT_FRACTION * h))
    band, gap = max(3, int(0.06 * h)), max(2, int(0.02 * h))
    reach = max(3, int(RIM_REACH_FRACTION * w))
    k = min(PEAKS_PER_ROW_RANGE, w - 1)
    found = []
    for angle in ANGLES_DEG:
        t = math.tan(math.radians(angle))
        e = shear(gx, t)
        cs = np.vstack([np.zeros((1, w), np.float32), np.cumsum(e, axis=0)])
        r = shear(gy, t)
        # the rim above a wall's top (its ellipse), the base below its bottom: a vertical max filter
        top = cv2.dilate(r, np.ones((reach + 3, 1), np.uint8), anchor=(0, reach))
        base = cv2.dilate(r, np.ones((reach + 3, 1), np.uint8), anchor=(0, 2))
        top_cs = np.hstack([np.zeros((h, 1), np.float32), np.cumsum(top, axis=1)])
        base_cs = np.hstack([np.zeros((h, 1), np.float32), np.cumsum(base, axis=1)])

        def mean_rows(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
            lo, hi = np.clip(lo, 0, h), np.clip(hi, 0, h)
            return (cs[hi] - cs[lo]) / np.maximum(hi - lo, 1)[:, None]

        for y0 in range(gap + MIN_BAND_ROWS, h - min_h, 2):  # a wall must end inside the frame
            y1 = np.arange(y0 + min_h, h - gap - MIN_BAND_ROWS + 1, 2)
            if not len(y1):
                break
            inside = (cs[y1] - cs[y0]) / (y1 - y0)[:, None]
            above = mean_rows(np.full_like(y1, y0 - gap - band), np.full_like(y1, y0 - gap))
            below = mean_rows(y1 + gap, y1 + gap + band)
            wall = inside - np.maximum(above, below)  # (len(y1), w): an edge that ends at y0 and y1
            peak = (wall >= np.roll(wall, 1, 1)) & (wall >= np.roll(wall, -1, 1)) & (wall > MIN_WALL_SCORE / 2)
            v = np.where(peak, wall, -1.0)
            idx = np.argpartition(-v, k, axis=1)[:, :k]
            val = np.take_along_axis(v, idx, 1)
            width = (idx[:, None, :] - idx[:, :, None]).astype(np.float32)
            length = (y1 - y0)[:, None, None].astype(np.float32)
            ok = (width > 0) & (length >= ASPECT_RANGE[0] * width) & (length <= ASPECT_RANGE[1] * width)
            walls = np.where(ok, np.minimum(val[:, :, None], val[:, None, :]), 0)
            i, j, m = np.nonzero(walls > MIN_WALL_SCORE)
            if not len(i):
                continue
            xl, xr = idx[i, j], idx[i, m]
            rim_top = _rim(np.broadcast_to(top_cs[y0], (len(i), w + 1)), xl[:, None], xr[:, None])[:, 0]
            rim_base = _rim(base_cs[y1[i]], xl[:, None], xr[:, None])[:, 0]
            score = walls[i, j, m] + np.minimum(rim_top, rim_base)
            found.append(np.stack([score, np.full(len(i), angle), np.full(len(i), y0), y1[i], xl, xr], 1))
    return np.concatenate(found) if found else np.zeros((0, 6))


def _symmetry(g: np.ndarray, box: tuple[float, ...]) -> float:
    """How much the box's column profile (mean grey of each column, less its linear trend) is its
    own mirror image: a cylinder is symmetric about its axis, a box spanning a cylinder and the gap
    beside it is not; a light gradient behind the cylinder is not the cylinder."""
    h, w = g.shape
    x0, x1 = max(0, int(round(box[0]))), min(w, int(round(box[2])))
    y0, y1 = max(0, int(round(box[1]))), min(h, int(round(box[3])))
    if x1 - x0 < 4 or y1 - y0 < 4:
        return 0.0
    p = g[y0:y1, x0:x1].mean(axis=0)
    x = np.arange(len(p), dtype=np.float64)
    p = p - np.polyval(np.polyfit(x, p, 1), x)  # a gradient across the box is the room's lighting
    q = p[::-1]
    if p.std() < 1e-3:
        return 1.0
    return float(max(0.0, np.corrcoef(p, q)[0, 1])) ** SYMMETRY_POWER


def _box(angle: float, y0: float, y1: float, xl: float, xr: float, h: int) -> tuple[float, ...]:
    """(x0, y0, x1, y1) of the cylinder at work scale, then its walls as found: angle, sheared
    columns xl, xr and rows y0, y1 (for ``stream.arena_ends``)."""
    t = math.tan(math.radians(angle))
    lefts = [xl + t * (y - h / 2) for y in (y0, y1)]
    rights = [xr + t * (y - h / 2) for y in (y0, y1)]
    rim = RIM_PER_WIDTH * (xr - xl)
    return min(lefts), y0 - rim, max(rights) + 1, y1 + rim, angle, xl, xr, y0, y1


def _box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _inside(big: tuple[float, ...], small: tuple[float, ...], tol: float = 2.0) -> bool:
    return (small[0] >= big[0] - tol and small[2] <= big[2] + tol and small[1] >= big[1] - tol
            and small[3] <= big[3] + tol)


def _x_overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) / min(a[2] - a[0], b[2] - b[0])


def _y_overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return max(0.0, min(a[3], b[3]) - max(a[1], b[1])) / min(a[3] - a[1], b[3] - b[1])


def _x_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    return inter / (max(a[2], b[2]) - min(a[0], b[0]))


def _whole_cylinders(kept: list[tuple[float, tuple[float, ...]]]) -> list[tuple[float, tuple[float, ...]]]:
    """Between the same walls, the water line closes a box as well as the rim does (the water
    below it, or the air above it): the tallest box there stands for the cylinder when it scores
    at least ``TALLER_FRACTION`` of the shorter one, and takes its score."""
    out = list(kept)
    changed = True
    while changed:
        changed = False
        for i, (si, bi) in enumerate(out):
            for j, (sj, bj) in enumerate(out):
                if (i != j and _x_iou(bi, bj) >= SAME_WALLS_X_IOU and _inside(bj, bi, 0.05 * (bj[3] - bj[1]))
                        and bj[3] - bj[1] > 1.1 * (bi[3] - bi[1]) and sj >= TALLER_FRACTION * si):
                    out[j] = (max(si, sj), bj)
                    del out[i]
                    changed = True
                    break
            if changed:
                break
    return sorted(out, key=lambda c: -c[0])


def _motion_fit(col_cs: np.ndarray, box: tuple[float, ...]) -> float:
    """How well the walls bracket the motion of the rows between them: water ripples run from wall
    to wall, so motion beyond a wall (the box is too narrow) or columns without it (too wide) cost.
    ``col_cs`` is the motion's cumulative sum down each column, (h + 1, w)."""
    h, w = col_cs.shape[0] - 1, col_cs.shape[1]
    x0, x1 = max(0, int(round(box[0]))), min(w, int(round(box[2])))
    y0, y1 = max(0, int(round(box[1]))), min(h, int(round(box[3])))
    if x1 - x0 < 2 or y1 <= y0:
        return 0.0
    reach = (x1 - x0) // 2
    e0, e1 = max(0, x0 - reach), min(w, x1 + reach)
    profile = col_cs[y1, e0:e1] - col_cs[y0, e0:e1]
    inside = profile[x0 - e0:x1 - e0]
    if profile.sum() <= 0 or inside.max() <= 0:
        return 0.0
    contained = float(inside.sum() / profile.sum())
    filled = float(np.mean(inside >= MOTION_FILL * inside.max()))
    return (contained * filled) ** MOTION_FIT_POWER


def _rig(kept: list[tuple[float, tuple[float, ...]]],
         motion: np.ndarray | None = None) -> list[tuple[float, tuple[float, ...]]]:
    """The set of same-sized (with motion: same-width) side-by-side cylinders with the highest total score (times the share
    of the frame's motion it covers, when there is motion)."""
    best: tuple[float, list] = (0.0, [])
    for score, box in kept[:RIG_ANCHORS]:
        bw, bh = box[2] - box[0], box[3] - box[1]
        chosen = [(score, box)]
        for s, b in kept:
            if b is box or s < SET_SCORE_FRACTION * score:
                continue
            w, h = b[2] - b[0], b[3] - b[1]
            if motion is not None:
                same = SAME_WIDTH_MOVING[0] < w / bw < SAME_WIDTH_MOVING[1] and _y_overlap(b, box) >= SAME_ROW_OVERLAP
            else:
                same = (SAME_SIZE[0] < w / bw < SAME_SIZE[1] and SAME_SIZE[0] < h / bh < SAME_SIZE[1]
                        and abs(b[1] - box[1]) < 0.25 * bh)
            if not same:
                continue
            if all(_x_overlap(b, o) <= 0.1 for _, o in chosen):
                chosen.append((s, b))
        total = sum(s for s, _ in chosen)
        if motion is not None:
            total *= share_inside(motion, [b for _, b in chosen]) ** MOTION_POWER
        if total > best[0]:
            best = (total, chosen)
    return best[1]


def find_side_cylinders(grey: np.ndarray, motion: np.ndarray | None = None) -> SideFind:
    """Side-view cylinders of a grey median frame, left to right; ``motion`` (the frames' temporal
    spread, same size, see ``stream.arena_finder.motion_map``) keeps the boxes that hold water."""
    h0, w0 = grey.shape
    scale = WORK_WIDTH_PX / w0
    g = cv2.resize(grey, (WORK_WIDTH_PX, max(8, int(round(h0 * scale)))), interpolation=cv2.INTER_AREA)
    g = cv2.GaussianBlur(g.astype(np.float32), (0, 0), 0.7)
    h = g.shape[0]
    gx = np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3))
    gy = np.abs(cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3))
    norm = float(np.percentile(np.maximum(gx, gy), 99)) + 1e-3  # scores do not depend on contrast
    gx = cv2.dilate(gx / norm, np.ones((1, 3), np.uint8))  # a thin line's two edges are one wall
    gy = gy / norm
    pairs = _wall_pairs(gx, gy)
    if not len(pairs):
        return SideFind((), 0.0)
    pairs = pairs[np.argsort(-pairs[:, 0])][:MAX_CANDIDATES]
    scored = [(score, _box(angle, y0, y1, xl, xr, h)) for score, angle, y0, y1, xl, xr in pairs]
    scored.sort(key=lambda c: -c[0])
    m = None
    if motion is not None:
        spread = cv2.resize(motion.astype(np.float32), (g.shape[1], h), interpolation=cv2.INTER_AREA)
        m = above_noise(spread)
        if m.sum() > 0:
            col_cs = np.vstack([np.zeros((1, m.shape[1]), np.float32), np.cumsum(m, axis=0)])
            scored = [(score, box, _motion_fit(col_cs, box)) for score, box in scored]
        else:
            m = None
    kept: list[tuple[float, tuple[float, ...]]] = []
    scored = [(c[0] * _symmetry(g, c[1]), c[1], c[2] if m is not None else 1.0) for c in scored]
    scored = [c for c in scored if c[0] > MIN_SCORE or (c[2] >= MOTION_SURE_FIT and c[0] > MOTION_MIN_SCORE)]
    scored.sort(key=lambda c: -c[0] * c[2])
    for score, box, fit in scored:
        if all(_box_iou(box, b) < NMS_IOU for _, b in kept):
            kept.append((score * fit, box))
    if m is not None:
        kept = [(s, b) for s, b in kept if share_inside(m, [b]) >= MIN_MOTION_SHARE]
    rig = sorted(_rig(_whole_cylinders(kept), m), key=lambda c: c[1][0])
    rois = []
    for x0, y0, x1, y1 in _closed_at_the_ends([b for _, b in rig], g, spread if m is not None else None):
        x0, y0 = max(0, int(round(x0 / scale))), max(0, int(round(y0 / scale)))
        x1, y1 = min(w0, int(round(x1 / scale))), min(h0, int(round(y1 / scale)))
        if x1 > x0 and y1 > y0:
            rois.append(Roi(x0, y0, x1 - x0, y1 - y0))
    return SideFind(tuple(rois), kept[0][0] if kept else 0.0)


def _closed_at_the_ends(boxes: list[tuple[float, ...]], g: np.ndarray, motion: np.ndarray | None) -> list[tuple[float, ...]]:
    """The rig's boxes from rim to base (``stream.arena_ends``), all one height, their rims and
    bases on the rig's two lines, each wall fitted again alone between them; as found without motion."""
    if motion is None:
        return [b[:4] for b in boxes]
    ends = CylinderEnds(g, motion)
    boxes = _completed(_same_width(boxes, ends), ends)
    spans = same_height([ends.ends(b[4], b[5], b[6], b[7], b[8]) for b in boxes])
    spans = on_two_lines(spans, [(b[5] + b[6]) / 2 for b in boxes])
    h = g.shape[0]
    found = [_box(b[4], top, base, b[5], b[6], h)[:4] for b, (top, base) in zip(boxes, spans)]
    refit = [_refit_walls(ends.edges, b[4], b[5], b[6], top, base, h) for b, (top, base) in zip(boxes, spans)]
    widths = [r[1] - r[0] for r in refit if r]
    width = float(np.median(widths)) if len(widths) >= 3 else None
    # a refit wall on an inner highlight makes its box narrower than the rig's others: that box keeps the pair's walls
    return [(r[0], f[1], r[1], f[3]) if r and (width is None or abs(r[1] - r[0] - width) <= SAME_WIDTH * width) else f
            for f, r in zip(found, refit)]


def _refit_walls(gx: np.ndarray, angle: float, xl: float, xr: float, top: float, base: float,
                 h: int) -> tuple[float, float] | None:
    """(left, right) extent of the cylinder's walls between rim and base, each wall alone: the
    straight line of strongest mean edge within ``REFIT_REACH`` widths of the wall found, at any
    tilt of ``REFIT_TANS`` (``gx``: the picture's |d/dx|, unsheared). None where the box is too short."""
    rim = RIM_PER_WIDTH * (xr - xl)
    ys = np.arange(max(0, int(top + 2 * rim)), min(gx.shape[0], int(base - 2 * rim)))  # rows in the picture
    if len(ys) < 5:
        return None
    mid = (ys[0] + ys[-1]) / 2
    t = math.tan(math.radians(angle))
    reach = max(2, int(REFIT_REACH * (xr - xl)))
    offsets = np.arange(-reach, reach + 0.5, 0.5)
    extent = []
    for wall, pick in ((xl, min), (xr, max)):
        at_mid = wall + t * (mid - h / 2) + offsets  # sheared column -> the picture's column at row `mid`
        xs = at_mid[:, None, None] + REFIT_TANS[None, :, None] * (ys - mid)[None, None, :]
        x0 = np.clip(np.floor(xs).astype(int), 0, gx.shape[1] - 2)
        f = np.clip(xs - x0, 0.0, 1.0)
        rows = np.broadcast_to(ys, xs.shape)
        score = (gx[rows, x0] * (1 - f) + gx[rows, x0 + 1] * f).mean(axis=-1)  # (offsets, tilts)
        i, k = np.unravel_index(int(np.argmax(score)), score.shape)
        extent.append(pick(at_mid[i] + REFIT_TANS[k] * (y - mid) for y in (top, base)))
    return float(extent[0]), float(extent[1]) + 1


def _same_width(boxes: list[tuple[float, ...]], ends: CylinderEnds) -> list[tuple[float, ...]]:
    """The cylinders of one rig are one width: a box further than SAME_WIDTH from the median
    took a line of the room for one wall; it keeps the wall that stands out more with a partner
    at the median width."""
    if len(boxes) < 2:
        return boxes
    width = float(np.median([b[6] - b[5] for b in boxes]))
    out = []
    for b in boxes:
        angle, xl, xr, y0, y1 = b[4:9]
        if abs(xr - xl - width) > SAME_WIDTH * width:
            walls = ends.wall_columns(angle, y0, y1)
            xl, xr = max(((xl, xl + width), (xr - width, xr)),
                         key=lambda p: min(_at_column(walls, p[0]), _at_column(walls, p[1])))
        out.append(b if (xl, xr) == tuple(b[5:7]) else _box(angle, y0, y1, xl, xr, ends.height))
    return out



def _completed(boxes: list[tuple[float, ...]], ends: CylinderEnds) -> list[tuple[float, ...]]:
    """A cylinder the rig lacks where water moves beside it: the rig's walls found some of the
    cylinders (a dim wall, a wall on a line of the room makes a box of another size), and the
    water and mouse of the others still move in the rig's rows. Each such run of motion gets the
    pair of walls, at the rig's width, that stands out most around it, if they stand out about as
    much as the rig's own walls do and the motion between them is water: most of it at the rig's
    water line (a flickering tiled panel shimmers at every row)."""
    if not boxes:
        return boxes
    angle = float(np.median([b[4] for b in boxes]))
    width = float(np.median([b[6] - b[5] for b in boxes]))
    y0, y1 = float(np.median([b[7] for b in boxes])), float(np.median([b[8] for b in boxes]))
    walls = ends.wall_columns(angle, y0, y1)
    band = ends.motion(angle)[max(0, int(y0)):max(0, int(y1))]
    above = np.maximum(0.0, band - float(np.median(band)))  # (rows, columns) above the room's own spread
    motion = above.sum(axis=0)
    n = len(motion)
    covered = np.zeros(n, bool)  # the rig's columns and the ripples' reach beyond its walls
    taken = np.zeros(n, bool)  # the rig's columns: a new cylinder's inside is free of them
    level = []
    for b in boxes:
        xl, xr = int(round(b[5])), int(round(b[6]))
        covered[max(0, xl - int(0.1 * width)):min(n, xr + int(0.1 * width) + 1)] = True
        taken[max(0, xl):min(n, xr + 1)] = True
        level.append(float(motion[max(0, xl):max(0, xr) + 1].mean()) if xr > xl else 0.0)
    strong = min(min(_at_column(walls, b[5]), _at_column(walls, b[6])) for b in boxes)
    moving = motion > COMPLETE_MOTION * float(np.median(level))
    rig_rows = np.convolve(above[:, taken].sum(axis=1), np.ones(3) / 3, "same")
    water = int(np.argmax(rig_rows)) if rig_rows.size else 0
    reach = max(1, int(WATER_BAND * len(rig_rows)))

    def at_water(xl: int, xr: int) -> float:
        cols = above[:, max(0, xl):max(0, xr) + 1]
        total = float(cols.sum())
        return float(cols[max(0, water - reach):water + reach + 1].sum()) / total if total > 0 else 0.0
    out = list(boxes)
    for _ in range(MAX_COMPLETED):  # one cylinder at a time: a run of motion may hold two
        added = False
        for a, e in _runs(moving & ~covered, gap=int(COMPLETE_GAP * width)):
            if e - a < COMPLETE_RUN * width:
                continue
            pair = _best_walls(walls, taken, range(max(0, int(a - 0.6 * width)), min(n, int(e - 0.5 * width) + 1)),
                               range(int(0.9 * width), int(1.1 * width) + 1), COMPLETE_WALLS * strong)
            if pair is None:
                continue
            if at_water(*pair) < COMPLETE_WATER:
                continue
            out.append(_box(angle, y0, y1, pair[0], pair[1], ends.height))
            covered[max(0, pair[0] - int(0.1 * width)):min(n, pair[1] + int(0.1 * width) + 1)] = True
            taken[pair[0]:pair[1] + 1] = True
            added = True
            break
        if not added:
            break
    return sorted(out, key=lambda b: b[0])


def _best_walls(walls: np.ndarray, covered: np.ndarray, lefts: range, widths: range,
                floor: float) -> tuple[int, int] | None:
    """The wall pair (left, right column) whose weaker wall stands out most, at least ``floor``, on
    free columns; the middle of the pairs as good (a line's edge is a few columns wide)."""
    n = len(walls)
    xl = np.array(lefts)[:, None]
    xr = xl + np.array(widths)[None, :]
    if not xl.size or not len(widths):
        return None
    free = np.concatenate([[0], np.cumsum(covered)])
    inner_l, inner_r = np.clip(xl + 2, 0, n), np.clip(xr - 1, 0, n)
    ok = (xr < n) & (free[np.maximum(inner_r, inner_l)] - free[inner_l] == 0)
    v = np.where(ok, np.minimum(walls[np.clip(xl, 0, n - 1)], walls[np.clip(xr, 0, n - 1)]), -1.0)
    best = float(v.max())
    if best < floor:
        return None
    i, j = np.nonzero(v >= best - 1e-6)
    return int(np.median(xl[i, 0])), int(np.median(xr[i, j]))


def _at_column(walls: np.ndarray, x: float) -> float:
    """``walls`` (per column) at the column nearest ``x``, clipped to the picture."""
    return float(walls[int(np.clip(round(x), 0, len(walls) - 1))])


def _runs(mask: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """[start, end) of the True runs of ``mask``, runs closer than ``gap`` joined."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return []
    runs = [[int(idx[0]), int(idx[0]) + 1]]
    for i in idx[1:]:
        if i - runs[-1][1] <= gap:
            runs[-1][1] = int(i) + 1
        else:
            runs.append([int(i), int(i) + 1])
    return [(a, e) for a, e in runs]
