"""What happens after a decision: one small protocol that every output implements.

The pipeline and the trial bookkeeping announce events; outputs (the per-frame CSV log and
summaries, the results table, the ZeroMQ publisher, the Prometheus metrics, the preview video, the
terminal) react to the ones they care about. The pipeline holds a list of them and knows none by
name, so a new output is a new class, not a new keyword argument of ``Pipeline``::

    Pipeline ── on_frame(FrameEvent)        every frame that went through flow
             ── on_model(seconds)           every model call (one batch of arenas)
             ── on_decision(arena, Decision, latency_s)
             ── on_gap(GapEvent)            camera outage or frames dropped
             ── on_status(Status)           about once a second, and once at the end
    Trials   ── on_trial_start(Trial)       an arena's test clock starts
             ── on_trial_end(Trial, TrialSummary) its results are final (a frozen value; to_json() at the edges)
    run      ── close()                     once, when the run is done with the output

``Output`` gives every method a do-nothing default (an output ignores the events it has no use
for); it is the protocol and the base class at once, like dlclive's ``Processor``. An output must
not block: the pipeline thread calls it between frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from stream.decisions import Decision
    from stream.trial_files import Trial
    from stream.trial_summary import TrialSummary

__all__ = ["FrameEvent", "GapEvent", "Output", "Status", "broadcast"]


@dataclass(frozen=True)
class FrameEvent:
    """A frame the pipeline processed (cropped, pushed through flow)."""

    index: int  # model-rate frame index in the source
    timestamp_s: float  # source clock (seconds since the source's first frame)
    image: np.ndarray  # the full frame, BGR (H, W, 3) uint8
    flow_s: float  # seconds the ring and flow took for this frame (all arenas)
    # crop "mouse" (stream.clip_source): per arena, in arena order, the window the clip centred on this
    # frame is cut from, (x, y, w, h) in pixels of ``image``; None for the ROI crop
    windows: tuple[tuple[int, int, int, int], ...] | None = None


@dataclass(frozen=True)
class GapEvent:
    """Frames that never reached the model: a camera outage or frames dropped on a full queue."""

    frames_missing: int
    seconds_missing: float
    reason: str
    dropped: bool = False  # True: dropped by us (queue full), False: the source delivered nothing


@dataclass(frozen=True)
class Status:
    """A snapshot for the live line, systemd's STATUS= and the metrics that are sampled, not counted."""

    frames_processed: int
    frames_captured: int  # read from the source (before resampling and drops)
    fps: float
    frames_dropped: int
    gaps: int
    arenas: dict[str, Any] = field(default_factory=dict)  # arena id -> Counters (None while it waits for a trial)
    latency_p50_s: float | None = None
    trials: dict[str, Any] = field(default_factory=dict)  # arena id -> {"state", "trial", "elapsed_s"} (TrialBook)
    final: bool = False  # the last status of a source, sent after the flush
    stride_frames: int = 1  # the model runs on every stride_frames-th frame now (raised when behind)

    def __getitem__(self, key: str) -> Any:
        """Read like the dict it replaced (``status["fps"]``): format_status and old callers."""
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


class Output:
    """Base of every output; each method is an event, ignored unless overridden."""

    def on_frame(self, frame: FrameEvent) -> None:
        """A frame went through flow."""

    def on_model(self, seconds: float) -> None:
        """One model call (all arenas in one batch) took ``seconds``."""

    def on_decision(self, arena_id: str, decision: Decision, latency_s: float | None) -> None:
        """A frame of ``arena_id`` was decided; ``latency_s`` from its capture, None if unknown."""

    def on_gap(self, gap: GapEvent) -> None:
        """Frames are missing; every arena's run in progress ended."""

    def on_status(self, status: Status) -> None:
        """About once a second (``final`` once at the end)."""

    def on_trial_start(self, trial: Trial) -> None:
        """An arena's trial started; its decisions follow."""

    def on_trial_end(self, trial: Trial, summary: TrialSummary) -> None:
        """An arena's trial ended; ``summary`` is final."""

    def close(self) -> None:
        """The run is done with this output (per-source outputs: at the end of the source)."""


def broadcast(outputs: list[Output], event: str, *args: Any) -> None:
    """Call ``event`` on every output, in order (the CSV first, so nothing is published unsaved)."""
    for out in outputs:
        getattr(out, event)(*args)
