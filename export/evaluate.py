"""Evaluation of the two-stream model (CLI ``export-evaluate``): k-fold cross-validation, a held-out
test on videos never trained on, the fusion-weight sweep, and the choice of that weight.

Read it top to bottom: metrics on held-out probabilities -> the sweep -> immobility per video ->
the honest choice of the flow weight -> held-out groups and per-recording rates ->
cross-validation (train one model per fold, keep each stream's held-out softmax) -> files -> CLI.

The sweep needs no retraining: each model's RGB and flow softmax on its test clips are stored
once, and the fused prediction for any weight ``w`` is ``w * p_flow + (1 - w) * p_rgb`` of those
stored numbers. In CV every clip is a test clip of exactly one fold.

Choosing the weight: each fold picks its weight on its own validation split (``--val-folds``, the
clips that also decide early stopping) and is scored at that weight on its test clips; the mean
of those scores is the headline. The full sweep on the test clips stays as a plot, marked as
optimistic. With ``--val-folds 0`` there is nothing else to choose on, and the report says the
weight was chosen on the test predictions.

Splits: by default whole videos (``--split-by auto``) when there are at least ``--folds`` of
them, else whole arenas (animals), else contiguous stretches of one recording -- with a warning,
since neighbouring seconds of one animal in one light leak between training and test.

Held-out test (``--test-videos``): one model is trained on all ``--videos`` (optionally after a CV
inside them, ``--folds K``) and tested on videos it never saw. Test videos are grouped by the
simulator families held out of training (``"held_out"`` in each video's ``.arenas.json``), and
each group gets its accuracy, confusion matrix and immobile-time error per video, with the spread
across groups. Per recording, the predicted class rates stand beside the annotated ones: a model
that answers one class for a whole recording has learned the recording, not the behaviour.

Files written to ``--out``: ``metrics.json`` (everything), ``accuracy_by_flow_weight.csv``,
``per_class.csv``, ``confusion_matrices.csv`` (per weight), ``immobility.csv`` (per video, at
the chosen weight), ``prediction_rates.csv``, ``heldout_groups.csv`` (held-out runs),
``predictions.npz`` (the per-stream probabilities, to re-sweep without retraining), the PNG
plots and ``report.html`` / ``report.md``. ``--export-model DIR`` writes the model (CV: trained
on all data; held-out: the tested model) with the chosen weight and these figures in its card.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Subset

from export import train as tr
from stream.errors import UserError, cli_main
from stream.version import add_version_argument
from stream.atomic import atomic_write
from stream.spreadsheet import spreadsheet_cells

__all__ = [
    "FLOW_WEIGHTS",
    "HeldOut",
    "confusion_matrix",
    "per_class_scores",
    "sweep_flow_weight",
    "majority_baseline",
    "immobility_per_video",
    "choose_flow_weight_per_fold",
    "collect_validation",
    "prediction_rates",
    "heldout_groups",
    "read_heldout_group",
    "resolve_split",
    "card_metrics",
    "cross_validate",
    "summarize",
    "write_results",
    "main",
]

log = logging.getLogger(__name__)

FLOW_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))  # 0.0 (RGB only) .. 1.0 (flow only), the paper's grid
HELDOUT_NAME = "heldout.npz"  # per fold: that fold model's predictions on its test clips (lets a CV run resume)
PREDICTIONS_NAME = "predictions.npz"
METRICS_NAME = "metrics.json"
DEFAULT_FOLDS = 10  # cross-validation folds when there is no held-out test set
SPLIT_CHOICES = ("auto", "videos", "arenas", "segments")
SEGMENT_LEAK_WARNING = ("splitting one recording into segments lets neighbouring seconds (same animal, light, water) leak between "
                        "training and test: the accuracy is optimistic; give more videos or fewer --folds")  # fmt: skip
VALIDATION_NAME = "validation.npz"  # per fold: predictions on its validation split (where the flow weight is chosen)
TEST_PREDICTIONS_NAME = "heldout_predictions.npz"  # --test-videos: the model's predictions on the held-out videos
BEST_WEIGHT_TIE_TOL = 1e-9  # equal mean accuracies: the smaller std wins, then the weight nearer 0.5
NEAR_CONSTANT_FRACTION = 0.95  # one class predicted for >= 95 % of a recording's clips ...
CONSTANT_RATE_GAP = 0.15  # ... while annotators gave it at least 15 points less: the model learned the recording
NOTHING_HELD_OUT = "none held out"  # group name of randomized test videos whose families were all seen in training


# --------------------------------------------------------------------------------------------
# metrics on held-out probabilities


@dataclass
class HeldOut:
    """Per-stream softmax of every clip, predicted by the fold model that did not train on it."""

    rgb_probs: np.ndarray  # (N, K)
    flow_probs: np.ndarray  # (N, K)
    labels: np.ndarray  # (N,) annotated class
    fold: np.ndarray  # (N,) fold whose test set holds the clip
    source: np.ndarray  # (N,) dataset source (video / arena) index
    frame: np.ndarray  # (N,) centre frame of the clip

    def fused(self, flow_weight: float) -> np.ndarray:
        return flow_weight * self.flow_probs + (1.0 - flow_weight) * self.rgb_probs

    def save(self, path: Path) -> None:
        np.savez_compressed(path, **dataclasses.asdict(self))

    @classmethod
    def load(cls, path: Path) -> "HeldOut":
        with np.load(path) as z:
            return cls(**{f.name: z[f.name] for f in dataclasses.fields(cls)})

    @classmethod
    def concatenate(cls, parts: Sequence["HeldOut"]) -> "HeldOut":
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)})


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts: row = annotated class, column = predicted class."""
    return np.bincount(np.asarray(labels) * num_classes + np.asarray(predicted), minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class; 0 where undefined (no prediction / no example)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def _fold_accuracies(labels: np.ndarray, predicted: np.ndarray, fold: np.ndarray) -> np.ndarray:
    return np.array([np.mean(predicted[fold == f] == labels[fold == f]) for f in np.unique(fold)])


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def sweep_flow_weight(held: HeldOut, num_classes: int, weights: Sequence[float] = FLOW_WEIGHTS) -> list[dict[str, Any]]:
    """Accuracy (mean/std over folds), macro F1, per-class scores and confusion matrix per fusion weight."""
    rows = []
    for w in weights:
        predicted = held.fused(w).argmax(axis=1)
        accs = _fold_accuracies(held.labels, predicted, held.fold)
        cm = confusion_matrix(held.labels, predicted, num_classes)
        scores = per_class_scores(cm)
        mean, std = _mean_std(accs)
        rows.append(
            {
                "flow_weight": float(w),
                "accuracy_mean": mean,
                "accuracy_std": std,
                "accuracy_per_fold": accs.tolist(),
                "accuracy_pooled": float(np.mean(predicted == held.labels)),
                "macro_f1": float(scores["f1"].mean()),
                "confusion": cm.tolist(),
                "precision": scores["precision"].tolist(),
                "recall": scores["recall"].tolist(),
                "f1": scores["f1"].tolist(),
                "support": scores["support"].tolist(),
            }
        )
    return rows


def best_flow_weight(rows: Sequence[dict[str, Any]]) -> float:
    """Highest mean accuracy; among ties the smaller std, then the weight nearest 0.5 (both streams)."""
    top = max(r["accuracy_mean"] for r in rows)
    tied = [r for r in rows if r["accuracy_mean"] >= top - BEST_WEIGHT_TIE_TOL]
    return min(tied, key=lambda r: (r["accuracy_std"], abs(r["flow_weight"] - 0.5)))["flow_weight"]


def majority_baseline(labels: np.ndarray, fold: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Accuracy of always answering the most frequent class of the other folds (what a model must beat)."""
    accs, majority = [], []
    for f in np.unique(fold):
        train_counts = np.bincount(labels[fold != f], minlength=num_classes)
        if train_counts.sum() == 0:
            train_counts = np.bincount(labels, minlength=num_classes)
        m = int(train_counts.argmax())
        majority.append(m)
        accs.append(float(np.mean(labels[fold == f] == m)))
    mean, std = _mean_std(np.array(accs))
    return {"accuracy_mean": mean, "accuracy_std": std, "accuracy_per_fold": accs, "majority_class_per_fold": majority}


def immobility_per_video(held: HeldOut, predicted: np.ndarray, immobile: Sequence[int], names: Sequence[str], seconds_per_item: Sequence[float]) -> list[dict[str, Any]]:
    """Immobility time per video (animal), annotated vs predicted, on the evaluated clips.

    Each evaluated clip stands for ``seconds_per_item[source]`` seconds of the video (frame step / fps),
    so the two totals are directly comparable and differ only by the model's errors.
    """
    rows = []
    is_immobile_true = np.isin(held.labels, immobile)
    is_immobile_pred = np.isin(predicted, immobile)
    for s in np.unique(held.source):
        sel = held.source == s
        dt = float(seconds_per_item[int(s)])
        n = int(sel.sum())
        a, p = int(is_immobile_true[sel].sum()), int(is_immobile_pred[sel].sum())
        rows.append(
            {
                "video": names[int(s)],
                "evaluated_s": n * dt,
                "annotated_s": a * dt,
                "predicted_s": p * dt,
                "annotated_pct": 100.0 * a / n,
                "predicted_pct": 100.0 * p / n,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# honest choice of the flow weight


def choose_flow_weight_per_fold(validation: HeldOut, test: HeldOut, num_classes: int, weights: Sequence[float] = FLOW_WEIGHTS) -> dict[str, Any]:
    """Each fold picks its weight on its own validation clips; that choice is scored on its test clips.

    This is the number to publish: no test clip had a say in the weight it is scored with. Folds
    without validation clips are left out (there is no honest choice to score for them).
    """
    chosen, accs, folds = [], [], []
    for f in np.unique(test.fold):
        val_sel = validation.fold == f
        if not val_sel.any():
            continue
        val_f = HeldOut(*(getattr(validation, fld.name)[val_sel] for fld in dataclasses.fields(HeldOut)))
        w = best_flow_weight(sweep_flow_weight(val_f, num_classes, weights))
        sel = test.fold == f
        chosen.append(w)
        accs.append(float(np.mean(test.fused(w)[sel].argmax(1) == test.labels[sel])))
        folds.append(int(f))
    if not folds:
        return {}
    mean, std = _mean_std(np.array(accs))
    pooled_w = best_flow_weight(sweep_flow_weight(HeldOut(**{**dataclasses.asdict(validation), "fold": np.zeros_like(validation.fold)}), num_classes, weights))
    return {
        "chosen_on": "each fold's validation split of its training part",
        "weight_per_fold": chosen,
        "folds": folds,
        "accuracy_per_fold": accs,
        "accuracy_mean": mean,
        "accuracy_std": std,
        "weight_on_pooled_validation": pooled_w,  # what an exported model uses
    }


def collect_validation(work_dir: Path, num_folds: int) -> HeldOut | None:
    """The folds' validation predictions (``foldNN/validation.npz``), or None if no fold has any."""
    parts = [HeldOut.load(p) for j in range(num_folds) if (p := Path(work_dir) / f"fold{j:02d}" / VALIDATION_NAME).is_file()]
    return HeldOut.concatenate(parts) if parts else None


def held_out_of(pred, items: np.ndarray, fold: int | np.ndarray) -> HeldOut:
    """A ``HeldOut`` from ``train.predict_streams`` output and the dataset items it was run on."""
    n = len(items)
    return HeldOut(pred.rgb_probs, pred.flow_probs, pred.labels, np.broadcast_to(np.asarray(fold, dtype=np.int64), (n,)).copy(), items[:, 0], items[:, 1])


# --------------------------------------------------------------------------------------------
# held-out families and recordings


def prediction_rates(held: HeldOut, predicted: np.ndarray, classes: Sequence[str], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per recording (video/arena): fraction of clips annotated and predicted as each class.

    A model that answers (nearly) one class for a whole recording whose annotations are mixed has
    learned the recording -- its background, light, camera -- not the behaviour: flagged.
    """
    k = len(classes)
    rows = []
    for s in np.unique(held.source):
        sel = held.source == s
        n = int(sel.sum())
        annotated = np.bincount(held.labels[sel], minlength=k) / n
        pred = np.bincount(predicted[sel], minlength=k) / n
        top = int(pred.argmax())
        constant = bool(pred[top] >= NEAR_CONSTANT_FRACTION and annotated[top] <= pred[top] - CONSTANT_RATE_GAP)
        rows.append(
            {
                "recording": names[int(s)],
                "clips": n,
                "annotated": {c: float(annotated[i]) for i, c in enumerate(classes)},
                "predicted": {c: float(pred[i]) for i, c in enumerate(classes)},
                "rate_distance": float(0.5 * np.abs(pred - annotated).sum()),  # total variation: 0 = same mix
                "accuracy": float(np.mean(predicted[sel] == held.labels[sel])),
                "near_constant": constant,
            }
        )
    return rows


def _immobility_errors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Adds error_s and error_pct (of the annotated time; None when nothing was annotated immobile)."""
    for r in rows:
        r["error_s"] = r["predicted_s"] - r["annotated_s"]
        r["error_pct"] = 100.0 * r["error_s"] / r["annotated_s"] if r["annotated_s"] > 0 else None
    return rows


def heldout_groups(
    held: HeldOut,
    flow_weight: float,
    classes: Sequence[str],
    immobile: Sequence[str],
    names: Sequence[str],
    seconds_per_item: Sequence[float],
    group_names: Sequence[str],
) -> dict[str, Any]:
    """Per held-out group (``held.fold`` indexes ``group_names``): accuracy, confusion, immobility error.

    Also the spread across groups -- "does it transfer?" is a number and its variation, not one
    lucky family.
    """
    k = len(classes)
    predicted = held.fused(flow_weight).argmax(1)
    immobile_idx = [classes.index(c) for c in immobile]
    groups = []
    for g in np.unique(held.fold):
        sel = held.fold == g
        sub = HeldOut(*(getattr(held, fld.name)[sel] for fld in dataclasses.fields(HeldOut)))
        per_rec = {names[int(s)]: float(np.mean(predicted[sel][sub.source == s] == sub.labels[sub.source == s])) for s in np.unique(sub.source)}
        rec_mean, rec_std = _mean_std(np.array(list(per_rec.values())))
        imm = _immobility_errors(immobility_per_video(sub, predicted[sel], immobile_idx, names, seconds_per_item)) if immobile_idx else []
        errs = [abs(r["error_pct"]) for r in imm if r["error_pct"] is not None]
        groups.append(
            {
                "group": group_names[int(g)],
                "recordings": list(per_rec),
                "clips": int(sel.sum()),
                "accuracy": float(np.mean(predicted[sel] == sub.labels)),
                "accuracy_per_recording": per_rec,
                "accuracy_recording_mean": rec_mean,
                "accuracy_recording_std": rec_std,
                "confusion": confusion_matrix(sub.labels, predicted[sel], k).tolist(),
                "immobility": imm,
                "immobile_abs_error_pct_mean": float(np.mean(errs)) if errs else None,
            }
        )
    accs = np.array([g["accuracy"] for g in groups])
    mean, std = _mean_std(accs)
    errs = [g["immobile_abs_error_pct_mean"] for g in groups if g["immobile_abs_error_pct_mean"] is not None]
    return {
        "flow_weight": float(flow_weight),
        "groups": groups,
        "spread": {
            "accuracy_mean": mean,
            "accuracy_std": std,
            "accuracy_min": float(accs.min()),
            "accuracy_max": float(accs.max()),
            "immobile_abs_error_pct_mean": float(np.mean(errs)) if errs else None,
            "immobile_abs_error_pct_max": float(np.max(errs)) if errs else None,
        },
    }


def read_heldout_group(arenas_json: Path | None, video: Path) -> str:
    """The held-out group of a test video, from the simulator's metadata in its ``.arenas.json``.

    ``"randomized": true`` with ``"held_out": ["mouse", "background"]`` -> ``"background+mouse"``
    (sorted, so the same families always form the same group); a randomized video with nothing
    held out -> ``"none held out"``; a video without that metadata is its own group, named by its file.
    """
    if arenas_json is not None and Path(arenas_json).is_file():
        try:
            meta = json.loads(Path(arenas_json).read_text())
        except (OSError, ValueError):
            meta = {}
        if isinstance(meta, dict) and meta.get("randomized") is True:
            held = meta.get("held_out") or []
            if not isinstance(held, list) or not all(isinstance(h, str) for h in held):
                raise UserError(f"{arenas_json}: 'held_out' must be a list of family names, got {held!r}")
            return "+".join(sorted(held)) if held else NOTHING_HELD_OUT
    return Path(video).name


# --------------------------------------------------------------------------------------------
# cross-validation


def make_folds(ds, k: int, split_by: str):
    """Folds of ``ds`` by segments, videos or arenas (``resolve_split`` turns ``auto`` into one of them).

    Segment folds keep training clips a whole clip span away from the test stretches: 16 frames
    apart at stride 1, ``16 * stride`` source frames apart when a clip spreads over every
    ``stride``-th frame (``export-train`` resamples to the model rate, so its stride is 1).
    """
    from export.folds import contiguous_folds, video_folds

    if split_by == "segments":
        return contiguous_folds(ds.items, k, step=ds.stride)
    if split_by == "videos":
        return video_folds(ds.items, k, groups=[str(src.video_path) for src in ds.sources])
    if split_by == "arenas":
        return video_folds(ds.items, k)
    raise UserError(f"--split-by {split_by!r}: expected auto, segments, videos or arenas")


def cross_validate(
    ds,
    folds,
    *,
    init: str,
    config: tr.TrainConfig,
    val_folds: int,
    work_dir: Path,
    augment: bool = True,
    keep_checkpoints: bool = False,
    progress: bool | None = None,
) -> tuple[HeldOut, list[dict[str, Any]]]:
    """Train one model per fold and collect each stream's softmax on that fold's test clips.

    Each fold's predictions on its validation split go to ``foldNN/validation.npz``: the fold
    chooses its flow weight there (``collect_validation``, ``choose_flow_weight_per_fold``).

    A fold whose ``heldout.npz`` exists is not retrained (an interrupted CV run resumes; a fold
    interrupted mid-training resumes from its epoch checkpoint).
    """
    parts, fold_info = [], []
    num_classes = len(ds.classes)
    for j, fold in enumerate(folds):
        fold_dir = Path(work_dir) / f"fold{j:02d}"
        done = fold_dir / HELDOUT_NAME
        info_path = fold_dir / "fold.json"
        if done.is_file() and info_path.is_file():
            parts.append(HeldOut.load(done))
            fold_info.append(json.loads(info_path.read_text()))
            log.info("fold %d: reusing %s", j, done)
            continue
        train_idx, val_idx = tr.split_validation(ds, fold.train, val_folds)
        train_set = Subset(ds.with_augment(augment), train_idx)
        val_set = Subset(ds, val_idx) if val_idx.size else None
        if tr.distributed.current().is_main:  # under torchrun every rank trains and predicts, rank 0 reports and writes
            print(f"export-evaluate: fold {j + 1}/{len(folds)}: {len(train_idx)} train, {len(val_idx)} validation, {len(fold.test)} test clips", file=sys.stderr)
        fold_config = dataclasses.replace(config, seed=config.seed + j)
        tr.seed_everything(fold_config.seed)
        model, _ = tr.build_model(init, num_classes=num_classes, dropout_keep_prob=config.dropout_keep_prob)
        t0 = time.monotonic()
        result = tr.train(model, train_set, val_set, fold_config, fold_dir, num_classes=num_classes, resume=True, progress=progress)
        pred = tr.predict_streams(model, Subset(ds, fold.test), batch_size=config.batch_size, device=config.device, progress=progress)
        part = held_out_of(pred, ds.items[fold.test], j)
        if val_idx.size:  # the fold's own choice of flow weight is made on these (honest model selection)
            val_pred = tr.predict_streams(model, Subset(ds, val_idx), batch_size=config.batch_size, device=config.device, progress=progress)
            if tr.distributed.current().is_main:
                held_out_of(val_pred, ds.items[val_idx], j).save(fold_dir / VALIDATION_NAME)
        info = {
            "fold": j,
            "train_clips": int(len(train_idx)),
            "val_clips": int(len(val_idx)),
            "test_clips": int(len(fold.test)),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "train_time_s": round(time.monotonic() - t0, 1),
        }
        if tr.distributed.current().is_main:
            part.save(done)
            info_path.write_text(json.dumps(info, indent=1))
            if not keep_checkpoints:  # ~300 MB per fold at full I3D size; the held-out predictions are what counts
                for name in (tr.CHECKPOINT_NAME, tr.BEST_NAME):
                    (fold_dir / name).unlink(missing_ok=True)
        parts.append(part)
        fold_info.append(info)
    return HeldOut.concatenate(parts), fold_info


# --------------------------------------------------------------------------------------------
# summary and files


def summarize(
    held: HeldOut,
    classes: Sequence[str],
    immobile: Sequence[str],
    source_names: Sequence[str],
    seconds_per_item: Sequence[float],
    *,
    split_by: str,
    folds: int,
    selection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything ``metrics.json`` holds (the report and the model card read from it).

    ``selection`` says how the flow weight was chosen (``choose_flow_weight_per_fold``, or a
    held-out run's ``{"flow_weight": w, "chosen_on": ...}``). Without it the weight is the best of
    the sweep on these very predictions, and the summary says so: that figure is optimistic.
    The immobility, the per-recording rates and the confusion plot use the chosen weight -- what a
    lab gets from the exported model.
    """
    k = len(classes)
    rows = sweep_flow_weight(held, k)
    best = best_flow_weight(rows)
    best_row = next(r for r in rows if r["flow_weight"] == best)
    selection = dict(selection or {})
    if "weight_per_fold" in selection:  # CV: each fold chose on its validation split
        chosen = selection["weight_on_pooled_validation"]
        selection.update(flow_weight=chosen, honest=True)
    elif "flow_weight" in selection:  # one weight chosen elsewhere (held-out run: on the training videos)
        chosen = float(selection["flow_weight"])
        r = next(r for r in rows if abs(r["flow_weight"] - chosen) < 1e-9)
        selection.update(accuracy_mean=r["accuracy_mean"], accuracy_std=r["accuracy_std"], honest=True)
    else:
        chosen = best
        selection = {
            "chosen_on": "these test predictions (no validation split): the best of 11 weights, slightly optimistic",
            "flow_weight": best, "accuracy_mean": best_row["accuracy_mean"], "accuracy_std": best_row["accuracy_std"], "honest": False,
        }  # fmt: skip
    chosen_row = next(r for r in rows if abs(r["flow_weight"] - chosen) < 1e-9)
    predicted = held.fused(chosen).argmax(1)
    immobile_idx = [classes.index(c) for c in immobile]
    imm = _immobility_errors(immobility_per_video(held, predicted, immobile_idx, source_names, seconds_per_item)) if immobile_idx else []
    rates = prediction_rates(held, predicted, classes, source_names)
    return {
        "classes": list(classes),
        "immobile_classes": list(immobile),
        "folds": folds,
        "split_by": split_by,
        "num_clips": int(held.labels.size),
        "class_counts": np.bincount(held.labels, minlength=k).tolist(),
        "best_flow_weight": best,
        "accuracy_at_best": {"mean": best_row["accuracy_mean"], "std": best_row["accuracy_std"]},
        "flow_weight": chosen,
        "flow_weight_selection": selection,
        "majority_baseline": majority_baseline(held.labels, held.fold, k),
        "accuracy_by_flow_weight": rows,
        "per_class_at_best": _per_class(best_row, classes),
        "per_class_at_chosen": _per_class(chosen_row, classes),
        "immobility_per_video": imm,
        "prediction_rates": rates,
        "near_constant_recordings": [r["recording"] for r in rates if r["near_constant"]],
    }


def _per_class(row: dict[str, Any], classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    return {c: {"precision": row["precision"][i], "recall": row["recall"][i], "f1": row["f1"][i], "support": row["support"][i]} for i, c in enumerate(classes)}


def write_results(out: Path, summary: dict[str, Any], held: HeldOut, *, title: str = "") -> list[Path]:
    """metrics.json, the CSV tables, predictions.npz, the plots and the one-page report."""
    from export.report import (
        ACCURACY_PLOT, CONFUSION_PLOT, GROUP_PLOT, RATES_PLOT, plot_accuracy_by_group, plot_accuracy_vs_flow_weight,
        plot_confusion_matrix, plot_prediction_rates, write_report,
    )  # fmt: skip

    out.mkdir(parents=True, exist_ok=True)
    classes = summary["classes"]
    rows = summary["accuracy_by_flow_weight"]
    atomic_write(out / METRICS_NAME, json.dumps(summary, indent=1) + "\n")
    held.save(out / PREDICTIONS_NAME)
    _write_csv(out / "accuracy_by_flow_weight.csv", ["flow_weight", "accuracy_mean", "accuracy_std", "accuracy_pooled", "macro_f1"], [[r[c] for c in ("flow_weight", "accuracy_mean", "accuracy_std", "accuracy_pooled", "macro_f1")] for r in rows])
    _write_csv(out / "per_class.csv", ["flow_weight", "class", "precision", "recall", "f1", "support"], [[r["flow_weight"], c, r["precision"][i], r["recall"][i], r["f1"][i], r["support"][i]] for r in rows for i, c in enumerate(classes)])
    _write_csv(out / "confusion_matrices.csv", ["flow_weight", "annotated", *[f"predicted_{c}" for c in classes]], [[r["flow_weight"], c, *r["confusion"][i]] for r in rows for i, c in enumerate(classes)])
    imm = summary["immobility_per_video"]
    if imm:
        _write_csv(out / "immobility.csv", list(imm[0]), [list(v.values()) for v in imm])
    rates = summary["prediction_rates"]
    _write_csv(
        out / "prediction_rates.csv",
        ["recording", "clips", *[f"annotated_{c}" for c in classes], *[f"predicted_{c}" for c in classes], "rate_distance", "accuracy", "near_constant"],
        [[r["recording"], r["clips"], *r["annotated"].values(), *r["predicted"].values(), r["rate_distance"], r["accuracy"], r["near_constant"]] for r in rates],
    )
    chosen = summary["flow_weight"]
    chosen_row = next(r for r in rows if abs(r["flow_weight"] - chosen) < 1e-9)
    images = [
        plot_accuracy_vs_flow_weight(
            [r["flow_weight"] for r in rows], [r["accuracy_mean"] for r in rows], [r["accuracy_std"] for r in rows], out / ACCURACY_PLOT,
            baseline=summary["majority_baseline"]["accuracy_mean"], best_weight=summary["best_flow_weight"], chosen_weight=chosen,
            title=title or "Fused accuracy vs flow weight",
        ),
        plot_confusion_matrix(np.array(chosen_row["confusion"]), classes, out / CONFUSION_PLOT, title=f"Held-out confusion matrix, flow weight {chosen:.1f}"),
    ]  # fmt: skip
    heldout = summary.get("heldout")
    if heldout:
        groups = heldout["groups"]
        _write_csv(
            out / "heldout_groups.csv",
            ["group", "recordings", "clips", "accuracy", "accuracy_recording_mean", "accuracy_recording_std", "immobile_abs_error_pct_mean"],
            [[g["group"], len(g["recordings"]), g["clips"], g["accuracy"], g["accuracy_recording_mean"], g["accuracy_recording_std"], g["immobile_abs_error_pct_mean"]] for g in groups],
        )
        images.append(plot_accuracy_by_group(
            [g["group"] for g in groups], [g["accuracy"] for g in groups], [g["accuracy_recording_std"] for g in groups], out / GROUP_PLOT,
            baseline=summary["majority_baseline"]["accuracy_mean"], title=f"Accuracy per held-out group (w = {chosen:.1f})",
        ))  # fmt: skip
    images.append(plot_prediction_rates(rates, classes, out / RATES_PLOT, title=f"Per recording: annotated vs predicted class rates (w = {chosen:.1f})"))
    html_path, md_path = write_report(out, summary, images)
    return [out / METRICS_NAME, html_path, md_path, *images]


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def write(fh) -> None:
        w = csv.writer(fh)
        w.writerow(spreadsheet_cells(header))
        for row in rows:  # text cells (recording names) escaped for spreadsheets; numbers as numbers
            w.writerow(["" if v is None else f"{v:.6g}" if isinstance(v, float) else v for v in spreadsheet_cells(row)])

    atomic_write(path, write)


# --------------------------------------------------------------------------------------------
# the command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export-evaluate",
        description="Cross-validation (k folds inside --videos) and/or a held-out test (train on --videos, test on --test-videos): "
        "flow-weight sweep 0.0..1.0, the weight chosen on validation clips, per-group and per-recording figures, report.",
        epilog="Examples: export-evaluate --videos demo/synth_side.mp4 --folds 10 --out runs/eval --export-model models/my-side\n"
        "          export-evaluate --videos train/*.mp4 --test-videos heldout/*.mp4 --out runs/transfer",
    )
    add_version_argument(p)
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.json, CSV tables, plots and report.html")
    p.add_argument("--work-dir", type=Path, help="per-fold checkpoints and held-out predictions (default: OUT/folds); rerunning resumes")
    p.add_argument("--folds", type=int, help=f"number of cross-validation folds inside --videos (default: {DEFAULT_FOLDS}; with --test-videos: 0 = no CV, one model on all --videos)")
    p.add_argument("--split-by", choices=SPLIT_CHOICES, default="auto",
                   help="fold by whole video files, whole arenas (animals), or contiguous stretches of each recording; auto = videos if there "
                   "are >= --folds of them, else arenas, else segments with a warning (neighbouring seconds leak) (default: auto)")  # fmt: skip
    p.add_argument("--test-videos", nargs="+", type=Path, metavar="VIDEO", help="held-out annotated videos: train on --videos, test on these, grouped by held-out simulator families")
    p.add_argument("--test-labels", nargs="+", type=Path, metavar="FILE", help="label file per test video, same order (default: next to the video, as for --videos)")
    p.add_argument("--test-arenas", nargs="+", type=Path, metavar="JSON", help="arenas file per test video, same order (default: VIDEO stem + .arenas.json if present)")
    p.add_argument("--export-model", type=Path, metavar="DIR", help="write a model with the chosen flow weight and these figures in its card "
                   "(CV: trained on all --videos; with --test-videos: the very model that was tested)")  # fmt: skip
    p.add_argument("--name", help="model name for the card and report (default: --export-model folder name)")
    p.add_argument("--half", action="store_true", help="exported model stores float16 weights (half the size)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each fold's checkpoint.safetensors/best.safetensors after its predictions are saved")
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    tr.add_data_arguments(p)
    tr.add_training_arguments(p)
    return p


def resolve_split(ds, folds: int, split_by: str) -> str:
    """``auto``: whole videos when there are enough of them, else whole arenas, else segments (warned)."""
    if split_by != "auto":
        if split_by == "segments":
            log.warning(SEGMENT_LEAK_WARNING)
        return split_by
    if len({str(src.video_path) for src in ds.sources}) >= folds:
        return "videos"
    if len(ds.sources) >= folds:
        return "arenas"
    log.warning("only %d recording(s) for %d folds: splitting by segments. %s", len(ds.sources), folds, SEGMENT_LEAK_WARNING)
    return "segments"


def test_namespace(args: argparse.Namespace) -> argparse.Namespace:
    """The data arguments of the held-out videos (everything else as for the training videos)."""
    return argparse.Namespace(**{**vars(args), "videos": args.test_videos, "labels": args.test_labels, "arenas": args.test_arenas, "jhuang": None})


def test_groups(args: argparse.Namespace, test_ds) -> tuple[list[str], np.ndarray]:
    """Held-out group names and the group index of every test source."""
    arenas = tr._pair_up(args.test_videos, args.test_arenas, "--test-arenas")
    by_video = {Path(v).resolve(): read_heldout_group(a or tr._sibling(Path(v), (tr.ARENAS_SUFFIX,)), Path(v)) for v, a in zip(args.test_videos, arenas)}
    per_source = [by_video[src.video_path.resolve()] for src in test_ds.sources]
    names = sorted(set(per_source))
    return names, np.array([names.index(g) for g in per_source], dtype=np.int64)


def _train_on_all(ds, args: argparse.Namespace, config: tr.TrainConfig, num_classes: int, run_dir: Path):
    """One model on all of ``ds`` (its own --val-folds split for early stopping and the flow weight)."""
    train_idx, val_idx = tr.split_validation(ds, np.arange(len(ds)), args.val_folds)
    tr.seed_everything(config.seed)
    model, init_text = tr.build_model(args.init, num_classes=num_classes, dropout_keep_prob=config.dropout_keep_prob)
    t0 = time.monotonic()
    result = tr.train(model, Subset(ds.with_augment(not args.no_augment), train_idx), Subset(ds, val_idx) if val_idx.size else None,
                      config, run_dir, num_classes=num_classes, resume=True)  # fmt: skip
    return model, init_text, result, train_idx, val_idx, time.monotonic() - t0


def recording_names(ds) -> list[str]:
    return [src.name for src in ds.sources]


@cli_main("export-evaluate")
def main(argv: list[str] | None = None) -> int:
    from stream.modelfile import save_model

    from export.report import TRAINING_PLOT, plot_training_curves, write_report

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    held_out_mode = bool(args.test_videos)
    if held_out_mode and args.jhuang:
        raise UserError("--test-videos: train on --videos, not --jhuang")
    folds = args.folds if args.folds is not None else (0 if held_out_mode else DEFAULT_FOLDS)
    if folds < (0 if held_out_mode else 2) or folds == 1:
        raise UserError(f"--folds {folds}: cross-validation needs at least 2 folds" + (" (0 = none)" if held_out_mode else ""))
    t_start = time.monotonic()
    config = tr.config_from_args(args)
    tr.check_init_source(args.init)
    classes, immobile = tr.classes_from_args(args)
    ds, spec = tr.dataset_from_args(args, classes)
    test_ds = test_spec = None
    if held_out_mode:  # built before any training: a bad test file fails in seconds, not after hours
        test_ds, test_spec = tr.dataset_from_args(test_namespace(args), classes)
        if abs(test_spec.fps - spec.fps) > 1e-6:
            raise UserError(f"--test-videos run at {test_spec.fps:g} model fps but --videos at {spec.fps:g}; use one --fps")
    work_dir = args.work_dir or args.out / "folds"
    name = args.name or (args.export_model.name if args.export_model else "model")
    k = len(classes)

    cv_summary, cv_time = None, 0.0
    if folds:
        split_by = resolve_split(ds, folds, args.split_by)
        fold_list = make_folds(ds, folds, split_by)
        held, fold_info = cross_validate(ds, fold_list, init=args.init, config=config, val_folds=args.val_folds, work_dir=work_dir,
                                         augment=not args.no_augment, keep_checkpoints=args.keep_checkpoints)  # fmt: skip
        validation = collect_validation(work_dir, folds)
        selection = choose_flow_weight_per_fold(validation, held, k) if validation is not None else None
        seconds_per_item = [args.frame_step / (spec.fps * spec.stride)] * len(ds.sources)  # items are every frame_step-th frame
        cv_summary = summarize(held, classes, immobile, recording_names(ds), seconds_per_item, split_by=split_by, folds=folds, selection=selection)
        cv_summary["fold_runs"] = fold_info
        cv_time = time.monotonic() - t_start

    facts = {
        "input": f"{spec.size_px} px, {spec.fps:g} fps, 16-frame clips, TV-L1 preset {args.flow_preset}"
                 + (f", texture sigma {args.flow_texture_sigma:g} px" if getattr(args, "flow_texture_sigma", 0) else "") + f", {spec.crop} crop",
        "init": args.init,
        "training": f"{config.optimizer} lr {config.lr:g} -> {config.lr_floor:g} (cosine), {config.epochs} epochs x {config.clips_per_epoch or 'all'} clips, batch {config.batch_size}, balance {config.balance}",
    }
    if folds:
        facts["cross-validation time"] = f"{cv_time / 60:.1f} min"
    final = None
    if held_out_mode:
        summary, held, final, title = _held_out_test(args, ds, spec, test_ds, test_spec, config, classes, immobile, cv_summary, work_dir, name, facts)
    else:
        summary = cv_summary
        summary["mode"] = "cross-validation"
        title = f"{name}: fused accuracy vs flow weight ({folds}-fold CV)"
    data_videos = spec.videos + (test_spec.videos if test_spec else [])
    synthetic = spec.synthetic and (test_spec.synthetic if test_spec else True)
    summary.update(
        {
            "name": name,
            "data": ("SYNTHETIC simulator videos: " if synthetic else "") + ", ".join(Path(v).name for v in data_videos),
            "note": "Trained and evaluated on synthetic simulator video, not real mice." if synthetic else "",
            "facts": facts,
            "train_config": dataclasses.asdict(config),
            "cv_time_s": round(cv_time, 1),
        }
    )
    is_main = tr.distributed.current().is_main  # every rank holds the same predictions; rank 0 writes
    written = write_results(args.out, summary, held, title=title) if is_main else []
    if is_main:
        print_summary(summary)
        print(f"export-evaluate: wrote {', '.join(str(p) for p in written[:2])} and more in {args.out}")

    if args.export_model:
        if final is None:
            final = _train_on_all(ds, args, config, k, work_dir / "final")
        if not is_main:
            return 0
        model, init_text, result, train_idx, val_idx, train_s = final
        weight = summary["flow_weight"]
        model.flow_weight = weight
        card = tr.make_card(
            name=name, view=args.view, spec=spec, immobile=immobile, flow_config=dataclasses.asdict(ds.flow_config), init_text=init_text,
            config=config, result=result, flow_weight=weight, step="target (annotated videos)", metrics=card_metrics(summary),
            extra={"train_clips": int(len(train_idx)), "val_clips": int(len(val_idx)), "train_time_s": round(train_s, 1), "cv_time_s": summary["cv_time_s"]},
            input_stats=tr.training_input_stats(ds, train_idx),
        )  # fmt: skip
        model.to("cpu")
        save_model(model, card, args.export_model, half=args.half)
        curves = plot_training_curves(result.history, args.out / TRAINING_PLOT, title=f"{name}: training on all --videos")
        write_report(args.out, summary, [*written[3:], curves])
        size_mb = (args.export_model / card.weights_file).stat().st_size / 1e6
        print(f"export-evaluate: wrote model {args.export_model} (flow_weight {weight:.1f}, {size_mb:.1f} MB)")
    return 0


def _held_out_test(args, ds, spec, test_ds, test_spec, config: tr.TrainConfig, classes: Sequence[str], immobile: Sequence[str],
                   cv_summary: dict[str, Any] | None, work_dir: Path, name: str, facts: dict[str, str]):  # fmt: skip
    """One model on all --videos, tested on --test-videos: (summary, test predictions, the trained model's parts, plot title)."""
    final = _train_on_all(ds, args, config, len(classes), work_dir / "final")
    model, _, _, train_idx, val_idx, train_s = final
    t0 = time.monotonic()
    summary, test_held = score_held_out(model, args, ds, train_idx, val_idx, test_ds, test_spec, classes, immobile,
                                    batch_size=config.batch_size, device=config.device, cv_summary=cv_summary, work_dir=work_dir)  # fmt: skip
    facts["training on all --videos"] = f"{train_s / 60:.1f} min, {len(train_idx)} train / {len(val_idx)} validation clips; test {time.monotonic() - t0:.0f} s"
    title = f"{name}: fused accuracy on held-out videos vs flow weight (spread over {summary['folds']} groups)"
    return summary, test_held, final, title


def validation_predictions(model, ds, val_idx: np.ndarray, *, batch_size: int, device: str) -> HeldOut:
    """The model's predictions on the validation split (one fold, 0), where the flow weight is chosen."""
    return held_out_of(tr.predict_streams(model, Subset(ds, val_idx), batch_size=batch_size, device=device), ds.items[val_idx], 0)


def score_held_out(model, args: argparse.Namespace, ds, train_idx: np.ndarray, val_idx: np.ndarray, test_ds, test_spec,
                   classes: Sequence[str], immobile: Sequence[str], *, batch_size: int, device: str,
                   cv_summary: dict[str, Any] | None = None, work_dir: Path | None = None,
                   validation: HeldOut | None = None) -> tuple[dict[str, Any], HeldOut]:  # fmt: skip
    """A finished model (trained here, or made otherwise: ``export.soup``) on --test-videos: the
    held-out summary and the test predictions.

    The flow weight is chosen on the training videos' validation split (``validation``: the model's
    predictions there, when the caller already has them), else on the CV inside them, else (nothing
    else to choose on) on the test predictions, which the summary then says.
    """
    k = len(classes)
    if val_idx.size:
        val = validation if validation is not None else validation_predictions(model, ds, val_idx, batch_size=batch_size, device=device)
        selection = {"flow_weight": best_flow_weight(sweep_flow_weight(val, k)), "chosen_on": "the validation split of the training videos"}
    elif cv_summary is not None and cv_summary["flow_weight_selection"]["honest"]:
        selection = {"flow_weight": cv_summary["flow_weight"], "chosen_on": "the validation splits of the cross-validation inside the training videos"}
    else:
        selection = None  # chosen on the test predictions; summarize says so
    group_names, group_of_source = test_groups(args, test_ds)
    pred = tr.predict_streams(model, test_ds, batch_size=batch_size, device=device)
    test_held = held_out_of(pred, test_ds.items, group_of_source[test_ds.items[:, 0]])
    if work_dir is not None and tr.distributed.current().is_main:
        test_held.save(work_dir / TEST_PREDICTIONS_NAME)
    names = recording_names(test_ds)
    seconds_per_item = [args.frame_step / (test_spec.fps * test_spec.stride)] * len(test_ds.sources)
    summary = summarize(test_held, classes, immobile, names, seconds_per_item, split_by="held-out groups", folds=len(group_names), selection=selection)
    summary["heldout"] = heldout_groups(test_held, summary["flow_weight"], classes, immobile, names, seconds_per_item, group_names)
    summary["majority_baseline"] = _training_majority(ds.labels, test_held, k)
    summary.update(mode="held-out", train_videos=[Path(v).name for v in sorted({str(src.video_path) for src in ds.sources})], test_videos=[Path(v).name for v in test_spec.videos],
                   train_clips=int(len(train_idx)), val_clips=int(len(val_idx)))  # fmt: skip
    if cv_summary is not None:
        keep = ("folds", "split_by", "num_clips", "best_flow_weight", "accuracy_at_best", "flow_weight", "flow_weight_selection", "majority_baseline")
        summary["cross_validation"] = {key: cv_summary[key] for key in keep}
    return summary, test_held


def _training_majority(train_labels: np.ndarray, test: HeldOut, num_classes: int) -> dict[str, Any]:
    """Always answering the training videos' most frequent class, scored per held-out group."""
    m = int(np.bincount(train_labels, minlength=num_classes).argmax())
    accs = np.array([np.mean(test.labels[test.fold == g] == m) for g in np.unique(test.fold)])
    mean, std = _mean_std(accs)
    return {"accuracy_mean": mean, "accuracy_std": std, "accuracy_per_fold": accs.tolist(), "majority_class_per_fold": [m] * len(accs)}


def card_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures a model card carries: the chosen weight's accuracy and how it was chosen, and for a
    held-out run the per-group accuracy, confusion and immobility error with their spread."""
    rows = {r["flow_weight"]: r for r in summary["accuracy_by_flow_weight"]}
    sel = summary["flow_weight_selection"]
    metrics: dict[str, Any] = {
        "evaluation": summary["mode"],
        "fused_accuracy_mean": sel["accuracy_mean"],
        "fused_accuracy_std": sel["accuracy_std"],
        "flow_weight_chosen_on": sel["chosen_on"],
        "rgb_only_accuracy_mean": rows[0.0]["accuracy_mean"],
        "flow_only_accuracy_mean": rows[1.0]["accuracy_mean"],
        "majority_baseline_accuracy_mean": summary["majority_baseline"]["accuracy_mean"],
        "macro_f1": rows[summary["flow_weight"]]["macro_f1"],
        "per_class": summary["per_class_at_chosen"],
        "accuracy_by_flow_weight": {f"{w:.1f}": [round(r["accuracy_mean"], 4), round(r["accuracy_std"], 4)] for w, r in rows.items()},
        "immobility_per_video": summary["immobility_per_video"],
        "near_constant_recordings": summary["near_constant_recordings"],
    }
    if summary["mode"] == "cross-validation":
        metrics["cv"] = f"{summary['folds']}-fold by {summary['split_by']}, held-out clips {summary['num_clips']}"
    heldout = summary.get("heldout")
    if heldout:
        metrics["heldout"] = {
            "test_videos": summary["test_videos"],
            "clips": summary["num_clips"],
            "spread": heldout["spread"],
            "groups": {
                g["group"]: {"accuracy": g["accuracy"], "clips": g["clips"], "confusion": g["confusion"], "immobile_abs_error_pct_mean": g["immobile_abs_error_pct_mean"],
                             "immobility": [{key: r[key] for key in ("video", "annotated_s", "predicted_s", "error_s", "error_pct")} for r in g["immobility"]]}
                for g in heldout["groups"]
            },
        }  # fmt: skip
        if "cross_validation" in summary:
            cv = summary["cross_validation"]
            sel_cv = cv["flow_weight_selection"]
            how = "each fold's weight chosen on its validation split" if "weight_per_fold" in sel_cv else f"w {cv['flow_weight']:.1f}, {sel_cv['chosen_on']}"
            metrics["cv"] = f"{cv['folds']}-fold by {cv['split_by']} inside the training videos: accuracy {sel_cv['accuracy_mean']:.4f} ({how})"
    return metrics


def print_summary(summary: dict[str, Any]) -> None:
    rows = summary["accuracy_by_flow_weight"]
    chosen, best = summary["flow_weight"], summary["best_flow_weight"]
    spread = "groups" if summary["mode"] == "held-out" else "folds"
    print(f"flow_weight  accuracy (mean +- std over {spread})")
    for r in rows:
        w = r["flow_weight"]
        tag = "   <- chosen" if w == chosen else ""
        tag += "   <- best on these predictions" if w == best and w != chosen else ""
        print(f"   {w:.1f}      {r['accuracy_mean']:.3f} +- {r['accuracy_std']:.3f}{tag}")
    sel = summary["flow_weight_selection"]
    print(f"chosen weight {chosen:.1f} (on {sel['chosen_on']}): {sel['accuracy_mean']:.3f} +- {sel['accuracy_std']:.3f}")
    base = summary["majority_baseline"]
    print(f"majority-class baseline {base['accuracy_mean']:.3f} +- {base['accuracy_std']:.3f}")
    for g in summary.get("heldout", {}).get("groups", []):
        err = g["immobile_abs_error_pct_mean"]
        print(f"held-out group {g['group']}: accuracy {g['accuracy']:.3f} on {g['clips']} clips" + (f", immobile time off by {err:.1f} % (mean |error|)" if err is not None else ""))
    for rec in summary["near_constant_recordings"]:
        print(f"WARNING: {rec}: one class predicted for nearly every clip while the annotations are mixed (the model may have learned the recording)")
