"""A live source's own BatchNorm statistics, gathered from the clips the model scores
(``stream-run --camera N --adapt``).

Why: the statistics pay most when they are the scored recording's own (``stream.adabn``: on the 9
held-out families, 0.790 -> 0.961 for ``fst-top-112`` adapted per video, 0.886 pooled). A recorded video
is adapted before it is scored, in two passes over the file (``stream.runner``). A camera cannot be
read ahead, but a forced swim test leaves time: its first 2 minutes are not scored. So, while the
source model scores, the pipeline hands every model call's clips to a ``LiveAdaptation``, which keeps
one clip per arena every ``frame_step`` frames (1 s at 15 fps, the candidate spacing of the recorded
path), from arenas whose trial is running only: an empty cylinder's statistics are not a mouse's.
Once it holds ``clips`` of them, a background thread estimates the statistics and builds the adapted
model's engine (the runner's ``build``), and the pipeline swaps engines between two model calls
(``take``). With 64 clips that is about a minute of one animal, 16 s of four.

The clips are the engine's own input, so they are cut exactly as the live path cuts them (card's size,
crop, TV-L1 settings, warm start); they are kept in float16 (128 MB for 64 clips at 112 px, half of
float32), which moves the estimated statistics by far less than the clips differ from each other.
A failed estimate or build is logged and the source model scores on: adaptation never stops a live run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from stream.adabn import DEFAULT_FRAME_STEP

__all__ = ["LiveAdaptation"]

log = logging.getLogger(__name__)

STORE_DTYPE = torch.float16

Clip = tuple[torch.Tensor, torch.Tensor]  # rgb (3, 16, S, S), flow (2, 16, S, S)


class LiveAdaptation:
    """Collects clips, builds the adapted engine in the background, hands it over once.

    ``build(clips)`` returns the new engine (it runs on a background thread); ``on_swap(engine, centre,
    timestamp_s)`` is called on the pipeline's thread when the pipeline starts scoring with it, so
    whatever credits the model (results, summaries) changes exactly where the scores do.
    """

    def __init__(self, clips: int, n_arenas: int, build: Callable[[list[Clip]], Any],
                 on_swap: Callable[[Any, int, float], None] | None = None, *, frame_step: int = DEFAULT_FRAME_STEP) -> None:
        if clips < 1:
            raise ValueError(f"clips must be >= 1, got {clips}")
        self.wanted = clips
        self.frame_step = max(1, frame_step)
        self.build = build
        self.on_swap = on_swap
        self.clips: list[Clip] = []
        self.centres: list[tuple[int, int]] = []  # (arena, centre) of each kept clip, in order
        self._last: list[int | None] = [None] * n_arenas  # each arena's last kept centre
        self._engine: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.state = "collecting"  # -> estimating -> ready -> swapped; or failed
        self.error: str | None = None

    def offer(self, centre: int, rgb: torch.Tensor, flow: torch.Tensor, active: Sequence[bool]) -> None:
        """One model call's clips (N arenas, on any device); keeps those that are due, starts the build when full."""
        if self.state != "collecting":
            return
        for a, on in enumerate(active):
            last = self._last[a]
            if not on or (last is not None and centre - last < self.frame_step):
                continue
            self.clips.append((rgb[a].detach().to("cpu", STORE_DTYPE), flow[a].detach().to("cpu", STORE_DTYPE)))
            self.centres.append((a, centre))
            self._last[a] = centre
            if len(self.clips) >= self.wanted:
                self._start()
                return

    def _start(self) -> None:
        self.state = "estimating"
        clips = [(r.float(), f.float()) for r, f in self.clips]
        self.clips = []  # the float32 copies go to the build; nothing else holds them
        self._thread = threading.Thread(target=self._run, args=(clips,), name="live-adapt", daemon=True)
        self._thread.start()

    def _run(self, clips: list[Clip]) -> None:
        try:
            engine = self.build(clips)
        except Exception as exc:  # noqa: BLE001 - the live run goes on with the source model
            log.warning("adapting to this source failed (%s); the source model scores on", exc, exc_info=log.isEnabledFor(logging.DEBUG))
            with self._lock:
                self.state, self.error = "failed", str(exc) or type(exc).__name__
            return
        with self._lock:
            if self._closed:  # the run ended while it was built: never used
                _close(engine)
                return
            self._engine, self.state = engine, "ready"

    def take(self, centre: int, timestamp_s: float) -> Any:
        """The adapted engine, once, when it is ready (else None); the caller scores with it from ``centre`` on."""
        if self.state != "ready":
            return None
        with self._lock:
            engine, self._engine, self.state = self._engine, None, "swapped"
        if self.on_swap is not None:
            self.on_swap(engine, centre, timestamp_s)
        return engine

    def wait(self, timeout_s: float | None = None) -> None:
        """Until the background build is over (tests; the pipeline never waits)."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def unfinished(self) -> str | None:
        """Why the source ended without the adapted model scoring (None: it did)."""
        if self.state == "collecting":
            return (f"the source ended with {len(self.clips)} of the {self.wanted} clips kept (one per running trial's "
                    "arena a second); the source model scored it throughout")
        if self.state in ("estimating", "ready"):
            return "the source ended while the adapted model was being built; the source model scored it throughout"
        if self.state == "failed":
            return f"adapting failed ({self.error}); the source model scored it throughout"
        return None

    def close(self) -> None:
        """End of the source: an engine built but never taken is closed; a build still running closes its own."""
        with self._lock:
            self._closed = True
            engine, self._engine = self._engine, None
        if engine is not None:
            _close(engine)


def _close(engine: Any) -> None:
    try:
        engine.close()
    except Exception:  # noqa: BLE001 - shutdown goes on
        log.debug("closing an unused adapted engine failed", exc_info=True)
