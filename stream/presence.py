"""Is there an animal in the arena? The detector behind ``--trials auto``.

A trial starts when an animal appears in an empty arena and ends when it is taken out. The camera
sees an empty cylinder of water first; this detector learns that view and reports when something
large enough differs from it for long enough::

    crop (S, S, 3) -> grey, blurred -> divided by its own mean (lighting) -> |frame - empty view|
        -> > DIFF_THRESHOLD -> opened (ripples) -> area fraction >= MIN_AREA_FRACTION -> present
    present for CONFIRM_FRAMES in a row -> "appeared" at the first of them
    absent for ABSENT_S in a row        -> "removed" at the first of them

Why each step: a lamp warming up or daylight changes every pixel by the same factor, so frames
are compared after dividing by their mean brightness; water ripples are thin, faint and short-lived
structures, which the blur, the threshold and a morphological opening remove, while a mouse is a
compact blob that survives them. The empty view keeps adapting slowly while the arena is empty
(slow lighting drifts, a refilled cylinder), never while an animal is in it.

It needs an empty arena when it starts (the first ``BACKGROUND_FRAMES`` frames learn the view).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["PresenceConfig", "PresenceDetector", "PresenceEvent", "foreground_mask", "normalised_grey"]

BACKGROUND_FRAMES = 5  # frames averaged into the first empty view (1/3 s at 15 fps: averages sensor noise)
DIFF_THRESHOLD = 0.18  # |frame - empty| / mean brightness: a mouse on water differs by > 30 %, ripples by < 10 %
MIN_AREA_FRACTION = 0.006  # of the crop: a mouse in a 64 px crop covers ~1.5 %; a 3x3 ripple speck 0.2 %
CONFIRM_FRAMES = 7  # present this many frames in a row (0.47 s at 15 fps, the clip look-ahead) = appeared
ABSENT_S = 1.0  # absent this long = removed (a struggling mouse never leaves the view for a second)
BACKGROUND_RATE = 0.05  # per empty frame: the empty view follows a drift over ~20 frames (1.3 s)
BLUR_SIGMA_PX = 1.5  # removes sensor noise and the finest ripples at 64 px


def normalised_grey(crop: np.ndarray) -> np.ndarray:
    """Grey, blurred and divided by its own mean brightness: the view that frames and backgrounds are compared in.

    Shared with ``stream.mouse_crop`` (which finds where the animal is with the same measure)."""
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    grey = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), BLUR_SIGMA_PX)
    return grey / max(float(grey.mean()), 1.0)


def foreground_mask(norm: np.ndarray, background: np.ndarray, diff_threshold: float = DIFF_THRESHOLD) -> np.ndarray:
    """uint8 0/1: where ``norm`` (``normalised_grey``) differs from ``background`` by more than the
    threshold, opened so that thin ripples and specks go and compact blobs (an animal) stay."""
    mask = (np.abs(norm - background) > diff_threshold).astype(np.uint8)
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))


@dataclass(frozen=True)
class PresenceConfig:
    fps: float
    diff_threshold: float = DIFF_THRESHOLD
    min_area_fraction: float = MIN_AREA_FRACTION
    confirm_frames: int = CONFIRM_FRAMES
    absent_s: float = ABSENT_S

    @property
    def absent_frames(self) -> int:
        return max(1, round(self.absent_s * self.fps))


@dataclass(frozen=True)
class PresenceEvent:
    kind: str  # "appeared" | "removed"
    frame_index: int  # the first frame of the run that confirmed it


class PresenceDetector:
    """Feed one arena's crops in order; ``update`` returns an event when the state changes."""

    def __init__(self, config: PresenceConfig) -> None:
        self.config = config
        self._background: np.ndarray | None = None
        self._learned = 0
        self.present = False
        self._run_start: int | None = None  # first frame of the current run that disagrees with `present`
        self._run_length = 0
        self.last_fraction = 0.0

    def foreground_fraction(self, norm: np.ndarray) -> float:
        assert self._background is not None
        return float(foreground_mask(norm, self._background, self.config.diff_threshold).mean())

    def update(self, frame_index: int, crop: np.ndarray) -> PresenceEvent | None:
        norm = normalised_grey(crop)
        if self._learned < BACKGROUND_FRAMES:
            self._background = norm if self._background is None else self._background + (norm - self._background) / (
                self._learned + 1)
            self._learned += 1
            return None
        self.last_fraction = self.foreground_fraction(norm)
        seen = self.last_fraction >= self.config.min_area_fraction
        if not self.present and not seen:
            self._background += BACKGROUND_RATE * (norm - self._background)
        if seen == self.present:
            self._run_start, self._run_length = None, 0
            return None
        if self._run_start is None:
            self._run_start = frame_index
        self._run_length += 1
        needed = self.config.confirm_frames if not self.present else self.config.absent_frames
        if self._run_length < needed:
            return None
        self.present = seen
        event = PresenceEvent("appeared" if seen else "removed", self._run_start)
        self._run_start, self._run_length = None, 0
        return event
