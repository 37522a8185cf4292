"""What to annotate next (CLI ``export-select``): the K stretches of video whose labels would help most.

DeepEthogram's loop -- predict, let a person correct the worst parts, retrain -- is what makes a few
labelled minutes go far. This module picks those parts. Input: the per-frame CSVs ``stream-run``
writes (``<arena>.frames.csv``, one row per model-rate frame with the fused probabilities), or
videos it scores itself by running ``stream-run`` (the live code path: same capture, flow, engine).

How a stretch is scored (every number in [0, 1], so the weights are comparable):

* **uncertainty** of frame t: normalised entropy ``H(p_t) / log K`` (``--measure entropy``,
  default) or ``1 - (p_t(1st) - p_t(2nd))`` (``--measure margin``: only the two top classes);
* **rarity** of class k: ``r_k = max(0, 1 - K * f_k)`` where ``f_k`` is the share of all scored
  frames (every video and arena) the model labels k. A class predicted at its fair share ``1/K``
  or more scores 0, a class it never predicts scores 1. A frame's rarity is the expected rarity
  under its probabilities, ``sum_k p_t(k) r_k``: frames that may belong to a class the model
  hardly ever outputs are where its blind spots are;
* a candidate stretch (``--stretch-s`` long, starting every half stretch) scores the mean over
  its frames of ``uncertainty + rarity_weight * rarity``.

Picking is greedy, for spread: each round takes the candidate with the highest score times
``spread ** (stretches already picked in its arena -- its animal, in a run with trials) * spread **
(stretches already picked in its video)`` that overlaps no picked stretch. With ``--spread 1`` the K most uncertain stretches win
wherever they are; lower values spread the K stretches over videos and animals, which a lab wants
(a model adapted to one animal is not adapted to the setup). ``--strategy random`` picks
non-overlapping stretches uniformly at random instead: the baseline of the learning curve.

Outputs, ready to label (see the README's round trip):

* ``selection.boris``: a BORIS project (format 7.0) with the model's classes as state events,
  the arenas as subjects and one observation per stretch, limited to the stretch's time interval
  on the original video (a run with trials: the trial's offset in the video plus its clock, and the
  observation names the animal). A person opens it, codes each observation, and exports the events of one
  video's observations (Observations -> Export events -> aggregated or tabular events);
* ``<video stem>.template.csv``: ``frame,arena,label`` rows with blank labels for every video
  frame of the selected stretches (frames of the original video, so training clips get their 8
  previous and 7 next frames). Filled in (by hand, a script, or a BORIS export) it is what
  ``export-train --videos VIDEO --labels TEMPLATE --init model:DIR`` reads: blank rows and frames
  not listed stay unlabelled and are never trained on;
* ``selection.csv``: the stretches with their scores, for the record.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.errors import UserError, cli_main
from stream.atomic import atomic_write
from stream.version import add_version_argument

__all__ = [
    "ScoredArena",
    "Stretch",
    "frame_uncertainty",
    "class_rarity",
    "candidate_stretches",
    "select_stretches",
    "read_scored_run",
    "score_videos",
    "write_template",
    "write_boris_project",
    "write_selection_csv",
    "fill_template",
    "main",
]

log = logging.getLogger(__name__)

DEFAULT_STRETCH_S = 4.0  # a few seconds: long enough to see a bout begin or end, short enough to code in ~15 s
DEFAULT_COUNT = 15  # 15 x 4 s = 1 labelled minute, the size of one step of the learning curve
DEFAULT_RARITY_WEIGHT = 0.5  # a never-predicted class counts half as much as full uncertainty
DEFAULT_SPREAD = 0.7  # score factor per stretch already picked in the same arena (and again in the same video)
CANDIDATE_STEP_FRACTION = 0.5  # candidate stretches start every half stretch: no good stretch falls between two
MEASURES = ("entropy", "margin")
STRATEGIES = ("uncertainty", "random")
FRAMES_CSV_SUFFIX = ".frames.csv"  # what stream-run writes per arena
TEMPLATE_SUFFIX = ".template.csv"
FRAME_TOLERANCE = 1e-3  # frames: a time a rounding error past a frame's start still means that frame
SELECTION_CSV = "selection.csv"
BORIS_PROJECT = "selection.boris"
BORIS_PROJECT_FORMAT = "7.0"  # BORIS 8 reads and writes this project format version
BORIS_PLAYERS = 8  # BORIS keeps a media list for each of its 8 players


# ----------------------------------------------------------------------------------------------
# scores


@dataclass(frozen=True)
class ScoredArena:
    """The model's per-frame probabilities for one arena of one video (one ``stream-run`` CSV)."""

    video: Path
    arena: str  # the arena id (its ROI in <video>.arenas.json): what the label template names
    classes: list[str]
    timestamps_s: np.ndarray  # (N,) video clock of each model-rate frame (a trial's offset added)
    probs: np.ndarray  # (N, K) fused probabilities, rows sum to 1
    animal: str = ""  # the trial's animal, when the run had trials that named one (picks spread over animals)


@dataclass(frozen=True)
class Stretch:
    """A span of one arena of one video to label, and why it was picked."""

    video: Path
    arena: str
    start_s: float
    stop_s: float
    score: float  # uncertainty + rarity_weight * rarity (mean over the stretch's frames)
    uncertainty: float
    rarity: float
    predicted: str  # the class the model predicts most often in the stretch
    animal: str = ""  # the animal in the arena then (trial runs), "" when the run named none

    def overlaps(self, other: "Stretch") -> bool:
        return self.video == other.video and self.arena == other.arena and self.start_s < other.stop_s and other.start_s < self.stop_s


def frame_uncertainty(probs: np.ndarray, measure: str = "entropy") -> np.ndarray:
    """(N, K) probabilities -> (N,) uncertainty in [0, 1] (1 = the model cannot tell at all)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    k = p.shape[1]
    if measure == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
        return np.clip(h / math.log(k), 0.0, 1.0)
    if measure == "margin":
        top2 = np.sort(p, axis=1)[:, -2:]
        return np.clip(1.0 - (top2[:, 1] - top2[:, 0]), 0.0, 1.0)
    raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")


def class_rarity(runs: Sequence[ScoredArena]) -> np.ndarray:
    """(K,) rarity ``max(0, 1 - K * share of frames predicted k)`` over all runs (module docstring)."""
    k = len(runs[0].classes)
    counts = np.zeros(k)
    for run in runs:
        counts += np.bincount(run.probs.argmax(axis=1), minlength=k)
    share = counts / max(counts.sum(), 1.0)
    return np.clip(1.0 - k * share, 0.0, 1.0)


def _model_period_s(timestamps_s: np.ndarray) -> float:
    steps = np.diff(timestamps_s)
    steps = steps[steps > 0]
    if not steps.size:
        return 1.0
    return 1.0 / round(1.0 / float(np.median(steps)), 3)  # the CSV keeps 6 decimals: 0.066667 s is 1/15 s


def candidate_stretches(run: ScoredArena, *, stretch_s: float, rarity: np.ndarray, measure: str = "entropy",
                        rarity_weight: float = DEFAULT_RARITY_WEIGHT) -> list[Stretch]:  # fmt: skip
    """Every ``stretch_s`` window of ``run`` starting each half stretch, scored (module docstring)."""
    n = run.timestamps_s.size
    if n == 0:
        return []
    period = _model_period_s(run.timestamps_s)
    width = max(1, int(round(stretch_s / period)))
    step = max(1, int(round(width * CANDIDATE_STEP_FRACTION)))
    u = frame_uncertainty(run.probs, measure)
    r = run.probs @ rarity
    starts = list(range(0, max(n - width, 0) + 1, step))
    if starts[-1] + width < n:  # the tail of the video is a candidate too
        starts.append(n - width)
    out = []
    for i in starts:
        j = min(i + width, n)
        unc, rar = float(u[i:j].mean()), float(r[i:j].mean())
        predicted = run.classes[int(np.bincount(run.probs[i:j].argmax(axis=1), minlength=len(run.classes)).argmax())]
        start = round(float(run.timestamps_s[i]), 6)  # microseconds: no 13.999999 s from the summed period
        out.append(Stretch(run.video, run.arena, start, round(start + width * period, 6), unc + rarity_weight * rar, unc, rar, predicted,
                           run.animal))  # fmt: skip
    return out


def select_stretches(
    runs: Sequence[ScoredArena],
    *,
    count: int = DEFAULT_COUNT,
    stretch_s: float = DEFAULT_STRETCH_S,
    measure: str = "entropy",
    rarity_weight: float = DEFAULT_RARITY_WEIGHT,
    spread: float = DEFAULT_SPREAD,
    strategy: str = "uncertainty",
    seed: int = 0,
) -> list[Stretch]:
    """The ``count`` stretches to label next, best first (greedy with spread; module docstring).

    Picks are nested: the first k of a call with ``count`` are the picks of a call with ``k``.
    """
    if not runs:
        raise UserError("no scored frames to select from")
    if strategy not in STRATEGIES:
        raise UserError(f"--strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if measure not in MEASURES:
        raise UserError(f"--measure {measure!r}: expected one of {', '.join(MEASURES)}")
    if count < 1 or stretch_s <= 0 or not (0.0 < spread <= 1.0) or rarity_weight < 0:
        raise UserError("need --count >= 1, --stretch-s > 0, 0 < --spread <= 1 and --rarity-weight >= 0")
    if len({tuple(r.classes) for r in runs}) != 1:
        raise UserError("the scored runs have different class lists: score every video with the same model")
    rarity = class_rarity(runs)
    candidates = [c for run in runs for c in candidate_stretches(run, stretch_s=stretch_s, rarity=rarity, measure=measure,
                                                                  rarity_weight=rarity_weight)]  # fmt: skip
    if strategy == "random":
        order = np.random.default_rng(seed).permutation(len(candidates))
        picked: list[Stretch] = []
        for i in order:
            if len(picked) == count:
                break
            if not any(candidates[i].overlaps(p) for p in picked):
                picked.append(candidates[i])
        return picked
    picked = []
    per_arena: dict[tuple[Path, str, str], int] = {}  # per animal where a trial run named them
    per_video: dict[Path, int] = {}
    remaining = sorted(candidates, key=lambda c: (-c.score, str(c.video), c.arena, c.start_s))
    while remaining and len(picked) < count:
        best = max(remaining, key=lambda c: c.score * spread ** per_arena.get((c.video, c.arena, c.animal), 0) * spread ** per_video.get(c.video, 0))
        picked.append(best)
        per_arena[(best.video, best.arena, best.animal)] = per_arena.get((best.video, best.arena, best.animal), 0) + 1
        per_video[best.video] = per_video.get(best.video, 0) + 1
        remaining = [c for c in remaining if not c.overlaps(best)]
    if len(picked) < count:
        log.warning("only %d non-overlapping stretches of %g s exist; asked for %d", len(picked), stretch_s, count)
    return picked


# ----------------------------------------------------------------------------------------------
# reading and making scores


def read_scored_run(video: Path, run_dir: Path) -> list[ScoredArena]:
    """The arenas (trials) of one ``stream-run --video VIDEO --out RUN_DIR`` (its ``*.frames.csv`` files).

    A frames CSV keeps the trial's clock (0 at the trial's first frame). Its ``<trial>.trial.json``
    says where the trial starts in the video (``start_s``), which arena it ran in and which animal
    it tested: the stretches are placed on the video's clock and named by the arena, so the template
    and the BORIS project point at the moments labelled, and export-train finds the arena's ROI.
    """
    from stream.trial_files import read_frames_csv
    from stream.trials import TRIAL_FILE_SUFFIX, Trial

    files = sorted(Path(run_dir).glob("*" + FRAMES_CSV_SUFFIX))
    if not files:
        raise UserError(f"{run_dir}: no *{FRAMES_CSV_SUFFIX} (the per-frame CSVs stream-run writes); pass the folder of one video's run")
    out = []
    for path in files:
        rows = read_frames_csv(path)
        if not rows:
            log.warning("%s: no frames; skipped", path)
            continue
        classes = [c[2:] for c in rows[0] if c.startswith("p_")]
        if len(classes) < 2:
            raise UserError(f"{path}: no probability columns p_<class>; it was written by an older stream-run")
        probs = np.array([[row["p_" + c] for c in classes] for row in rows], dtype=np.float64)
        times = np.array([row["timestamp_s"] for row in rows], dtype=np.float64)
        stem = path.name[: -len(FRAMES_CSV_SUFFIX)]
        arena, animal = stem, ""
        trial_file = path.with_name(stem + TRIAL_FILE_SUFFIX)
        if trial_file.is_file():
            try:
                trial = Trial.from_json(json.loads(trial_file.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                raise UserError(f"{trial_file}: not a stream-run trial file ({exc})") from exc
            arena, animal = trial.arena_id, trial.animal
            times = times + trial.start_s  # trial clock -> video clock
        out.append(ScoredArena(Path(video), arena, classes, times, probs, animal))
    return out


def score_videos(videos: Sequence[Path], out_dir: Path, *, model: Path | None = None, stride: int = 1) -> list[Path]:
    """Run ``stream-run`` (the live code path, ``stream.runner``) on each video into ``out_dir/<stem>``; the run folders.

    A video whose run folder already holds a summary for every arena is not scored again, so an
    interrupted selection resumes.
    """
    from stream.run_config import RunConfig
    from stream.runner import run

    dirs = []
    for video in videos:
        run_dir = Path(out_dir) / Path(video).stem
        frames = sorted(run_dir.glob("*" + FRAMES_CSV_SUFFIX))
        done = frames and all(f.with_name(f.name[: -len(FRAMES_CSV_SUFFIX)] + ".summary.json").is_file() for f in frames)
        if not done:
            config = RunConfig.make(source={"videos": (str(video),)}, model={"dir": model, "stride": stride},
                                    outputs={"out": run_dir, "zmq": None, "metrics_port": 0, "quiet": True})
            code = run(config)
            if code != 0:
                raise UserError(f"{video}: stream-run stopped with exit status {code}; run it by hand to see why: "
                                f"stream-run --video {video} --out {run_dir} --stride {stride}"
                                + (f" --model {model}" if model is not None else ""))
        dirs.append(run_dir)
    return dirs


# ----------------------------------------------------------------------------------------------
# writing what a person labels


def _atomic_write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, text)


def _video_frames(stretch: Stretch, fps: float, num_frames: int) -> range:
    """Frames of the original video inside the stretch (frame f shows time f / fps)."""
    start = max(0, int(math.ceil(stretch.start_s * fps - FRAME_TOLERANCE)))
    stop = min(num_frames, int(math.ceil(stretch.stop_s * fps - FRAME_TOLERANCE)))
    return range(start, stop)


def write_template(path: Path, stretches: Sequence[Stretch], *, fps: float, num_frames: int) -> Path:
    """``frame,arena,label`` with blank labels for every video frame of ``stretches`` (one video)."""
    rows = sorted({(stretch.arena, f) for stretch in stretches for f in _video_frames(stretch, fps, num_frames)})
    lines = ["frame,arena,label"] + [f"{f},{arena}," for arena, f in sorted(rows, key=lambda r: (r[0], r[1]))]
    return _atomic_write(Path(path), "\n".join(lines) + "\n")


def fill_template(template: Path, truth: Path, out: Path, *, fps: float, num_frames: int, classes: Sequence[str]) -> Path:
    """A simulated annotator: the template's rows labelled from a complete label file ``truth``.

    The learning curve and the tests use it with the simulator's labels; a lab fills the template
    by hand or from BORIS instead. Frames ``truth`` leaves unlabelled stay blank.
    """
    from export.annotations import read_annotations

    truths = read_annotations(truth, fps=fps, num_frames=num_frames, classes=classes)
    by_arena = {a.subject or f"arena{i}": a for i, a in enumerate(truths)}
    with Path(template).open(newline="") as fh:
        rows = [(int(row["frame"]), (row.get("arena") or "arena0").strip()) for row in csv.DictReader(fh)]
    lines = ["frame,arena,label"]
    for frame, arena in rows:
        if arena in by_arena:
            labels = by_arena[arena].labels
        elif len(truths) == 1:  # one animal: the truth file need not name its arena
            labels = truths[0].labels
        else:
            raise UserError(f"{truth}: no labels for arena {arena!r} of {template}")
        label = int(labels[frame]) if frame < labels.size else -1
        lines.append(f"{frame},{arena},{classes[label] if label >= 0 else ''}")
    return _atomic_write(Path(out), "\n".join(lines) + "\n")


def write_boris_project(path: Path, stretches: Sequence[Stretch], *, classes: Sequence[str],
                        media: dict[Path, tuple[float, float]], project_name: str = "swim-stream selection") -> Path:  # fmt: skip
    """A BORIS project: the classes as state events, arenas as subjects, one observation per stretch.

    ``media`` maps each video to (fps, duration_s). Media paths are relative to the project file
    (BORIS looks for a relative path next to the project), so the folder can be moved as a whole.
    """
    path = Path(path)
    keys = "123456789abcdefghijklmnopqrstuvwxyz"
    ethogram = {
        str(i): {"type": "State event", "key": keys[i] if i < len(keys) else "", "code": name,
                 "description": f"swim-stream class {name!r}", "color": "", "category": "", "modifiers": "",
                 "excluded": "", "coding map": ""}
        for i, name in enumerate(classes)
    }  # fmt: skip
    # subjects are the arenas: what a BORIS export must name for export-train / export-fit-motion to find
    # the ROI; in a trial run each observation says which animal was in the arena then
    arenas = sorted({s.arena for s in stretches})
    animals = {a: sorted({s.animal for s in stretches if s.arena == a and s.animal}) for a in arenas}
    subjects = {str(i): {"key": keys[-1 - i] if i < len(keys) else "", "name": a,
                         "description": "arena of the video" + (f" (animals {', '.join(animals[a])})" if animals[a] else "")}
                for i, a in enumerate(arenas)}  # fmt: skip
    observations = {}
    for rank, s in enumerate(stretches, start=1):
        fps, duration_s = media[s.video]
        rel = os.path.relpath(Path(s.video).resolve(), path.parent.resolve())
        who = f"{s.arena} ({s.animal})" if s.animal else s.arena
        obs_id = f"{rank:03d} {Path(s.video).stem} {who} {s.start_s:.1f}-{s.stop_s:.1f}s"
        files = {str(p): [] for p in range(1, BORIS_PLAYERS + 1)}
        files["1"] = [rel]
        observations[obs_id] = {
            "file": files,
            "type": "MEDIA",
            "date": "2026-01-01T00:00:00",
            "description": (f"Label subject {s.arena}" + (f" (animal {s.animal})" if s.animal else "") + f" from {s.start_s:.2f} s to {s.stop_s:.2f} s "
                            f"(model predicts mostly {s.predicted}; uncertainty {s.uncertainty:.2f}, rarity {s.rarity:.2f})"),
            "time offset": 0.0,
            "events": [],
            "observation time interval": [round(s.start_s, 3), round(s.stop_s, 3)],
            "independent_variables": {},
            "visualize_spectrogram": False,
            "visualize_waveform": False,
            "media_creation_date_as_offset": False,
            "media_scan_sampling_duration": 0,
            "image_display_duration": 1,
            "close_behaviors_between_videos": False,
            "media_info": {
                "length": {rel: round(duration_s, 3)},
                "fps": {rel: fps},
                "hasVideo": {rel: True},
                "hasAudio": {rel: False},
                "offset": {"1": 0.0},
            },
        }  # fmt: skip
    project = {
        "time_format": "s",
        "project_date": "2026-01-01T00:00:00",
        "project_name": project_name,
        "project_description": "Stretches picked by export-select for labelling: code each observation, then export its events.",
        "project_format_version": BORIS_PROJECT_FORMAT,
        "subjects_conf": subjects,
        "behaviors_conf": ethogram,
        "observations": observations,
        "behavioral_categories": [],
        "independent_variables": {},
        "coding_map": {},
        "behaviors_coding_map": [],
        "converters": {},
    }
    return _atomic_write(path, json.dumps(project, indent=1) + "\n")


SELECTION_COLUMNS = ("rank", "video", "arena", "start_s", "stop_s", "score", "uncertainty", "rarity", "predicted", "animal")


def write_selection_csv(path: Path, stretches: Sequence[Stretch]) -> Path:
    lines = [",".join(SELECTION_COLUMNS)]
    for rank, s in enumerate(stretches, start=1):
        lines.append(f"{rank},{s.video},{s.arena},{s.start_s:.3f},{s.stop_s:.3f},{s.score:.4f},{s.uncertainty:.4f},{s.rarity:.4f},{s.predicted},{s.animal}")
    return _atomic_write(Path(path), "\n".join(lines) + "\n")


def write_selection(out: Path, stretches: Sequence[Stretch], classes: Sequence[str]) -> dict[Path, Path]:
    """All three outputs into ``out``; returns {video: its template}."""
    from export.dataset import probe_video

    out = Path(out)
    media: dict[Path, tuple[float, float]] = {}
    templates = {}
    for video in dict.fromkeys(s.video for s in stretches):
        n, fps, _, _ = probe_video(video)
        if fps <= 0 or n <= 0:
            raise UserError(f"{video}: frame rate or frame count unknown; re-encode the video")
        media[video] = (fps, n / fps)
        templates[video] = write_template(out / (Path(video).stem + TEMPLATE_SUFFIX), [s for s in stretches if s.video == video], fps=fps, num_frames=n)
    write_boris_project(out / BORIS_PROJECT, stretches, classes=classes, media=media)
    write_selection_csv(out / SELECTION_CSV, stretches)
    return templates


# ----------------------------------------------------------------------------------------------
# the command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export-select",
        description="Pick the stretches of video whose labels would help the model most, as a BORIS project and label templates.",
        epilog="Example: export-select --videos new/*.mp4 --model trained_models/fst-side-64 --stride 4 --count 15 --out to-label/",
    )
    add_version_argument(p)
    p.add_argument("--videos", nargs="+", type=Path, required=True, metavar="VIDEO", help="the videos to choose from (arenas: <video>.arenas.json next to each, as stream-run reads them)")
    p.add_argument("--runs", nargs="+", type=Path, metavar="DIR",
                   help="stream-run output folder of each video, same order (default: score the videos now with stream-run)")
    p.add_argument("--model", type=Path, help="model to score with when --runs is not given (default: stream-run's)")
    p.add_argument("--stride", type=int, default=1, help="stream-run --stride when scoring (default: 1; 4 keeps a CPU fast)")
    p.add_argument("--out", type=Path, required=True, help="folder for selection.boris, the templates, selection.csv (and scores/)")
    p.add_argument("--count", type=int, default=DEFAULT_COUNT, help=f"stretches to pick (default: {DEFAULT_COUNT})")
    p.add_argument("--stretch-s", type=float, default=DEFAULT_STRETCH_S, help=f"length of a stretch in seconds (default: {DEFAULT_STRETCH_S:g})")
    p.add_argument("--measure", choices=MEASURES, default="entropy", help="uncertainty measure (default: entropy)")
    p.add_argument("--strategy", choices=STRATEGIES, default="uncertainty", help="uncertainty (default) or random (a baseline)")
    p.add_argument("--rarity-weight", type=float, default=DEFAULT_RARITY_WEIGHT, help=f"weight of rarely predicted classes (default: {DEFAULT_RARITY_WEIGHT:g})")
    p.add_argument("--spread", type=float, default=DEFAULT_SPREAD, help=f"score factor per stretch already picked in the same arena/video; 1 = no spreading (default: {DEFAULT_SPREAD:g})")
    p.add_argument("--seed", type=int, default=0, help="seed of --strategy random (default: 0)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


@cli_main("export-select")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for v in args.videos:
        if not v.is_file():
            raise UserError(f"{v}: video not found")
    if args.stride < 1:
        raise UserError(f"--stride {args.stride}: must be >= 1")
    if args.runs is None:
        run_dirs = score_videos(args.videos, args.out / "scores", model=args.model, stride=args.stride)
    else:
        if len(args.runs) != len(args.videos):
            raise UserError(f"--runs: {len(args.runs)} folders for {len(args.videos)} videos; give one per video, in the same order")
        run_dirs = args.runs
    runs = [arena for video, d in zip(args.videos, run_dirs) for arena in read_scored_run(video, d)]
    stretches = select_stretches(runs, count=args.count, stretch_s=args.stretch_s, measure=args.measure, rarity_weight=args.rarity_weight,
                                 spread=args.spread, strategy=args.strategy, seed=args.seed)  # fmt: skip
    templates = write_selection(args.out, stretches, runs[0].classes)
    rarity = class_rarity(runs)
    print(f"export-select: {len(stretches)} stretches of {args.stretch_s:g} s ({len(stretches) * args.stretch_s / 60:.1f} min) "
          f"from {len(templates)} of {len(args.videos)} videos; class rarity "
          + ", ".join(f"{c} {r:.2f}" for c, r in zip(runs[0].classes, rarity)))  # fmt: skip
    print(f"  label them in BORIS: {args.out / BORIS_PROJECT}  (or fill the label column of {', '.join(str(t) for t in templates.values())})")
    print("  then: export-train --videos VIDEO --labels LABELS --init model:DIR --recipe finetune ...")
    return 0
