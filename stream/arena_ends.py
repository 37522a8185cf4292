"""Where a side-view cylinder ends: its rim and its base, between walls already found.

The walls of a side-view cylinder are strong edges below the water line (water against the room)
and often faint above it, where only thin plastic stands against the room; a wall finder that
scores edge strength therefore closes the box at the water line. The rim is still there to see: a
thin ellipse that joins the two walls at their top, with the walls going on below it and nothing
of them above. So, between walls at sheared columns ``xl``, ``xr`` (``stream.arena_walls``)::

    water line  = the row where the frames' motion peaks between the walls (ripples, the mouse)
    rim (top)   = best row, 0.3-1.4 water depths above the water line, by
                  ellipse edge there, less the same just above  +  wall below it, less wall above it
                  (no clear rim: the water line less WATER_TO_RIM water depths)
    base        = best row within BASE_REACH widths of the walls' own bottom, by the same score upside down
                  (walls that stop at the water line: below it, as far as WATER_BELOW_RIM and
                  MAX_HEIGHT_PER_WIDTH allow from the rim)
    rig         = the cylinders of one rig are one height: a box far from the median height takes it,
                  from whichever of its ends lines up with the others'; from three cylinders on, the
                  rims lie on one line and the bases on another (``on_two_lines``)

Without motion (a still image, an empty rig) the water line is unknown and the boxes stay as the
wall finder closed them.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["CylinderEnds", "ellipse_profile", "on_two_lines", "same_height", "shear"]

RIM_PER_WIDTH = 0.06  # the rim ellipse's half-height beyond the wall's end, in cylinder widths
ELLIPSE_POINTS = 96  # samples along a rim ellipse
# the water's surface lies 0.3-0.56 of the cylinder's height below its rim in every rig we render and
# in FST practice (15 cm of water in a 25 cm cylinder: 0.4): the rim is 0.43-1.27 water depths above it
RIM_RANGE = (0.3, 1.4)  # water depths above the water line searched for the rim
# water depths from the water line (where the motion peaks, a little below the surface) to the rim
# when no rim shows: the median over the 40 randomized side rigs of the sweep (5-95 %: 0.36-0.95)
WATER_TO_RIM = 0.52
BASE_REACH = 0.2  # cylinder widths around the walls' own bottom searched for the base ellipse
MIN_END_SCORE = 0.05  # ellipse + wall-end evidence (in 99th-percentile edge units) for an end that shows
SAME_HEIGHT = 0.08  # a box whose height is further than this from the rig's median takes the median
WALL_REACH = 0.3  # cylinder widths of wall compared below/above an end
MIN_DEPTH_FRACTION = 0.2  # of the box's width: a shallower "water" is not the water line
LINE_TOLERANCE = 0.05  # of the rig's median height: an end this far from the rig's line of ends is off it
# walls that stop at the water line (a pale room shows no wall through the water): the base lies
# where the rim and the water line say, the water's surface at 0.3-0.56 of the height below the rim
# (a little wider here), and the cylinder at most this many widths tall (FST cylinders: 1.15-2)
WATER_BELOW_RIM = (0.28, 0.6)
MAX_HEIGHT_PER_WIDTH = 2.3


def shear(img: np.ndarray, t: float) -> np.ndarray:
    """Columns of the result follow lines x = x0 + t * (y - H/2) of ``img``."""
    h, w = img.shape
    m = np.float32([[1, t, -t * h / 2], [0, 1, 0]])
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def ellipse_profile(gx: np.ndarray, gy: np.ndarray, xl: float, xr: float, ys: np.ndarray,
                    b_frac: float = RIM_PER_WIDTH) -> np.ndarray:
    """Mean edge across a rim ellipse between walls ``xl``, ``xr``, centred on each row of ``ys``:
    the edge normal to the ellipse, so that a straight line of the room meets only part of it."""
    h, w = gx.shape
    a, xc = (xr - xl) / 2, (xl + xr) / 2
    b = max(1.0, b_frac * (xr - xl))
    th = np.linspace(0, 2 * np.pi, ELLIPSE_POINTS, endpoint=False)
    nx, ny = np.cos(th) / a, np.sin(th) / b
    n = np.hypot(nx, ny)
    nx, ny = np.abs(nx / n), np.abs(ny / n)
    px = np.clip(np.round(xc + a * np.cos(th)).astype(int), 0, w - 1)
    py = np.round(ys[:, None] + b * np.sin(th)[None, :]).astype(int)
    inside = (py >= 0) & (py < h)
    py = np.clip(py, 0, h - 1)
    return np.where(inside, nx * gx[py, px] + ny * gy[py, px], 0.0).mean(axis=1)


def _rows_mean(p: np.ndarray, a: float, b: float) -> float:
    a, b = max(0, int(a)), min(len(p), int(b))
    return float(p[a:b].mean()) if b > a else 0.0


def _wall_rows(gx: np.ndarray, xl: float, xr: float) -> np.ndarray:
    """Per row, how much both walls stand out from the room just outside them (the weaker wall)."""
    w = gx.shape[1]
    cw = xr - xl

    def one(x: float, outward: int) -> np.ndarray:
        x = int(round(x))
        edge = gx[:, max(0, x - 1):x + 2].max(axis=1)
        a, b = sorted((x + outward * int(0.04 * cw + 2), x + outward * int(0.15 * cw + 4)))
        a, b = max(0, a), min(w, b)
        return edge - (np.median(gx[:, a:b], axis=1) if b > a else 0.0)

    return np.minimum(one(xl, -1), one(xr, +1))


class CylinderEnds:
    """Rim and base of wall pairs on one work-scale picture ``g`` (blurred grey) with its motion."""

    def __init__(self, g: np.ndarray, motion: np.ndarray) -> None:
        gx = np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3))
        gy = np.abs(cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3))
        norm = float(np.percentile(np.maximum(gx, gy), 99)) + 1e-3
        k = np.ones((3, 3), np.uint8)  # a thin rim line's two edges meet the ellipse's sample
        self._gx, self._gy = cv2.dilate(gx / norm, k), cv2.dilate(gy / norm, k)
        self._motion = motion.astype(np.float32)
        self._sheared: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def edges(self) -> np.ndarray:
        """|d/dx| of the picture, unsheared, in 99th-percentile units (a thin line's edges joined)."""
        return self._gx

    @property
    def height(self) -> int:
        return self._gx.shape[0]

    def wall_columns(self, angle: float, y0: float, y1: float) -> np.ndarray:
        """Per sheared column, the mean edge of a wall there between rows ``y0`` and ``y1``."""
        gx = self._at(angle)[0]
        a, b = max(0, int(y0)), min(gx.shape[0], int(y1))
        if b <= a:
            return np.zeros(gx.shape[1], np.float32)
        return cv2.dilate(gx[a:b], np.ones((1, 3), np.uint8)).mean(axis=0)

    def motion(self, angle: float) -> np.ndarray:
        """The frames' motion, sheared like the walls at ``angle``."""
        return self._at(angle)[2]

    def _at(self, angle: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if angle not in self._sheared:
            t = math.tan(math.radians(angle))
            self._sheared[angle] = (shear(self._gx, t), shear(self._gy, t), shear(self._motion, t))
        return self._sheared[angle]

    def ends(self, angle: float, xl: float, xr: float, y0: float, y1: float) -> tuple[float, float]:
        """Rows of the rim and base ellipses' centres for walls (sheared columns ``xl``, ``xr``)
        that the wall finder closed at ``y0``, ``y1``; unchanged where the water line is unknown.
        Walls closed at the water line (the water shows no wall) have their base sought below it."""
        gx, gy, motion = self._at(angle)
        h = gx.shape[0]
        cw = xr - xl
        rb = RIM_PER_WIDTH * cw
        a, b = int(xl) + 2, int(xr) - 1
        if b <= a:
            return y0, y1
        rows = np.convolve(motion[:, a:b].mean(axis=1), np.ones(3) / 3, "same")
        if rows.max() <= 0:
            return y0, y1
        water = int(np.argmax(rows))
        stops_at_water = y1 - water < MIN_DEPTH_FRACTION * cw  # the walls stop at the water line: y0 is the rim
        if stops_at_water and water - y0 < MIN_DEPTH_FRACTION * cw:
            return y0, y1
        profile = ellipse_profile(gx, gy, xl, xr, np.arange(h))
        wall = _wall_rows(gx, xl, xr)
        reach = WALL_REACH * cw

        def base_score(y: int) -> float:  # an ellipse with walls above it and none below
            return (profile[y] - _rows_mean(profile, y + 3 * rb, y + 4 * rb + 6)
                    + _rows_mean(wall, y - rb - reach, y - rb) - _rows_mean(wall, y + rb, y + rb + reach))

        if stops_at_water:
            above = water - y0
            below = range(int(max(water + MIN_DEPTH_FRACTION * cw, y0 + above / WATER_BELOW_RIM[1])),
                          int(min(h - rb - 1, y0 + MAX_HEIGHT_PER_WIDTH * cw, y0 + above / WATER_BELOW_RIM[0])))
            base = max(below, key=base_score, default=None)
            if base is None or base_score(base) <= MIN_END_SCORE:
                return y0, y1
            y1 = float(base)
        depth = y1 - water

        def rim_score(y: int) -> float:  # an ellipse with walls below it (down to the water) and none above
            return (profile[y] - _rows_mean(profile, y - 4 * rb - 6, y - 3 * rb)
                    + _rows_mean(wall, y + rb, min(y + rb + reach, water - rb))
                    - _rows_mean(wall, y - rb - reach, y - rb))

        tops = range(max(int(rb) + 1, int(water - RIM_RANGE[1] * depth)), int(water - RIM_RANGE[0] * depth))
        top = max(tops, key=rim_score, default=None)
        if top is None or rim_score(top) <= MIN_END_SCORE:
            top = water - WATER_TO_RIM * depth
        bases = range(int(max(water + 0.3 * depth, y1 - BASE_REACH * cw)), int(min(h - rb - 1, y1 + BASE_REACH * cw)))
        base = max(bases, key=base_score, default=None)
        if base is None or base_score(base) <= MIN_END_SCORE:
            base = y1
        return float(top), float(base)


def same_height(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The cylinders of one rig are one height: a (top, bottom) far from the median height keeps
    the end that lines up with the rig's other ends (the median top or bottom; a joint of the tiles
    taken for one rim moves that end alone) and takes the median height."""
    if len(spans) < 2:
        return spans
    height = float(np.median([b - a for a, b in spans]))
    top, bottom = float(np.median([a for a, _ in spans])), float(np.median([b for _, b in spans]))
    out = []
    for a, b in spans:
        if abs(b - a - height) <= SAME_HEIGHT * height:
            out.append((a, b))
        elif abs(a - top) <= abs(b - bottom):
            out.append((a, a + height))
        else:
            out.append((b - height, b))
    return out


def on_two_lines(spans: list[tuple[float, float]], centres: list[float]) -> list[tuple[float, float]]:
    """The cylinders of one rig stand on one table: their rims lie on one line and their bases on
    another (level, sloped by the camera's roll, converging with perspective). From three
    cylinders on, the pair whose two lines the most cylinders agree with (both ends within
    ``LINE_TOLERANCE``; ties: the flatter lines) picks the cylinders that agree, the lines are
    fitted to them, and every end is put on its line: one cylinder's rim taken at the water line or
    its base at a reflection below it moves to where its neighbours say, and the others lose the
    few rows of noise each end has alone. Fewer than two that agree: the spans as they are."""
    n = len(spans)
    if n < 3:
        return spans
    top = np.array([a for a, _ in spans], np.float64)
    base = np.array([b for _, b in spans], np.float64)
    x = np.asarray(centres, np.float64)
    tol = LINE_TOLERANCE * float(np.median(base - top))
    best: tuple[tuple[int, float], np.ndarray] | None = None
    for i in range(n):
        for j in range(i + 1, n):
            if abs(x[j] - x[i]) < 1e-6:
                continue
            st, sb = (top[j] - top[i]) / (x[j] - x[i]), (base[j] - base[i]) / (x[j] - x[i])
            agree = ((np.abs(top - top[i] - st * (x - x[i])) <= tol) & (np.abs(base - base[i] - sb * (x - x[i])) <= tol))
            key = (int(agree.sum()), -(abs(st) + abs(sb)))
            if best is None or key > best[0]:
                best = (key, agree)
    if best is None or best[0][0] < 2:
        return spans
    agree = best[1]
    on_top = np.polyval(np.polyfit(x[agree], top[agree], 1), x)
    on_base = np.polyval(np.polyfit(x[agree], base[agree], 1), x)
    return [(float(a), float(b)) for a, b in zip(on_top, on_base)]
