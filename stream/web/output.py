"""The web page as one more output of the pipeline (``stream.outputs.base.Output``).

It keeps references, nothing more, in the pipeline thread: the latest frame, each arena's latest
label and, once a second with the status, the counters and trials as JSON. Encoding and serving
happen in the server's thread (``stream.web.state``, ``stream.web.server``).
"""

from __future__ import annotations

from stream.outputs.base import FrameEvent, Output, Status
from stream.web.state import WebState

__all__ = ["WebOutput"]


class WebOutput(Output):
    """Feeds ``WebState`` from the pipeline's events."""

    def __init__(self, state: WebState) -> None:
        self.state = state

    def on_frame(self, frame: FrameEvent) -> None:
        self.state.set_frame(frame.image, frame.index, frame.timestamp_s, frame.windows)

    def on_decision(self, arena_id: str, decision, latency_s: float | None) -> None:
        self.state.set_label(arena_id, decision.behaviour, bool(decision.immobile))

    def on_status(self, status: Status) -> None:
        counters = {a: (c.to_json() if c is not None else None) for a, c in status.arenas.items()}
        summary = {"fps": round(float(status.fps), 2), "frames_processed": status.frames_processed,
                   "frames_dropped": status.frames_dropped, "gaps": status.gaps,
                   "latency_p50_s": status.latency_p50_s, "final": status.final}
        self.state.set_status(summary, counters, dict(status.trials))

    def on_trial_end(self, trial, summary) -> None:
        self.state.results_changed()
