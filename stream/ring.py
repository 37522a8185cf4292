"""Per-arena ring buffers of the last 16 model-size frames and their optical flow.

A clip for frame ``t`` is frames ``t-8 .. t+7`` (``stream.preprocess``). Consecutive clips overlap
in 15 frames, so each frame is converted to model input once, and its TV-L1 flow
(previous -> current, warm-started from the previous frame's flow) is computed once, batched over
all arenas, and kept in a parallel ring; building a clip is then one gather.

Both rings are preallocated tensors on the engine's device::

    rgb  (N arenas, 3, 16, S, S)  float32 in [-1, 1]   (same numbers as preprocess.rgb_clip)
    flow (N arenas, 2, 16, S, S)  float32 encoded       (stream.flow.encode_flow of pixels)

A *segment* is a run of consecutive frames (a video, or the part between two capture gaps): its
first frame has zero flow, and clips near its ends repeat the edge frame, exactly like
``stream.preprocess.clip_indices`` on a whole video; a repeated (padding) frame has zero flow, since
it did not move, as in training (``export.dataset.ClipDataset.clip``).

Warm start (default, issue 7): the previous pair's flow seeds the coarsest pyramid level. Training
computes each pair from scratch, so where TV-L1 stops before converging the two can differ
slightly; ``warm_start=False`` (``stream-run --no-flow-warm-start``) reproduces training exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from stream.preprocess import CLIP_FRAMES, FUTURE_FRAMES, PAST_FRAMES, to_grey

__all__ = ["ClipRing"]

FlowFn = Callable[..., torch.Tensor]  # TVL1.__call__(prev, nxt, init_flow=None) -> (N, 2, H, W) px


class ClipRing:
    """Rings for ``num_arenas`` arenas of ``size_px`` crops; ``push`` one frame, ``clip`` a centre."""

    def __init__(self, num_arenas: int, size_px: int, flow: FlowFn, *, device: str | torch.device = "cpu",
                 encode: Callable[[torch.Tensor], torch.Tensor] | None = None, warm_start: bool = True) -> None:
        if num_arenas < 1 or size_px < 1:
            raise ValueError(f"need >= 1 arena and size >= 1 px, got {num_arenas}, {size_px}")
        if encode is None:
            from stream.flow import encode_flow as encode
        self.num_arenas = num_arenas
        self.size_px = size_px
        self.device = torch.device(device)
        self._flow = flow
        self._encode = encode
        self.warm_start = warm_start
        n, s = num_arenas, size_px
        self.rgb = torch.zeros((n, 3, CLIP_FRAMES, s, s), dtype=torch.float32, device=self.device)
        self.flow = torch.zeros((n, 2, CLIP_FRAMES, s, s), dtype=torch.float32, device=self.device)
        self._grey_prev: np.ndarray | None = None  # (N, S, S) uint8 of the last frame
        self._flow_prev: torch.Tensor | None = None  # (N, 2, S, S) px of the last frame (warm start)
        self._offsets = np.arange(-PAST_FRAMES, FUTURE_FRAMES + 1)
        self.segment_start: int | None = None
        self.last_index: int | None = None
        self.flow_calls = 0  # how many batched flow computations ran (tests: never recomputed)

    def reset(self) -> None:
        """Start a new segment (after a gap): the next frame gets zero flow and pads clip starts."""
        self._grey_prev = None
        self._flow_prev = None
        self.segment_start = None
        self.last_index = None

    def __len__(self) -> int:
        """Frames held for the current segment (at most 16)."""
        if self.last_index is None or self.segment_start is None:
            return 0
        return min(CLIP_FRAMES, self.last_index - self.segment_start + 1)

    def push(self, crops_bgr: np.ndarray, frame_index: int) -> None:
        """Store frame ``frame_index`` for every arena: crops (N, S, S, 3) uint8 BGR at model size."""
        n, s = self.num_arenas, self.size_px
        if crops_bgr.shape != (n, s, s, 3) or crops_bgr.dtype != np.uint8:
            raise ValueError(f"expected crops of shape {(n, s, s, 3)} uint8, got {crops_bgr.shape} {crops_bgr.dtype}")
        if self.last_index is not None and frame_index != self.last_index + 1:
            raise ValueError(f"frame {frame_index} does not follow {self.last_index}: reset() the ring at a gap")
        slot = frame_index % CLIP_FRAMES
        # RGB: same arithmetic as preprocess.rgb_clip (flip BGR->RGB, *2/255 - 1 in float32)
        bgr = torch.from_numpy(np.ascontiguousarray(crops_bgr)).to(self.device, non_blocking=True)
        rgb = bgr.flip(-1).to(torch.float32) * (2.0 / 255.0) - 1.0  # (N, S, S, 3)
        self.rgb[:, :, slot] = rgb.permute(0, 3, 1, 2)
        grey = np.stack([to_grey(c) for c in crops_bgr])  # (N, S, S) uint8, as in training
        if self._grey_prev is None:
            self.flow[:, :, slot] = 0.0  # first frame of a segment has zero flow
            self._flow_prev = None
            self.segment_start = frame_index
        else:
            init = self._flow_prev if self.warm_start else None
            flow_px = self._flow(self._grey_prev, grey, init_flow=init)
            flow_px = torch.as_tensor(flow_px).to(self.device, torch.float32)
            self.flow_calls += 1
            self.flow[:, :, slot] = self._encode(flow_px)
            self._flow_prev = flow_px
        self._grey_prev = grey
        self.last_index = frame_index

    def frame(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rgb (N, 3, S, S), flow (N, 2, S, S)) of one held frame: what a step-wise engine is fed."""
        if self.last_index is None or not (self.last_index - CLIP_FRAMES < index <= self.last_index):
            raise ValueError(f"frame {index} is not held (latest {self.last_index})")
        slot = index % CLIP_FRAMES
        return self.rgb[:, :, slot], self.flow[:, :, slot]

    def clip_frame_indices(self, center: int, last: int | None = None) -> np.ndarray:
        """Frame indices of the clip around ``center``, edge-padded inside the current segment."""
        if self.last_index is None or self.segment_start is None:
            raise ValueError("ring is empty")
        last = self.last_index if last is None else min(last, self.last_index)
        if not (self.segment_start <= center <= last):
            raise ValueError(f"centre {center} outside the held frames {self.segment_start}..{last}")
        idx = np.clip(center + self._offsets, self.segment_start, last)
        if idx[0] <= self.last_index - CLIP_FRAMES:
            raise ValueError(f"frame {idx[0]} already left the ring (latest {self.last_index})")
        return idx

    def clip(self, center: int, last: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(rgb (N, 3, 16, S, S), flow (N, 2, 16, S, S)) for the clip centred on ``center``."""
        idx = self.clip_frame_indices(center, last)
        slots = torch.as_tensor(idx % CLIP_FRAMES, device=self.device)
        rgb, flow = self.rgb.index_select(2, slots), self.flow.index_select(2, slots)
        repeated = np.flatnonzero(idx[1:] == idx[:-1]) + 1
        if repeated.size:
            flow[:, :, torch.as_tensor(repeated, device=self.device)] = 0.0  # padding did not move
        return rgb, flow
