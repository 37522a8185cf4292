"""Annotated preview video: each arena's ROI box, current label, immobile seconds and bouts drawn
(and, for a mouse-crop model, the window around the mouse its clip was cut from, a thin box).

The file is H.264 (yuv420p, MP4 with the index at the front: ``+faststart``), written with PyAV's
libx264, so it plays in a browser and streams before it is fully downloaded; OpenCV's ``mp4v``
(MPEG-4 part 2) plays in no browser. Without libx264 it falls back to ``mp4v`` with a warning.
Labels must be readable: a small arena (a 48 px cylinder of a 4-arena rig) is upscaled until the
smallest arena is ``MIN_ARENA_PX`` tall (the frame at most ``MAX_WIDTH_PX`` wide), and text is
drawn on a dark box sized to the arena.

A frame is written once every arena in a trial has its decision for it (decisions lag frames by the
7-frame look-ahead plus smoothing), so frames wait here, at most ``PREVIEW_FRAMES_KEPT`` of them.
An arena waiting for its next trial is drawn grey, and a frame with no trial running is written as
it comes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from stream.arenas import Arena
from stream.decisions import Decision
from stream.errors import UserError
from stream.outputs.base import FrameEvent, Output

__all__ = ["PREVIEW_FRAMES_KEPT", "PreviewWriter", "preview_scale"]

log = logging.getLogger(__name__)

PREVIEW_FRAMES_KEPT = 64  # frames waiting for their decisions in the preview (> 7 + smoothing window)
IMMOBILE_BGR = (0, 0, 255)  # red: the colour people read as "stopped"
MOBILE_BGR = (0, 200, 0)
WAITING_BGR = (160, 160, 160)  # grey: no trial in this arena
WINDOW_BGR = (255, 200, 0)  # light blue: the mouse window (crop "mouse"), apart from the label colours
MIN_ARENA_PX = 200  # smallest arena side in the preview: 3 lines of ~14 px text fit, readable on a laptop
MAX_WIDTH_PX = 1920  # upscaling stops here (a full-HD player)
H264_CRF = "23"  # libx264's default quality: an overlay of thin text stays sharp
H264_PRESET = "veryfast"  # keeps the encoder a small fraction of the pipeline's time


def preview_scale(frame_size: tuple[int, int], arenas: Sequence[Arena]) -> float:
    """Upscale factor (>= 1) that makes the smallest arena MIN_ARENA_PX, within MAX_WIDTH_PX."""
    w, h = frame_size
    sides = [min(a.roi.w, a.roi.h) for a in arenas if a.roi is not None] or [min(w, h)]
    scale = max(1.0, MIN_ARENA_PX / min(sides))
    return min(scale, max(1.0, MAX_WIDTH_PX / w))


class _H264:
    """H.264 MP4 through PyAV; dimensions rounded up to even numbers (yuv420p needs them)."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        import av

        self.size = (size[0] + size[0] % 2, size[1] + size[1] % 2)
        self._container = av.open(str(path), "w", options={"movflags": "+faststart"})
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._stream.width, self._stream.height = self.size
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": H264_CRF, "preset": H264_PRESET}
        self._av = av

    def write(self, image: np.ndarray) -> None:
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.copyMakeBorder(image, 0, self.size[1] - image.shape[0], 0, self.size[0] - image.shape[1],
                                       cv2.BORDER_REPLICATE)
        frame = self._av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def release(self) -> None:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()


class _Mp4v:
    """OpenCV's MPEG-4 part 2: the fallback where libx264 is missing (plays in desktop players only)."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        self.size = size
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self._writer.isOpened():
            raise OSError("OpenCV cannot open an mp4v writer")

    def write(self, image: np.ndarray) -> None:
        self._writer.write(image)

    def release(self) -> None:
        self._writer.release()


def _open_video(path: Path, fps: float, size: tuple[int, int]):
    try:
        import av

        if "libx264" in av.codecs_available:
            return _H264(path, fps, size)
        log.warning("PyAV has no libx264 encoder: the preview is mp4v (MPEG-4 part 2), which browsers do not play")
    except ImportError:
        log.warning("PyAV is not installed: the preview is mp4v (MPEG-4 part 2), which browsers do not play")
    return _Mp4v(path, fps, size)


class PreviewWriter(Output):
    """Writes the preview; an ``Output`` that draws the decisions on the frames they belong to."""

    def __init__(self, path: str | Path, fps: float, frame_size: tuple[int, int], arenas: Sequence[Arena]) -> None:
        self.path = Path(path)
        self.arenas = list(arenas)
        self.frame_size = frame_size  # (width, height) of the camera frame
        self.scale = preview_scale(frame_size, self.arenas)
        self.size = (round(frame_size[0] * self.scale), round(frame_size[1] * self.scale))  # of the preview
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = _open_video(self.path, fps, self.size)
        except (OSError, ValueError) as exc:  # PyAV raises its errors as OSError/ValueError subclasses
            raise UserError(f"--preview {self.path}: cannot write an mp4 video there ({exc})") from exc
        self._frames: dict[int, np.ndarray] = {}
        self._labels: dict[int, dict[str, Decision]] = {}
        self._windows: dict[int, tuple[tuple[int, int, int, int], ...]] = {}  # crop "mouse": per frame, per arena
        self.frames_written = 0
        self._closed = False
        self._active: set[str] | None = None  # arenas in a trial; None: no trial events, every arena counts

    # -- Output -----------------------------------------------------------------------------------
    def on_frame(self, frame: FrameEvent) -> None:
        self.add_frame(frame.index, frame.image, frame.windows)

    def on_decision(self, arena_id: str, decision: Decision, latency_s: float | None) -> None:
        self.add_decision(arena_id, decision)

    def on_trial_start(self, trial) -> None:
        self._active = (self._active or set()) | {trial.arena_id}

    def on_trial_end(self, trial, summary) -> None:
        self._active = (self._active or set()) - {trial.arena_id}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.release()

    # -- drawing ----------------------------------------------------------------------------------
    def add_frame(self, index: int, image: np.ndarray, windows: tuple[tuple[int, int, int, int], ...] | None = None) -> None:
        self._frames[index] = image
        if windows is not None:
            self._windows[index] = windows
        if self._active is not None and not self._active:
            self._labels[index] = {}
            self._write(index)
            return
        if len(self._frames) > PREVIEW_FRAMES_KEPT:
            oldest = min(self._frames)
            self._frames.pop(oldest)
            self._labels.pop(oldest, None)
            self._windows.pop(oldest, None)

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
        image = self._frames[index]
        image = cv2.resize(image, self.size, interpolation=cv2.INTER_LINEAR) if self.scale != 1.0 else image.copy()
        decisions = self._labels.pop(index)
        windows = self._windows.get(index)
        for k in [k for k in self._frames if k <= index]:
            self._frames.pop(k)
            self._labels.pop(k, None)
            self._windows.pop(k, None)
        h, w = image.shape[:2]
        k = self.scale
        for a, arena in enumerate(self.arenas):
            if windows is not None:
                wx, wy, ww, wh = (round(v * k) for v in windows[a])
                cv2.rectangle(image, (wx, wy), (wx + ww - 1, wy + wh - 1), WINDOW_BGR, 1)
            d = decisions.get(arena.id)
            x, y, rw, rh = ((round(arena.roi.x * k), round(arena.roi.y * k), round(arena.roi.w * k),
                             round(arena.roi.h * k)) if arena.roi else (0, 0, w, h))
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
            _draw_lines(image, lines, x, y, rw, colour)
        self._writer.write(image)
        self.frames_written += 1


def _draw_lines(image: np.ndarray, lines: list[str], x: int, y: int, width: int, colour: tuple[int, int, int]) -> None:
    """Text lines on a dark box in the arena's top-left corner, sized to fit its width."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    widest = max(cv2.getTextSize(t, font, 1.0, 2)[0][0] for t in lines)  # at scale 1, bold: the widest case
    scale = min(0.8, max(0.35, (width - 14) / max(widest, 1)))
    thickness = 1 if scale < 0.6 else 2
    line_h = int(cv2.getTextSize("Ag", font, scale, thickness)[0][1] * 1.6) + 2
    box_w = int(max(cv2.getTextSize(t, font, scale, thickness)[0][0] for t in lines)) + 8
    box = image[y + 2: y + 4 + line_h * len(lines), x + 2: x + 2 + box_w]
    box[:] = cv2.convertScaleAbs(box, alpha=0.35)  # darken what is behind the text: legible on any water
    for j, text in enumerate(lines):
        cv2.putText(image, text, (x + 6, y + (j + 1) * line_h), font, scale, colour, thickness, cv2.LINE_AA)
