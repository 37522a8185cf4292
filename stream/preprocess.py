"""Frame and clip conventions shared by live inference and training.

Train/serve skew is the quiet killer of small-data models, so every step that turns camera
pixels into model input lives here, once, and both ``stream`` (live) and ``export`` (training)
call it:

* a clip is ``CLIP_FRAMES`` = 16 frames: the classified (centre) frame, its ``PAST_FRAMES`` = 8
  previous frames and its ``FUTURE_FRAMES`` = 7 next ones, so the centre sits at index 8;
* each arena is cropped from the frame by its region of interest and resized to a square of the
  model's input size; RGB is scaled to [-1, 1] as in the I3D releases;
* the flow for clip frame ``i`` is the TV-L1 flow from frame ``i - 1`` to frame ``i`` (previous ->
  current), computed on the grey version of the same crop; the very first frame of a video has
  zero flow. Flow values are encoded by ``stream.flow.encode_flow``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "CLIP_FRAMES",
    "DEFAULT_MODEL_FPS",
    "PAST_FRAMES",
    "FUTURE_FRAMES",
    "CENTER_INDEX",
    "Roi",
    "crop_resize",
    "to_grey",
    "rgb_clip",
    "clip_indices",
]

DEFAULT_MODEL_FPS = 15.0  # the bundled models' frame rate: enough for swim strokes, half the work of 30 fps
CLIP_FRAMES = 16
PAST_FRAMES = 8
FUTURE_FRAMES = 7
CENTER_INDEX = PAST_FRAMES  # index of the classified frame inside a clip


@dataclass(frozen=True)
class Roi:
    """A region of interest in pixels of the full camera frame (one arena / cylinder)."""

    x: int
    y: int
    w: int
    h: int

    def __post_init__(self) -> None:
        if self.x < 0 or self.y < 0 or self.w <= 0 or self.h <= 0:
            raise ValueError(f"region of interest {self.x},{self.y},{self.w},{self.h}: x, y must be >= 0 and w, h > 0")

    @classmethod
    def parse(cls, text: str) -> "Roi":
        """Parse ``x,y,w,h`` as given on a command line."""
        parts = text.replace(" ", "").split(",")
        if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
            raise ValueError(f"region of interest {text!r}: expected four integers x,y,w,h")
        return cls(*(int(p) for p in parts))

    def fits(self, width: int, height: int) -> bool:
        return self.x + self.w <= width and self.y + self.h <= height


def crop_resize(frame: np.ndarray, roi: Roi | None, size_px: int) -> np.ndarray:
    """Crop ``roi`` from a BGR (H, W, 3) uint8 frame and resize to (size_px, size_px, 3).

    INTER_AREA when shrinking (anti-aliasing keeps small limb motion visible to the flow),
    INTER_LINEAR when enlarging.
    """
    if roi is not None:
        frame = frame[roi.y : roi.y + roi.h, roi.x : roi.x + roi.w]
    h, w = frame.shape[:2]
    if (h, w) == (size_px, size_px):
        return np.ascontiguousarray(frame)
    interp = cv2.INTER_AREA if (h > size_px or w > size_px) else cv2.INTER_LINEAR
    return cv2.resize(frame, (size_px, size_px), interpolation=interp)


def to_grey(frame_bgr: np.ndarray) -> np.ndarray:
    """Grey uint8 image for TV-L1 (the flow stream never sees colour)."""
    if frame_bgr.ndim == 2:
        return frame_bgr
    return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)


def rgb_clip(frames_bgr: np.ndarray) -> np.ndarray:
    """(T, S, S, 3) uint8 BGR frames -> (3, T, S, S) float32 RGB in [-1, 1]."""
    if frames_bgr.ndim != 4 or frames_bgr.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got shape {frames_bgr.shape}")
    rgb = frames_bgr[..., ::-1].astype(np.float32)
    rgb = rgb * (2.0 / 255.0) - 1.0
    return np.ascontiguousarray(rgb.transpose(3, 0, 1, 2))


def clip_indices(center: int, num_frames: int, stride: int = 1) -> np.ndarray:
    """Frame indices of the clip centred on ``center``, padded at the video edges by repetition.

    ``stride`` > 1 spreads the 16 frames over a longer time span (for videos filmed at a higher
    fps than the model was trained at).
    """
    if num_frames <= 0:
        raise ValueError("video has no frames")
    offsets = np.arange(-PAST_FRAMES, FUTURE_FRAMES + 1) * stride
    return np.clip(center + offsets, 0, num_frames - 1)
