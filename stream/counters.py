"""The forced-swim-test counters of one arena as typed, frozen values: what decisions hand to outputs.

Why a value and not a dict: the CSV summary, the results table, ZeroMQ, Prometheus, the preview,
the terminal line and ``stream-watch`` all read the same figures. Read by string keys in each of
them, a renamed key fails silently (a panel shows nothing); read as attributes of one frozen value,
it fails at once, and ``to_json()`` is the one place that defines the wire format (the keys of the
summary JSON and of the ZeroMQ messages, unchanged since schema 1; ``bins`` was added in issue 13).

Definitions (seconds are frames / fps; see ``stream.decisions`` for the rules):

* ``Counters``: the whole test so far (``behaviour_s``, ``immobile_s``, bouts, latency), plus
* ``scoring_window``: the last ``scoring_window_s`` of the test (``WindowCounts``),
* ``bins``: consecutive ``bin_s`` slices of the test (``BinCounts``; bin k covers seconds
  ``(k-1)*bin_s`` to ``k*bin_s``); a bout is counted in the bin where it begins, so the bins' bouts
  add up to the bouts inside the test duration and their seconds to the seconds inside it,
* ``gaps``: camera outages and frames dropped under load (``GapCounts``); ``quality`` is ``ok`` or
  says why the figures are not a complete test (``frames_missing>5%``; issue 24).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BinCounts", "Counters", "GapCounts", "WindowCounts"]


def _seconds(behaviour_s: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in behaviour_s.items()}


@dataclass(frozen=True)
class GapCounts:
    """Camera outages so far: how many, and how much was not seen."""

    count: int = 0
    frames_missing: int = 0
    seconds_missing: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "frames_missing": self.frames_missing, "seconds_missing": self.seconds_missing}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GapCounts:
        return cls(int(d.get("count", 0)), int(d.get("frames_missing", 0)), float(d.get("seconds_missing", 0.0)))


@dataclass(frozen=True)
class WindowCounts:
    """The scoring window ``[start_s, end_s)`` of the test: only bout frames inside it are immobile."""

    start_s: float
    end_s: float
    frames: int = 0
    behaviour_s: Mapping[str, float] = field(default_factory=dict)
    immobile_s: float = 0.0
    mobile_s: float = 0.0
    immobility_bouts: int = 0
    latency_to_first_bout_s: float | None = None  # from the window start

    def to_json(self) -> dict[str, Any]:
        return {
            "start_s": self.start_s,
            "end_s": self.end_s,
            "frames": self.frames,
            "behaviour_s": _seconds(self.behaviour_s),
            "immobile_s": self.immobile_s,
            "mobile_s": self.mobile_s,
            "immobility_bouts": self.immobility_bouts,
            "latency_to_first_bout_s": self.latency_to_first_bout_s,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> WindowCounts:
        return cls(float(d["start_s"]), float(d["end_s"]), int(d.get("frames", 0)), _seconds(d.get("behaviour_s", {})),
                   float(d.get("immobile_s", 0.0)), float(d.get("mobile_s", 0.0)), int(d.get("immobility_bouts", 0)),
                   d.get("latency_to_first_bout_s"))


@dataclass(frozen=True)
class BinCounts:
    """One time bin ``[start_s, end_s)`` of the test (e.g. minute 3: 120-180 s)."""

    start_s: float
    end_s: float
    behaviour_s: Mapping[str, float] = field(default_factory=dict)
    immobile_s: float = 0.0
    immobility_bouts: int = 0  # bouts that began in this bin

    def to_json(self) -> dict[str, Any]:
        return {"start_s": self.start_s, "end_s": self.end_s, "behaviour_s": _seconds(self.behaviour_s),
                "immobile_s": self.immobile_s, "immobility_bouts": self.immobility_bouts}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BinCounts:
        return cls(float(d["start_s"]), float(d["end_s"]), _seconds(d.get("behaviour_s", {})),
                   float(d.get("immobile_s", 0.0)), int(d.get("immobility_bouts", 0)))


@dataclass(frozen=True)
class Counters:
    """One arena's counters right after a frame (or at the end of its test)."""

    frames_classified: int
    behaviour_s: Mapping[str, float]
    immobile_s: float
    mobile_s: float
    immobility_bouts: int
    latency_to_first_bout_s: float | None  # test time the first bout began
    last_timestamp_s: float | None  # test clock of the last decided frame
    test_complete: bool  # reached the end of the test duration, with no more than the allowed share missing
    scoring_window: WindowCounts
    gaps: GapCounts = field(default_factory=GapCounts)
    bins: tuple[BinCounts, ...] = ()
    quality: str = "ok"  # "ok", or why the figures cannot be trusted (e.g. "frames_missing>5%")

    @property
    def missing_share(self) -> float:
        """Missing frames as a share of the frames the test so far should have had (0..1)."""
        total = self.frames_classified + self.gaps.frames_missing
        return self.gaps.frames_missing / total if total else 0.0

    def current_bin(self) -> BinCounts | None:
        """The bin holding the last decided frame (None before the first frame or after the test)."""
        if self.last_timestamp_s is None:
            return None
        for b in self.bins:
            if b.start_s <= self.last_timestamp_s < b.end_s:
                return b
        return None

    def to_json(self) -> dict[str, Any]:
        """The wire format of the summary JSON and the ZeroMQ messages (plain JSON types only)."""
        return {
            "frames_classified": self.frames_classified,
            "behaviour_s": _seconds(self.behaviour_s),
            "immobile_s": self.immobile_s,
            "mobile_s": self.mobile_s,
            "immobility_bouts": self.immobility_bouts,
            "latency_to_first_bout_s": self.latency_to_first_bout_s,
            "last_timestamp_s": self.last_timestamp_s,
            "test_complete": self.test_complete,
            "scoring_window": self.scoring_window.to_json(),
            "gaps": self.gaps.to_json(),
            "bins": [b.to_json() for b in self.bins],
            "quality": self.quality,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Counters:
        """Back from ``to_json()`` (a subscriber or ``stream-watch`` reading a message)."""
        return cls(
            frames_classified=int(d.get("frames_classified", 0)),
            behaviour_s=_seconds(d.get("behaviour_s", {})),
            immobile_s=float(d.get("immobile_s", 0.0)),
            mobile_s=float(d.get("mobile_s", 0.0)),
            immobility_bouts=int(d.get("immobility_bouts", 0)),
            latency_to_first_bout_s=d.get("latency_to_first_bout_s"),
            last_timestamp_s=d.get("last_timestamp_s"),
            test_complete=bool(d.get("test_complete", False)),
            scoring_window=WindowCounts.from_json(d["scoring_window"]),
            gaps=GapCounts.from_json(d.get("gaps", {})),
            bins=tuple(BinCounts.from_json(b) for b in d.get("bins", [])),
            quality=str(d.get("quality", "ok")),
        )
