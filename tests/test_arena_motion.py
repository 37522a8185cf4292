"""stream.arena_motion: the noise floor of the frames' spread, and the share of motion boxes hold."""

from __future__ import annotations

import numpy as np
import pytest

from stream.arena_motion import MOTION_NOISE_FACTOR, above_noise, share_inside


def test_above_noise_takes_the_floor_off_and_nothing_below_it() -> None:
    spread = np.full((10, 10), 2.0, np.float64)  # a static rig's noise everywhere
    spread[4:6, 4:6] = 20.0  # the water and the mouse
    m = above_noise(spread)
    assert m.dtype == np.float32
    assert float(m[0, 0]) == 0.0
    assert float(m[5, 5]) == pytest.approx(20.0 - MOTION_NOISE_FACTOR * 2.0)


def test_share_inside_counts_overlapping_boxes_once_and_clips_to_the_frame() -> None:
    motion = np.zeros((10, 10), np.float32)
    motion[2:4, 2:4] = 1.0  # 4 units
    motion[8, 8] = 4.0  # 4 more, outside the boxes
    boxes = [(0, 0, 4, 4), (2.2, 1.6, 6, 6, "angle and walls ride along")]  # overlap; rounded to pixels
    assert share_inside(motion, boxes) == pytest.approx(0.5)
    assert share_inside(motion, [(-3, -3, 20, 20)]) == pytest.approx(1.0)
    assert share_inside(np.zeros((4, 4), np.float32), [(0, 0, 1, 1)]) == 1.0  # nothing moves
