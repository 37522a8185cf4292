"""``TrialSummary``: one trial's final result as a frozen value, JSON only at the edges.

Why: the summary used to travel as a dict assembled in four places (the decisions, the trial, a
callback for the provenance, the pipeline's run block) and read by string key in the results table,
ZeroMQ, the console and the report. Now ``ArenaTrial.end`` makes one value here, the pipeline adds
its run block with ``with_run``, and every output reads attributes. ``to_json`` / ``from_json`` are
the one pair that writes and reads ``<trial>.summary.json`` and the ZeroMQ summary message; their
key order is the file's, so files written before this module read back and write out the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stream.counters import Counters

__all__ = ["TrialSummary", "SUMMARY_VERSION", "as_summary"]

# The layout of ``to_json``. Version 1 is the layout summaries had before it was written down, so a
# file without "summary_version" is version 1; bump it when a key is renamed or its meaning changes.
SUMMARY_VERSION = 1
# the keys this class knows, in the file's order; anything else (e.g. "rescored") is kept in ``extra``
_KNOWN = ("arena_id", "classes", "immobile_classes", "config", "frames_held_back", "counters", "trial",
          "provenance", "run", "input_check")


@dataclass(frozen=True)
class TrialSummary:
    """What a trial counted, with which settings, from what, and how the run went."""

    arena_id: str
    classes: tuple[str, ...]
    immobile_classes: tuple[str, ...]
    config: Mapping[str, Any]  # the DecisionConfig as JSON (fps, smoothing, min_bout_s, ...)
    frames_held_back: int  # frames the smoothing still held when the trial ended
    counters: Counters  # totals, the scoring window, bins, gaps
    trial: Mapping[str, Any] | None = None  # the trial's identity and how it ended (Trial.to_json + end)
    provenance: Mapping[str, Any] | None = None  # model, checksum, version, ROI, source, flow, run config
    run: Mapping[str, Any] | None = None  # the run block: source, engine, capture statistics, end reason
    input_check: Mapping[str, Any] | None = None  # the trial's input vs the model's training (stream.input_check)
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys of other writers (a re-score's "rescored")

    @property
    def fps(self) -> float:
        return float(self.config["fps"])

    @property
    def trial_id(self) -> str:
        return str((self.trial or {}).get("trial_id", self.arena_id))

    def with_run(self, run: Mapping[str, Any]) -> TrialSummary:
        return dataclasses.replace(self, run=run)

    def to_json(self) -> dict[str, Any]:
        """The summary JSON (plain JSON types), in the file's key order."""
        out: dict[str, Any] = {
            "arena_id": self.arena_id,
            "classes": list(self.classes),
            "immobile_classes": list(self.immobile_classes),
            "config": dict(self.config),
            "frames_held_back": self.frames_held_back,
            "counters": self.counters.to_json(),
        }
        for key in ("trial", "provenance", "run", "input_check"):
            value = getattr(self, key)
            if value is not None:
                out[key] = dict(value)
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TrialSummary:
        """Back from ``to_json()`` (a summary file, a ZeroMQ message); unknown keys go to ``extra``."""
        version = int(d.get("summary_version", 1))
        if version > SUMMARY_VERSION:
            from stream.errors import UserError

            raise UserError(f"summary version {version}: written by a newer swim-stream (this one reads "
                            f"up to {SUMMARY_VERSION}); update it")
        return cls(
            arena_id=str(d.get("arena_id", "")),
            classes=tuple(d.get("classes", ())),
            immobile_classes=tuple(d.get("immobile_classes", ())),
            config=dict(d.get("config", {})),
            frames_held_back=int(d.get("frames_held_back", 0)),
            counters=Counters.from_json(d["counters"]),
            trial=d.get("trial"),
            provenance=d.get("provenance"),
            run=d.get("run"),
            input_check=d.get("input_check"),
            extra={k: v for k, v in d.items() if k not in _KNOWN},
        )


def as_summary(summary: TrialSummary | Mapping[str, Any]) -> TrialSummary:
    """A ``TrialSummary`` from one, or from its JSON (a file or message read at the edge)."""
    return summary if isinstance(summary, TrialSummary) else TrialSummary.from_json(summary)
