"""``export-validate``: how well does a FIXED model agree with our scorers on these videos?

Unlike ``export-evaluate`` (which retrains k folds and scores sampled clips by raw argmax), this
scores annotated videos through the live code path: every model is run by ``stream-run`` itself
(``stream.run``, in this process), with the capture, the resampling to the card's fps, the flow
settings of the card, the engine and the decision rules (smoothing, minimum bout, test duration and
scoring window) a lab would use live, and its per-frame CSVs are read back. Nothing about clips or
decisions is implemented a second time here, so the figures are the ones a lab would publish.

Compared with the annotations, per video and arena (animal):

* per frame: accuracy, Cohen's kappa, the confusion matrix, per-class precision / recall / F1, and
  the share of each class predicted beside its share in the labels (a model that learned the
  recording instead of the behaviour predicts a near-constant class per recording, and this table
  makes that visible);
* immobility (seconds of the card's immobile classes), model against human, over animals: Pearson r,
  ICC(A,1), Bland-Altman bias and 95 % limits of agreement, with a Bland-Altman plot and a scatter
  with the identity line; the same per time bin (``--bin-s``, minutes 1-6 by default) and over the
  scoring window (``--test-duration-s`` / ``--scoring-window-s``, the last 4 of 6 minutes).

Only frames a person labelled are scored; the model's seconds are counted on those frames too, so
both sides of every comparison cover the same moments.

Recordings with trials (several animals per cylinder, one after another): ``--schedule`` (or
``--trials auto`` etc.) is handed to stream-run, and every trial is one animal: its own frames CSV,
its own clock for bins and window, labels named like its animal (BORIS subject / ``arena`` column)
or else like its arena. The second rater is split the same way (each trial's ``--test-duration-s``
from its start: the schedule's rows, else the trials the first model's run found).

Several models (``--model A --model B``) are scored on the same videos and shown side by side; a
motion-threshold model (card kind ``motion``, ``export-fit-motion``) is the baseline, and any other
model whose pooled kappa does not beat it is flagged. ``--rater2`` gives a second person's labels
for the same videos: the same statistics between the two people, the human ceiling, are shown
beside the models (compared on the video's own frames; the models on the model-rate frames).

Label frames and model frames: ``stream-run`` resamples a video to the card's fps by timestamp
(``stream.capture.FrameResampler``). The model-rate frame ``k`` shows the source frame the
resampler picked for it, found here by running the same resampler over the source frame times
``j / video_fps`` (a constant-frame-rate file), and is given that source frame's label.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.agreement import animal_agreement, frame_agreement
from export.trial_spans import annotations_by_subject, labels_of_trial, trials_of_run, trials_of_schedule
from export.validation_report import REPORT_HTML, agreement_text, fmt, write_outputs
from export.validation_results import Animal, AnimalResult, BinResult, ScorerResult
from stream.decisions import checked_bin_count
from stream.errors import UserError, cli_main
from stream.run_config import ADAPT_CLIPS_DEFAULT
from stream.runner import ADAPTED_SUFFIX
from stream.version import add_version_argument

__all__ = ["Animal", "AnimalResult", "BinResult", "Item", "ScorerResult", "build_parser", "compare", "labels_at_ticks",
           "main", "match_annotations", "read_labels", "source_frame_of_tick", "validate", "video_items"]

log = logging.getLogger("export.validate")

DEFAULT_BIN_S = 60.0  # minute bins: what FST papers report (minutes 1-6)
NEAR_CONSTANT_SHARE = 0.9  # one class >= 90 % of a recording's predictions, while the labels are mixed: flagged
HUMAN = "human (rater 2)"  # scorer name of the inter-rater comparison
HUMAN_KIND = "human"  # its kind, beside the card kinds "i3d" and "motion"
TRIAL_START_TOLERANCE_FRAMES = 1e-6  # a start a rounding error past a frame's time still starts at that frame


# ----------------------------------------------------------------------------------------- labels
def source_frame_of_tick(num_source_frames: int, video_fps: float, model_fps: float) -> np.ndarray:
    """For each model-rate frame (tick), the index of the source frame the live resampler gives it.

    Runs ``stream.capture.FrameResampler`` -- the live rule -- over the times ``j / video_fps``.
    """
    from stream.capture import FrameResampler

    resampler = FrameResampler(model_fps)
    out: list[int] = []
    for j in range(num_source_frames):
        ticks, _gap = resampler.push(j / video_fps)
        out.extend([j] * len(ticks))
    return np.asarray(out, dtype=np.int64)


def labels_at_ticks(labels: np.ndarray, ticks: np.ndarray, source_of_tick: np.ndarray) -> np.ndarray:
    """The annotation of each model-rate frame in ``ticks`` (-1 where unlabelled or past the end)."""
    ticks = np.asarray(ticks, dtype=np.int64)
    out = np.full(ticks.shape, -1, dtype=np.int64)
    ok = ticks < source_of_tick.shape[0]
    src = source_of_tick[ticks[ok]]
    inside = src < labels.shape[0]
    vals = np.full(src.shape, -1, dtype=np.int64)
    vals[inside] = labels[src[inside]]
    out[ok] = vals
    return out


def match_annotations(annotations: list, arena_ids: Sequence[str], where: str) -> dict[str, Any]:
    """Arena id -> its Annotation: by subject (BORIS) / arena column, or the only one for one arena."""
    if len(annotations) == 1 and annotations[0].subject is None:
        if len(arena_ids) != 1:
            raise UserError(f"{where}: one unnamed set of labels but {len(arena_ids)} arenas ({', '.join(arena_ids)}); "
                            "label each arena (BORIS subject or an 'arena' column named like the arena ids)")
        return {arena_ids[0]: annotations[0]}
    by_subject = {a.subject: a for a in annotations}
    matched = {i: by_subject[i] for i in arena_ids if i in by_subject}
    if not matched:
        raise UserError(f"{where}: subjects {sorted(map(str, by_subject))} match none of the arenas "
                        f"{', '.join(arena_ids)}; name BORIS subjects like the arena ids")
    for i in arena_ids:
        if i not in matched:
            log.warning("%s: no labels for arena %s; it is not scored", where, i)
    return matched


# ------------------------------------------------------------------------------------- statistics
def _immobile_s(labels: np.ndarray, immobile: np.ndarray, fps: float) -> float:
    return float(immobile[labels].sum() / fps) if labels.size else 0.0


def _shares(labels: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    counts = np.bincount(labels, minlength=len(classes)) / max(1, labels.size)
    return {c: float(counts[i]) for i, c in enumerate(classes)}


def compare(animals: Sequence[Animal], classes: Sequence[str], immobile_classes: Sequence[str], *, name: str,
            kind: str, test_duration_s: float, scoring_window_s: float, bin_s: float = DEFAULT_BIN_S) -> ScorerResult:
    """Every statistic of one scorer against the reference over a set of animals."""
    imm = np.array([c in immobile_classes for c in classes])
    n_bins = checked_bin_count(bin_s, test_duration_s)
    window = (test_duration_s - scoring_window_s, test_duration_s)
    all_ref, all_oth, results = [], [], []
    per_bin = np.full((2, len(animals), n_bins), np.nan)  # (reference / other, animal, bin) immobile s
    for a_i, a in enumerate(animals):
        scored = a.reference >= 0
        ref, oth, t = a.reference[scored], a.other[scored], a.timestamps_s[scored]
        all_ref.append(ref)
        all_oth.append(oth)
        in_w = (t >= window[0]) & (t < window[1])
        b = np.floor(t / bin_s).astype(np.int64)
        for j in range(n_bins):
            if (b == j).any():
                per_bin[:, a_i, j] = _immobile_s(ref[b == j], imm, a.fps), _immobile_s(oth[b == j], imm, a.fps)
        label_share, predicted_share = _shares(ref, classes), _shares(oth, classes)
        results.append(AnimalResult(
            video=a.video, arena=a.arena, frames_total=int(a.reference.size), agreement=frame_agreement(ref, oth, classes),
            reference_immobile_s=_immobile_s(ref, imm, a.fps), other_immobile_s=_immobile_s(oth, imm, a.fps),
            window_reference_immobile_s=_immobile_s(ref[in_w], imm, a.fps) if in_w.any() else math.nan,
            window_other_immobile_s=_immobile_s(oth[in_w], imm, a.fps) if in_w.any() else math.nan,
            label_share=label_share, predicted_share=predicted_share,
            near_constant=bool(ref.size) and max(predicted_share.values()) >= NEAR_CONSTANT_SHARE
            and max(label_share.values()) < NEAR_CONSTANT_SHARE, animal=a.animal,
        ))  # fmt: skip
    bins = []
    for j in range(n_bins):
        have = ~np.isnan(per_bin[0, :, j])
        h, m = per_bin[0, have, j], per_bin[1, have, j]
        bins.append(BinResult(j + 1, j * bin_s, min((j + 1) * bin_s, test_duration_s),
                              float(h.mean()) if h.size else math.nan, float(m.mean()) if m.size else math.nan,
                              animal_agreement(h, m)))
    have = ~np.isnan(per_bin[0])
    in_window = [r for r in results if not math.isnan(r.window_reference_immobile_s)]
    result = ScorerResult(
        name=name, kind=kind,
        frames=frame_agreement(np.concatenate(all_ref) if all_ref else np.zeros(0, np.int64),
                               np.concatenate(all_oth) if all_oth else np.zeros(0, np.int64), classes),
        animals=results,
        immobility=animal_agreement([r.reference_immobile_s for r in results], [r.other_immobile_s for r in results]),
        window_s=window,
        window=animal_agreement([r.window_reference_immobile_s for r in in_window],
                                [r.window_other_immobile_s for r in in_window]),
        bins=bins, bins_pooled=animal_agreement(per_bin[0][have], per_bin[1][have]),
        bin_points=tuple(zip(per_bin[0][have].tolist(), per_bin[1][have].tolist())),
    )  # fmt: skip
    result.flags += [f"{r.name}: near-constant prediction (one class >= {NEAR_CONSTANT_SHARE:.0%} while the "
                     "labels are mixed): the model may have learned the recording, not the behaviour"
                     for r in results if r.near_constant]
    return result


# ------------------------------------------------------------------------------------ running models
def run_stream(model_dir: Path, video: Path, out_dir: Path, arenas: Path | None, args: argparse.Namespace, *, adapt: bool = False) -> int:
    """``stream-run`` on one video with validate's options; returns its exit status (0 = fine).

    Runs in this process through ``stream.runner`` with a ``RunConfig`` checked as stream-run's own,
    so every default and check is stream-run's.
    """
    from stream.run_config import RunConfig
    from stream.runner import run

    immobile = tuple(c.strip() for c in args.immobile_classes.split(",") if c.strip()) if args.immobile_classes else ()
    config = RunConfig.make(
        source={"videos": (str(video),), "max_frames": args.max_frames or None, "realtime": bool(args.realtime)},
        arenas={"file": arenas},
        model={"dir": model_dir, "engine": args.engine, "device": args.device or None, "stride": args.stride,
               "flow_warm_start": not args.no_flow_warm_start, "adapt_clips": args.adapt_clips if adapt else 0},
        decisions={"smoothing": args.smoothing, "smoothing_window": args.smoothing_window, "min_bout_s": args.min_bout_s,
                   "test_duration_s": args.test_duration_s, "scoring_window_s": args.scoring_window_s,
                   "immobile_classes": immobile or None},
        trials={"mode": args.trials or None, "schedule": args.schedule},
        # quiet: else stream-run's own progress bar and end-of-run table show how far it got
        outputs={"out": out_dir, "zmq": None, "metrics_port": 0, "quiet": bool(args.quiet)},
    )
    log.info("stream-run %s", config.to_json())
    return run(config)


def _predicted(run_dir: Path, stem: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(model-rate frame, timestamp_s, class index) of a stream-run frames CSV (an arena's, or a trial's)."""
    from stream.trial_files import read_frames_csv

    path = run_dir / f"{stem}.frames.csv"
    if not path.is_file():
        raise UserError(f"{path}: stream-run wrote no frames for {stem}")
    rows = read_frames_csv(path)
    frames = np.array([r["frame"] for r in rows], dtype=np.int64)
    times = np.array([r["timestamp_s"] for r in rows], dtype=np.float64)
    pred = np.array([classes.index(r["behaviour"]) for r in rows], dtype=np.int64)
    return frames, times, pred


@dataclass(frozen=True)
class Item:
    video: Path
    labels: Path
    arenas: Path | None
    rater2: Path | None


def video_items(args: argparse.Namespace) -> list[Item]:
    """(video, labels, arenas, rater 2) per video from ``--videos/--labels/--arenas/--rater2``; one line on a mismatch."""
    from stream.runner import expand_videos

    videos = expand_videos(args.videos)
    labels = [Path(p) for p in args.labels]

    def per_video(paths: list[Path] | None, flag: str) -> list[Path | None]:
        if not paths:
            return [None] * len(videos)
        if len(paths) == 1 and len(videos) > 1 and flag == "--arenas":
            return [paths[0]] * len(videos)
        if len(paths) != len(videos):
            raise UserError(f"{flag}: {len(paths)} file(s) for {len(videos)} video(s); give one per video, in the same order")
        return list(paths)

    for flag, paths in (("--labels", labels), ("--arenas", args.arenas or []), ("--rater2", args.rater2 or [])):
        for p in paths:
            if not Path(p).exists():
                raise UserError(f"{flag} {p}: no such file")
    return [Item(v, lab, ar, r2) for v, lab, ar, r2 in
            zip(videos, per_video(labels, "--labels"), per_video(args.arenas, "--arenas"), per_video(args.rater2, "--rater2"))]


def read_labels(path: Path, video: Path, classes: list[str], arena_ids: list[str]) -> tuple[dict, float, int]:
    """(arena id -> Annotation, the video's fps, its frame count) of one annotation file."""
    from export.annotations import read_annotations
    from export.dataset import probe_video

    n, video_fps, _, _ = probe_video(video)
    if not video_fps or video_fps <= 0:
        raise UserError(f"{video}: the container gives no frame rate; cannot align labels to frames")
    anns = read_annotations(path, fps=video_fps, classes=classes)
    anns = [a.remap(classes) for a in anns]
    return match_annotations(anns, arena_ids, str(path)), video_fps, n


def validate(args: argparse.Namespace) -> tuple[dict[str, Any], list[ScorerResult]]:
    """Score every model on every video, compare, write the report; returns (validation.json's dict, results)."""
    from stream.arenas import resolve_arenas
    from stream.modelfile import load_card

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create ({exc.strerror})") from exc
    items = video_items(args)
    adapted = [Path(m) for m in (args.adapted_model or [])]
    model_dirs = [Path(m) for m in (args.model or [])] + adapted + ([Path(args.baseline)] if args.baseline else [])
    adapts = [False] * len(args.model or []) + [True] * len(adapted) + ([False] if args.baseline else [])
    if not model_dirs and not any(i.rater2 for i in items):
        raise UserError("nothing to compare: give --model DIR (repeatable), --adapted-model DIR, --baseline DIR, or --rater2 FILES")
    cards = [load_card(m) for m in model_dirs]
    names = _unique([c.name + (ADAPTED_SUFFIX if a else "") for c, a in zip(cards, adapts)])
    classes = list(cards[0].classes) if cards else None
    for m, c in zip(model_dirs, cards):
        if list(c.classes) != classes:
            raise UserError(f"{m}: classes {c.classes} differ from {model_dirs[0]}'s {classes}; compare models of one task")
    if classes is None:  # inter-rater only: the classes of the first label file
        from export.annotations import read_annotations

        classes = list(read_annotations(items[0].labels)[0].classes)
    immobile = ([c.strip() for c in args.immobile_classes.split(",")] if args.immobile_classes
                else list(cards[0].immobile_classes) if cards else [c for c in classes if c in ("float", "immobile")])
    trial_mode = bool(args.trials or args.schedule)
    if trial_mode and args.trials not in (None, "schedule") and not model_dirs:
        raise UserError(f"--trials {args.trials}: the trials are found by stream-run; give --model (or --schedule)")
    scorers: list[ScorerResult] = []
    stats = dict(test_duration_s=args.test_duration_s, scoring_window_s=args.scoring_window_s, bin_s=args.bin_s)
    for model_dir, card, name, adapt in zip(model_dirs, cards, names, adapts):
        animals = []
        for item in items:
            arena_ids = [a.id for a in resolve_arenas(arena_file=item.arenas, video=item.video)]
            if trial_mode:
                matched, video_fps, n_src = {}, *annotations_by_subject(item.labels, item.video, classes, arena_ids)[1:]
            else:
                matched, video_fps, n_src = read_labels(item.labels, item.video, classes, arena_ids)
            run_dir = out / "runs" / name / item.video.stem
            code = run_stream(model_dir, item.video, run_dir, item.arenas, args, adapt=adapt)
            if code != 0:
                raise UserError(f"stream-run of {model_dir} on {item.video} ended with status {code}; see above")
            src_of_tick = source_frame_of_tick(n_src, video_fps, card.fps)
            if trial_mode:  # one animal per trial: its frames CSV, its labels (named like the animal, or the arena)
                by_subject, _, _ = annotations_by_subject(item.labels, item.video, classes, arena_ids)
                for trial in trials_of_run(run_dir):
                    ann = labels_of_trial(by_subject, trial, str(item.labels))
                    if ann is None:
                        continue
                    frames, times, pred = _predicted(run_dir, trial.stem, classes)
                    ref = labels_at_ticks(ann.labels, frames, src_of_tick)
                    animals.append(Animal(item.video.name, trial.arena, ref, pred, times, card.fps, trial.animal))
                continue
            for arena_id, ann in matched.items():
                frames, times, pred = _predicted(run_dir, arena_id, classes)
                ref = labels_at_ticks(ann.labels, frames, src_of_tick)
                animals.append(Animal(item.video.name, arena_id, ref, pred, times, card.fps))
        scorers.append(compare(animals, classes, immobile, name=name, kind=card.kind, **stats))
    rater_pairs = [i for i in items if i.rater2 is not None]
    if rater_pairs:
        animals = []
        for item in rater_pairs:
            arena_ids = [a.id for a in resolve_arenas(arena_file=item.arenas, video=item.video)]
            if trial_mode:
                animals += _rater_trials(item, classes, arena_ids, args,
                                         out / "runs" / names[0] / item.video.stem if names else None)
                continue
            first, video_fps, n_src = read_labels(item.labels, item.video, classes, arena_ids)
            second, _, _ = read_labels(item.rater2, item.video, classes, arena_ids)
            for arena_id in first:
                if arena_id not in second:
                    continue
                a, b = first[arena_id].labels, second[arena_id].labels
                n = min(a.size, b.size)
                both = np.where((a[:n] >= 0) & (b[:n] >= 0), a[:n], -1)
                animals.append(Animal(item.video.name, arena_id, both, np.where(both >= 0, b[:n], 0),
                                      np.arange(n) / video_fps, video_fps))
        scorers.append(compare(animals, classes, immobile, name=HUMAN, kind=HUMAN_KIND, **stats))
    _flag_baseline(scorers)
    metrics = {
        "classes": classes, "immobile_classes": immobile,
        "videos": [str(i.video) for i in items], "labels": [str(i.labels) for i in items],
        "models": {n: str(m) for n, m in zip(names, model_dirs)},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in
                     ((k, getattr(args, k)) for k in ("engine", "device", "stride", "smoothing", "smoothing_window",
                                                      "min_bout_s", "test_duration_s", "scoring_window_s", "bin_s",
                                                      "no_flow_warm_start", "max_frames", "realtime", "trials", "schedule"))},
        "scorers": [s.to_dict() for s in scorers],
    }  # fmt: skip
    write_outputs(out, metrics, scorers, classes)
    return metrics, scorers


def _rater_trials(item: Item, classes: list[str], arena_ids: list[str], args: argparse.Namespace,
                  run_dir: Path | None) -> list[Animal]:
    """Rater 1 against rater 2, one animal per trial: each trial's ``test_duration_s`` of video frames
    from its start (the schedule's rows, else the trials the first model's stream-run found)."""
    assert item.rater2 is not None
    first, video_fps, n_src = annotations_by_subject(item.labels, item.video, classes, arena_ids)
    second, _, _ = annotations_by_subject(item.rater2, item.video, classes, arena_ids)
    trials = trials_of_schedule(args.schedule, item.video) if args.schedule is not None else trials_of_run(run_dir)
    out = []
    for trial in trials:
        a, b = labels_of_trial(first, trial, str(item.labels)), labels_of_trial(second, trial, str(item.rater2))
        if a is None or b is None:
            continue
        lo = math.ceil(trial.start_s * video_fps - TRIAL_START_TOLERANCE_FRAMES)  # stream-run: first frame at or after it
        hi = min(n_src, lo + int(round(args.test_duration_s * video_fps)), a.labels.size, b.labels.size)
        x, y = a.labels[lo:hi], b.labels[lo:hi]
        both = np.where((x >= 0) & (y >= 0), x, -1)
        out.append(Animal(item.video.name, trial.arena, both, np.where(both >= 0, y, 0),
                          np.arange(both.size) / video_fps, video_fps, trial.animal))
    return out


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def _flag_baseline(scorers: list[ScorerResult]) -> None:
    """A model that does not beat the motion baseline's pooled kappa is flagged (and says by how much)."""
    from stream.engine.motion import MOTION_KIND

    baselines = [s for s in scorers if s.kind == MOTION_KIND]
    if not baselines:
        return
    best = max(baselines, key=lambda s: _num(s.frames.kappa))
    for s in scorers:
        if s.kind in (MOTION_KIND, HUMAN_KIND):
            continue
        if not _num(s.frames.kappa) > _num(best.frames.kappa):
            s.flags.insert(0, f"does NOT beat the motion baseline {best.name}: kappa {fmt(s.frames.kappa)} vs "
                              f"{fmt(best.frames.kappa)}, accuracy {fmt(s.frames.accuracy)} vs {fmt(best.frames.accuracy)}")


def _num(x: float) -> float:
    return -math.inf if math.isnan(x) else float(x)


# ---------------------------------------------------------------------------------------------- CLI
def add_decision_options(p: argparse.ArgumentParser) -> None:
    """stream-run's engine and decision options, with stream-run's defaults.

    The defaults are stream-run's own (``stream.run_config``'s dataclasses), not repeated here: a
    copied default drifted once (smoothing stayed "none" after stream-run moved to "average"), and a
    validation with default options then scored differently from a default stream-run.
    """
    from stream.decisions import SMOOTHING_MODES
    from stream.engine import ENGINE_KINDS
    from stream.run_config import DecisionOptions, ModelConfig, SourceConfig
    from stream.trials import TRIAL_MODES

    m, d = ModelConfig(), DecisionOptions()
    g = p.add_argument_group("as stream-run (same meaning and defaults)")
    g.add_argument("--engine", default=m.engine, choices=ENGINE_KINDS)
    g.add_argument("--device", default=m.device, help="cpu, cuda or cuda:N (default: the best present)")
    g.add_argument("--stride", type=int, default=m.stride, metavar="K", help="model on every K-th frame (default: %(default)s)")
    g.add_argument("--no-flow-warm-start", action="store_true", help="flow of each frame from scratch, as in training")
    g.add_argument("--smoothing", default=d.smoothing, choices=SMOOTHING_MODES, help="default: %(default)s")
    g.add_argument("--smoothing-window", type=int, default=d.smoothing_window, metavar="FRAMES", help="default: %(default)s")
    g.add_argument("--min-bout-s", type=float, default=d.min_bout_s, help="default: each model card's fitted value, else 0")
    g.add_argument("--test-duration-s", type=float, default=d.test_duration_s, help="default: %(default)s")
    g.add_argument("--scoring-window-s", type=float, default=d.scoring_window_s,
                   help="the last this-many seconds (default: %(default)s)")  # fmt: skip
    g.add_argument("--immobile-classes", default=None, metavar="A,B", help="default: the model card's")
    g.add_argument("--max-frames", type=int, default=SourceConfig().max_frames, metavar="N", help="only the first N model-rate frames per video")
    g.add_argument("--realtime", action="store_true",
                   help="pace each video like a camera: what a live rig would score (frames it cannot take are dropped, the "
                        "stride rises when behind, and --adapted-model adapts while the video plays, as on a camera)")
    g.add_argument("--trials", default=None, choices=TRIAL_MODES,
                   help="recordings with several animals per arena, one after another: each trial is an animal, "
                        "scored and compared on its own (schedule: --schedule; auto: found by stream-run)")
    g.add_argument("--schedule", type=Path, default=None, metavar="CSV",
                   help="stream-run's schedule (video,arena,animal,group,start_s): one trial per row; labels named "
                        "like the animal or the arena (implies --trials schedule)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export-validate", description=__doc__.splitlines()[0].replace("``", ""))
    add_version_argument(p)
    p.add_argument("--model", action="append", type=Path, metavar="DIR",
                   help="model folder to validate; repeat to compare several side by side")
    p.add_argument("--adapted-model", action="append", type=Path, metavar="DIR",
                   help="a model scored as stream-run --adapt scores it: each video by the model with that video's own "
                        "BatchNorm statistics (named <model>+adabn); give it beside --model DIR to see what adapting does")
    p.add_argument("--adapt-clips", type=int, default=ADAPT_CLIPS_DEFAULT, metavar="N",
                   help=f"clips per video for --adapted-model (default: {ADAPT_CLIPS_DEFAULT})")
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="a motion-threshold model (export-fit-motion) scored beside the models; a model that does not "
                        "beat it is flagged (a --model of kind motion counts as a baseline too)")
    p.add_argument("--videos", nargs="+", required=True, metavar="VIDEO", help="annotated videos (globs expanded)")
    p.add_argument("--labels", nargs="+", required=True, type=Path, metavar="FILE",
                   help="one annotation file per video, same order (per-frame CSV, BORIS, DeepEthogram)")
    p.add_argument("--arenas", nargs="+", type=Path, metavar="FILE",
                   help="arena file per video (or one for all); default: <video>.arenas.json, else the whole frame")
    p.add_argument("--rater2", nargs="+", type=Path, metavar="FILE",
                   help="a second person's annotation file per video: the inter-rater agreement (human ceiling)")
    p.add_argument("--bin-s", type=float, default=DEFAULT_BIN_S, help="time-bin length for the per-bin tables (default: 60)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="report folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or per-run tables from stream-run")
    p.add_argument("-v", "--verbose", action="count", default=0)
    add_decision_options(p)
    return p


@cli_main("export-validate")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level={0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    checked_bin_count(args.bin_s, args.test_duration_s)  # the floor and cap stream-run and stream-report use
    if args.stride < 1:
        raise UserError(f"--stride {args.stride}: must be >= 1")
    if args.adapt_clips < 1:
        raise UserError(f"--adapt-clips {args.adapt_clips}: must be >= 1")
    _, scorers = validate(args)
    for s in scorers:
        print(f"{s.name:>24}: accuracy {fmt(s.frames.accuracy)}  kappa {fmt(s.frames.kappa)}  frames {s.frames.frames}  "
              f"immobility r {agreement_text(s.immobility, 'pearson_r')}, ICC {agreement_text(s.immobility, 'icc_a1')} "
              f"(n={s.immobility.n})  bins ICC {agreement_text(s.bins_pooled, 'icc_a1')} (n={s.bins_pooled.n})" + ("  FLAGGED" if s.flags else ""))
    print(f"report: {Path(args.out) / REPORT_HTML}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
