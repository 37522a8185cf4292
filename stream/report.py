"""``stream-report``: re-score finished runs from their per-frame CSVs, without the model.

Every frame's probabilities are in ``<trial>.frames.csv``; the settings the live run used are in
``<trial>.summary.json``. Re-scoring feeds the probabilities through the same decision code
(``stream.decisions.ArenaDecisions`` via ``stream.trial_files.replay_frames``) with the same
settings, or with the ones given here, and writes the results table with the same row function
(``stream.outputs.results.results_row``). With the live settings the table is the live
``results.csv``, to the character; change ``--min-bout-s`` and the bouts change.

    stream-report runs/2026-06-01 --min-bout-s 1 --out rescored.csv [--summaries rescored/]
    stream-report runs/2026-06-01 --xlsx day1.xlsx           the table + a sheet per group (mean +- SEM)
    stream-report runs/2026-06-01 --assign animals.csv --out named.csv   IDs after an ``auto`` session

``--xlsx`` writes the same table as an Excel workbook with one more sheet per treatment group
(``stream.workbook``); ``--assign`` fills animal IDs and groups from a CSV (``stream.assign``).

It never writes into a run: an ``--out``, ``--xlsx`` or ``--summaries`` inside a run folder it reads, or inside
any folder that holds live results (``*.frames.csv``, ``*.trial.json``, a live summary) is refused,
paths and symlinks resolved first, so the live table and summaries a lab relies on stay as written.

What a re-scoring cannot see: a camera outage the live run recorded without a jump in frame
indices (the CSV has no row for it, and no trace of it either); such trials differ in ``gaps``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from stream.assign import apply_assignments, read_assignments
from stream.atomic import atomic_write
from stream.decisions import SMOOTHING_MODES, ArenaDecisions, DecisionConfig
from stream.errors import UserError, cli_main
from stream.outputs.results import results_row, warn_incomplete, write_table
from stream.trial_files import (
    FRAMES_FILE_SUFFIX,
    SUMMARY_FILE_SUFFIX,
    TRIAL_FILE_SUFFIX,
    read_frames_csv,
    replay_frames,
    summary_text,
)
from stream.trial_summary import TrialSummary
from stream.version import add_version_argument
from stream.workbook import write_workbook

__all__ = ["check_outputs_outside_runs", "find_trials", "main", "rescore"]

log = logging.getLogger("stream.report")

# command-line flag -> DecisionConfig field it overrides
OVERRIDES = {"min_bout_s": "min_bout_s", "smoothing": "smoothing", "smoothing_window": "smoothing_window_frames",
             "bin_s": "bin_s", "scoring_window_s": "scoring_window_s", "test_duration_s": "test_duration_s",
             "immobile_classes": "immobile_classes"}


def find_trials(run_dirs: list[Path]) -> list[tuple[Path, Path]]:
    """(summary JSON, frames CSV) of every trial under the run folders, in a stable order."""
    found = []
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: not a folder (give stream-run's --out folder)")
        for summary in sorted(run_dir.rglob(f"*{SUMMARY_FILE_SUFFIX}")):
            frames = summary.with_name(summary.name[: -len(SUMMARY_FILE_SUFFIX)] + FRAMES_FILE_SUFFIX)
            if frames.exists():
                found.append((summary, frames))
            else:
                log.warning("%s has no %s beside it; skipped", summary, frames.name)
    if not found:
        raise UserError(f"no trials (*{SUMMARY_FILE_SUFFIX} with *{FRAMES_FILE_SUFFIX}) under "
                        f"{', '.join(map(str, run_dirs))}")
    return found


def _is_live_summary(path: Path) -> bool:
    """A summary ``stream-run`` wrote (a re-scored one carries ``"rescored"``)."""
    try:
        return "rescored" not in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return True  # unreadable: not ours to overwrite


def _holds_live_results(folder: Path) -> bool:
    """Whether ``folder`` holds what only ``stream-run`` writes: frames CSVs, trial files, live summaries.

    (Not ``results.csv`` alone: that may be an earlier ``stream-report --out``, which may be rewritten.)
    """
    try:
        return (any(folder.glob(f"*{FRAMES_FILE_SUFFIX}")) or any(folder.glob(f"*{TRIAL_FILE_SUFFIX}"))
                or any(_is_live_summary(p) for p in folder.glob(f"*{SUMMARY_FILE_SUFFIX}")))
    except OSError:
        return False  # a folder we cannot list holds nothing we could overwrite either


def check_outputs_outside_runs(run_dirs: list[Path], out: Path | None, summaries: Path | None,
                               xlsx: Path | None = None) -> None:
    """Refuse an output inside a run folder: re-scoring must never overwrite a run's live results."""
    runs = [d.resolve() for d in run_dirs]
    for flag, path, folder_itself in (("--out", out, False), ("--summaries", summaries, True), ("--xlsx", xlsx, False)):
        if path is None:
            continue
        target = path.resolve()  # every symlink on the way followed, the last one too
        folder = target if folder_itself else target.parent
        inside = [run for run in runs if folder == run or run in folder.parents]
        inside += [a for a in (folder, *folder.parents) if a.is_dir() and _holds_live_results(a)]
        if inside:
            raise UserError(f"{flag} {path} is inside the run folder {inside[0]}: stream-report never writes over a "
                            "run's live results; give a path outside it")


def _config(saved: dict, overrides: dict) -> DecisionConfig:
    fields = {f.name for f in dataclasses.fields(DecisionConfig)}
    kwargs = {k: v for k, v in saved.items() if k in fields}
    kwargs["immobile_classes"] = tuple(kwargs.get("immobile_classes", ()))
    kwargs.update(overrides)
    return DecisionConfig(**kwargs)


def rescore(summary_path: Path, frames_path: Path, overrides: dict) -> TrialSummary:
    """A trial's summary rebuilt from its CSV with the saved settings, ``overrides`` applied."""
    try:
        saved = json.loads(summary_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {summary_path}: {exc}") from exc
    if not isinstance(saved, dict) or "config" not in saved or "classes" not in saved:
        raise UserError(f"{summary_path} is not a swim-stream summary (no config/classes)")
    config = _config(saved["config"], overrides)
    arena = ArenaDecisions(saved.get("arena_id", summary_path.stem), list(saved["classes"]), config)
    replay_frames(arena, read_frames_csv(frames_path))
    arena.flush()
    counters = arena.counters()
    trial = {**saved["trial"], "test_complete": counters.test_complete} if "trial" in saved else None
    rescored = {"from": str(frames_path), "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}}
    # what the CSV cannot rebuild (trial, provenance, run, input check) is kept from the saved summary
    return dataclasses.replace(arena.trial_summary(trial=trial, provenance=saved.get("provenance")),
                               run=saved.get("run"), input_check=saved.get("input_check"), extra={"rescored": rescored})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stream-report", description="re-score finished runs from their per-frame CSVs")
    add_version_argument(p)
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="stream-run --out folder(s)")
    p.add_argument("--out", type=Path, default=None, metavar="TABLE.csv", help="the results table to write")
    p.add_argument("--xlsx", type=Path, default=None, metavar="FILE.xlsx",
                   help="also (or instead) write the table as an Excel workbook, with a sheet per group "
                        "(mean +- SEM immobile: whole test, window, each bin)")
    p.add_argument("--assign", type=Path, default=None, metavar="ANIMALS.csv",
                   help="animal IDs and groups for the trials: CSV trial_id,animal[,group] or "
                        "video,arena,order,animal[,group] (the live files are not changed)")
    p.add_argument("--summaries", type=Path, default=None, metavar="DIR",
                   help="also write each re-scored summary JSON here")
    d = p.add_argument_group("settings (default: each trial's live settings)")
    d.add_argument("--min-bout-s", type=float, default=None)
    d.add_argument("--smoothing", choices=SMOOTHING_MODES, default=None)
    d.add_argument("--smoothing-window", type=int, default=None, metavar="FRAMES")
    d.add_argument("--bin-s", type=float, default=None)
    d.add_argument("--scoring-window-s", type=float, default=None)
    d.add_argument("--test-duration-s", type=float, default=None)
    d.add_argument("--immobile-classes", default=None, metavar="A,B")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no table")
    return p


@cli_main("stream-report")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    overrides = {}
    for flag, field in OVERRIDES.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if flag == "immobile_classes":
            value = tuple(c.strip() for c in value.split(",") if c.strip())
        overrides[field] = value
    if args.out is None and args.xlsx is None:
        raise UserError("give --out TABLE.csv, --xlsx FILE.xlsx or both")
    check_outputs_outside_runs(args.run_dirs, args.out, args.summaries, args.xlsx)
    assignments = read_assignments(args.assign) if args.assign is not None else None
    trials = find_trials(args.run_dirs)
    if args.summaries is not None:
        args.summaries.mkdir(parents=True, exist_ok=True)
    summaries = [(path, rescore(path, frames_path, overrides))
                 for path, frames_path in tqdm(trials, desc="re-scoring", unit="trial", disable=args.quiet or None)]
    if assignments is not None:  # the assignments edit the trial blocks as the summary files hold them
        plain = [s.to_json() for _, s in summaries]
        apply_assignments(plain, assignments, f"--assign {args.assign}")
        summaries = [(path, TrialSummary.from_json(d)) for (path, _), d in zip(summaries, plain)]
    rows = []
    for summary_path, summary in summaries:
        row = results_row(summary)
        rows.append(row)
        warn_incomplete(row)
        if args.summaries is not None:
            atomic_write(args.summaries / summary_path.name, summary_text(summary.to_json()))
    rows.sort(key=lambda r: (r["start_utc"], r["trial_id"]))
    for path, write in ((args.out, write_table), (args.xlsx, write_workbook)):
        if path is None:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path, rows)
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if not args.quiet:
        print(f"stream-report: {len(rows)} trials -> {', '.join(str(p) for p in (args.out, args.xlsx) if p)}")
        for r in rows:
            print(f"  {r['trial_id']:<24} {r['animal'] or '-':<8} immobile {r['immobile_s']:>8} s  bouts {r['bouts']:>3}  "
                  f"window {r['window_immobile_s']:>8} s" + ("" if r["test_complete"] == "1" else "  INCOMPLETE"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
