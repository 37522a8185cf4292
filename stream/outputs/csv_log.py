"""Per-arena per-frame CSV and end-of-test summary JSON, written so that a crash loses at most ~1 s.

Each decision is appended as one line and handed to the OS at once (``flush``), so a crash of the
process loses nothing already written; ``os.fsync`` runs at most every ``flush_interval_s`` so a
power cut loses at most that much without paying a disk sync per frame. A ``kill -9`` or power cut
can still leave a partial last line: ``read_frames_csv`` ignores it and ``resume=True`` cuts it off
before appending. A write that fails (disk full) is cut back to the last complete row and raised
as one ``OutputWriteError`` naming the file; the file is unbuffered, so closing it never retries
the failed write. The summary is written to a temporary file in the same folder and renamed over
the old one (``stream.atomic.atomic_write``), so a reader sees either the old or the new summary,
never half of one.

Files: ``<out_dir>/<arena_id>.frames.csv`` with columns ``frame,timestamp_s,behaviour,immobile,
p_<class>...`` (``immobile`` is 1 or 0) and ``<out_dir>/<arena_id>.summary.json``. The format, and
reading it back, is ``stream.trial_files``.
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import math
import os
import re
import time
from pathlib import Path

from stream.atomic import atomic_write, fsync_dir
from stream.decisions import Decision
from stream.errors import OutputWriteError, UserError, output_error
from stream.outputs.base import Output
from stream.spreadsheet import spreadsheet_cell, spreadsheet_cells
from stream.trial_summary import TrialSummary

# the file format lives in stream.trial_files (the trials read it back too); its readers stay
# importable from here, where they always were
from stream.trial_files import (
    FRAMES_FILE_SUFFIX,
    FRAMES_FIXED_COLUMNS,
    SUMMARY_FILE_SUFFIX,
    Trial,
    json_default,
    parse_frames_row,
    read_frames_csv,
    replay_frames,
    summary_text,
    write_trial_file,
)

__all__ = ["FLUSH_INTERVAL_S_DEFAULT", "ArenaCsvLog", "CsvOutput", "csv_columns", "json_default", "read_frames_csv", "replay_frames"]

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S_DEFAULT = 1.0  # issue 8: a crash may lose at most the last second
# Arena ids become file names and ZeroMQ topics: keep them to characters every filesystem accepts.
_ARENA_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PROB_DECIMALS = 6  # 1e-6 is far below any decision threshold; keeps a line ~60 bytes for 3 classes


def csv_columns(classes: list[str]) -> list[str]:
    return [*FRAMES_FIXED_COLUMNS, *(f"p_{c}" for c in classes)]


def check_arena_id(arena_id: str) -> str:
    if not isinstance(arena_id, str) or not _ARENA_ID_RE.match(arena_id):
        raise UserError(
            f"arena id {arena_id!r} is not usable as a file name: use letters, digits, '_', '-', '.' "
            "(starting with a letter or digit)"
        )
    return arena_id


class ArenaCsvLog:
    """Append-only per-frame CSV for one arena, plus its summary JSON."""

    def __init__(
        self,
        out_dir: Path,
        arena_id: str,
        classes: list[str],
        *,
        flush_interval_s: float = FLUSH_INTERVAL_S_DEFAULT,
        resume: bool = False,
    ) -> None:
        if not (math.isfinite(flush_interval_s) and flush_interval_s >= 0):
            raise UserError(f"CSV flush interval must be >= 0 s, got {flush_interval_s}")
        self.out_dir = Path(out_dir)
        self.arena_id = check_arena_id(arena_id)
        self.classes = list(classes)
        self.columns = csv_columns(self.classes)
        self.flush_interval_s = float(flush_interval_s)
        self.csv_path = self.out_dir / f"{arena_id}{FRAMES_FILE_SUFFIX}"
        self.summary_path = self.out_dir / f"{arena_id}{SUMMARY_FILE_SUFFIX}"
        self.last_frame_index: int | None = None  # after resume: frames up to here are already in the file
        self.rows_written = 0
        self._failed: OutputWriteError | None = None  # set once a write failed: no row is written after it
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if resume and self.csv_path.exists():
                self._file = self._open_for_resume()
            else:
                # "x": created, never truncated; an earlier run's rows are results (issue 14.1)
                self._file = open(self.csv_path, "xb", buffering=0)
                self._good_bytes = 0
                self._append(self._format(spreadsheet_cells(self.columns)))
                self._sync()
        except FileExistsError as exc:
            raise UserError(f"{self.csv_path} already exists: earlier results are never overwritten; give a new "
                            "output folder, or resume to append") from exc
        except OutputWriteError:
            self._file.close()
            if not resume:
                self.csv_path.unlink(missing_ok=True)  # no row in it: leave no empty file behind
            raise
        except OSError as exc:
            raise output_error(self.csv_path, exc) from exc
        self._last_sync = time.monotonic()
        self._closed = False

    # ------------------------------------------------------------------ writing
    def write(self, decision: Decision) -> None:
        """Append one frame; the OS has it on return, the disk within ``flush_interval_s``."""
        if self._closed:
            raise ValueError(f"{self.csv_path} is closed")
        if self.last_frame_index is not None and decision.frame_index <= self.last_frame_index:
            log.debug("%s: frame %d already written, skipped", self.csv_path, decision.frame_index)
            return
        fields = [
            str(int(decision.frame_index)),
            f"{decision.timestamp_s:.6f}",
            spreadsheet_cell(decision.behaviour),
            "1" if decision.immobile else "0",
            *(f"{float(decision.probabilities.get(c, float('nan'))):.{_PROB_DECIMALS}f}" for c in self.classes),
        ]
        self._append(self._format(fields))
        self.rows_written += 1
        self.last_frame_index = int(decision.frame_index)
        now = time.monotonic()
        if now - self._last_sync >= self.flush_interval_s:
            try:
                os.fsync(self._file.fileno())
            except OSError as exc:
                raise self._fail(exc) from exc
            self._last_sync = now

    def write_summary(self, summary: dict) -> Path:
        """Write the summary JSON atomically (temp file in the same folder, fsync, ``os.replace``)."""
        try:
            return atomic_write(self.summary_path, summary_text(summary))
        except OSError as exc:
            raise output_error(self.summary_path, exc) from exc

    def close(self) -> None:
        """Sync and close. After a failed write only closes: the error was raised already, once."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._failed is None:
                self._sync()
        except OSError as exc:
            raise output_error(self.csv_path, exc) from exc
        finally:
            self._file.close()

    def __enter__(self) -> ArenaCsvLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _format(fields: list[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(fields)
        return buf.getvalue()

    def _sync(self) -> None:
        os.fsync(self._file.fileno())

    def _append(self, line: str) -> None:
        """Write one whole line, or none of it: a failed write is cut back to the last complete row."""
        if self._failed is not None:
            raise self._failed
        data = line.encode("utf-8")
        try:
            written = 0
            while written < len(data):  # an unbuffered write may be partial (the disk just filled up)
                n = self._file.write(data[written:])
                if not n:  # a regular file that takes nothing is full
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += n
        except OSError as exc:
            raise self._fail(exc) from exc
        self._good_bytes += len(data)

    def _fail(self, exc: OSError) -> OutputWriteError:
        try:
            os.ftruncate(self._file.fileno(), self._good_bytes)  # no half row left behind
        except OSError:
            log.debug("could not cut %s back to %d bytes", self.csv_path, self._good_bytes, exc_info=True)
        self._failed = OutputWriteError(self.csv_path, exc)
        return self._failed

    def _sync_dir(self) -> None:
        fsync_dir(self.out_dir)

    def _open_for_resume(self):
        """Cut a partial or damaged last line, check the header, and open for appending."""
        data = self.csv_path.read_bytes()
        complete = data.endswith(b"\n")
        raw_lines = data.split(b"\n")
        if complete:
            raw_lines.pop()
        lines = [line.decode("utf-8", errors="replace") for line in raw_lines]
        header_ok = bool(lines) and (len(lines) > 1 or complete)
        if not header_ok:
            log.warning("%s: header incomplete, starting the file again", self.csv_path)
            f = open(self.csv_path, "wb", buffering=0)
            header = self._format(spreadsheet_cells(self.columns)).encode("utf-8")
            f.write(header)
            os.fsync(f.fileno())
            self._good_bytes = len(header)
            return f
        columns = next(csv.reader([lines[0]]))
        if columns != self.columns:
            raise UserError(
                f"cannot resume {self.csv_path}: its columns {columns} do not match this model's "
                f"{self.columns}; use another output folder"
            )
        keep = len(lines) if complete else len(lines) - 1  # a line without its newline was cut
        if keep > 1:
            try:
                parse_frames_row(self.columns, next(csv.reader([lines[keep - 1]])))
            except (ValueError, StopIteration, csv.Error):
                keep -= 1  # complete-looking but damaged (e.g. zeros after a power cut)
        good_bytes = sum(len(line) + 1 for line in raw_lines[:keep])
        if good_bytes != len(data):
            log.warning("%s: removed a partial last line left by a crash", self.csv_path)
            with open(self.csv_path, "r+b") as f:
                f.truncate(good_bytes)
                f.flush()
                os.fsync(f.fileno())
        if keep > 1:
            self.last_frame_index = parse_frames_row(self.columns, next(csv.reader([lines[keep - 1]])))["frame"]
        f = open(self.csv_path, "ab", buffering=0)
        self._good_bytes = os.fstat(f.fileno()).st_size
        return f


class CsvOutput(Output):
    """The per-frame CSV and summary JSON of every trial of one source: an ``Output``.

    A trial's files are named by its ``file_stem`` (the arena id for a run that is one trial per
    arena, as ``--video`` is by default), so ``<out_dir>/<stem>.frames.csv`` and ``<stem>.summary.json``.
    ``resume=True`` appends to a CSV an interrupted run left (``--resume``).
    """

    def __init__(self, out_dir: Path, classes: list[str], *, resume: bool = False,
                 flush_interval_s: float = FLUSH_INTERVAL_S_DEFAULT) -> None:
        self.out_dir = Path(out_dir)
        self.classes = list(classes)
        self.resume = resume
        self.flush_interval_s = flush_interval_s
        self.logs: dict[str, ArenaCsvLog] = {}  # arena id -> the log of its current trial
        # arena id -> last frame an interrupted run had written (--resume): other outputs skip those too
        self.resumed_through: dict[str, int] = {}

    def on_trial_start(self, trial: Trial) -> None:
        old = self.logs.pop(trial.arena_id, None)
        if old is not None:
            old.close()
        log_ = ArenaCsvLog(self.out_dir, trial.file_stem, self.classes, resume=self.resume or trial.resumed,
                           flush_interval_s=self.flush_interval_s)
        if trial.resumed:
            log_.last_frame_index = None  # a restarted source counts frames from 0 again: append them all
        else:
            write_trial_file(self.out_dir, trial)
            if log_.last_frame_index is not None:
                self.resumed_through[trial.arena_id] = log_.last_frame_index
        self.logs[trial.arena_id] = log_

    def on_decision(self, arena_id: str, decision: Decision, latency_s: float | None) -> None:
        log_ = self.logs.get(arena_id)
        if log_ is not None:
            log_.write(decision)

    def on_trial_end(self, trial: Trial, summary: TrialSummary) -> None:
        log_ = self.logs.pop(trial.arena_id, None)
        if log_ is None:  # ended before it started writing (e.g. a restart between start and first frame)
            log_ = ArenaCsvLog(self.out_dir, trial.file_stem, self.classes, resume=True,
                               flush_interval_s=self.flush_interval_s)
        try:
            log_.write_summary(summary.to_json())
        finally:
            log_.close()

    def close(self) -> None:
        for log_ in self.logs.values():
            log_.close()
        self.logs.clear()
