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

from stream.preprocess import Roi

__all__ = ["SideFind", "find_side_cylinders"]

WORK_WIDTH_PX = 320  # walls are >= 1 px at this width for rigs up to 1280 px wide; a search takes ~1-3 s
ANGLES_DEG = tuple(np.arange(-6.0, 6.1, 1.5))  # camera roll and keystone tilt the walls by up to ~5 deg
MIN_HEIGHT_FRACTION = 0.15  # of the frame height: a shorter cylinder is too small to score anyway
ASPECT_RANGE = (0.7, 3.2)  # wall length / cylinder width of FST cylinders (10-20 cm wide, 20-40 cm tall)
PEAKS_PER_ROW_RANGE = 10  # wall candidates kept per (angle, y0, y1): a rig has at most 8 walls + a few reflections
MIN_WALL_SCORE = 0.1  # of the image's 99th-percentile edge: weaker "walls" are texture
MIN_SCORE = 0.2  # walls + rims: below this no cylinder is reported
MAX_CANDIDATES = 4000  # pairs scored for rims (the best by wall score)
NMS_IOU = 0.3  # boxes overlapping more are one cylinder
SAME_SIZE = (0.8, 1.25)  # the cylinders of one rig have the same size (ratio to the best one)
SET_SCORE_FRACTION = 0.5  # a cylinder of the rig scores at least this fraction of the best one
RIM_PER_WIDTH = 0.06  # the rim ellipse's half-height beyond the wall's end, in cylinder widths


@dataclass(frozen=True)
class SideFind:
    """Cylinders found and how clearly: ``score`` is the best cylinder's walls + rims (0 = none)."""

    rois: tuple[Roi, ...]
    score: float


def _shear(img: np.ndarray, t: float) -> np.ndarray:
    """Columns of the result follow lines x = x0 + t * (y - H/2) of ``img``."""
    h, w = img.shape
    m = np.float32([[1, t, -t * h / 2], [0, 1, 0]])
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def _wall_pairs(gx: np.ndarray) -> np.ndarray:
    """Rows (wall score, angle, y0, y1, x_left, x_right) in sheared coordinates."""
    h, w = gx.shape
    min_h = max(6, int(MIN_HEIGHT_FRACTION * h))
    band, gap = max(3, int(0.06 * h)), max(2, int(0.02 * h))
    k = min(PEAKS_PER_ROW_RANGE, w - 1)
    found = []
    for angle in ANGLES_DEG:
        e = _shear(gx, math.tan(math.radians(angle)))
        cs = np.vstack([np.zeros((1, w), np.float32), np.cumsum(e, axis=0)])

        def mean_rows(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
            lo, hi = np.clip(lo, 0, h), np.clip(hi, 0, h)
            return (cs[hi] - cs[lo]) / np.maximum(hi - lo, 1)[:, None]

        for y0 in range(0, h - min_h, 2):
            y1 = np.arange(y0 + min_h, h + 1, 2)
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
            score = np.where(ok, np.minimum(val[:, :, None], val[:, None, :]), 0)
            i, j, m = np.nonzero(score > MIN_WALL_SCORE)
            if len(i):
                found.append(np.stack([score[i, j, m], np.full(len(i), angle), np.full(len(i), y0), y1[i],
                                       idx[i, j], idx[i, m]], 1))
    return np.concatenate(found) if found else np.zeros((0, 6))


def _rim_score(gy: np.ndarray, y0: int, y1: int, xl: int, xr: int) -> float:
    """Horizontal edge between the walls near both ends, minus the same rows just outside them."""
    h, w = gy.shape
    width = xr - xl
    inset, reach, gap = max(1, int(0.15 * width)), max(2, int(0.25 * width)), max(1, int(0.05 * width))
    up, down = max(2, int(0.2 * width)), max(2, int(0.05 * width))

    def one(lo: int, hi: int) -> float:
        lo, hi = max(0, lo), min(h, hi)
        if hi <= lo or xr - inset + 1 <= xl + inset:
            return 0.0
        inside = gy[lo:hi, xl + inset: xr - inset + 1].mean(axis=1)
        outside = np.concatenate([gy[lo:hi, max(0, xl - reach): max(0, xl - gap)],
                                  gy[lo:hi, min(w, xr + gap): min(w, xr + reach)]], axis=1)
        out = outside.mean(axis=1) if outside.size else np.zeros_like(inside)
        return float(np.max(inside - out))

    return min(one(y0 - up, y0 + down), one(y1 - down, y1 + up))


def _box(angle: float, y0: float, y1: float, xl: float, xr: float, h: int) -> tuple[float, float, float, float]:
    t = math.tan(math.radians(angle))
    lefts = [xl + t * (y - h / 2) for y in (y0, y1)]
    rights = [xr + t * (y - h / 2) for y in (y0, y1)]
    rim = RIM_PER_WIDTH * (xr - xl)
    return min(lefts), y0 - rim, max(rights) + 1, y1 + rim


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


def _rig(kept: list[tuple[float, tuple[float, ...]]]) -> list[tuple[float, tuple[float, ...]]]:
    """The set of same-sized, side-by-side cylinders with the highest total score."""
    best: tuple[float, list] = (0.0, [])
    for score, box in kept[:5]:
        bw, bh = box[2] - box[0], box[3] - box[1]
        chosen = [(score, box)]
        for s, b in kept:
            if b is box or s < SET_SCORE_FRACTION * score:
                continue
            w, h = b[2] - b[0], b[3] - b[1]
            if not (SAME_SIZE[0] < w / bw < SAME_SIZE[1] and SAME_SIZE[0] < h / bh < SAME_SIZE[1]
                    and abs(b[1] - box[1]) < 0.25 * bh):
                continue
            if all(_x_overlap(b, o) <= 0.1 for _, o in chosen):
                chosen.append((s, b))
        total = sum(s for s, _ in chosen)
        if total > best[0]:
            best = (total, chosen)
    return best[1]


def find_side_cylinders(grey: np.ndarray) -> SideFind:
    """Side-view cylinders of a grey median frame, left to right."""
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
    pairs = _wall_pairs(gx)
    if not len(pairs):
        return SideFind((), 0.0)
    pairs = pairs[np.argsort(-pairs[:, 0])][:MAX_CANDIDATES]
    sheared_gy: dict[float, np.ndarray] = {}
    scored = []
    for walls, angle, y0, y1, xl, xr in pairs:
        if angle not in sheared_gy:
            sheared_gy[angle] = _shear(gy, math.tan(math.radians(angle)))
        rims = _rim_score(sheared_gy[angle], int(y0), int(y1), int(xl), int(xr))
        scored.append((walls + rims, _box(angle, y0, y1, xl, xr, h)))
    scored.sort(key=lambda c: -c[0])
    kept: list[tuple[float, tuple[float, ...]]] = []
    for score, box in scored:
        if score <= MIN_SCORE:
            break
        if all(_box_iou(box, b) < NMS_IOU and not _inside(b, box) for _, b in kept):
            kept.append((score, box))
    rig = sorted(_rig(kept), key=lambda c: c[1][0])
    rois = []
    for _, (x0, y0, x1, y1) in rig:
        x0, y0 = max(0, int(round(x0 / scale))), max(0, int(round(y0 / scale)))
        x1, y1 = min(w0, int(round(x1 / scale))), min(h0, int(round(y1 / scale)))
        if x1 > x0 and y1 > y0:
            rois.append(Roi(x0, y0, x1 - x0, y1 - y0))
    return SideFind(tuple(rois), kept[0][0] if kept else 0.0)
