"""``<out>/results.csv``: one row per finished trial, the table a lab opens in a spreadsheet.

The columns are fixed (README, "Results table") so that scripts can rely on them::

    trial_id, animal, group, arena, source, start_utc, duration_s, test_complete,
    model, model_sha256, swim_stream_version, roi,
    immobile_s, bouts, latency_s, window_immobile_s, window_bouts,
    <class>_s ... (one per model class), immobile_s_bin1 ... immobile_s_binN, frames_missing, quality,
    video_start_s, video_end_s, recording_start_utc,
    bouts_bin1 ... bouts_binN, <class>_s_bin1 ... <class>_s_binN (each class, each bin)

The column set is versioned (``COLUMNS_VERSION``, also in every summary's provenance and the
README): version 1 ended at ``frames_missing``; version 2 added the columns after it: ``quality``
(issue 24), then what a lab needs to find a trial in its video and to plot the test minute by minute. ``video_start_s`` /
``video_end_s`` are the trial's first and last+1 frame on the source clock (seconds since the
video's, or camera's, first frame); ``recording_start_utc`` is the recording's own start from the
file's metadata (``stream.recording_time``), empty where the source gives none (cameras, streams).

``duration_s`` is how much of the trial was scored (seconds of frames, outages included), so an
incomplete trial shows how far it got; ``test_complete`` is 1 only when it ran its full test
duration with no more than 5 % of its frames missing, and an incomplete trial is also warned about: a
partial window is not a result. ``quality`` is ``ok`` or says what is wrong (``frames_missing>5%``:
frames dropped under load or lost in outages; ``out_of_depth``: the input or the predictions say the
model is outside what it was trained on, ``stream.input_check``).
Bin k covers seconds (k-1)*bin_s to k*bin_s of the trial. Text cells that a spreadsheet would take
for a formula (an animal ID ``=1+2``, ``@x``, ``-M1``) are written with a leading ``'``
(``stream.spreadsheet``), live and re-scored alike. The table is rewritten whole and atomically
each time a trial ends, so a crash never leaves half a row; rows already in the file (an earlier
run into the same folder, a restarted service) are kept, a trial with the same id replaced.

``stream-report`` builds the same rows from re-scored summaries with ``results_row``: one
function, so the live table and the re-scored one cannot differ in format.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stream.atomic import atomic_write
from stream.decisions import QUALITY_OK
from stream.errors import UserError
from stream.outputs.base import Output
from stream.spreadsheet import spreadsheet_cell
from stream.trial_summary import TrialSummary, as_summary

__all__ = ["COLUMNS_VERSION", "RESULTS_FILE", "ResultsTable", "fixed_columns", "results_row", "table_columns",
           "write_table"]

log = logging.getLogger(__name__)

RESULTS_FILE = "results.csv"
_HEAD = ("trial_id", "animal", "group", "arena", "source", "start_utc", "duration_s", "test_complete",
         "model", "model_sha256", "swim_stream_version", "roi",
         "immobile_s", "bouts", "latency_s", "window_immobile_s", "window_bouts")
_TAIL = ("frames_missing",)
# Version 2 (issues 24, 25): the quality verdict, where the trial lies in its video, then bouts and class seconds per bin.
COLUMNS_VERSION = 2
# quality (issue 24) first: whether the figures can be trusted, beside frames_missing
_LAB = ("quality", "video_start_s", "video_end_s", "recording_start_utc")
_FIXED = frozenset(_HEAD + _TAIL + _LAB)
_CLASS_BIN = re.compile(r"^(?P<cls>.+)_s_bin(?P<k>[0-9]+)$")  # swim_s_bin3, and immobile_s_bin3
_BOUTS_BIN = re.compile(r"^bouts_bin(?P<k>[0-9]+)$")
# Cells that hold text (IDs typed by people, paths, names): escaped for spreadsheets (stream.spreadsheet);
# the others are numbers this module formats.
TEXT_COLUMNS = frozenset({"trial_id", "animal", "group", "arena", "source", "start_utc", "model", "model_sha256",
                          "swim_stream_version", "roi", "recording_start_utc"})
SECONDS_DECIMALS = 3  # 1 ms: far below one frame (67 ms at 15 fps), and the same text live and re-scored


def fixed_columns() -> tuple[str, ...]:
    return _HEAD + _TAIL + _LAB


def _s(x: float | None) -> str:
    return "" if x is None else f"{float(x):.{SECONDS_DECIMALS}f}"


def results_row(summary: TrialSummary | Mapping[str, Any]) -> dict[str, str]:
    """One table row from a trial's summary (live or re-scored; its JSON is read at the edge)."""
    summary = as_summary(summary)
    c = summary.counters
    w = c.scoring_window
    trial = summary.trial or {}
    prov = summary.provenance or {}
    period = 1.0 / summary.fps
    last = c.last_timestamp_s
    row = {
        "trial_id": trial.get("trial_id", summary.arena_id),
        "animal": trial.get("animal", ""),
        "group": trial.get("group", ""),
        "arena": trial.get("arena_id", summary.arena_id),
        "source": trial.get("source", prov.get("source", "")),
        "start_utc": trial.get("start_utc", ""),
        "duration_s": _s(0.0 if last is None else last + period),
        "test_complete": "1" if c.test_complete else "0",
        "model": prov.get("model", ""),
        "model_sha256": prov.get("model_sha256", ""),
        "swim_stream_version": prov.get("swim_stream_version", ""),
        "roi": prov.get("roi", ""),
        "immobile_s": _s(c.immobile_s),
        "bouts": str(c.immobility_bouts),
        "latency_s": _s(c.latency_to_first_bout_s),
        "window_immobile_s": _s(w.immobile_s),
        "window_bouts": str(w.immobility_bouts),
    }
    for cls in summary.classes:
        row[f"{cls}_s"] = _s(c.behaviour_s.get(cls, 0.0))
    for k, b in enumerate(c.bins, start=1):
        row[f"immobile_s_bin{k}"] = _s(b.immobile_s)
    row["frames_missing"] = str(c.gaps.frames_missing)
    problems = [] if c.quality == QUALITY_OK else [c.quality]
    if (summary.input_check or {}).get("warnings"):
        problems.append("out_of_depth")
    row["quality"] = ";".join(problems) or QUALITY_OK
    # -- version 2 (issue 25): after every version-1 column, so a version-1 reader's columns stay put
    start_s = trial.get("start_s")
    scored_s = 0.0 if last is None else last + period
    row["video_start_s"] = _s(start_s)
    row["video_end_s"] = _s(None if start_s is None else float(start_s) + scored_s)
    row["recording_start_utc"] = prov.get("recording_start_utc") or ""
    for k, b in enumerate(c.bins, start=1):
        row[f"bouts_bin{k}"] = str(b.immobility_bouts)
    for cls in summary.classes:
        for k, b in enumerate(c.bins, start=1):
            row[f"{cls}_s_bin{k}"] = _s(b.behaviour_s.get(cls, 0.0))
    return {k: spreadsheet_cell(v) if k in TEXT_COLUMNS else v for k, v in row.items()}


def table_columns(rows: list[dict[str, str]]) -> list[str]:
    """The columns of ``rows`` in the documented order (module docstring), for as many classes and bins
    as the rows have; a column this version does not know (a newer table read back) goes last."""
    classes: list[str] = []
    bins = 0
    unknown: list[str] = []
    for row in rows:
        for key in row:
            if key in _FIXED:
                continue
            if (m := _CLASS_BIN.match(key) or _BOUTS_BIN.match(key)) is not None:
                bins = max(bins, int(m.group("k")))
            elif key.endswith("_s"):
                if key not in classes:
                    classes.append(key)
            elif key not in unknown:
                unknown.append(key)
    per_bin = range(1, bins + 1)
    has_v2 = any(key in row for row in rows for key in _LAB)
    v2 = [*_LAB, *(f"bouts_bin{k}" for k in per_bin), *(f"{cls}_bin{k}" for cls in classes for k in per_bin)] \
        if has_v2 else []
    return [*_HEAD, *classes, *(f"immobile_s_bin{k}" for k in per_bin), *_TAIL, *v2, *unknown]


def write_table(path: Path, rows: list[dict[str, str]]) -> Path:
    """Write ``rows`` as the results CSV, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=table_columns(rows), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, buf.getvalue())


def read_table(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "trial_id" not in reader.fieldnames:
                raise UserError(f"{path} is not a swim-stream results table (no trial_id column)")
            return [dict(r) for r in reader]
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc


def warn_incomplete(row: dict[str, str]) -> None:
    if row.get("quality", "ok") not in ("ok", ""):
        log.warning("trial %s (arena %s, animal %s): quality %s (%s frames missing); check it before using its "
                    "figures", row["trial_id"], row["arena"], row["animal"] or "-", row["quality"],
                    row["frames_missing"])
    if row["test_complete"] != "1":
        log.warning("trial %s (arena %s, animal %s) is INCOMPLETE: %s s scored; its window and bins are partial, "
                    "not a result", row["trial_id"], row["arena"], row["animal"] or "-", row["duration_s"])


class ResultsTable(Output):
    """Appends a row when a trial ends and rewrites ``<out>/results.csv`` atomically."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / RESULTS_FILE
        self.rows: list[dict[str, str]] = read_table(self.path) if self.path.exists() else []

    def on_trial_end(self, trial, summary: TrialSummary) -> None:
        row = results_row(summary)
        key = (row["trial_id"], row["source"])
        self.rows = [r for r in self.rows if (r.get("trial_id"), r.get("source")) != key] + [row]
        write_table(self.path, self.rows)
        warn_incomplete(row)
