"""What the page shows, shared between the pipeline thread (writes) and the web server thread (reads).

The pipeline pays as little as possible: an output call stores a reference to the frame and the
latest labels under a lock (microseconds). The JPEG is encoded in the server's thread, only when a
browser asks for it, and at most once per ``JPEG_MIN_PERIOD_S`` however many browsers watch; the
counters are turned into JSON once a second (``on_status``), when the pipeline reports them anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stream.arenas import Arena

__all__ = ["JPEG_MIN_PERIOD_S", "JPEG_QUALITY", "ArenaTools", "WebState"]

JPEG_MIN_PERIOD_S = 1.0  # a still per second is enough to check a rig; each encode of a VGA frame is ~3 ms
JPEG_QUALITY = 75  # legible ROIs and mice at a third of PNG's bytes
MAX_JPEG_SIDE_PX = 960  # larger frames are shrunk before encoding: the page shows them smaller anyway


@dataclass(frozen=True)
class ArenaTools:
    """The arena finder's detector and writer, handed to the page by the command that serves it.

    Why not imported here: ``stream-arenas`` (``stream.arena_finder``) serves this page, so the page
    importing the finder would make the two need each other (an import circle).
    """

    detect: Callable[[np.ndarray, str], list[Arena]]  # (BGR image, view) -> proposed arenas
    save: Callable[[Sequence[Arena], Path, np.ndarray | None, str], Path]  # (arenas, file, picture, source)


@dataclass
class _Frame:
    image: np.ndarray
    index: int
    timestamp_s: float
    seq: int
    windows: tuple[tuple[int, int, int, int], ...] | None = None  # crop "mouse": per arena, what the model sees


@dataclass
class WebState:
    """The latest frame, labels, counters and trials of the running source; the page's settings."""

    out_dir: Path | None = None  # where results.csv and the trials' files are (None: stream-arenas)
    arena_file: Path | None = None  # where the arena editor saves
    preview: Path | None = None  # the annotated preview video, if stream-run writes one
    mode: str = "run"  # "run" (stream-run --web) or "arenas" (stream-arenas --web)
    source: str = ""
    arenas: list[Arena] = field(default_factory=list)
    book: Any = None  # the TrialBook of the running source (its command() is stream-ctl's)
    arena_tools: ArenaTools | None = None  # detect and save; None: the editor cannot detect or save
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _frame: _Frame | None = None
    _labels: dict[str, tuple[str, bool]] = field(default_factory=dict)  # arena -> (behaviour, immobile)
    _status: dict[str, Any] = field(default_factory=dict)
    _counters: dict[str, Any] = field(default_factory=dict)
    _trials: dict[str, Any] = field(default_factory=dict)
    _results_seq: int = 0
    _jpeg: tuple[int, float, bytes] | None = None  # (frame seq, monotonic time, bytes)
    _jpeg_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- writers (pipeline thread) --------------------------------------------------------------
    def attach(self, book: Any, arenas: list[Arena], source: str) -> None:
        with self._lock:
            self.book, self.arenas, self.source = book, list(arenas), source
            self._labels, self._counters, self._trials = {}, {}, {}

    def detach(self) -> None:
        with self._lock:
            self.book = None

    def set_frame(self, image: np.ndarray, index: int, timestamp_s: float,
                  windows: tuple[tuple[int, int, int, int], ...] | None = None) -> None:
        with self._lock:  # a reference, not a copy: the pipeline hands every output a fresh array
            seq = self._frame.seq + 1 if self._frame is not None else 1
            self._frame = _Frame(image, index, timestamp_s, seq, windows)

    def set_label(self, arena_id: str, behaviour: str, immobile: bool) -> None:
        self._labels[arena_id] = (behaviour, immobile)  # one dict store: atomic under the GIL

    def set_status(self, status: dict[str, Any], counters: dict[str, Any], trials: dict[str, Any]) -> None:
        with self._lock:
            self._status, self._counters, self._trials = status, counters, trials

    def results_changed(self) -> None:
        with self._lock:
            self._results_seq += 1

    # -- readers (server thread) ----------------------------------------------------------------
    @property
    def frame_size(self) -> tuple[int, int] | None:
        frame = self._frame
        return None if frame is None else (int(frame.image.shape[1]), int(frame.image.shape[0]))

    def latest_image(self) -> np.ndarray | None:
        frame = self._frame
        return None if frame is None else frame.image

    def jpeg(self) -> bytes | None:
        """The latest frame as JPEG: re-encoded only when the frame is new and the last one is old enough."""
        frame = self._frame
        if frame is None:
            return None
        with self._jpeg_lock:
            cached = self._jpeg
            if cached is not None and (cached[0] == frame.seq or time.monotonic() - cached[1] < JPEG_MIN_PERIOD_S):
                return cached[2]
            image = frame.image
            scale = MAX_JPEG_SIDE_PX / max(image.shape[:2])
            if scale < 1:
                image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                return None
            self._jpeg = (frame.seq, time.monotonic(), buf.tobytes())
            return self._jpeg[2]

    def snapshot(self) -> dict[str, Any]:
        """Everything the page draws, as plain JSON."""
        with self._lock:
            frame, status = self._frame, dict(self._status)
            counters, trials, labels = dict(self._counters), dict(self._trials), dict(self._labels)
            arenas, results_seq, book = list(self.arenas), self._results_seq, self.book
        size = None if frame is None else [int(frame.image.shape[1]), int(frame.image.shape[0])]
        windows = frame.windows if frame is not None and frame.windows is not None else ()
        out = []
        for i, a in enumerate(arenas):
            roi = [a.roi.x, a.roi.y, a.roi.w, a.roi.h] if a.roi is not None else ([0, 0, *size] if size else None)
            behaviour, immobile = labels.get(a.id, ("", False))
            trial = trials.get(a.id) or {}
            out.append({"id": a.id, "roi": roi, "behaviour": behaviour, "immobile": immobile,
                        "state": trial.get("state", "waiting" if book is not None else ""),
                        "trial": trial.get("trial"), "elapsed_s": trial.get("elapsed_s"),
                        "counters": counters.get(a.id),
                        "window": list(windows[i]) if i < len(windows) else None})
        return {"mode": self.mode, "source": self.source, "frame": None if frame is None else
                {"seq": frame.seq, "index": frame.index, "timestamp_s": round(frame.timestamp_s, 3), "size": size},
                "status": status, "arenas": out, "trials_open": book is not None,
                "trial_mode": getattr(book, "mode", None), "results_seq": results_seq,
                "arena_file": str(self.arena_file) if self.arena_file else None}
