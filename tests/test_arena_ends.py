"""stream.arena_ends: a side-view cylinder is closed at its rim and base, not at its water line,
when its walls fade above the water (thin plastic against the room), and a rig is one height."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stream.arena_ends import ellipse_profile, on_two_lines, same_height
from stream.arena_finder import detect_arenas, iou, motion_map
from stream.preprocess import Roi


def faint_walled_rig(n: int, frames: int = 12, width: int = 640, height: int = 400) -> tuple[list[np.ndarray], list[Roi]]:
    """``n`` cylinders drawn with OpenCV (not our renderer): strong water edges below the water line,
    walls and rim of a few grey levels above it, a mouse that moves at the surface."""
    cw = int(0.55 * width / n)
    ch = int(1.6 * cw) if n > 1 else int(0.8 * height)
    top = (height - ch) // 2
    gap = (width - n * cw) // (n + 1)
    rim = int(0.06 * cw)
    truth, out = [], []
    base = np.full((height, width, 3), 120, np.uint8)
    for i in range(n):
        x0 = gap + i * (cw + gap)
        x1 = x0 + cw
        water = top + int(0.42 * ch)
        cv2.rectangle(base, (x0, water), (x1, top + ch - rim), (175, 150, 120), -1)  # tinted water
        for x in (x0 + 1, x1 - 2):  # faint plastic walls above the water, clear ones below
            cv2.line(base, (x, top + rim), (x, water), (128, 128, 128), 2)
            cv2.line(base, (x, water), (x, top + ch - rim), (80, 80, 80), 2)
        for y in (top + rim, top + ch - rim):
            cv2.ellipse(base, ((x0 + x1) // 2, y), (cw // 2 - 1, rim), 0, 0, 360, (132, 132, 132), 2)
        cv2.line(base, (x0 + 2, water), (x1 - 3, water), (230, 230, 230), 2)
        truth.append(Roi(x0, top, cw, ch))
    rng = np.random.default_rng(0)
    for f in range(frames):
        img = base.copy()
        for i in range(n):
            x0 = gap + i * (cw + gap)
            water = top + int(0.42 * ch)
            mx = x0 + int((0.3 + 0.4 * ((f + 3 * i) % 7) / 6) * cw)
            cv2.ellipse(img, (mx, water + 4), (int(0.15 * cw), int(0.05 * cw)), 0, 0, 360, (40, 40, 40), -1)
            ripple = water + 1 + int(2 * np.sin(f + i))
            cv2.line(img, (x0 + 3, ripple), (x0 + cw - 4, ripple), (210, 210, 210), 1)
        out.append(np.clip(img + rng.normal(0, 1.0, img.shape), 0, 255).astype(np.uint8))
    return out, truth


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_cylinder_whose_walls_fade_above_the_water_is_closed_at_its_rim(n: int) -> None:
    frames, truth = faint_walled_rig(n)
    median = np.median(np.stack(frames), axis=0).astype(np.uint8)
    found = [a.roi for a in detect_arenas(median, "side", motion_map(frames))]
    assert len(found) == n, found
    for t in truth:
        best = max(found, key=lambda f: iou(f, t))
        assert iou(best, t) >= 0.8, (best, t)
        assert abs(best.y - t.y) <= 0.1 * t.h, (best, t)  # the rim, not the water line 42 % down


def test_a_cylinder_the_rig_lacks_is_added_where_its_water_moves() -> None:
    """The rig (two boxes) lacks the third and fourth cylinders, side by side (one run of motion):
    each gets the pair of walls at the rig's width that stands out there; an unwalled patch of
    motion (a hand) gets nothing."""
    from stream.arena_ends import CylinderEnds
    from stream.arena_walls import _box, _completed

    h, w = 120, 320
    g = np.full((h, w), 100, np.float32)
    motion = np.zeros((h, w), np.float32)
    walls = [(10, 60), (75, 125), (140, 190), (190, 240)]
    for xl, xr in walls:
        g[20:100, xl - 1:xl + 1] = g[20:100, xr - 1:xr + 1] = 40
        motion[50:56, xl + 8:xr - 8] = 20  # the mouse and its ripples
    motion[50:56, 262:300] = 20  # something that moves outside any cylinder
    g = cv2.GaussianBlur(g, (0, 0), 0.7)
    rig = [_box(0.0, 20, 100, xl, xr, h) for xl, xr in walls[:2]]
    found = _completed(rig, CylinderEnds(g, motion))
    assert len(found) == 4
    for b, (xl, xr) in zip(found, walls):
        assert abs(b[5] - xl) <= 1 and abs(b[6] - xr) <= 1, ([b[5:7] for b in found], walls)
    assert _completed(rig, CylinderEnds(g, np.zeros_like(motion))) == rig  # nothing moves: nothing added
    flicker = motion.copy()
    flicker[:, 140:240] = 0
    for y in range(24, 100, 12):  # the lines of a tiled panel shimmer under flickering light, at every row
        flicker[y:y + 2, 140:240] = 20
    assert _completed(rig, CylinderEnds(g, flicker)) == rig  # walls, and motion, but not at the water line


def test_without_motion_the_boxes_stay_as_the_walls_closed_them() -> None:
    frames, truth = faint_walled_rig(2)
    median = np.median(np.stack(frames), axis=0).astype(np.uint8)
    with_motion = detect_arenas(median, "side", motion_map(frames))
    still = detect_arenas(median, "side", None)
    assert [a.roi for a in with_motion] != [a.roi for a in still]  # the ends are what motion adds


def test_the_ellipse_profile_peaks_on_a_rim_and_not_on_a_straight_line_beside_it() -> None:
    g = np.zeros((120, 200), np.float32)
    cv2.ellipse(g, (100, 40), (80, 6), 0, 0, 360, 1.0, 1)  # a rim
    cv2.line(g, (10, 90), (190, 90), 1.0, 1)  # a straight line of the room, longer than the rim
    gx = cv2.dilate(np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0)), np.ones((3, 3), np.uint8))
    gy = cv2.dilate(np.abs(cv2.Sobel(g, cv2.CV_32F, 0, 1)), np.ones((3, 3), np.uint8))
    p = ellipse_profile(gx, gy, 20, 180, np.arange(120), b_frac=6 / 160)
    assert abs(int(np.argmax(p)) - 40) <= 1
    assert p[40] > 1.5 * p[84:97].max()


def test_a_rig_is_one_height_and_keeps_the_end_that_lines_up() -> None:
    spans = [(10.0, 110.0), (12.0, 111.0), (11.0, 160.0)]  # the third ran on into the room below
    assert same_height(spans) == [(10.0, 110.0), (12.0, 111.0), (11.0, 111.0)]
    spans = [(10.0, 110.0), (12.0, 111.0), (-30.0, 112.0)]  # the third's rim on a tile joint above it
    assert same_height(spans) == [(10.0, 110.0), (12.0, 111.0), (12.0, 112.0)]
    assert same_height([(0.0, 50.0)]) == [(0.0, 50.0)]


def test_a_rigs_rims_and_bases_lie_on_two_lines() -> None:
    """Camera roll slopes both lines; the fourth cylinder's rim was taken at its water line and its
    base at a reflection below it (side rig seed 7: the whole box 30 rows low)."""
    xs = [50.0, 150.0, 250.0, 350.0]
    true = [(10.0 + 0.1 * x, 110.0 + 0.1 * x) for x in xs]
    spans = true[:3] + [(true[3][0] + 30.0, true[3][1] + 30.0)]
    assert np.allclose(on_two_lines(spans, xs), true)
    noisy = [(a + d, b - d) for (a, b), d in zip(true, (1.0, -1.0, 1.0, -1.0))]  # rows of noise each end has alone
    out = on_two_lines(noisy, xs)
    assert max(abs(o[0] - t[0]) + abs(o[1] - t[1]) for o, t in zip(out, true)) < max(
        abs(n[0] - t[0]) + abs(n[1] - t[1]) for n, t in zip(noisy, true))
    converging = [(10.0 + 0.05 * x, 110.0 - 0.05 * x) for x in xs]  # perspective: rims and bases need not be parallel
    assert np.allclose(on_two_lines(converging, xs), converging)
    two = [(10.0, 110.0), (40.0, 140.0)]  # two cylinders cannot tell which one is off
    assert on_two_lines(two, xs[:2]) == two


def test_each_wall_is_fitted_again_alone_between_rim_and_base() -> None:
    """A tapered cylinder (wider at the rim: the camera looks down into it) between walls the pair
    search gave one tilt: each wall is refitted with its own tilt, so the box reaches both walls' ends."""
    from stream.arena_walls import _refit_walls

    h, w = 200, 300
    g = np.zeros((h, w), np.float32)
    cv2.line(g, (90, 30), (100, 170), 1.0, 1)  # left wall leans right going down
    cv2.line(g, (210, 30), (200, 170), 1.0, 1)  # right wall leans left
    cv2.line(g, (60, 10), (60, 190), 1.0, 1)  # a line of the room, outside the reach
    gx = cv2.dilate(np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0)), np.ones((1, 3), np.uint8))
    found = _refit_walls(gx, 0.0, 95.0, 205.0, 30.0, 170.0, h)  # walls found upright in their middle
    assert found is not None
    assert abs(found[0] - 90) <= 2 and abs(found[1] - 211) <= 2  # 90..210 inclusive, +1 as a box edge
    assert _refit_walls(gx, 0.0, 95.0, 205.0, 30.0, 36.0, h) is None  # too short to fit a line
    beyond = _refit_walls(gx, 0.0, 95.0, 205.0, -40.0, 260.0, h)  # a rim or base past the frame's edge
    assert beyond is not None and beyond[0] < 95 < 205 < beyond[1]


def test_walls_that_stop_at_the_water_line_have_their_base_sought_below_it() -> None:
    """A pale room behind clear water shows the walls only above the water, so the wall finder
    closes the box at the water line; the base ellipse further down is the cylinder's end (side
    seed 140 of the sweep: IoU 0.41 -> 0.86). Without a base to see, the box stays as it was."""
    from stream.arena_ends import CylinderEnds

    h, w = 240, 200
    xl, xr, rim, water, base = 60, 140, 40, 100, 200  # water 0.375 of the height below the rim

    def picture(with_base: bool) -> np.ndarray:
        g = np.full((h, w), 200, np.float32)
        g[rim:water, xl - 1:xl + 1] = g[rim:water, xr - 1:xr + 1] = 120  # walls above the water
        end = base if with_base else h
        g[water:end, xl - 1:xl + 1] = g[water:end, xr - 1:xr + 1] = 185  # all but lost in it
        for y in (rim, base) if with_base else (rim,):
            cv2.ellipse(g, ((xl + xr) // 2, y), ((xr - xl) // 2, 5), 0, 0, 360, 120, 2)
        return cv2.GaussianBlur(g, (0, 0), 0.7)

    motion = np.zeros((h, w), np.float32)
    motion[water - 3:water + 3, xl + 10:xr - 10] = 20  # the mouse and its ripples
    top, bottom = CylinderEnds(picture(True), motion).ends(0.0, xl, xr, rim, water + 2)
    assert abs(top - rim) <= 4, top
    assert abs(bottom - base) <= 4, bottom
    assert CylinderEnds(picture(False), motion).ends(0.0, xl, xr, rim, water + 2) == (rim, water + 2)
