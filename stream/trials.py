"""Trials: one animal in one arena, tested from its start for ``test_duration_s``.

A lab does not score a stream, it scores trials: a mouse goes into a cylinder, is tested for
6 minutes, is taken out, and the next mouse goes in. Each arena's counters, bouts, bins and
scoring window belong to its current trial; the trial's clock (``Decision.timestamp_s``) starts at
0 on the trial's first frame. When a trial ends its summary is final and written, and the arena
waits for the next one.

How trials start and stop (``--trials``):

* ``now``: every arena starts at the first frame (the default for ``--video``);
* ``control``: ``stream-ctl start/stop`` over the control endpoint (``stream.control``);
* ``auto``: an animal appears in an empty arena / is taken out (``stream.presence``);
* ``schedule``: a CSV ``video,arena,animal,group,start_s`` for recordings.

Every mode also ends a trial at ``test_duration_s``, and ``stream-ctl`` works in every mode.

The pipeline feeds ``ArenaTrial.update`` like ``ArenaDecisions.update``; it returns decisions and
``TrialStarted`` / ``TrialEnded`` events in order, which the pipeline hands to the outputs. So the
decision code is exactly the one ``stream-report`` re-runs on the CSVs. Two details make a
re-scoring reproduce the live figures exactly: the probabilities and the trial clock are rounded
to the 6 decimals the CSV stores before they are decided on.

A restarted service resumes a running trial: ``<trial>.trial.json`` (written at the start) without
a ``<trial>.summary.json`` is a trial in progress; its counters are rebuilt by replaying its CSV,
and its clock continues from its start time (UTC), the outage in between counted as a gap.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import queue
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from stream.counters import Counters
from stream.decisions import ArenaDecisions, Decision, DecisionConfig
from stream.errors import UserError
from stream.ids import check_arena_id_length, check_id, safe_token
from stream.presence import PresenceConfig, PresenceDetector
from stream.trial_summary import TrialSummary
from stream.trial_files import (  # Trial and write_trial_file are re-exported: a trial is imported from here
    FRAMES_FILE_SUFFIX,
    SUMMARY_FILE_SUFFIX,
    TRIAL_FILE_SUFFIX,
    Trial,
    read_frames_csv,
    read_trial_file,
    replay_frames,
    write_trial_file,
)

__all__ = [
    "TRIAL_MODES",
    "ArenaTrial",
    "ScheduleEntry",
    "Trial",
    "TrialBook",
    "TrialEnded",
    "TrialStarted",
    "check_schedule",
    "match_schedule",
    "read_schedule",
    "schedule_for",
    "write_trial_file",
    "safe_token",
    "utc_now",
]

log = logging.getLogger(__name__)

TRIAL_MODES = ("now", "control", "auto", "schedule")
SCHEDULE_COLUMNS = ("video", "arena", "animal", "group", "start_s")
LOGGED_DECIMALS = 6  # what the frames CSV keeps of probabilities and timestamps (stream.outputs.csv_log)
END_TEST_COMPLETE = "test complete"
TRIAL_END_TOLERANCE_S = 1e-6  # trial clocks are rounded to 1e-6 s (LOGGED_DECIMALS)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _logged(x: float) -> float:
    """``x`` as the CSV will store it: deciding on this value makes a re-scoring exact."""
    return float(f"{x:.{LOGGED_DECIMALS}f}")


@dataclass(frozen=True)
class TrialStarted:
    trial: Trial


@dataclass(frozen=True)
class TrialEnded:
    trial: Trial
    summary: TrialSummary


@dataclass(frozen=True)
class ScheduleEntry:
    """One row of a schedule CSV: this animal's trial in this arena starts at ``start_s`` of the video."""

    video: str  # file name (matched against the video's name, or its full path)
    arena: str
    animal: str
    group: str
    start_s: float
    line: int = 0  # line of the schedule file (1 = header): named in warnings and errors

    def describe(self) -> str:
        who = f"animal {self.animal}" if self.animal else "no animal"
        return f"line {self.line} ({self.video}, arena {self.arena}, {who}, start {self.start_s:g} s)"


def read_schedule(path: str | Path) -> list[ScheduleEntry]:
    """Rows of a schedule CSV (header ``video,arena,animal,group,start_s``); one-line errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(f"schedule {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:  # e.g. a spreadsheet's "CSV" in a Windows code page
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise UserError(f"schedule {path} line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); "
                        "save it as 'CSV UTF-8'") from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in SCHEDULE_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"schedule {path}: needs the columns {','.join(SCHEDULE_COLUMNS)} (missing {','.join(missing)})")
    entries = []
    for line, row in enumerate(reader, start=2):
        try:
            start_s = float(row["start_s"])
        except (TypeError, ValueError):
            raise UserError(f"schedule {path} line {line}: start_s {row['start_s']!r} is not a number") from None
        if not (math.isfinite(start_s) and start_s >= 0):
            raise UserError(f"schedule {path} line {line}: start_s must be >= 0, got {start_s}")
        if not (row["video"] or "").strip() or not (row["arena"] or "").strip():
            raise UserError(f"schedule {path} line {line}: video and arena must not be empty")
        try:
            check_arena_id_length(row["arena"].strip())
            for key in ("animal", "group"):
                check_id(key, (row[key] or "").strip())
        except UserError as exc:
            raise UserError(f"schedule {path} line {line}: {exc}") from None
        entries.append(ScheduleEntry(row["video"].strip(), row["arena"].strip(), (row["animal"] or "").strip(),
                                     (row["group"] or "").strip(), start_s, line))
    if not entries:
        raise UserError(f"schedule {path}: no trials in it")
    return entries


def schedule_for(entries: Sequence[ScheduleEntry], video: str | Path, *, base_dir: Path | None = None) -> list[ScheduleEntry]:
    """The entries of one video (``match_schedule`` with that video alone)."""
    return match_schedule(entries, [video], base_dir=base_dir)[0].get(str(video), [])


def _resolved(path: Path) -> str:
    try:
        return str(path.expanduser().resolve()).casefold()
    except (OSError, RuntimeError):
        return str(path.expanduser().absolute()).casefold()


def match_schedule(entries: Sequence[ScheduleEntry], videos: Sequence[str | Path], *,
                   base_dir: Path | None = None) -> tuple[dict[str, list[ScheduleEntry]], list[ScheduleEntry]]:
    """({video as given: its entries}, entries that name none of ``videos``).

    A lab writes the video column by hand: a relative or an absolute path, the name in another
    case. An entry goes to the video its path resolves to (from the working folder or from the
    schedule's folder ``base_dir``; case-insensitive), else to the one video with its file name
    (case-insensitive). Two videos of one name and a bare name is ambiguous: one-line error.
    """
    keys = [str(v) for v in videos]
    resolved = {k: _resolved(Path(k)) for k in keys}
    out: dict[str, list[ScheduleEntry]] = {k: [] for k in keys}
    unmatched: list[ScheduleEntry] = []
    for e in entries:
        written = Path(e.video)
        bases = [Path.cwd()] + ([Path(base_dir)] if base_dir is not None else [])
        candidates = {_resolved(written if written.is_absolute() else b / written) for b in bases}
        by_path = [k for k in keys if resolved[k] in candidates]
        by_name = [k for k in keys if Path(k).name.casefold() == written.name.casefold()]
        hits = by_path or by_name
        if len(hits) > 1 and not by_path:
            raise UserError(f"schedule {e.describe()}: the name {written.name!r} fits {len(hits)} videos "
                            f"({', '.join(hits)}); write the video's path")
        if not hits:
            unmatched.append(e)
            continue
        out[hits[0]].append(e)
    return out, unmatched


def check_schedule(entries: Sequence[ScheduleEntry], test_duration_s: float, *, video_s: float | None = None,
                   where: str = "schedule") -> None:
    """One video's entries: two trials of one arena closer than the test duration are refused; a
    trial past the end of the video (``video_s``) or cut by it is warned about.

    Why refuse and not run them one after the other: one cylinder holds one animal at a time, so
    two rows that overlap are a typo (a wrong arena or start), or a test duration that is not the
    one the lab ran. Either way the first trial would be cut short and its figures would not be a
    result; a lab wants to hear it before the scoring, not find a half trial in the table.
    """
    by_arena: dict[str, list[ScheduleEntry]] = {}
    for e in entries:
        by_arena.setdefault(e.arena, []).append(e)
    for arena, rows in by_arena.items():
        rows = sorted(rows, key=lambda e: e.start_s)
        for a, b in zip(rows, rows[1:]):
            if b.start_s - a.start_s < test_duration_s - TRIAL_END_TOLERANCE_S:
                raise UserError(f"{where}: lines {a.line} and {b.line} both put a trial in arena {arena}, "
                                f"{b.start_s - a.start_s:g} s apart, less than the {test_duration_s:g}-s test; "
                                "fix the start times, the arena, or --test-duration-s")
    if video_s is None:
        return
    for e in sorted(entries, key=lambda e: e.line):
        if e.start_s >= video_s:
            log.warning("%s %s starts after the end of the video (%.1f s): it does not run; results.csv lists it "
                        "as not run", where, e.describe(), video_s)
        elif e.start_s + test_duration_s > video_s + TRIAL_END_TOLERANCE_S:
            log.warning("%s %s: the video ends %.1f s into the trial, before its %g-s test: it will be INCOMPLETE",
                        where, e.describe(), video_s - e.start_s, test_duration_s)


class ArenaTrial:
    """One arena's trials, one at a time: waiting -> running (ArenaDecisions) -> ended -> waiting.

    ``update/gap/flush/counters`` mirror ``ArenaDecisions`` so the pipeline drives either;
    ``update`` also returns ``TrialStarted``/``TrialEnded`` events in order.
    """

    def __init__(self, arena_id: str, classes: list[str], config: DecisionConfig,
                 provenance: Callable[[Trial], dict] | None = None) -> None:
        self.arena_id = arena_id
        self.classes = list(classes)
        self.config = config
        self.provenance = provenance  # what produced the figures (the runner's), in every summary
        self.trial: Trial | None = None
        self.decisions: ArenaDecisions | None = None
        self.trials_ended = 0
        self._pending: Trial | None = None  # starts at its start_frame
        self._stop: tuple[int, str] | None = None  # (frame, reason): ends before that frame
        self._resumed_at_utc: str | None = None  # a resumed trial: clock and indices continue
        self._index_offset = 0  # source index + offset = the trial's frame index (resumed trials only)
        self._last_trial_index: int | None = None
        self._last_trial_s: float | None = None
        self._logged_through: int | None = None  # a resumed trial: its frames up to here are in its CSV already
        self.end_then: ScheduleEntry | None = None  # schedule: starts once the running trial has ended

    # -- requests (from the trial book, between frames) ------------------------------------------
    @property
    def running(self) -> bool:
        return self.trial is not None

    @property
    def busy(self) -> bool:
        """Running, or about to start."""
        return self.trial is not None or self._pending is not None

    def request_start(self, trial: Trial) -> None:
        if self.busy:
            raise UserError(f"arena {self.arena_id} already has a trial")
        self._pending = trial

    def request_stop(self, at_frame: int, reason: str) -> None:
        if self.trial is None and self._pending is not None:
            self._pending = None  # never started
            return
        if self.trial is not None and self._stop is None:
            self._stop = (at_frame, reason)

    def resume(self, trial: Trial, rows: list[dict]) -> None:
        """Continue ``trial`` after a restart: rebuild its counters from its CSV rows."""
        self.trial = trial
        self.decisions = ArenaDecisions(self.arena_id, self.classes, self.config)
        replay_frames(self.decisions, rows)
        if rows:
            self._last_trial_index, self._last_trial_s = self.decisions.last_index, rows[-1]["timestamp_s"]
            # the replay holds back its last frames (smoothing look-ahead, a young immobile run), as
            # ``stream-report``'s replay does; decided later, they must count but not be logged twice
            self._logged_through = self.decisions.last_index
        self._resumed_at_utc = "pending"  # the clock is placed on the first new frame

    # -- the ArenaDecisions interface ------------------------------------------------------------
    def update(self, frame_index: int, timestamp_s: float, probs: np.ndarray) -> list:
        out: list = []
        if self.trial is not None and self._stop is not None and frame_index >= self._stop[0]:
            out += self.end(self._stop[1])
        if self.trial is None and self._pending is not None and frame_index >= self._pending.start_frame:
            out += self._start()
        if self.trial is None or self.decisions is None:
            return out
        if self._resumed_at_utc == "pending":
            self._place_resumed_clock(frame_index, timestamp_s)
        t = _logged(timestamp_s - self.trial.start_s)
        if t >= self.config.test_duration_s - TRIAL_END_TOLERANCE_S:
            out += self.end(END_TEST_COMPLETE)
            return out
        p = np.array([_logged(v) for v in np.asarray(probs, dtype=np.float64).reshape(-1)])
        out += self._source_indices(self.decisions.update(frame_index + self._index_offset, t, p))
        return out

    def gap(self, frames_missing: int, seconds_missing: float) -> None:
        if self.decisions is not None:
            self.decisions.gap(frames_missing, seconds_missing)

    def flush(self) -> list[Decision]:
        return self._source_indices(self.decisions.flush()) if self.decisions is not None else []

    def counters(self) -> Counters | None:
        return self.decisions.counters() if self.decisions is not None else None

    def elapsed_s(self) -> float | None:
        c = self.counters()
        if c is None:
            return None
        return 0.0 if c.last_timestamp_s is None else c.last_timestamp_s + self.config.frame_period_s

    # -- start and end -----------------------------------------------------------------------------
    def _start(self) -> list:
        assert self._pending is not None
        self.trial, self._pending = self._pending, None
        self.decisions = ArenaDecisions(self.arena_id, self.classes, self.config)
        self._index_offset = 0
        log.info("arena %s: trial %s started (animal %s)", self.arena_id, self.trial.trial_id, self.trial.animal or "-")
        return [TrialStarted(self.trial)]

    def end(self, reason: str) -> list:
        """End the running trial now: decide what is held back, then its final summary."""
        if self.trial is None or self.decisions is None:
            return []
        out: list = list(self.flush())
        counters = self.decisions.counters()
        summary = self.decisions.trial_summary(
            trial={**self.trial.to_json(), "end_reason": reason, "ended_utc": utc_now(),
                   "test_complete": counters.test_complete},
            provenance=self.provenance(self.trial) if self.provenance is not None else None)
        out.append(TrialEnded(self.trial, summary))
        log.info("arena %s: trial %s ended (%s)", self.arena_id, self.trial.trial_id, reason)
        self.trial, self.decisions, self._stop, self._resumed_at_utc = None, None, None, None
        self._index_offset, self._last_trial_index, self._last_trial_s, self._logged_through = 0, None, None, None
        self.trials_ended += 1
        return out

    def _place_resumed_clock(self, frame_index: int, timestamp_s: float) -> None:
        """First frame after a restart: the trial clock is the time since its UTC start."""
        assert self.trial is not None
        started = datetime.fromisoformat(self.trial.start_utc)
        elapsed = (datetime.now(timezone.utc) - started).total_seconds()
        if self._last_trial_s is not None:
            elapsed = max(elapsed, self._last_trial_s + self.config.frame_period_s)
        self.trial = dataclasses.replace(self.trial, start_s=timestamp_s - elapsed)
        if self._last_trial_index is not None:
            frames_on = max(1, round((elapsed - self._last_trial_s) * self.config.fps))
            self._index_offset = self._last_trial_index + frames_on - frame_index
        self._resumed_at_utc = utc_now()

    def _source_indices(self, decisions: list[Decision]) -> list[Decision]:
        if self._logged_through is not None:
            decisions = [d for d in decisions if d.frame_index > self._logged_through]
        if not self._index_offset:
            return decisions
        return [dataclasses.replace(d, frame_index=d.frame_index - self._index_offset) for d in decisions]

    def not_run(self, trial: Trial, reason: str) -> list:
        """A trial that never got a frame (scheduled after the end of the input): started and ended at
        once, so its row in results.csv says it did not run instead of the row missing."""
        if self.busy:
            raise UserError(f"arena {self.arena_id} already has a trial")
        self._pending = trial
        return self._start() + self.end(reason)


class TrialBook:
    """The trials of one source: which arena runs which trial, started by which mode.

    The pipeline calls ``on_frame`` for every frame (before that frame's classifications): starts
    and stops requested since the last frame (``command``, from the control thread), scheduled
    starts and the presence detector take effect there, at that frame.
    """

    def __init__(self, arenas: Sequence[str], classes: list[str], config: DecisionConfig, *, mode: str,
                 out_dir: Path, source: str, schedule: Sequence[ScheduleEntry] = (),
                 provenance: Callable[[Trial], dict] | None = None) -> None:
        if mode not in TRIAL_MODES:
            raise UserError(f"--trials {mode}: choose one of {', '.join(TRIAL_MODES)}")
        unknown = sorted({e.arena for e in schedule} - set(arenas))
        if unknown:
            raise UserError(f"schedule: arena(s) {', '.join(unknown)} not among this source's arenas "
                            f"({', '.join(arenas)})")
        for a in arenas:
            check_arena_id_length(a)
        self.mode = mode
        self.config = config
        self.out_dir = Path(out_dir)
        self.source = source
        self.arenas = {a: ArenaTrial(a, classes, config, provenance) for a in arenas}
        self._schedule = sorted(schedule, key=lambda e: e.start_s)
        self._commands: queue.Queue = queue.Queue()
        self._lock = threading.Lock()  # guards the status snapshot read by the control thread
        self._presence = {a: PresenceDetector(PresenceConfig(fps=config.fps)) for a in arenas} if mode == "auto" else {}
        self._rearm = {a: True for a in arenas}  # auto: an empty arena was seen since the last trial
        self._last_frame: tuple[int, float] | None = None
        self._numbers: dict[str, int] = {}
        self._snapshot: dict[str, Any] = {}
        self.resume_on_stop = False  # live sources: a stop leaves trials running, resumed at the next start
        self.numbered_ids = mode != "now"  # live sources number their trials even in "now" mode: never overwrite

    # -- trial ids and files ---------------------------------------------------------------------
    def _new_trial(self, arena: str, animal: str, group: str, frame_index: int, source_s: float) -> Trial:
        if self.mode == "now" and not self.numbered_ids:
            trial_id = arena  # one trial per arena per recording: the files keep the arena's name
        else:
            n = max(self._numbers.get(arena, 0), self._highest_number(arena)) + 1
            self._numbers[arena] = n
            trial_id = f"{arena}-t{n:03d}" + (f"-{safe_token(animal)}" if animal else "")
        return Trial(trial_id=trial_id, arena_id=arena, animal=animal, group=group, source=self.source,
                     start_utc=utc_now(), start_s=source_s, start_frame=frame_index)

    def _highest_number(self, arena: str) -> int:
        """The highest trial number of ``arena`` in ``out_dir`` (any of its files): the next is free even
        when earlier ones were deleted or moved (counting the files would reuse a number)."""
        pattern = re.compile(rf"{re.escape(arena)}-t(\d+)(?:[-.]|$)")
        numbers = [int(m.group(1)) for p in self.out_dir.glob(f"{arena}-t*") if (m := pattern.match(p.name))]
        return max(numbers, default=0)

    def resume_running(self) -> list[Trial]:
        """Trials in ``out_dir`` that were running when the service stopped: continue them."""
        resumed = []
        for path in sorted(self.out_dir.glob(f"*{TRIAL_FILE_SUFFIX}")):
            stem = path.name[: -len(TRIAL_FILE_SUFFIX)]
            if (self.out_dir / f"{stem}{SUMMARY_FILE_SUFFIX}").exists():
                continue
            try:
                trial = read_trial_file(path)
            except (OSError, ValueError, TypeError) as exc:
                raise UserError(f"cannot resume {path}: {exc}") from exc
            arena = self.arenas.get(trial.arena_id)
            if arena is None or arena.busy:
                continue
            csv_path = self.out_dir / f"{stem}{FRAMES_FILE_SUFFIX}"
            rows = read_frames_csv(csv_path) if csv_path.exists() else []
            trial = dataclasses.replace(trial, resumed=True)
            arena.resume(trial, rows)
            resumed.append(trial)
            log.warning("arena %s: resuming trial %s started %s (%d frames from its log)", trial.arena_id,
                        trial.trial_id, trial.start_utc, len(rows))
        return resumed

    # -- commands (any thread) -------------------------------------------------------------------
    def command(self, request: dict) -> dict:
        """A control request -> its JSON reply. Starts and stops take effect at the next frame."""
        cmd = request.get("cmd")
        if cmd == "status":
            with self._lock:
                return {"ok": True, "mode": self.mode, "arenas": dict(self._snapshot)}
        if cmd not in ("start", "stop"):
            return {"ok": False, "error": f"unknown command {cmd!r}; use start, stop or status"}
        arena = request.get("arena")
        if not isinstance(arena, str) or arena not in self.arenas:
            return {"ok": False, "error": f"unknown arena {arena!r}; arenas: {', '.join(self.arenas)}"}
        try:  # checked before the reply: a start that is accepted must be able to name its files
            for key in ("animal", "group"):
                check_id(key, request.get(key, ""))
        except UserError as exc:
            return {"ok": False, "error": str(exc)}
        with self._lock:
            state = (self._snapshot.get(arena) or {}).get("state")
        if cmd == "start" and state in ("running", "starting"):
            return {"ok": False, "error": f"arena {arena} already runs a trial; stop it first"}
        if cmd == "stop" and state not in ("running", "starting"):
            return {"ok": False, "error": f"arena {arena} has no trial to stop"}
        reply = threading.Event()
        box: dict = {}
        self._commands.put((request, reply, box))
        if not reply.wait(COMMAND_WAIT_S):
            return {"ok": True, "queued": True, "arena": arena,
                    "note": "no frame arrived yet; the command takes effect at the next frame"}
        return box["reply"]

    # -- the pipeline's hook -----------------------------------------------------------------------
    def on_frame(self, frame_index: int, source_s: float, crops: np.ndarray | None, next_center: int) -> None:
        """Apply what happened since the last frame, at this frame (``next_center``: first not decided)."""
        self._last_frame = (frame_index, source_s)
        start_at = max(frame_index, next_center)
        if self.mode == "now" and frame_index == next_center:
            for a, arena in self.arenas.items():
                if not arena.busy and arena.trials_ended == 0:
                    arena.request_start(self._new_trial(a, "", "", frame_index, source_s))
        while self._schedule and self._schedule[0].start_s <= source_s + 1e-9:
            e = self._schedule.pop(0)
            arena = self.arenas[e.arena]
            if arena.busy:
                arena.request_stop(start_at, "next trial scheduled")
                arena.end_then = e  # started once the current one has ended
            else:
                arena.request_start(self._new_trial(e.arena, e.animal, e.group, frame_index, source_s))
        for a, detector in self._presence.items():
            if crops is None:
                break
            event = detector.update(frame_index, crops[list(self.arenas).index(a)])
            arena = self.arenas[a]
            if event is None:
                continue
            at = max(event.frame_index, next_center)
            if event.kind == "appeared" and not arena.busy and self._rearm[a]:
                self._rearm[a] = False
                arena.request_start(self._new_trial(a, "", "", at, self._source_s(event.frame_index, source_s,
                                                                                     frame_index)))
            elif event.kind == "removed":
                self._rearm[a] = True
                arena.request_stop(at, "animal removed")
        while True:
            try:
                request, done, box = self._commands.get_nowait()
            except queue.Empty:
                break
            try:
                box["reply"] = self._apply(request, frame_index, source_s, start_at)
            except UserError as exc:  # refused here, at the frame: the reply says why, the pipeline runs on
                box["reply"] = {"ok": False, "error": str(exc)}
            finally:
                done.set()
        self._update_snapshot()

    def _source_s(self, event_frame: int, now_s: float, now_frame: int) -> float:
        return now_s - (now_frame - event_frame) / self.config.fps

    def _apply(self, request: dict, frame_index: int, source_s: float, start_at: int) -> dict:
        arena = self.arenas[request["arena"]]
        if request["cmd"] == "start":
            if arena.busy:
                return {"ok": False, "error": f"arena {request['arena']} already runs a trial; stop it first"}
            trial = self._new_trial(request["arena"], request.get("animal", ""), request.get("group", ""),
                                    start_at, self._source_s(start_at, source_s, frame_index))
            arena.request_start(trial)
            return {"ok": True, "arena": trial.arena_id, "trial_id": trial.trial_id, "start_utc": trial.start_utc}
        if not arena.busy:
            return {"ok": False, "error": f"arena {request['arena']} has no trial to stop"}
        trial = arena.trial or arena._pending
        arena.request_stop(start_at, "stopped by command")
        return {"ok": True, "arena": request["arena"], "trial_id": trial.trial_id if trial else None}

    def on_trial_ended(self, arena_id: str) -> None:
        """After a trial ended: a scheduled trial waiting for this arena starts now."""
        arena = self.arenas[arena_id]
        entry = arena.end_then
        if entry is not None and self._last_frame is not None and not arena.busy:
            arena.end_then = None
            frame, source_s = self._last_frame
            arena.request_start(self._new_trial(arena_id, entry.animal, entry.group, frame, source_s))

    def _update_snapshot(self) -> None:
        snap = {}
        for a, arena in self.arenas.items():
            state = "running" if arena.running else "starting" if arena.busy else "waiting"
            trial = arena.trial or arena._pending
            c = arena.counters()
            snap[a] = {"state": state, "trial": trial.to_json() if trial else None, "elapsed_s": arena.elapsed_s(),
                       "counters": c.to_json() if c is not None else None}
        with self._lock:
            self._snapshot = snap

    def snapshot(self) -> dict[str, Any]:
        """Arena id -> state, trial and elapsed seconds (what ``stream-ctl status`` shows)."""
        with self._lock:
            return dict(self._snapshot)

    def end_all(self, reason: str) -> list[tuple[str, Any]]:
        """End every running trial (end of the input, a stop): (arena id, decision or TrialEnded) pairs."""
        out: list = []
        not_run: list[ScheduleEntry] = []
        for a, arena in self.arenas.items():
            pending = arena._pending if arena.trial is None else None
            arena._pending = None
            if arena.end_then is not None:
                not_run.append(arena.end_then)
            arena.end_then = None
            out += [(a, item) for item in arena.end(reason)]
            if pending is not None and self.mode == "schedule":
                out += [(a, item) for item in arena.not_run(pending, f"not run ({reason} before its first frame)")]
        not_run += self._schedule
        self._schedule = []
        for e in sorted(not_run, key=lambda e: e.start_s):
            frame = round(e.start_s * self.config.fps)
            trial = self._new_trial(e.arena, e.animal, e.group, frame, e.start_s)
            log.warning("schedule %s: not run: the input ended (%s) before its start", e.describe(), reason)
            out += [(e.arena, item) for item in self.arenas[e.arena].not_run(trial, f"not run ({reason} before its start)")]
        self._update_snapshot()
        return out


COMMAND_WAIT_S = 2.0  # a control request waits this long for the pipeline's next frame to apply it
