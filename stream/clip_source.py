"""Model clips from the live frames, cut as the model card's input crop says (card ``crop``, issue 21).

::

    frame -> crop_resize per arena at ring_px ─> ClipRing: RGB + TV-L1 at ring_px, batched over arenas
                                              └> crop "mouse": a MouseLocator per arena -> its position at each frame
    clip(t) = ring.clip(t)                          crop "roi":   as it is (ring_px = input size)
            = each arena's window at t's position   crop "mouse": ring_px = DECODE_SCALE x input size

Crop ``"mouse"`` cuts every clip exactly as ``export.dataset.ClipDataset(crop="mouse")`` cuts the
training clips: each arena ``crop_resize``\\ d to twice the input size, its grey and TV-L1 flow (the
card's settings) at that size, the mouse located in every frame by ``stream.mouse_crop.MouseLocator``
(causal: frame t's position uses frames up to t only, so the live and the offline track agree), and
the clip centred on frame t cut, RGB and flow alike, by the one ``crop_window`` at t's position. The
flow stays in pixels of the 2x image, as in training.

The locators carry on where the ring restarts (a gap, dropped frames): the offline track has no such
notion (training videos with a gap are refused) and runs over a whole video, as one pipeline runs one
source; a locator's background is the last 30 s of the arena, which a gap does not make wrong, while
a fresh one would hold the arena's centre until its third background sample, two seconds later.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

from stream.modelfile import CROP_MOUSE, CROP_ROI, CROPS
from stream.mouse_crop import CROP_FRACTION, DECODE_SCALE, MouseLocator, Window, crop_window
from stream.preprocess import CLIP_FRAMES, Roi, crop_resize
from stream.ring import ClipRing

__all__ = ["ClipSource"]


class ClipSource:
    """``crops`` a frame's arenas, ``push`` them, then ``clip`` a centre: (N, 3, 16, S, S) and (N, 2, 16, S, S)."""

    def __init__(self, num_arenas: int, size_px: int, flow: Callable[..., torch.Tensor], *, crop: str = CROP_ROI,
                 fps: float | None = None, device: str | torch.device = "cpu", warm_start: bool = True) -> None:
        if crop not in CROPS:
            raise ValueError(f"crop {crop!r} must be one of {', '.join(CROPS)}")
        if crop == CROP_MOUSE and fps is None:
            raise ValueError("crop 'mouse' needs fps: the locator samples its background once a second of video")
        self.crop = crop
        self.size_px = size_px  # the model's input side
        self.ring_px = size_px * (DECODE_SCALE if crop == CROP_MOUSE else 1)  # side of the ring's frames and flow
        self.ring = ClipRing(num_arenas, self.ring_px, flow, device=device, warm_start=warm_start)
        self._locators = [MouseLocator(fps) for _ in range(num_arenas)] if crop == CROP_MOUSE else []
        self._positions = np.zeros((CLIP_FRAMES, num_arenas, 2), np.float32)  # (x, y) in the ring image, by ring slot

    def crops(self, image: np.ndarray, rois: Sequence[Roi | None]) -> np.ndarray:
        """(N, ring_px, ring_px, 3) uint8 BGR: each arena of a full frame, as the ring takes it."""
        return np.stack([crop_resize(image, roi, self.ring_px) for roi in rois])

    def model_view(self, crops: np.ndarray) -> np.ndarray:
        """The arenas at the input size (what ``stream.presence`` was tuned on): the crops themselves for
        ROI, the 2x crops halved (INTER_AREA averages each 2 x 2 block) for the mouse crop."""
        if self.ring_px == self.size_px:
            return crops
        return np.stack([cv2.resize(c, (self.size_px, self.size_px), interpolation=cv2.INTER_AREA) for c in crops])

    @property
    def follows_mouse(self) -> bool:
        """Whether every frame must be seen (``push`` or ``follow``) for the mouse's position to be right."""
        return bool(self._locators)

    def push(self, crops: np.ndarray, frame_index: int) -> None:
        """Store frame ``frame_index`` (``crops`` from ``crops``): ring, flow and, for the mouse crop, where the mouse is."""
        self.ring.push(crops, frame_index)
        self.follow(crops, frame_index)

    def follow(self, crops: np.ndarray, frame_index: int) -> None:
        """Only where the mouse is at ``frame_index`` (mouse crop; nothing for ROI): a frame no clip needs
        still moves the locators' background and track on, as in a continuous run (``stream.adabn``)."""
        for a, locator in enumerate(self._locators):
            self._positions[frame_index % CLIP_FRAMES, a] = locator.update(crops[a])

    def windows(self, center: int) -> list[Window]:
        """Crop "mouse": each arena's window for the clip centred on ``center`` (a held frame)."""
        if not self._locators:
            raise ValueError("windows are for the mouse crop only")
        self.ring.clip_frame_indices(center)  # raises unless the centre is still held
        return [crop_window(p, self.ring_px, CROP_FRACTION) for p in self._positions[center % CLIP_FRAMES]]

    def frame_windows(self, index: int, rois: Sequence[Roi | None],
                      frame_size: tuple[int, int]) -> tuple[tuple[int, int, int, int], ...] | None:
        """Crop "mouse": each arena's window for the clip centred on held frame ``index`` as (x, y, w, h) in
        pixels of the full (width, height) frame, for drawing (``stream.outputs.preview``); None for ROI."""
        if not self._locators:
            return None
        out = []
        for roi, w in zip(rois, self.windows(index)):
            x0, y0, rw, rh = (roi.x, roi.y, roi.w, roi.h) if roi is not None else (0, 0, *frame_size)
            fx, fy = rw / self.ring_px, rh / self.ring_px  # the arena was resized to ring_px x ring_px
            out.append((round(x0 + w.x * fx), round(y0 + w.y * fy), round(w.size * fx), round(w.size * fy)))
        return tuple(out)

    def clip(self, center: int, last: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """rgb (N, 3, 16, S, S) and flow (N, 2, 16, S, S) of the clip centred on ``center`` (``ClipRing.clip``)."""
        rgb, flow = self.ring.clip(center, last)
        if not self._locators:
            return rgb, flow
        windows = self.windows(center)  # one window per clip: a moving one would add its own motion
        return (torch.stack([w.cut(rgb[a]) for a, w in enumerate(windows)]),
                torch.stack([w.cut(flow[a]) for a, w in enumerate(windows)]))

    def frame(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One held frame for a step-wise engine (ROI only: its per-layer state cannot follow a moving window)."""
        if self._locators:
            raise ValueError("a step-wise engine cannot run a mouse-crop model (stream.modelfile.require_live_crop)")
        return self.ring.frame(index)

    def reset(self) -> None:
        """A new segment (after a gap): the ring restarts; the locators carry on (module docstring)."""
        self.ring.reset()
