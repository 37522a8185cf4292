"""What moves in a rig's frames, above the noise floor, and how much of it a set of boxes holds.

The arena finders (side walls, top rims, the ``--view auto`` choice) all read the frames' temporal
spread (``stream.arena_finder.motion_map``) the same way: H.264 noise and flicker of a static rig
spread a few grey levels everywhere, the water and the mouse tens, so whatever is below a few times
the frame's median spread is not motion.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MOTION_NOISE_FACTOR", "above_noise", "share_inside"]

MOTION_NOISE_FACTOR = 3.0  # spread below this many times the frame's median spread is noise (H.264, flicker)


def above_noise(spread: np.ndarray) -> np.ndarray:
    """The temporal spread less its noise floor (``MOTION_NOISE_FACTOR`` times its median), at 0 below it."""
    s = spread.astype(np.float32)
    return np.maximum(0.0, s - MOTION_NOISE_FACTOR * float(np.median(s)))


def share_inside(motion: np.ndarray, boxes: Sequence[Sequence[float]]) -> float:
    """Share of ``motion``'s sum inside the union of ``boxes`` (x0, y0, x1, y1, ... in its pixels);
    1.0 when nothing moves."""
    mask = np.zeros(motion.shape, bool)
    for b in boxes:
        mask[max(0, int(round(b[1]))):max(0, int(round(b[3]))), max(0, int(round(b[0]))):max(0, int(round(b[2])))] = True
    total = float(motion.sum())
    return float(motion[mask].sum()) / total if total > 0 else 1.0
