"""When a recording was made: the ``creation_time`` a video file's container carries, as UTC.

Why: ``start_utc`` in the results is when swim-stream processed a trial, which for a recording
scored the next day is not when the animal swam. Cameras, phones and most recorders write the
recording's start into the container (MP4/MOV ``creation_time``, Matroska ``DATE``/``creation_time``);
PyAV reads it without decoding a frame. Many files have none (OpenCV's writer, screen grabs,
re-encodes that drop metadata): then the answer is None and the results cell stays empty, never
a guess (the file's modification time is when it was last copied, not recorded).
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["METADATA_KEYS", "recording_start_utc"]

log = logging.getLogger(__name__)

# Container tags that hold the recording's start, in the order they are trusted.
METADATA_KEYS = ("creation_time", "date", "DATE")
# MP4 writers that had no clock write the epoch of their format (1904 for QuickTime, 1970 for Unix):
# a date before this is "unknown", not a recording from 1970.
EARLIEST_PLAUSIBLE_YEAR = 1990


def _parse(text: str) -> datetime | None:
    text = text.strip()
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:  # ISO 8601 without an offset: containers store UTC (MP4 spec)
        when = when.replace(tzinfo=timezone.utc)
    if when.year < EARLIEST_PLAUSIBLE_YEAR:
        return None
    return when.astimezone(timezone.utc)


@functools.lru_cache(maxsize=64)
def recording_start_utc(path: str | Path) -> str | None:
    """ISO 8601 UTC start of the recording in ``path`` from its container metadata, or None.

    Cached: every trial of a video asks once when its summary is written.
    """
    try:
        import av

        with av.open(str(path)) as container:
            tags = [dict(container.metadata)] + [dict(s.metadata) for s in container.streams.video]
    except Exception as exc:  # noqa: BLE001 - no metadata is an answer, not an error (the run has opened the file)
        log.debug("no container metadata from %s: %s", path, exc)
        return None
    for tag in tags:
        for key in METADATA_KEYS:
            when = _parse(str(tag.get(key, "")))
            if when is not None:
                return when.isoformat(timespec="milliseconds")
    return None
