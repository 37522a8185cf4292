"""Trials: one animal in one arena, tested from its start for ``test_duration_s``.

A lab does not score a stream, it scores trials: a mouse goes into a cylinder, is tested for
6 minutes, is taken out, and the next mouse goes in. Each arena's counters, bouts, bins and
scoring window belong to its current trial; the trial's clock (``Decision.timestamp_s``) starts at
0 on the trial's first frame. When a trial ends its summary is final and written, and the arena
waits for the next one.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from stream.errors import UserError

__all__ = ["Trial", "safe_token"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_token(text: str) -> str:
    """``text`` as a file-name token: runs of other characters become ``_``."""
    return _UNSAFE.sub("_", text).strip("_.") or "x"


@dataclass(frozen=True)
class Trial:
    """Who is tested where, and from when."""

    trial_id: str  # unique in the output folder; names the trial's files
    arena_id: str
    animal: str = ""
    group: str = ""
    source: str = ""  # the camera, URL or video it was recorded from
    start_utc: str = ""  # ISO 8601, UTC, of the trial's first frame
    start_s: float = 0.0  # source clock (s since the source's first frame) of the trial's first frame
    start_frame: int = 0  # source frame index of the trial's first frame

    def __post_init__(self) -> None:
        if not self.trial_id or safe_token(self.trial_id) != self.trial_id:
            raise UserError(f"trial id {self.trial_id!r}: use letters, digits, '_', '.', '-'")

    @property
    def file_stem(self) -> str:
        """``<out>/<file_stem>.frames.csv`` and ``.summary.json``."""
        return self.trial_id

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Trial:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
