"""The trials of a recording with several animals per arena, for ``export-validate``.

A lab tests one mouse after another in each cylinder; scored and compared per arena, two mice
become one "animal" and only the first trial is seen. Here each trial is an animal: where it starts
in the video and in which arena (from stream-run's ``<trial>.trial.json`` files, or from the schedule
it ran from), and which labels are its own (a BORIS subject / ``arena`` column named like the
animal, else like the arena, the labels then covering every animal of that arena in turn).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream.errors import UserError
from stream.trials import TRIAL_FILE_SUFFIX, Trial, match_schedule, read_schedule

__all__ = ["TrialSpan", "annotations_by_subject", "labels_of_trial", "trials_of_run", "trials_of_schedule"]

log = logging.getLogger("export.validate")


@dataclass(frozen=True)
class TrialSpan:
    """One trial of a video (``--trials`` / ``--schedule``): one animal in one arena, from ``start_s``."""

    arena: str
    animal: str  # the schedule's animal, else the trial id (every trial is its own animal)
    start_s: float  # on the video's clock
    stem: str = ""  # its files in a stream-run folder (<stem>.frames.csv); "" when read from the schedule


def trials_of_run(run_dir: Path) -> list[TrialSpan]:
    """The trials stream-run ran on one video, from its ``<trial>.trial.json`` files."""
    spans = []
    for path in sorted(Path(run_dir).glob(f"*{TRIAL_FILE_SUFFIX}")):
        try:
            trial = Trial.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"{path}: not a stream-run trial file ({exc})") from exc
        spans.append(TrialSpan(trial.arena_id, trial.animal or trial.trial_id, trial.start_s, trial.file_stem))
    return sorted(spans, key=lambda t: (t.start_s, t.arena))


def trials_of_schedule(schedule: Path, video: Path) -> list[TrialSpan]:
    """The trials a schedule gives one video (matched as stream-run matches them)."""
    matched, _ = match_schedule(read_schedule(schedule), [video], base_dir=Path(schedule).parent)
    return [TrialSpan(e.arena, e.animal or f"{e.arena}@{e.start_s:g}s", e.start_s) for e in matched[str(video)]]


def labels_of_trial(annotations: dict[str, Any], trial: TrialSpan, where: str) -> Any | None:
    """A trial's annotation: the one named like its animal (BORIS subject / arena column), else its arena's."""
    ann = annotations.get(trial.animal) or annotations.get(trial.arena)
    if ann is None:
        log.warning("%s: no labels for animal %s (arena %s); it is not scored", where, trial.animal, trial.arena)
    return ann


def annotations_by_subject(path: Path, video: Path, classes: list[str],
                           arena_ids: list[str]) -> tuple[dict[str, Any], float, int]:
    """(subject -> Annotation, video fps, frame count): subjects are arenas or animals (trial runs)."""
    from export.annotations import read_annotations
    from export.dataset import probe_video

    n, video_fps, _, _ = probe_video(video)
    if not video_fps or video_fps <= 0:
        raise UserError(f"{video}: the container gives no frame rate; cannot align labels to frames")
    anns = [a.remap(classes) for a in read_annotations(path, fps=video_fps, classes=classes)]
    if len(anns) == 1 and anns[0].subject is None:
        if len(arena_ids) != 1:
            raise UserError(f"{path}: one unnamed set of labels but {len(arena_ids)} arenas; label each arena or animal")
        return {arena_ids[0]: anns[0]}, video_fps, n
    return {a.subject: a for a in anns}, video_fps, n
