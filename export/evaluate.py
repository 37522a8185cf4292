"""k-fold cross-validation of the two-stream model and the fusion-weight sweep (CLI ``export-evaluate``).

Read it top to bottom: metrics on held-out probabilities -> the sweep -> immobility per video ->
cross-validation (train one model per fold, keep each stream's held-out softmax) -> files -> CLI.

The sweep needs no retraining: each fold model's RGB and flow softmax on its test clips are
stored once, and the fused prediction for any weight ``w`` is ``w * p_flow + (1 - w) * p_rgb``
of those stored numbers. Every clip of the dataset is a test clip of exactly one fold, so the
held-out predictions cover the whole dataset once.

Folds are contiguous stretches of each video (default) or whole videos (``export.folds``): two
clips one frame apart share 15 of 16 frames, so a random split would leak. Each fold's training
part is split once more (``--val-folds``) for early stopping; the test fold never decides when
to stop.

Files written to ``--out``: ``metrics.json`` (everything), ``accuracy_by_flow_weight.csv``,
``per_class.csv`` (precision/recall/F1 per weight and class), ``confusion_matrices.csv`` (per
weight), ``immobility.csv`` (per video, at the best weight), ``predictions.npz`` (the held-out
per-stream probabilities, to re-sweep without retraining), the PNG plots and ``report.html`` /
``report.md``. ``--export-model DIR`` then trains one model on all data and writes it with the
best weight and these metrics in its card.
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

__all__ = [
    "FLOW_WEIGHTS",
    "HeldOut",
    "confusion_matrix",
    "per_class_scores",
    "sweep_flow_weight",
    "majority_baseline",
    "immobility_per_video",
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
BEST_WEIGHT_TIE_TOL = 1e-9  # equal mean accuracies: the smaller std wins, then the weight nearer 0.5


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
# cross-validation


def make_folds(ds, k: int, split_by: str):
    from export.folds import contiguous_folds, video_folds

    if split_by == "segments":
        return contiguous_folds(ds.items, k, step=ds.stride)
    if split_by == "videos":
        return video_folds(ds.items, k, groups=[str(src.video_path) for src in ds.sources])
    if split_by == "arenas":
        return video_folds(ds.items, k)
    raise UserError(f"--split-by {split_by!r}: expected segments, videos or arenas")


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
        items = ds.items[fold.test]
        part = HeldOut(pred.rgb_probs, pred.flow_probs, pred.labels, np.full(len(fold.test), j), items[:, 0], items[:, 1])
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


def summarize(held: HeldOut, classes: Sequence[str], immobile: Sequence[str], source_names: Sequence[str], seconds_per_item: Sequence[float], *, split_by: str, folds: int) -> dict[str, Any]:
    """Everything ``metrics.json`` holds (the report and the model card read from it)."""
    k = len(classes)
    rows = sweep_flow_weight(held, k)
    best = best_flow_weight(rows)
    best_row = next(r for r in rows if r["flow_weight"] == best)
    immobile_idx = [classes.index(c) for c in immobile]
    imm = immobility_per_video(held, held.fused(best).argmax(1), immobile_idx, source_names, seconds_per_item) if immobile_idx else []
    return {
        "classes": list(classes),
        "immobile_classes": list(immobile),
        "folds": folds,
        "split_by": split_by,
        "num_clips": int(held.labels.size),
        "class_counts": np.bincount(held.labels, minlength=k).tolist(),
        "best_flow_weight": best,
        "accuracy_at_best": {"mean": best_row["accuracy_mean"], "std": best_row["accuracy_std"]},
        "majority_baseline": majority_baseline(held.labels, held.fold, k),
        "accuracy_by_flow_weight": rows,
        "per_class_at_best": {
            c: {"precision": best_row["precision"][i], "recall": best_row["recall"][i], "f1": best_row["f1"][i], "support": best_row["support"][i]} for i, c in enumerate(classes)
        },
        "immobility_per_video": imm,
    }


def write_results(out: Path, summary: dict[str, Any], held: HeldOut, *, title: str = "") -> list[Path]:
    """metrics.json, the CSV tables, predictions.npz, the plots and the one-page report."""
    from export.report import ACCURACY_PLOT, CONFUSION_PLOT, plot_accuracy_vs_flow_weight, plot_confusion_matrix, write_report

    out.mkdir(parents=True, exist_ok=True)
    classes = summary["classes"]
    rows = summary["accuracy_by_flow_weight"]
    (out / METRICS_NAME).write_text(json.dumps(summary, indent=1) + "\n")
    held.save(out / PREDICTIONS_NAME)
    _write_csv(out / "accuracy_by_flow_weight.csv", ["flow_weight", "accuracy_mean", "accuracy_std", "accuracy_pooled", "macro_f1"], [[r[c] for c in ("flow_weight", "accuracy_mean", "accuracy_std", "accuracy_pooled", "macro_f1")] for r in rows])
    _write_csv(out / "per_class.csv", ["flow_weight", "class", "precision", "recall", "f1", "support"], [[r["flow_weight"], c, r["precision"][i], r["recall"][i], r["f1"][i], r["support"][i]] for r in rows for i, c in enumerate(classes)])
    _write_csv(out / "confusion_matrices.csv", ["flow_weight", "annotated", *[f"predicted_{c}" for c in classes]], [[r["flow_weight"], c, *r["confusion"][i]] for r in rows for i, c in enumerate(classes)])
    imm = summary["immobility_per_video"]
    if imm:
        _write_csv(out / "immobility.csv", list(imm[0]), [list(v.values()) for v in imm])
    best = summary["best_flow_weight"]
    best_row = next(r for r in rows if r["flow_weight"] == best)
    images = [
        plot_accuracy_vs_flow_weight(
            [r["flow_weight"] for r in rows], [r["accuracy_mean"] for r in rows], [r["accuracy_std"] for r in rows], out / ACCURACY_PLOT,
            baseline=summary["majority_baseline"]["accuracy_mean"], best_weight=best, title=title or "Fused accuracy vs flow weight",
        ),
        plot_confusion_matrix(np.array(best_row["confusion"]), classes, out / CONFUSION_PLOT, title=f"Held-out confusion matrix, flow weight {best:.1f}"),
    ]  # fmt: skip
    html_path, md_path = write_report(out, summary, images)
    return [out / METRICS_NAME, html_path, md_path, *images]


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])


# --------------------------------------------------------------------------------------------
# the command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export-evaluate",
        description="k-fold cross-validation of the two-stream model, flow-weight sweep 0.0..1.0 on held-out predictions, report.",
        epilog="Example: export-evaluate --videos demo/synth_side.mp4 --folds 10 --out runs/eval --export-model models/my-side",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.json, CSV tables, plots and report.html")
    p.add_argument("--work-dir", type=Path, help="per-fold checkpoints and held-out predictions (default: OUT/folds); rerunning resumes")
    p.add_argument("--folds", type=int, default=10, help="number of cross-validation folds (default: 10)")
    p.add_argument("--split-by", choices=("segments", "videos", "arenas"), default="segments", help="fold by contiguous stretches of each video, whole video files, or whole arenas (animals) (default: segments)")
    p.add_argument("--export-model", type=Path, metavar="DIR", help="then train on all data and write the model with the best flow weight in its card")
    p.add_argument("--name", help="model name for the card and report (default: --export-model folder name)")
    p.add_argument("--half", action="store_true", help="exported model stores float16 weights (half the size)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each fold's checkpoint.safetensors/best.safetensors after its predictions are saved")
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    tr.add_data_arguments(p)
    tr.add_training_arguments(p)
    return p


@cli_main("export-evaluate")
def main(argv: list[str] | None = None) -> int:
    from stream.modelfile import save_model

    from export.report import TRAINING_PLOT, plot_training_curves, write_report

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.folds < 2:
        raise UserError(f"--folds {args.folds}: cross-validation needs at least 2 folds")
    t_start = time.monotonic()
    config = tr.config_from_args(args)
    classes, immobile = tr.classes_from_args(args)
    ds, spec = tr.dataset_from_args(args, classes)
    folds = make_folds(ds, args.folds, args.split_by)
    work_dir = args.work_dir or args.out / "folds"
    held, fold_info = cross_validate(ds, folds, init=args.init, config=config, val_folds=args.val_folds, work_dir=work_dir, augment=not args.no_augment, keep_checkpoints=args.keep_checkpoints)

    names = [src.name for src in ds.sources]
    seconds_per_item = [args.frame_step / (spec.fps * spec.stride)] * len(ds.sources)  # items are every frame_step-th video frame
    summary = summarize(held, classes, immobile, names, seconds_per_item, split_by=args.split_by, folds=args.folds)
    name = args.name or (args.export_model.name if args.export_model else "model")
    cv_time = time.monotonic() - t_start
    summary.update(
        {
            "name": name,
            "data": ("SYNTHETIC simulator videos: " if spec.synthetic else "") + ", ".join(Path(v).name for v in spec.videos),
            "note": "Trained and evaluated on synthetic simulator video, not real mice." if spec.synthetic else "",
            "facts": {
                "input": f"{spec.size_px} px, {spec.fps:g} fps, 16-frame clips, TV-L1 preset {args.flow_preset}",
                "init": args.init,
                "training per fold": f"{config.optimizer} lr {config.lr:g} -> {config.lr_floor:g} (cosine), {config.epochs} epochs x {config.clips_per_epoch or 'all'} clips, batch {config.batch_size}, balance {config.balance}",
                "cross-validation time": f"{cv_time / 60:.1f} min",
            },
            "fold_runs": fold_info,
            "train_config": dataclasses.asdict(config),
            "cv_time_s": round(cv_time, 1),
        }
    )
    is_main = tr.distributed.current().is_main  # every rank holds the same held-out predictions; rank 0 writes
    written = write_results(args.out, summary, held, title=f"{name}: fused accuracy vs flow weight ({args.folds}-fold CV)") if is_main else []
    best = summary["best_flow_weight"]
    rows = {r["flow_weight"]: r for r in summary["accuracy_by_flow_weight"]}
    base = summary["majority_baseline"]
    if is_main:
        print("flow_weight  accuracy (mean +- std over folds)")
        for w, r in rows.items():
            print(f"   {w:.1f}      {r['accuracy_mean']:.3f} +- {r['accuracy_std']:.3f}{'   <- best' if w == best else ''}")
        print(f"majority-class baseline {base['accuracy_mean']:.3f} +- {base['accuracy_std']:.3f}")
        print(f"export-evaluate: wrote {', '.join(str(p) for p in written[:2])} and more in {args.out}")

    if args.export_model:
        train_idx, val_idx = tr.split_validation(ds, np.arange(len(ds)), args.val_folds)
        tr.seed_everything(config.seed)
        model, init_text = tr.build_model(args.init, num_classes=len(classes), dropout_keep_prob=config.dropout_keep_prob)
        model.flow_weight = best
        t0 = time.monotonic()
        final_dir = work_dir / "final"
        result = tr.train(model, Subset(ds.with_augment(not args.no_augment), train_idx), Subset(ds, val_idx) if val_idx.size else None, config, final_dir, num_classes=len(classes), resume=True)
        if not is_main:
            return 0
        metrics = {
            "cv": f"{args.folds}-fold by {args.split_by}, held-out clips {summary['num_clips']}",
            "fused_accuracy_mean": rows[best]["accuracy_mean"],
            "fused_accuracy_std": rows[best]["accuracy_std"],
            "rgb_only_accuracy_mean": rows[0.0]["accuracy_mean"],
            "flow_only_accuracy_mean": rows[1.0]["accuracy_mean"],
            "majority_baseline_accuracy_mean": base["accuracy_mean"],
            "macro_f1": rows[best]["macro_f1"],
            "per_class": summary["per_class_at_best"],
            "accuracy_by_flow_weight": {f"{w:.1f}": [round(r["accuracy_mean"], 4), round(r["accuracy_std"], 4)] for w, r in rows.items()},
            "immobility_per_video": summary["immobility_per_video"],
        }
        card = tr.make_card(
            name=name, view=args.view, spec=spec, immobile=immobile, flow_config=dataclasses.asdict(ds.flow_config), init_text=init_text,
            config=config, result=result, flow_weight=best, step="target (annotated videos)", metrics=metrics,
            extra={"train_clips": int(len(train_idx)), "val_clips": int(len(val_idx)), "train_time_s": round(time.monotonic() - t0, 1), "cv_time_s": summary["cv_time_s"]},
        )  # fmt: skip
        model.to("cpu")
        save_model(model, card, args.export_model, half=args.half)
        curves = plot_training_curves(result.history, args.out / TRAINING_PLOT, title=f"{name}: final training on all data")
        write_report(args.out, summary, [*written[3:], curves])
        size_mb = (args.export_model / card.weights_file).stat().st_size / 1e6
        print(f"export-evaluate: wrote model {args.export_model} (flow_weight {best:.1f}, {size_mb:.1f} MB)")
    return 0
