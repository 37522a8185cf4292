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
import csv
import html
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.agreement import animal_agreement, frame_agreement
from stream.errors import UserError, cli_main

__all__ = ["Animal", "ScorerResult", "build_parser", "compare", "labels_at_ticks", "main", "match_annotations",
           "source_frame_of_tick", "validate"]

log = logging.getLogger("export.validate")

DEFAULT_BIN_S = 60.0  # minute bins: what FST papers report (minutes 1-6)
NEAR_CONSTANT_SHARE = 0.9  # one class >= 90 % of a recording's predictions, while the labels are mixed: flagged
MOTION_KIND = "motion"  # card kind of the baseline (stream/motion.py); a string here so reports need no torch
REPORT_HTML = "validation.html"
METRICS_JSON = "validation.json"
HUMAN = "human (rater 2)"  # scorer name of the inter-rater comparison


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
@dataclass
class Animal:
    """One recording of one arena as two scorers saw it (same frames, same order)."""

    video: str
    arena: str
    reference: np.ndarray  # class index per frame, -1 = not labelled (not scored)
    other: np.ndarray  # class index per frame by the scorer under test
    timestamps_s: np.ndarray  # test clock of each frame
    fps: float  # frame rate of these frames (seconds = frames / fps)


@dataclass
class ScorerResult:
    name: str
    kind: str  # "i3d", "motion" or "human"
    frames: dict[str, Any]  # pooled per-frame statistics
    animals: list[dict[str, Any]]
    immobility: dict[str, Any]  # whole run: animal_agreement of immobile seconds
    window: dict[str, Any]  # the scoring window
    bins: list[dict[str, Any]]  # per time bin
    bins_pooled: dict[str, Any]  # all (animal, bin) pairs together
    points: dict[str, list]  # per-animal (human, model) immobile s for the plots
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("name", "kind", "frames", "animals", "immobility", "window", "bins",
                                              "bins_pooled", "points", "flags")}


def _immobile_s(labels: np.ndarray, immobile: np.ndarray, fps: float) -> float:
    return float(immobile[labels].sum() / fps) if labels.size else 0.0


def compare(animals: Sequence[Animal], classes: Sequence[str], immobile_classes: Sequence[str], *, name: str,
            kind: str, test_duration_s: float, scoring_window_s: float, bin_s: float = DEFAULT_BIN_S) -> ScorerResult:
    """Every statistic of one scorer against the reference over a set of animals."""
    k = len(classes)
    imm = np.array([c in immobile_classes for c in classes])
    n_bins = max(1, math.ceil(test_duration_s / bin_s - 1e-9))
    window_start = test_duration_s - scoring_window_s
    all_ref, all_oth, rows = [], [], []
    per_bin_h = np.full((len(animals), n_bins), np.nan)
    per_bin_m = np.full((len(animals), n_bins), np.nan)
    human_s, model_s, human_w, model_w = [], [], [], []
    for a_i, a in enumerate(animals):
        scored = a.reference >= 0
        ref, oth, t = a.reference[scored], a.other[scored], a.timestamps_s[scored]
        all_ref.append(ref)
        all_oth.append(oth)
        fa = frame_agreement(ref, oth, classes)
        label_share = np.bincount(ref, minlength=k) / max(1, ref.size)
        pred_share = np.bincount(oth, minlength=k) / max(1, oth.size)
        h_s, m_s = _immobile_s(ref, imm, a.fps), _immobile_s(oth, imm, a.fps)
        in_w = (t >= window_start) & (t < test_duration_s)
        hw, mw = _immobile_s(ref[in_w], imm, a.fps), _immobile_s(oth[in_w], imm, a.fps)
        human_s.append(h_s)
        model_s.append(m_s)
        if in_w.any():
            human_w.append(hw)
            model_w.append(mw)
        b = np.floor(t / bin_s).astype(np.int64)
        for j in range(n_bins):
            sel = b == j
            if sel.any():
                per_bin_h[a_i, j] = _immobile_s(ref[sel], imm, a.fps)
                per_bin_m[a_i, j] = _immobile_s(oth[sel], imm, a.fps)
        near_constant = bool(pred_share.max() >= NEAR_CONSTANT_SHARE and label_share.max() < NEAR_CONSTANT_SHARE) \
            if ref.size else False
        rows.append({
            "video": a.video, "arena": a.arena, "frames_scored": int(ref.size), "frames_total": int(a.reference.size),
            "accuracy": fa["accuracy"], "kappa": fa["kappa"], "macro_f1": fa["macro_f1"],
            "human_immobile_s": h_s, "model_immobile_s": m_s, "window_human_immobile_s": hw, "window_model_immobile_s": mw,
            "label_share": {c: float(label_share[i]) for i, c in enumerate(classes)},
            "predicted_share": {c: float(pred_share[i]) for i, c in enumerate(classes)},
            "near_constant_prediction": near_constant,
        })  # fmt: skip
    ref = np.concatenate(all_ref) if all_ref else np.zeros(0, np.int64)
    oth = np.concatenate(all_oth) if all_oth else np.zeros(0, np.int64)
    bins = []
    for j in range(n_bins):
        have = ~np.isnan(per_bin_h[:, j])
        agr = animal_agreement(per_bin_h[have, j], per_bin_m[have, j])
        bins.append({"bin": j + 1, "start_s": j * bin_s, "end_s": min((j + 1) * bin_s, test_duration_s),
                     "human_mean_s": float(per_bin_h[have, j].mean()) if have.any() else math.nan,
                     "model_mean_s": float(per_bin_m[have, j].mean()) if have.any() else math.nan, **agr})
    have = ~np.isnan(per_bin_h)
    result = ScorerResult(
        name=name, kind=kind, frames=frame_agreement(ref, oth, classes), animals=rows,
        immobility=animal_agreement(human_s, model_s),
        window={"start_s": window_start, "end_s": test_duration_s, **animal_agreement(human_w, model_w)},
        bins=bins, bins_pooled={"bin_s": bin_s, **animal_agreement(per_bin_h[have], per_bin_m[have])},
        points={"human_s": human_s, "model_s": model_s, "bin_human_s": per_bin_h[have].tolist(),
                "bin_model_s": per_bin_m[have].tolist()},
    )  # fmt: skip
    result.flags += [f"{r['video']}/{r['arena']}: near-constant prediction (one class >= {NEAR_CONSTANT_SHARE:.0%} "
                     "while the labels are mixed): the model may have learned the recording, not the behaviour"
                     for r in rows if r["near_constant_prediction"]]
    return result


# ------------------------------------------------------------------------------------ running models
def run_stream(model_dir: Path, video: Path, out_dir: Path, arenas: Path | None, args: argparse.Namespace) -> int:
    """``stream-run`` on one video with validate's options; returns its exit status (0 = fine).

    Runs in this process through ``stream.run``'s own argument parser and run object, so every default
    and check is stream-run's.
    """
    from stream.run import _Run, build_parser as stream_parser

    argv = ["--video", str(video), "--model", str(model_dir), "--out", str(out_dir), "--no-zmq", "--no-metrics", "-q",
            "--engine", args.engine, "--stride", str(args.stride), "--smoothing", args.smoothing,
            "--smoothing-window", str(args.smoothing_window), "--test-duration-s", str(args.test_duration_s),
            "--scoring-window-s", str(args.scoring_window_s)]  # fmt: skip
    if args.device:
        argv += ["--device", args.device]
    if args.min_bout_s is not None:
        argv += ["--min-bout-s", str(args.min_bout_s)]
    if args.immobile_classes:
        argv += ["--immobile-classes", args.immobile_classes]
    if args.no_flow_warm_start:
        argv += ["--no-flow-warm-start"]
    if args.max_frames:
        argv += ["--max-frames", str(args.max_frames)]
    if arenas is not None:
        argv += ["--arenas", str(arenas)]
    log.info("stream-run %s", " ".join(argv))
    return _Run(stream_parser().parse_args(argv)).execute()


def _predicted(run_dir: Path, arena_id: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(model-rate frame, timestamp_s, class index) of a stream-run frames CSV."""
    from stream.outputs.csv_log import read_frames_csv

    path = run_dir / f"{arena_id}.frames.csv"
    if not path.is_file():
        raise UserError(f"{path}: stream-run wrote no frames for arena {arena_id}")
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


def _items(args: argparse.Namespace) -> list[Item]:
    from stream.run import _expand_videos

    videos = _expand_videos(args.videos)
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


def _read_labels(path: Path, video: Path, classes: list[str], arena_ids: list[str]) -> tuple[dict, float, int]:
    from export.annotations import read_annotations
    from export.dataset import probe_video

    n, video_fps, _, _ = probe_video(video)
    if not video_fps or video_fps <= 0:
        raise UserError(f"{video}: the container gives no frame rate; cannot align labels to frames")
    anns = read_annotations(path, fps=video_fps, classes=classes)
    anns = [a.remap(classes) for a in anns]
    return match_annotations(anns, arena_ids, str(path)), video_fps, n


def validate(args: argparse.Namespace) -> dict[str, Any]:
    """Score every model on every video, compare, write the report; returns the metrics dict."""
    from stream.arenas import resolve_arenas
    from stream.modelfile import load_card

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create ({exc.strerror})") from exc
    items = _items(args)
    model_dirs = [Path(m) for m in (args.model or [])] + ([Path(args.baseline)] if args.baseline else [])
    if not model_dirs and not any(i.rater2 for i in items):
        raise UserError("nothing to compare: give --model DIR (repeatable), --baseline DIR, or --rater2 FILES")
    cards = [load_card(m) for m in model_dirs]
    names = _unique([c.name for c in cards])
    classes = list(cards[0].classes) if cards else None
    for m, c in zip(model_dirs, cards):
        if list(c.classes) != classes:
            raise UserError(f"{m}: classes {c.classes} differ from {model_dirs[0]}'s {classes}; compare models of one task")
    if classes is None:  # inter-rater only: the classes of the first label file
        from export.annotations import read_annotations

        classes = list(read_annotations(items[0].labels)[0].classes)
    immobile = ([c.strip() for c in args.immobile_classes.split(",")] if args.immobile_classes
                else list(cards[0].immobile_classes) if cards else [c for c in classes if c in ("float", "immobile")])
    scorers: list[ScorerResult] = []
    stats = dict(test_duration_s=args.test_duration_s, scoring_window_s=args.scoring_window_s, bin_s=args.bin_s)
    for model_dir, card, name in zip(model_dirs, cards, names):
        animals = []
        for item in items:
            arena_ids = [a.id for a in resolve_arenas(arena_file=item.arenas, video=item.video)]
            matched, video_fps, n_src = _read_labels(item.labels, item.video, classes, arena_ids)
            run_dir = out / "runs" / name / item.video.stem
            code = run_stream(model_dir, item.video, run_dir, item.arenas, args)
            if code != 0:
                raise UserError(f"stream-run of {model_dir} on {item.video} ended with status {code}; see above")
            src_of_tick = source_frame_of_tick(n_src, video_fps, card.fps)
            for arena_id, ann in matched.items():
                frames, times, pred = _predicted(run_dir, arena_id, classes)
                ref = labels_at_ticks(ann.labels, frames, src_of_tick)
                animals.append(Animal(item.video.name, arena_id, ref, pred, times, card.fps))
        scorers.append(compare(animals, classes, immobile, name=name, kind=getattr(card, "kind", "i3d"), **stats))
    rater_pairs = [i for i in items if i.rater2 is not None]
    if rater_pairs:
        animals = []
        for item in rater_pairs:
            arena_ids = [a.id for a in resolve_arenas(arena_file=item.arenas, video=item.video)]
            first, video_fps, n_src = _read_labels(item.labels, item.video, classes, arena_ids)
            second, _, _ = _read_labels(item.rater2, item.video, classes, arena_ids)
            for arena_id in first:
                if arena_id not in second:
                    continue
                a, b = first[arena_id].labels, second[arena_id].labels
                n = min(a.size, b.size)
                both = np.where((a[:n] >= 0) & (b[:n] >= 0), a[:n], -1)
                animals.append(Animal(item.video.name, arena_id, both, np.where(both >= 0, b[:n], 0),
                                      np.arange(n) / video_fps, video_fps))
        scorers.append(compare(animals, classes, immobile, name=HUMAN, kind="human", **stats))
    _flag_baseline(scorers)
    metrics = {
        "classes": classes, "immobile_classes": immobile,
        "videos": [str(i.video) for i in items], "labels": [str(i.labels) for i in items],
        "models": {n: str(m) for n, m in zip(names, model_dirs)},
        "settings": {k: getattr(args, k) for k in ("engine", "device", "stride", "smoothing", "smoothing_window",
                                                    "min_bout_s", "test_duration_s", "scoring_window_s", "bin_s",
                                                    "no_flow_warm_start", "max_frames")},
        "scorers": [s.to_dict() for s in scorers],
    }  # fmt: skip
    write_outputs(out, metrics, scorers, classes)
    return metrics


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def _flag_baseline(scorers: list[ScorerResult]) -> None:
    """A model that does not beat the motion baseline's pooled kappa is flagged (and says by how much)."""
    baselines = [s for s in scorers if s.kind == MOTION_KIND]
    if not baselines:
        return
    best = max(baselines, key=lambda s: _num(s.frames["kappa"]))
    for s in scorers:
        if s.kind in (MOTION_KIND, "human"):
            continue
        if not _num(s.frames["kappa"]) > _num(best.frames["kappa"]):
            s.flags.insert(0, f"does NOT beat the motion baseline {best.name}: kappa {_fmt(s.frames['kappa'])} vs "
                              f"{_fmt(best.frames['kappa'])}, accuracy {_fmt(s.frames['accuracy'])} vs {_fmt(best.frames['accuracy'])}")


def _num(x: float) -> float:
    return -math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


# -------------------------------------------------------------------------------------------- output
def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is for sharing
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for row in rows:
        w.writerow(["" if (isinstance(v, float) and math.isnan(v)) else (f"{v:.6g}" if isinstance(v, float) else v)
                    for v in row])
    return buf.getvalue()


_AGR = ("n", "pearson_r", "icc_a1", "ba_bias", "ba_sd", "ba_loa_low", "ba_loa_high")


def _tables(scorers: Sequence[ScorerResult], classes: Sequence[str]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    summary = (["scorer", "kind", "frames", "accuracy", "kappa", "macro_f1", *[f"immobile_{k}" for k in _AGR],
                *[f"window_{k}" for k in _AGR], *[f"bins_{k}" for k in _AGR], "flags"],
               [[s.name, s.kind, s.frames["frames"], s.frames["accuracy"], s.frames["kappa"], s.frames["macro_f1"],
                 *[s.immobility[k] for k in _AGR], *[s.window[k] for k in _AGR], *[s.bins_pooled[k] for k in _AGR],
                 " | ".join(s.flags)] for s in scorers])
    animals = (["scorer", "video", "arena", "frames_scored", "frames_total", "accuracy", "kappa", "macro_f1",
                "human_immobile_s", "model_immobile_s", "window_human_immobile_s", "window_model_immobile_s",
                *[f"label_share_{c}" for c in classes], *[f"predicted_share_{c}" for c in classes], "near_constant_prediction"],
               [[s.name, r["video"], r["arena"], r["frames_scored"], r["frames_total"], r["accuracy"], r["kappa"],
                 r["macro_f1"], r["human_immobile_s"], r["model_immobile_s"], r["window_human_immobile_s"],
                 r["window_model_immobile_s"], *[r["label_share"][c] for c in classes],
                 *[r["predicted_share"][c] for c in classes], int(r["near_constant_prediction"])]
                for s in scorers for r in s.animals])
    bins = (["scorer", "bin", "start_s", "end_s", "human_mean_s", "model_mean_s", *_AGR],
            [[s.name, b["bin"], b["start_s"], b["end_s"], b["human_mean_s"], b["model_mean_s"], *[b[k] for k in _AGR]]
             for s in scorers for b in s.bins])
    per_class = (["scorer", "class", "precision", "recall", "f1", "support"],
                 [[s.name, c, s.frames["per_class"][c]["precision"], s.frames["per_class"][c]["recall"],
                   s.frames["per_class"][c]["f1"], s.frames["per_class"][c]["support"]] for s in scorers for c in classes])
    confusion = (["scorer", "annotated", *[f"predicted_{c}" for c in classes]],
                 [[s.name, c, *s.frames["confusion"][i]] for s in scorers for i, c in enumerate(classes)])
    return {"summary": summary, "per_animal": animals, "per_bin": bins, "per_class": per_class, "confusion": confusion}


def _plots(out: Path, scorers: Sequence[ScorerResult], classes: Sequence[str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from export.report import plot_confusion_matrix

    images = []
    for s in scorers:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s.name)
        images.append(plot_confusion_matrix(np.array(s.frames["confusion"]), list(classes), out / f"confusion_{safe}.png",
                                            title=f"{s.name}: confusion (rows: rater 1)"))
    # immobility: scatter with identity line, and Bland-Altman, every scorer in one figure
    fig, (ax_s, ax_b) = plt.subplots(1, 2, figsize=(10, 4))
    markers = "osD^v<>"
    lim = 1.0
    for i, s in enumerate(scorers):
        h = np.array(s.points["human_s"] + s.points["bin_human_s"])
        m = np.array(s.points["model_s"] + s.points["bin_model_s"])
        n_animal = len(s.points["human_s"])
        if h.size == 0:
            continue
        lim = max(lim, float(h.max()), float(m.max()))
        mk = markers[i % len(markers)]
        ax_s.scatter(h[:n_animal], m[:n_animal], marker=mk, s=40, label=f"{s.name}: per animal")
        ax_s.scatter(h[n_animal:], m[n_animal:], marker=mk, s=12, alpha=0.5, label=f"{s.name}: per animal and bin")
        mean, diff = (h + m) / 2, m - h
        ax_b.scatter(mean, diff, marker=mk, s=14, alpha=0.7, label=s.name)
        ba = s.bins_pooled
        for key, style in (("ba_bias", "-"), ("ba_loa_low", "--"), ("ba_loa_high", "--")):
            if ba[key] is not None and not math.isnan(ba[key]):
                ax_b.axhline(ba[key], linestyle=style, color=f"C{i}", linewidth=1)
    ax_s.plot([0, lim * 1.05], [0, lim * 1.05], color="grey", linewidth=1, label="identity")
    ax_s.set_xlabel("rater 1: immobile s")
    ax_s.set_ylabel("scorer: immobile s")
    ax_s.set_title("Immobility, scorer vs rater 1", fontsize=10)
    ax_b.axhline(0, color="grey", linewidth=0.8)
    ax_b.set_xlabel("mean of the two (s)")
    ax_b.set_ylabel("scorer - rater 1 (s)")
    ax_b.set_title("Bland-Altman (per animal and bin; lines: bias, 95% limits)", fontsize=10)
    for ax in (ax_s, ax_b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "immobility_agreement.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    # per-recording prediction rates beside the label rates: for each recording a "labels" bar, then one bar
    # per scorer; a scorer that learned the recording shows one colour where the labels show several
    recordings = list(dict.fromkeys((r["video"], r["arena"]) for s in scorers for r in s.animals))
    bars: list[tuple[str, dict[str, float]]] = []
    for rec in recordings:
        found = [(s, r) for s in scorers for r in s.animals if (r["video"], r["arena"]) == rec]
        bars.append((f"labels\n{rec[0]}/{rec[1]}", found[0][1]["label_share"]))
        bars += [(s.name, r["predicted_share"]) for s, r in found if s.kind != "human"]
    if bars:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(bars) + 3), 3.6))
        xs = np.arange(len(bars))
        bottom = np.zeros(len(bars))
        for ci, c in enumerate(classes):
            vals = np.array([b[1][c] for b in bars])
            ax.bar(xs, vals, bottom=bottom, color=f"C{ci}", label=c)
            bottom += vals
        ax.set_xticks(xs, [b[0] for b in bars], rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("share of scored frames")
        ax.set_title("Class shares per recording: labels, then each model", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
        fig.tight_layout()
        rates = out / "prediction_rates.png"
        fig.savefig(rates, dpi=110)
        plt.close(fig)
        images.append(rates)
    return [path, *images]


_CSS = ("body{font-family:sans-serif;max-width:72em;margin:1em auto;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}"
        "th{background:#eee}img{max-width:100%}.flag{color:#b00;font-weight:bold}.note{color:#555;font-size:90%}")


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    h = "<table><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in header) + "</tr>"
    return h + "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in rows) + "</table>"


def write_outputs(out: Path, metrics: dict[str, Any], scorers: Sequence[ScorerResult], classes: Sequence[str]) -> Path:
    """``validation.json``, the CSV tables, the plots and ``validation.html`` (plots embedded)."""
    import base64

    _atomic_text(out / METRICS_JSON, json.dumps(metrics, indent=1, default=float) + "\n")
    tables = _tables(scorers, classes)
    for name, (header, rows) in tables.items():
        _atomic_text(out / f"{name}.csv", _csv_text(header, rows))
    images = _plots(out, scorers, classes)
    s = metrics["settings"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Validation</title><style>{_CSS}</style></head><body>",
             "<h1>Validation against annotations</h1>",
             "<p class='note'>Every model was run by stream-run itself (capture, resampling, flow settings of its card, "
             "engine and decision rules) with: " + html.escape(", ".join(f"{k}={v}" for k, v in s.items())) +
             ". Only frames rater 1 labelled are scored. Videos: " + html.escape(", ".join(metrics["videos"])) + "</p>"]
    flags = [(sc.name, f) for sc in scorers for f in sc.flags]
    if flags:
        parts.append("<h2>Flags</h2><ul>" + "".join(f"<li class='flag'>{html.escape(n)}: {html.escape(f)}</li>"
                                                     for n, f in flags) + "</ul>")
    parts.append("<h2>Side by side</h2>")
    head = ["scorer", "kind", "frames", "accuracy", "kappa", "macro F1", "immobility r", "ICC(A,1)", "bias s",
            "95% LoA s", "window ICC", "bins n", "bins r", "bins ICC(A,1)", "bins bias s", "bins 95% LoA s"]
    rows = [[sc.name, sc.kind, sc.frames["frames"], sc.frames["accuracy"], sc.frames["kappa"], sc.frames["macro_f1"],
             sc.immobility["pearson_r"], sc.immobility["icc_a1"], sc.immobility["ba_bias"],
             f"{_fmt(sc.immobility['ba_loa_low'])} .. {_fmt(sc.immobility['ba_loa_high'])}", sc.window["icc_a1"],
             sc.bins_pooled["n"], sc.bins_pooled["pearson_r"], sc.bins_pooled["icc_a1"], sc.bins_pooled["ba_bias"],
             f"{_fmt(sc.bins_pooled['ba_loa_low'])} .. {_fmt(sc.bins_pooled['ba_loa_high'])}"] for sc in scorers]
    parts.append(_html_table(head, rows))
    parts.append("<p class='note'>Immobility r / ICC / Bland-Altman are over animals (video x arena); 'bins' pools every "
                 f"(animal, {s['bin_s']:g}-s bin) pair, which still gives a figure with few animals. '-' = undefined "
                 "(fewer than 2 animals, or constant values). ICC(A,1): two-way, absolute agreement, single measures "
                 "(McGraw &amp; Wong 1996).</p>")
    for img in images:
        data = base64.b64encode(Path(img).read_bytes()).decode("ascii")
        parts.append(f"<img alt='{html.escape(Path(img).stem)}' src='data:image/png;base64,{data}'>")
    for title, key in (("Per recording: agreement and class shares (labels vs predictions)", "per_animal"),
                       ("Per time bin", "per_bin"), ("Per class", "per_class"), ("Confusion matrices", "confusion")):
        header, trs = tables[key]
        parts += [f"<h2>{title}</h2>", _html_table(header, trs)]
    parts.append("<h2>Scoring window</h2>")
    parts.append(_html_table(["scorer", "start s", "end s", *_AGR],
                             [[sc.name, sc.window["start_s"], sc.window["end_s"], *[sc.window[k] for k in _AGR]] for sc in scorers]))
    parts.append("<p class='note'>Files: validation.json, summary.csv, per_animal.csv, per_bin.csv, per_class.csv, "
                 "confusion.csv, runs/&lt;model&gt;/&lt;video&gt;/ (stream-run's own outputs).</p></body></html>")
    path = out / REPORT_HTML
    _atomic_text(path, "\n".join(parts))
    return path


# ---------------------------------------------------------------------------------------------- CLI
def add_decision_options(p: argparse.ArgumentParser) -> None:
    """stream-run's engine and decision options, with stream-run's defaults."""
    g = p.add_argument_group("as stream-run (same meaning and defaults)")
    g.add_argument("--engine", default="auto", choices=("auto", "torch", "onnxruntime", "tensorrt"))
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the best present)")
    g.add_argument("--stride", type=int, default=1, metavar="K", help="model on every K-th frame (default: 1)")
    g.add_argument("--no-flow-warm-start", action="store_true", help="flow of each frame from scratch, as in training")
    g.add_argument("--smoothing", default="none", choices=("none", "average", "hysteresis"))
    g.add_argument("--smoothing-window", type=int, default=5, metavar="FRAMES")
    g.add_argument("--min-bout-s", type=float, default=None, help="default: each model card's fitted value, else 0")
    g.add_argument("--test-duration-s", type=float, default=360.0, help="default: %(default)s")
    g.add_argument("--scoring-window-s", type=float, default=240.0, help="the last this-many seconds (default: %(default)s)")
    g.add_argument("--immobile-classes", default=None, metavar="A,B", help="default: the model card's")
    g.add_argument("--max-frames", type=int, default=None, metavar="N", help="only the first N model-rate frames per video")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export-validate", description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--model", action="append", type=Path, metavar="DIR",
                   help="model folder to validate; repeat to compare several side by side")
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
    p.add_argument("-v", "--verbose", action="count", default=0)
    add_decision_options(p)
    return p


@cli_main("export-validate")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level={0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.bin_s <= 0:
        raise UserError(f"--bin-s {args.bin_s}: must be > 0")
    if args.stride < 1:
        raise UserError(f"--stride {args.stride}: must be >= 1")
    metrics = validate(args)
    for s in metrics["scorers"]:
        f, im = s["frames"], s["immobility"]
        print(f"{s['name']:>24}: accuracy {_fmt(f['accuracy'])}  kappa {_fmt(f['kappa'])}  frames {f['frames']}  "
              f"immobility ICC {_fmt(im['icc_a1'])} (n={im['n']})  bins ICC {_fmt(s['bins_pooled']['icc_a1'])} "
              f"(n={s['bins_pooled']['n']})" + ("  FLAGGED" if s["flags"] else ""))
    print(f"report: {Path(args.out) / REPORT_HTML}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
