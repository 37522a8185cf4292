"""``stream-report --assign animals.csv``: animal IDs and groups for trials scored without them.

An ``auto`` session (or ``now``, or ``stream-ctl start`` without ``--animal``) scores trials as
``A1-t001``, ``A1-t002``... with no animal; the lab's sheet says which mouse went in when. The file
maps trials to animals in either of two forms (header row required)::

    trial_id,animal,group             A1-t001,M17,saline
    video,arena,order,animal,group    day1.mp4,A1,2,M18,drug

``order`` is the trial's place among that arena's trials in that video (1 = first, by start time);
``video`` matches the trial's source by path or, case-insensitively, by file name; ``group`` may be
left out. IDs are checked by ``stream.ids`` (as ``stream-ctl`` checks them) and every line that
names no trial is an error, so a typo never silently leaves a mouse unassigned. The assignment goes
into the re-scored table (and summaries) only: the live files are never touched
(``stream.report.check_outputs_outside_runs``).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from stream.errors import UserError
from stream.ids import check_id

__all__ = ["Assignment", "apply_assignments", "read_assignments"]

log = logging.getLogger(__name__)

BY_TRIAL = ("trial_id", "animal")
BY_ORDER = ("video", "arena", "order", "animal")


@dataclass(frozen=True)
class Assignment:
    """One line of the file: which trial (by id, or by video + arena + order) gets which animal."""

    line: int
    animal: str
    group: str | None  # None: the file has no group column (the trial keeps its own)
    trial_id: str = ""
    video: str = ""
    arena: str = ""
    order: int = 0


def read_assignments(path: Path) -> list[Assignment]:
    """Lines of an assignment CSV (one of the two headers above); one-line errors naming the line."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(f"--assign {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise UserError(f"--assign {path}: not UTF-8 text; save it as 'CSV UTF-8'") from None
    reader = csv.DictReader(text.splitlines())
    fields = reader.fieldnames or []
    by_trial = all(c in fields for c in BY_TRIAL)
    if not by_trial and not all(c in fields for c in BY_ORDER):
        raise UserError(f"--assign {path}: needs the columns {','.join(BY_TRIAL)}[,group] or "
                        f"{','.join(BY_ORDER)}[,group]")
    out = []
    for line, row in enumerate(reader, start=2):
        where = f"--assign {path} line {line}"
        try:
            animal = check_id("animal", (row.get("animal") or "").strip())
            group = check_id("group", (row.get("group") or "").strip()) if "group" in fields else None
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        if by_trial:
            trial_id = (row.get("trial_id") or "").strip()
            if not trial_id:
                raise UserError(f"{where}: trial_id is empty")
            out.append(Assignment(line, animal, group, trial_id=trial_id))
            continue
        try:
            order = int(row.get("order") or "")
        except ValueError:
            raise UserError(f"{where}: order {row.get('order')!r} is not a whole number (1 = the arena's first trial)") \
                from None
        if order < 1 or not (row.get("video") or "").strip() or not (row.get("arena") or "").strip():
            raise UserError(f"{where}: video and arena must not be empty and order must be >= 1")
        out.append(Assignment(line, animal, group, video=row["video"].strip(), arena=row["arena"].strip(),
                              order=order))
    if not out:
        raise UserError(f"--assign {path}: no lines to assign")
    return out


def _video_matches(written: str, source: str) -> bool:
    if not source:
        return False
    try:
        if Path(written).resolve() == Path(source).resolve():
            return True
    except (OSError, RuntimeError):
        pass
    return Path(written).name.casefold() == Path(source).name.casefold()


def apply_assignments(summaries: list[dict], assignments: list[Assignment], where: str = "--assign") -> int:
    """Write each assignment's animal (and group) into its trial's ``summary["trial"]``, in place.

    Returns how many trials were assigned. A line that names no trial, or two lines for one trial, is a
    one-line error.
    """
    trials = []
    for s in summaries:  # a summary without a trial block (an old run) is named by its arena, as in results_row
        trial = s.setdefault("trial", {})
        trial.setdefault("trial_id", s.get("arena_id", ""))
        trial.setdefault("arena_id", s.get("arena_id", ""))
        trials.append(trial)
    order: dict[tuple[str, str], list[dict]] = {}
    for t in sorted(trials, key=lambda t: (float(t.get("start_s", 0.0)), t.get("trial_id", ""))):
        order.setdefault((t.get("source", ""), t.get("arena_id", "")), []).append(t)
    done: dict[int, int] = {}  # id(trial) -> line that assigned it
    for a in assignments:
        if a.trial_id:
            hits = [t for t in trials if t.get("trial_id") == a.trial_id]
            what = f"trial {a.trial_id}"
        else:
            hits = [ts[a.order - 1] for (source, arena), ts in order.items()
                    if arena == a.arena and _video_matches(a.video, source) and len(ts) >= a.order]
            what = f"trial {a.order} of arena {a.arena} in {a.video}"
        if len(hits) != 1:
            raise UserError(f"{where} line {a.line}: {what} " + ("is not among the trials re-scored" if not hits else
                                                                f"fits {len(hits)} trials; use trial_id"))
        trial = hits[0]
        if id(trial) in done:
            raise UserError(f"{where} line {a.line}: {trial.get('trial_id')} was already assigned on line "
                            f"{done[id(trial)]}")
        done[id(trial)] = a.line
        if trial.get("animal") and trial["animal"] != a.animal:
            log.warning("%s line %d: trial %s had animal %s; now %s", where, a.line, trial.get("trial_id"),
                        trial["animal"], a.animal)
        trial["animal"] = a.animal
        if a.group is not None:
            trial["group"] = a.group
    unassigned = [t.get("trial_id", "?") for t in trials if id(t) not in done and not t.get("animal")]
    if unassigned:
        log.warning("%s: %d trial(s) still without an animal: %s", where, len(unassigned), ", ".join(unassigned))
    return len(done)
