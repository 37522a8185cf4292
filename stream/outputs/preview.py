"""Annotated preview video: each arena's ROI box, current label, immobile seconds and bouts drawn.

A frame is written once every arena in a trial has its decision for it (decisions lag frames by the
7-frame look-ahead plus smoothing), so frames wait here, at most ``PREVIEW_FRAMES_KEPT`` of them.
An arena waiting for its next trial is drawn grey, and a frame with no trial running is written as
it comes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from stream.arenas import Arena
from stream.decisions import Decision
from stream.errors import UserError
from stream.outputs.base import FrameEvent, Output

__all__ = ["PREVIEW_FRAMES_KEPT", "PreviewWriter"]

PREVIEW_FRAMES_KEPT = 64  # frames waiting for their decisions in the preview (> 7 + smoothing window)
IMMOBILE_BGR = (0, 0, 255)  # red: the colour people read as "stopped"
MOBILE_BGR = (0, 200, 0)
WAITING_BGR = (160, 160, 160)  # grey: no trial in this arena


class PreviewWriter(Output):
    """Writes the preview; an ``Output`` that draws the decisions on the frames they belong to."""

    def __init__(self, path: str | Path, fps: float, frame_size: tuple[int, int], arenas: Sequence[Arena]) -> None:
        self.path = Path(path)
        self.arenas = list(arenas)
        self.frame_size = frame_size  # (width, height)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), fps, frame_size)
        if not self._writer.isOpened():
            raise UserError(f"--preview {self.path}: cannot write an mp4 video there")
        self._frames: dict[int, np.ndarray] = {}
        self._labels: dict[int, dict[str, Decision]] = {}
        self.frames_written = 0
        self._closed = False
        self._active: set[str] | None = None  # arenas in a trial; None: no trial events, every arena counts

    # -- Output -----------------------------------------------------------------------------------
    def on_frame(self, frame: FrameEvent) -> None:
        self.add_frame(frame.index, frame.image)

    def on_decision(self, arena_id: str, decision: Decision, latency_s: float | None) -> None:
        self.add_decision(arena_id, decision)

    def on_trial_start(self, trial) -> None:
        self._active = (self._active or set()) | {trial.arena_id}

    def on_trial_end(self, trial, summary: dict) -> None:
        self._active = (self._active or set()) - {trial.arena_id}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.release()

    # -- drawing ----------------------------------------------------------------------------------
    def add_frame(self, index: int, image: np.ndarray) -> None:
        self._frames[index] = image
        if self._active is not None and not self._active:
            self._labels[index] = {}
            self._write(index)
            return
        if len(self._frames) > PREVIEW_FRAMES_KEPT:
            oldest = min(self._frames)
            self._frames.pop(oldest)
            self._labels.pop(oldest, None)

    def add_decision(self, arena_id: str, decision: Decision) -> None:
        i = decision.frame_index
        if i not in self._frames:
            return
        got = self._labels.setdefault(i, {})
        got[arena_id] = decision
        needed = self._active if self._active is not None else {a.id for a in self.arenas}
        if needed <= set(got):
            self._write(i)

    def _write(self, index: int) -> None:
        image = self._frames[index].copy()
        decisions = self._labels.pop(index)
        for k in [k for k in self._frames if k <= index]:
            self._frames.pop(k)
            self._labels.pop(k, None)
        h, w = image.shape[:2]
        scale = max(0.35, min(w, h) / 600)
        for arena in self.arenas:
            d = decisions.get(arena.id)
            x, y, rw, rh = (arena.roi.x, arena.roi.y, arena.roi.w, arena.roi.h) if arena.roi else (0, 0, w, h)
            if d is None:
                colour = WAITING_BGR
                lines = [f"{arena.id}: waiting"]
            else:
                colour = IMMOBILE_BGR if d.immobile else MOBILE_BGR
                c = d.counters
                immobile_s, bouts = (c.immobile_s, c.immobility_bouts) if c is not None else (0.0, 0)
                lines = [f"{arena.id}: {d.behaviour}", f"immobile {immobile_s:.1f}s bouts {bouts}",
                         f"t {d.timestamp_s:.1f}s"]
            cv2.rectangle(image, (x, y), (x + rw - 1, y + rh - 1), colour, 2)
            for j, text in enumerate(lines):
                org = (x + 4, y + int((j + 1) * 22 * scale) + 2)
                cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (0, 0, 0), 3, cv2.LINE_AA)
                cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, colour, 1, cv2.LINE_AA)
        self._writer.write(image)
        self.frames_written += 1
