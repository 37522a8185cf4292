"""A trial's files: what a run leaves in its output folder, and how they are read back.

Per trial ``<stem>`` (``Trial.file_stem``: the trial id, or the arena id for a ``--video`` run that
is one trial per arena):

* ``<stem>.trial.json``: the ``Trial`` (who, where, from when), written when it starts; without a
  summary beside it the trial is still running, and a restarted service resumes it;
* ``<stem>.frames.csv``: one row per model-rate frame, ``frame,timestamp_s,behaviour,immobile,
  p_<class>...`` (written by ``stream.outputs.csv_log``; read back here, a crash's partial last
  line ignored);
* ``<stem>.summary.json``: the final summary, written atomically when the trial ends.

Why a module of its own: the trials (``stream.trials``) read the CSV back to resume a trial, and
the CSV output (``stream.outputs.csv_log``) writes the trial files; the format both need lives here,
so neither imports the other. ``stream-report``, ``export-select`` and ``export-validate`` read the
same files through the same functions.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream.atomic import atomic_write
from stream.decisions import ArenaDecisions, Decision
from stream.errors import UserError
from stream.ids import check_trial_id
from stream.spreadsheet import unescape_cell

__all__ = [
    "FRAMES_FILE_SUFFIX",
    "FRAMES_FIXED_COLUMNS",
    "SUMMARY_FILE_SUFFIX",
    "TRIAL_FILE_SUFFIX",
    "Trial",
    "json_default",
    "parse_frames_row",
    "read_frames_csv",
    "read_trial_file",
    "replay_frames",
    "summary_text",
    "write_trial_file",
]

log = logging.getLogger(__name__)

TRIAL_FILE_SUFFIX = ".trial.json"
SUMMARY_FILE_SUFFIX = ".summary.json"
FRAMES_FILE_SUFFIX = ".frames.csv"
FRAMES_FIXED_COLUMNS = ("frame", "timestamp_s", "behaviour", "immobile")  # then p_<class> per class


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
    resumed: bool = False  # continued after a restart (its CSV is appended to, its clock continues)

    def __post_init__(self) -> None:
        check_trial_id(self.trial_id)

    @property
    def file_stem(self) -> str:
        """``<out>/<file_stem>.frames.csv`` and ``.summary.json``."""
        return self.trial_id

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Trial:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def write_trial_file(out_dir: Path, trial: Trial) -> Path:
    """``<trial>.trial.json``: written when the trial starts; without a summary beside it, it is running."""
    return atomic_write(Path(out_dir) / f"{trial.file_stem}{TRIAL_FILE_SUFFIX}",
                        json.dumps(trial.to_json(), indent=2) + "\n")


def read_trial_file(path: Path) -> Trial:
    """The ``Trial`` a ``<trial>.trial.json`` holds (``OSError``/``ValueError``/``TypeError`` if unreadable)."""
    return Trial.from_json(json.loads(Path(path).read_text()))


def summary_text(summary: dict) -> str:
    """A summary as its ``<trial>.summary.json`` holds it (the live run and ``stream-report`` alike)."""
    return json.dumps(summary, indent=2, default=json_default) + "\n"


def json_default(obj: Any) -> Any:
    """``json`` fallback for the numpy scalars/arrays and paths a summary may carry."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def parse_frames_row(columns: list[str], fields: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, value in zip(columns, fields, strict=True):
        if name == "frame":
            row[name] = int(value)
        elif name == "behaviour":
            row[name] = unescape_cell(value)  # a class name, escaped for spreadsheets when written
        elif name == "immobile":
            if value not in ("0", "1"):
                raise ValueError(f"immobile must be 0 or 1, got {value!r}")
            row[name] = value == "1"
        else:
            row[name] = float(value)
    return row


def _split_lines(text: str) -> tuple[list[str], bool]:
    """Lines of ``text`` and whether the last one is complete (ends with a newline)."""
    complete = text.endswith("\n")
    lines = text.split("\n")
    if complete:
        lines.pop()  # the empty string after the final newline
    return lines, complete


def read_frames_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a per-frame CSV as typed dicts, ignoring a partial last line left by a crash.

    A damaged line anywhere else is an error: only the end of the file can be cut by a crash.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    lines, complete = _split_lines(text)
    if not lines or (len(lines) == 1 and not complete):
        return []  # nothing, or a header cut in half: no frame was written
    columns = next(csv.reader([lines[0]]))
    if tuple(columns[: len(FRAMES_FIXED_COLUMNS)]) != FRAMES_FIXED_COLUMNS:
        raise UserError(f"{path} is not a swim-stream frames CSV (header {lines[0]!r})")
    rows = []
    body = lines[1:]
    for number, line in enumerate(body, start=2):
        last = number == len(body) + 1
        try:
            rows.append(parse_frames_row(columns, next(csv.reader([line]))))
        except (ValueError, StopIteration, csv.Error) as exc:
            if last:  # cut by a crash (complete or not: a cut can end anywhere in the line)
                log.info("%s: ignoring a partial last line %d", path, number)
                break
            raise UserError(f"{path}: line {number} is damaged ({exc}); only the last line may be cut") from exc
    return rows


def replay_frames(arena: ArenaDecisions, rows: list[dict[str, Any]]) -> list[Decision]:
    """Feed the raw probabilities of a frames CSV back through ``arena``, in order.

    Re-scores a recorded run with other settings (smoothing, minimum bout, window), or restores the
    counters of an interrupted run before resuming it. Frame indices that jump are recorded as gaps;
    an outage the original run saw without a jump in indices is not visible in the CSV.

    A trial resumed after a restart appends frames whose indices start again from 0: they are placed
    after the earlier ones by their timestamps (the frames in between are a gap), exactly as
    ``stream.trials.ArenaTrial`` placed them live.
    """
    columns = [f"p_{c}" for c in arena.classes]
    out: list[Decision] = []
    offset = 0
    raw_last: int | None = None
    eff_last: int | None = None
    t_last = 0.0
    for row in rows:
        try:
            probs = np.array([row[c] for c in columns], dtype=np.float64)
        except KeyError as exc:
            raise UserError(f"the frames CSV has no column {exc.args[0]}; it was written for other classes") from exc
        raw = int(row["frame"])
        if raw_last is not None and eff_last is not None and raw <= raw_last:  # a restart: indices begin again
            offset = eff_last + max(1, round((row["timestamp_s"] - t_last) * arena.config.fps)) - raw
        out += arena.update(raw + offset, row["timestamp_s"], probs)
        raw_last, eff_last, t_last = raw, raw + offset, row["timestamp_s"]
    return out
