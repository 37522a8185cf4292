"""``<out>/results.csv``: one row per finished trial, the table a lab opens in a spreadsheet.

The columns are fixed (README, "Results table") so that scripts can rely on them::

    trial_id, animal, group, arena, source, start_utc, duration_s, test_complete,
    model, model_sha256, swim_stream_version, roi,
    immobile_s, bouts, latency_s, window_immobile_s, window_bouts,
    <class>_s ... (one per model class), immobile_s_bin1 ... immobile_s_binN, frames_missing, quality

``duration_s`` is how much of the trial was scored (seconds of frames, outages included), so an
incomplete trial shows how far it got; ``test_complete`` is 1 only when it ran its full test
duration with no more than 5 % of its frames missing, and an incomplete trial is also warned about: a
partial window is not a result. ``quality`` is ``ok`` or says what is wrong (``frames_missing>5%``:
frames dropped under load or lost in outages, issue 24; ``out_of_depth``: the input or the
predictions say the model is outside what it was trained on, ``stream.input_check``).
Bin k covers seconds (k-1)*bin_s to k*bin_s of the trial. The table is rewritten whole and atomically
each time a trial ends, so a crash never leaves half a row; rows already in the file (an earlier
run into the same folder, a restarted service) are kept, a trial with the same id replaced.

``stream-report`` builds the same rows from re-scored summaries with ``results_row``: one
function, so the live table and the re-scored one cannot differ in format.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from stream.atomic import atomic_write
from stream.errors import UserError
from stream.outputs.base import Output

__all__ = ["RESULTS_FILE", "ResultsTable", "fixed_columns", "results_row", "table_columns", "write_table"]

log = logging.getLogger(__name__)

RESULTS_FILE = "results.csv"
_HEAD = ("trial_id", "animal", "group", "arena", "source", "start_utc", "duration_s", "test_complete",
         "model", "model_sha256", "swim_stream_version", "roi",
         "immobile_s", "bouts", "latency_s", "window_immobile_s", "window_bouts")
_TAIL = ("frames_missing", "quality")
SECONDS_DECIMALS = 3  # 1 ms: far below one frame (67 ms at 15 fps), and the same text live and re-scored


def fixed_columns() -> tuple[str, ...]:
    return _HEAD + _TAIL


def _s(x: float | None) -> str:
    return "" if x is None else f"{float(x):.{SECONDS_DECIMALS}f}"


def results_row(summary: dict[str, Any]) -> dict[str, str]:
    """One table row from a trial's summary JSON (live or re-scored)."""
    c = summary["counters"]
    w = c["scoring_window"]
    trial = summary.get("trial") or {}
    prov = summary.get("provenance") or {}
    period = 1.0 / float(summary["config"]["fps"])
    last = c.get("last_timestamp_s")
    row = {
        "trial_id": trial.get("trial_id", summary.get("arena_id", "")),
        "animal": trial.get("animal", ""),
        "group": trial.get("group", ""),
        "arena": trial.get("arena_id", summary.get("arena_id", "")),
        "source": trial.get("source", prov.get("source", "")),
        "start_utc": trial.get("start_utc", ""),
        "duration_s": _s(0.0 if last is None else last + period),
        "test_complete": "1" if c.get("test_complete") else "0",
        "model": prov.get("model", ""),
        "model_sha256": prov.get("model_sha256", ""),
        "swim_stream_version": prov.get("swim_stream_version", ""),
        "roi": prov.get("roi", ""),
        "immobile_s": _s(c["immobile_s"]),
        "bouts": str(c["immobility_bouts"]),
        "latency_s": _s(c.get("latency_to_first_bout_s")),
        "window_immobile_s": _s(w["immobile_s"]),
        "window_bouts": str(w["immobility_bouts"]),
    }
    for cls in summary["classes"]:
        row[f"{cls}_s"] = _s(c["behaviour_s"].get(cls, 0.0))
    for k, b in enumerate(c.get("bins", []), start=1):
        row[f"immobile_s_bin{k}"] = _s(b["immobile_s"])
    row["frames_missing"] = str(c["gaps"]["frames_missing"])
    problems = [q for q in (c.get("quality", "ok"),) if q != "ok"]
    if (summary.get("input_check") or {}).get("warnings"):
        problems.append("out_of_depth")
    row["quality"] = ";".join(problems) or "ok"
    return row


def table_columns(rows: list[dict[str, str]]) -> list[str]:
    """Fixed columns, then every class column and every bin column the rows have, in order."""
    classes: list[str] = []
    bins = 0
    for row in rows:
        for key in row:
            if key.endswith("_s") and key not in _HEAD and not key.startswith("immobile_s_bin") and key not in classes:
                classes.append(key)
            if key.startswith("immobile_s_bin"):
                bins = max(bins, int(key[len("immobile_s_bin"):]))
    return [*_HEAD, *classes, *(f"immobile_s_bin{k}" for k in range(1, bins + 1)), *_TAIL]


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

    def on_trial_end(self, trial, summary: dict) -> None:
        row = results_row(summary)
        key = (row["trial_id"], row["source"])
        self.rows = [r for r in self.rows if (r.get("trial_id"), r.get("source")) != key] + [row]
        write_table(self.path, self.rows)
        warn_incomplete(row)
