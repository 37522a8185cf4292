"""Top-view cylinders: circles whose rim edge runs all the way round, all of one size.

Hough circles alone propose tile corners, clutter and the inner edge of a thick rim. Each proposal
is therefore checked and corrected on a copy scaled to ``WORK_SIZE_PX``::

    Hough circles, searched in three bands of radii (from the frame's short side)
      -> centre nudged to where the edge runs round most of the circle (a rim cut by the frame edge)
      -> radius moved out to the rim's outer edge (the ROI is the cylinder, not its inner wall)
      -> support: share of the circumference with a radial edge (a rim ~0.9, a tile square ~0.5)
      -> non-overlapping circles, then the set of same-radius circles with the most area x support;
         a weak rim joins it only if it stands out from the floor (motion or another shade inside)
      -> with three or more, where the rig's rows and columns cross and no cylinder was taken, a
         circle of the rig's radius there joins it if it runs round as far as the rig's others must
      -> with three or more, a circle far off the rig's median radius is looked for again at it

Each ROI is the circle's bounding box (what ``export-synth`` writes as the truth).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from stream.arena_motion import above_noise
from stream.preprocess import Roi

__all__ = ["TopFind", "find_top_cylinders"]

log = logging.getLogger(__name__)

WORK_SIZE_PX = 480  # long side of the searched copy: rims stay >= 2 px, a search takes < 1 s
MIN_RADIUS_FRACTION = 0.07  # of the short side: 4 cylinders in a 2x2 grid with wide margins
MAX_RADIUS_FRACTION = 0.55  # one cylinder filling the frame, its rim a little cut
MIN_DIST_FRACTION = 0.1  # Hough centres closer than this (of the short side) are one circle
HOUGH_CANNY, HOUGH_VOTES = 60, 18  # permissive: every proposal is checked for support after
MAX_PROPOSALS = 25  # Hough proposals checked per band of radii (strongest first)
# bands of radii (of the short side) searched apart, overlapping: 2x2 rigs, 1-2 cylinders, one filling it
RADIUS_BANDS = ((MIN_RADIUS_FRACTION, 0.16), (0.13, 0.3), (0.26, MAX_RADIUS_FRACTION))
SAMPLES = 96  # points round the circumference
EDGE_FRACTION = 0.5  # an edge point is at least this fraction of the image's 90th-percentile gradient
MIN_SUPPORT = 0.35  # of the circumference: less is a tile, a blob or clutter (dim rims reach ~0.4)
SET_SUPPORT_FRACTION = 0.55  # a cylinder of the rig has at least this fraction of the best circle's support
SAME_RADIUS = (0.8, 1.25)  # the cylinders of one rig have the same radius (ratio to the anchor's)
OUTER_SUPPORT_FRACTION = 0.6  # the rim's outer edge runs round at least this fraction as far as the best edge near it
# motion (the frames' temporal spread): the mouse and the water move inside the cylinders only
MOTION_SHARE = 0.05  # of the frame's motion inside a circle of the rig's radius: a place to look for a rim
MOTION_PROPOSALS = 8  # such places checked (the most motion first, a radius apart: one per cylinder)
MOTION_REACH = 0.7  # of the radius: the rim's centre is searched this far from the motion's (the mouse is off-centre)
APART = 0.9  # of the sum of two radii: centres closer are one circle found twice
# ... and the cylinders of one rig do not overlap (the closest of the sweep's rigs: 1.04); a tile
# square's rim between two cylinders overlaps them
RIG_APART = 0.97
SURE_SUPPORT = 0.75  # a rim this complete is a cylinder's (a tile square's reaches ~0.6)
MOVING_SHARE = 0.02  # of the frame's motion inside a less certain circle: a mouse or its ripples
INSIDE, RING = 0.75, (1.15, 1.4)  # of the radius: the water inside, the floor around (rim and shadow left out)
OTHER_SHADE = 1.0  # median inside vs around, in the floor's own spread (+1): the water is another shade
ONE_RADIUS = 0.1  # of the rig's median radius: a circle further off took another edge for its rim
GRID_REACH = 0.35  # of the rig's radius: centres this close share a row or column (perspective, placement)
ANGLES = np.linspace(0, 2 * math.pi, SAMPLES, endpoint=False)


@dataclass(frozen=True)
class TopFind:
    """Cylinders found and how clearly: ``score`` is their mean rim support (0 = none, 1 = every point)."""

    rois: tuple[Roi, ...]
    score: float


def _radial(gx: np.ndarray, gy: np.ndarray, cx: float, cy: float, r: float, signed: bool = False) -> np.ndarray | None:
    """|radial gradient| (or, ``signed``, the gradient itself) at the circle's points inside the
    frame (None if most are outside)."""
    h, w = gx.shape
    xs = np.round(cx + r * np.cos(ANGLES)).astype(int)
    ys = np.round(cy + r * np.sin(ANGLES)).astype(int)
    inb = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    if inb.mean() < 0.5:
        return None
    g = gx[ys[inb], xs[inb]] * np.cos(ANGLES[inb]) + gy[ys[inb], xs[inb]] * np.sin(ANGLES[inb])
    return g if signed else np.abs(g)


def _support(gx: np.ndarray, gy: np.ndarray, cx: float, cy: float, r: float, edge: float) -> float:
    best = 0.0
    for dr in (-2, -1, 0, 1, 2):  # the drawn rim is not a perfect circle after the camera
        g = _radial(gx, gy, cx, cy, r + dr)
        if g is not None:
            best = max(best, float(np.mean(g > edge)) * len(g) / SAMPLES)
    return best


def _outer_radius(gx: np.ndarray, gy: np.ndarray, cx: float, cy: float, r: float, edge: float) -> float:
    """The outermost radius near ``r`` whose edge runs round, one way (light to dark or dark to
    light), about as far as the best one there: a thick rim's outer edge runs round as its inner
    edge does, while a shadow on one side, the lines of a striped floor or a tile grid (each line
    crossed both ways) make it only in places."""
    radii = np.arange(max(3.0, 0.85 * r), 1.25 * r + 1, 0.5)
    profile = np.array([_one_way(gx, gy, cx, cy, rr, edge) for rr in radii])
    if profile.max() <= 0:
        return r
    i = int(np.nonzero(profile >= OUTER_SUPPORT_FRACTION * profile.max())[0][-1])
    while i + 1 < len(profile) and profile[i + 1] >= profile[i]:  # climb to that edge's peak
        i += 1
    return float(radii[i])


def _one_way(gx: np.ndarray, gy: np.ndarray, cx: float, cy: float, r: float, edge: float) -> float:
    """Share of the circumference whose radial edge exceeds ``edge`` with the commoner sign."""
    g = _radial(gx, gy, cx, cy, r, signed=True)
    return 0.0 if g is None else max(float(np.sum(g > edge)), float(np.sum(g < -edge))) / SAMPLES


def _apart(a: tuple[float, ...], b: tuple[float, ...], fraction: float = APART) -> bool:
    return math.hypot(a[1] - b[1], a[2] - b[2]) > fraction * (a[3] + b[3])


def _nudged(gx: np.ndarray, gy: np.ndarray, cx: float, cy: float, r: float, edge: float, step: float,
            reach: int) -> tuple[float, float, float]:
    """(support, cx, cy) of the circle of radius ``r`` with the most support on the grid of centres
    ``reach`` steps of ``step`` around (cx, cy)."""
    return max((_support(gx, gy, cx + dx * step, cy + dy * step, r, edge), cx + dx * step, cy + dy * step)
               for dx in range(-reach, reach + 1) for dy in range(-reach, reach + 1))


def _checked(gx: np.ndarray, gy: np.ndarray, cx: float, cy: float, r: float, edge: float) -> tuple[float, ...]:
    """A proposal's (support, cx, cy, r): centre nudged to the most support, radius to the rim's outer edge."""
    _, cx, cy = _nudged(gx, gy, cx, cy, r, edge, max(1.0, 0.04 * r), 3)
    r = _outer_radius(gx, gy, cx, cy, float(r), edge)
    return (_support(gx, gy, cx, cy, r, edge), float(cx), float(cy), r)


def _motion_places(m: np.ndarray, r: float) -> list[tuple[float, float]]:
    """Centres (the most motion first) of circles of radius ``r`` holding ``MOTION_SHARE`` of the motion."""
    total = float(m.sum())
    if total <= 0:
        return []
    k = int(round(r))
    disk = np.zeros((2 * k + 1, 2 * k + 1), np.float32)
    cv2.circle(disk, (k, k), k, 1.0, -1)
    held = cv2.filter2D(m, -1, disk, borderType=cv2.BORDER_CONSTANT) / total
    step = max(2, k // 8)
    ys, xs = np.mgrid[0:m.shape[0]:step, 0:m.shape[1]:step]
    v = held[ys, xs]
    places: list[tuple[float, float]] = []
    for i in np.argsort(-v, axis=None):
        if v.flat[i] < MOTION_SHARE or len(places) >= MOTION_PROPOSALS:
            break
        x, y = float(xs.flat[i]), float(ys.flat[i])
        if all(math.hypot(x - px, y - py) >= r for px, py in places):
            places.append((x, y))
    return places


def _proposals(blurred: np.ndarray, short: int) -> list[tuple[float, float, float]]:
    """Hough circles, the strongest ``MAX_PROPOSALS`` of each band of radii. One search over all
    radii keeps one circle per centre, with the radius that votes most there: on a tiled floor
    that is a ring of tile corners around the cylinder, and its rim is never proposed."""
    out: list[tuple[float, float, float]] = []
    for lo, hi in RADIUS_BANDS:
        circles = cv2.HoughCircles(blurred, cv2.HOUGH_GRADIENT, dp=1, minDist=MIN_DIST_FRACTION * short,
                                   param1=HOUGH_CANNY, param2=HOUGH_VOTES, minRadius=int(lo * short),
                                   maxRadius=int(hi * short))
        if circles is not None:
            out += [tuple(map(float, c)) for c in circles[0][:MAX_PROPOSALS]]
    return out


def _stands_out(c: tuple[float, ...], f: np.ndarray, m: np.ndarray | None) -> bool:
    """A circle is one of the rig's cylinders if its rim is plain, or if it differs from the floor
    around it: something moves inside (a mouse, its ripples), or its inside is another shade (the
    water). The squares of a tiled floor make rims of support ~0.55 at the cylinders' size, with
    the same floor inside and out, and nothing moving."""
    if c[0] >= SURE_SUPPORT:
        return True
    h, w = f.shape
    _, cx, cy, r = c
    x0, x1 = max(0, int(cx - RING[1] * r)), min(w, int(cx + RING[1] * r) + 1)
    y0, y1 = max(0, int(cy - RING[1] * r)), min(h, int(cy + RING[1] * r) + 1)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    d = np.hypot(xs - cx, ys - cy)
    inside, ring = d <= INSIDE * r, (d >= RING[0] * r) & (d <= RING[1] * r)
    if not inside.any() or not ring.any():
        return False
    if m is not None and float(m[y0:y1, x0:x1][inside].sum()) >= MOVING_SHARE * float(m.sum()):
        return True
    patch = f[y0:y1, x0:x1]
    return abs(float(np.median(patch[inside])) - float(np.median(patch[ring]))) >= OTHER_SHADE * (float(patch[ring].std()) + 1.0)


def _grid_completed(gx: np.ndarray, gy: np.ndarray, chosen: list[tuple[float, ...]], kept: list[tuple[float, ...]],
                    edge: float, floor: float) -> list[tuple[float, ...]]:
    """A rig of three or more stands in rows and columns: where a row and a column of it cross and
    no cylinder was taken, a circle of the rig's radius there is one of its cylinders (a dim rim
    whose mouse hardly moved, on a floor as busy as the water is dark) if a proposal there runs
    round as far as the rig's others must (``floor``: their support) or a fresh look finds a plain
    rim (``SURE_SUPPORT``)."""
    if len(chosen) < 3:
        return chosen
    r0 = float(np.median([c[3] for c in chosen]))

    def lines(values: list[float]) -> list[float]:
        out: list[list[float]] = []
        for v in sorted(values):
            if out and v - out[-1][-1] <= GRID_REACH * r0:
                out[-1].append(v)
            else:
                out.append([v])
        return [float(np.mean(g)) for g in out]

    cols, rows = lines([c[1] for c in chosen]), lines([c[2] for c in chosen])
    out = list(chosen)
    for x in cols:
        for y in rows:
            if any(math.hypot(c[1] - x, c[2] - y) <= GRID_REACH * r0 for c in out):
                continue
            near = [k for k in kept if math.hypot(k[1] - x, k[2] - y) <= GRID_REACH * r0
                    and abs(k[3] - r0) <= ONE_RADIUS * r0 and k[0] >= floor]
            c = max(near, default=None, key=lambda k: k[0])
            if c is None:
                _, cx, cy = _nudged(gx, gy, x, y, r0, edge, 0.05 * r0, 4)
                c = _checked(gx, gy, cx, cy, r0, edge)
                if c[0] < SURE_SUPPORT:
                    continue
            if all(_apart(c, o, RIG_APART) for o in out):
                out.append(c)
    return out


def _one_radius(gx: np.ndarray, gy: np.ndarray, chosen: list[tuple[float, ...]], edge: float) -> list[tuple[float, ...]]:
    """The cylinders of one rig are one size: with three or more, a circle whose radius is off the
    median by more than ``ONE_RADIUS`` (a shadow or a floor line outside the rim) is looked for
    again at the median radius, near where it was."""
    if len(chosen) < 3:
        return chosen
    r0 = float(np.median([c[3] for c in chosen]))
    out = []
    for c in chosen:
        if abs(c[3] - r0) > ONE_RADIUS * r0:
            support, cx, cy = _nudged(gx, gy, c[1], c[2], r0, edge, 0.05 * r0, 4)
            c = (support, float(cx), float(cy), r0)
        out.append(c)
    return out


def find_top_cylinders(grey: np.ndarray, motion: np.ndarray | None = None) -> TopFind:
    """Top-view cylinders of a grey median frame; ``motion`` (the frames' temporal spread, same
    size, see ``stream.arena_finder.motion_map``) shows where to look again for rims Hough missed."""
    h0, w0 = grey.shape
    scale = WORK_SIZE_PX / max(h0, w0)
    g = cv2.resize(grey, (max(8, int(round(w0 * scale))), max(8, int(round(h0 * scale)))),
                   interpolation=cv2.INTER_AREA)
    short = min(g.shape)
    blurred = cv2.GaussianBlur(g, (0, 0), 1.5)
    f = blurred.astype(np.float32)
    gx = cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3) / 8
    edge = max(2.0, EDGE_FRACTION * float(np.percentile(np.hypot(gx, gy), 90)))
    found = [_checked(gx, gy, cx, cy, r, edge) for cx, cy, r in _proposals(blurred, short)]
    found.sort(key=lambda c: -c[0])
    m = None
    if motion is not None:
        m = above_noise(cv2.resize(motion.astype(np.float32), (g.shape[1], g.shape[0]), interpolation=cv2.INTER_AREA))
        m = m if m.sum() > 0 else None
    if m is not None and found and found[0][0] >= MIN_SUPPORT:
        # a rim Hough missed (a busy floor outvotes it): look again, at the best rim's radius,
        # wherever a circle of that size would hold the motion
        r0 = found[0][3]
        for px, py in _motion_places(m, r0):
            _, cx, cy = _nudged(gx, gy, px, py, r0, edge, 0.1 * r0, int(round(MOTION_REACH / 0.1)))
            found.append(_checked(gx, gy, cx, cy, r0, edge))
        found.sort(key=lambda c: -c[0])
    log.debug("circles (support, cx, cy, r at scale %.3f): %s", scale, [tuple(round(v, 2) for v in c) for c in found])
    kept: list[tuple[float, ...]] = []
    for c in found:
        if c[0] >= MIN_SUPPORT and all(_apart(c, k) for k in kept):
            kept.append(c)
    best_set: tuple[float, list] = (0.0, [])
    floor = SET_SUPPORT_FRACTION * kept[0][0] if kept else 0.0  # what a cylinder of the rig runs round
    for anchor in kept[:4]:
        if anchor[0] < floor:
            break
        chosen: list[tuple[float, ...]] = []
        for k in kept:
            if (SAME_RADIUS[0] < k[3] / anchor[3] < SAME_RADIUS[1] and k[0] >= floor
                    and all(_apart(k, o, RIG_APART) for o in chosen) and _stands_out(k, f, m)):
                chosen.append(k)
        total = sum(k[0] * k[3] ** 2 for k in chosen)  # area x support: big rims beat rows of tile squares
        if total > best_set[0]:
            best_set = (total, chosen)
    chosen = _one_radius(gx, gy, _grid_completed(gx, gy, best_set[1], kept, edge, floor), edge)
    rois = []
    for _, cx, cy, r in chosen:
        x0, y0 = max(0, int(round((cx - r) / scale))), max(0, int(round((cy - r) / scale)))
        x1, y1 = min(w0, int(round((cx + r) / scale))), min(h0, int(round((cy + r) / scale)))
        rois.append(Roi(x0, y0, x1 - x0, y1 - y0))
    return TopFind(tuple(rois), float(np.mean([k[0] for k in chosen])) if chosen else 0.0)
