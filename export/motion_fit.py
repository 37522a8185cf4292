"""``export-fit-motion``: fit the motion-threshold baseline (``stream/engine/motion.py``) on a lab's annotations.

The feature comes from the live loop itself: each video runs through ``stream.pipeline.Pipeline``
(capture, resampling to the card's fps, per-arena crops, the ring and its TV-L1 flow) with an
engine that only records ``stream.engine.motion.motion_feature`` of the flow clip it is handed. So the
fitted thresholds apply to exactly the numbers the motion engine sees when ``stream-run`` runs it.

Fitting, on the frames a person labelled:

1. the classes are ordered by their median motion (see ``stream/engine/motion.py`` for why the order is
   fitted rather than assumed);
2. the threshold(s) -- one for two classes, two for three -- are chosen on a grid of feature
   quantiles to maximise Cohen's kappa against the labels. Kappa, not accuracy: with 60 % float
   frames, "everything is float" already has 60 % accuracy but kappa 0, and a threshold that
   finds the rarer classes must win;
3. the minimum immobility bout is chosen from ``MIN_BOUT_CANDIDATES_S`` by replaying the
   thresholded frames through the live decision rules (``stream.decisions.ArenaDecisions``) and
   keeping the one with the best kappa (ties: the shorter bout).

The fitted figures on the fitting data are in-sample; validate on other videos with
``export-validate --baseline DIR``.

Flow settings, fps and input size are copied from ``--like DIR`` (default: the bundled model), so
the baseline sees the same flow as the network it is compared with.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.agreement import cohen_kappa, confusion_matrix
from stream.errors import UserError, cli_main
from stream.outputs.base import Output
from stream.version import add_version_argument

__all__ = ["MIN_BOUT_CANDIDATES_S", "THRESHOLD_GRID", "fit_min_bout", "fit_thresholds", "live_features", "main"]

log = logging.getLogger("export.motion_fit")

THRESHOLD_GRID = 256  # candidate thresholds: this many feature quantiles (finer gains nothing on ~10^4 frames)
# DBscorer's default is 2 s; the grid brackets it from "no rule" to 5 s
MIN_BOUT_CANDIDATES_S = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)


class _FeatureRecorder:
    """An ``Engine`` for the pipeline that records the motion feature of every clip it is handed."""

    name = "motion-features"
    stepwise = False  # fed whole clips (stream.engine.base.Engine.stepwise)

    def __init__(self, classes: list[str], size_px: int, device: str) -> None:
        self.classes = list(classes)
        self.input_size_px = size_px
        self.device = device
        self.features: list[np.ndarray] = []

    def warmup(self, batch_size: int | None = None) -> None:
        return None

    def predict(self, rgb: Any, flow: Any) -> np.ndarray:
        from stream.engine.motion import motion_feature

        f = motion_feature(flow)
        self.features.append(f)
        # uniform: argmax is the first (a mobile) class, so the decisions never hold a frame back
        return np.full((f.shape[0], len(self.classes)), 1.0 / len(self.classes))

    def close(self) -> None:
        return None


@dataclass
class Recording:
    video: str
    arena: str
    frames: np.ndarray  # model-rate frame index
    timestamps_s: np.ndarray
    features: np.ndarray  # motion feature per frame
    labels: np.ndarray  # annotation per frame, -1 = unlabelled


class _DecisionTimes(Output):
    """Records (frame, timestamp) of every decision per arena: the feature rows' frame clock."""

    def __init__(self, got: dict[str, list[tuple[int, float]]]) -> None:
        self.got = got

    def on_decision(self, arena_id: str, decision, latency_s: float | None) -> None:
        self.got[arena_id].append((decision.frame_index, decision.timestamp_s))


def live_features(video: Path, arenas: list, card: Any, *, device: str = "cpu", max_frames: int | None = None,
                  flow_warm_start: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Arena id -> (frames, timestamps_s, features) of one video, through the live pipeline."""
    from stream.run_config import RunConfig
    from stream.runner import run_video

    classes = list(card.classes)
    engine = _FeatureRecorder(classes, card.input_size_px, device)
    got: dict[str, list[tuple[int, float]]] = {a.id: [] for a in arenas}
    config = RunConfig.make(source={"videos": (str(video),), "max_frames": max_frames},
                            model={"flow_warm_start": flow_warm_start},
                            decisions={"smoothing": "none", "min_bout_s": 0.0},  # the decision clock only
                            outputs={"zmq": None, "metrics_port": 0, "quiet": True})
    result, _ = run_video(config, card, engine, arenas, outputs=[_DecisionTimes(got)])
    if result.error or result.gave_up:
        raise UserError(f"{video}: capture failed ({result.error or result.end_reason})")
    feats = np.concatenate(engine.features) if engine.features else np.zeros((0, len(arenas)))
    feats = feats.reshape(-1, len(arenas))
    out = {}
    for a_i, arena in enumerate(arenas):
        rows = got[arena.id]
        if len(rows) != feats.shape[0]:  # one model call per frame at stride 1; anything else is a bug
            raise RuntimeError(f"{video}/{arena.id}: {len(rows)} decisions for {feats.shape[0]} feature rows")
        out[arena.id] = (np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows]), feats[:, a_i].copy())
    return out


def _kappas(counts_below: np.ndarray, totals: np.ndarray, cut_sets: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Kappa of every threshold set at once.

    counts_below[c, i]: frames of class c (card order) with feature < candidate i; cut_sets (S, K-1)
    candidate indices, non-decreasing; order[r] = card index of the r-th class from low to high motion.
    """
    k = totals.shape[0]
    s = cut_sets.shape[0]
    # frames of class c predicted as rank r: below(cut r) - below(cut r-1), with cut -1 = 0 and cut K-1 = all
    edges = [np.zeros((k, s))] + [counts_below[:, cut_sets[:, j]] for j in range(cut_sets.shape[1])] + [np.tile(totals[:, None], (1, s))]
    n = totals.sum()
    m = np.zeros((s, k, k))  # (set, true card index, predicted card index)
    for r in range(k):
        m[:, :, order[r]] = (edges[r + 1] - edges[r]).T
    p_o = np.trace(m, axis1=1, axis2=2) / n
    p_e = (m.sum(axis=2) * m.sum(axis=1)).sum(axis=1) / (n * n)
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = np.where(p_e < 1 - 1e-12, (p_o - p_e) / (1 - p_e), -np.inf)
    return kappa


def fit_thresholds(features: np.ndarray, labels: np.ndarray, classes: list[str],
                   grid: int = THRESHOLD_GRID) -> tuple[list[str], list[float], float]:
    """(classes low to high, thresholds, in-sample kappa) maximising kappa on labelled frames."""
    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.int64)
    k = len(classes)
    if k not in (2, 3):
        raise UserError(f"the motion baseline fits 2 classes (top view) or 3 (side view), not {k}")
    missing = [c for i, c in enumerate(classes) if not np.any(y == i)]
    if missing:
        raise UserError(f"no labelled frames of {', '.join(missing)}: a threshold for it cannot be fitted")
    medians = np.array([np.median(x[y == i]) for i in range(k)])
    order = np.argsort(medians, kind="stable")
    # "x < t is the lower class": a data value as t separates exactly; more values than the grid -> quantiles
    values = np.unique(x)
    candidates = values if values.size <= grid else np.unique(np.quantile(x, np.linspace(0, 1, grid + 1)))
    sorted_by_class = [np.sort(x[y == i]) for i in range(k)]
    counts_below = np.stack([np.searchsorted(v, candidates, side="left") for v in sorted_by_class]).astype(np.float64)
    totals = np.array([v.size for v in sorted_by_class], np.float64)
    m = candidates.size
    if k == 2:
        cut_sets = np.arange(m)[:, None]
    else:
        a, b = np.triu_indices(m)
        cut_sets = np.stack([a, b], axis=1)
    kappa = _kappas(counts_below, totals, cut_sets, order)
    best = int(np.argmax(kappa))
    return [classes[i] for i in order], [float(candidates[j]) for j in cut_sets[best]], float(kappa[best])


def fit_min_bout(recordings: list[Recording], params_without_bout: Any, card: Any,
                 candidates_s: tuple[float, ...] = MIN_BOUT_CANDIDATES_S) -> tuple[float, list[dict[str, float]]]:
    """The minimum bout with the best pooled kappa after the live decision rules (ties: the shorter)."""
    from stream.decisions import ArenaDecisions, DecisionConfig
    from stream.engine.motion import classify

    classes = list(card.classes)
    table = []
    best = (-math.inf, 0.0)
    for min_bout_s in candidates_s:
        conf = DecisionConfig(fps=card.fps, min_bout_s=min_bout_s, immobile_classes=tuple(card.immobile_classes))
        ref, pred = [], []
        for rec in recordings:
            dec = ArenaDecisions(rec.arena, classes, conf)
            onehot = np.eye(len(classes))[classify(rec.features, params_without_bout, classes)]
            out = []
            for f, t, p in zip(rec.frames, rec.timestamps_s, onehot):
                out += dec.update(int(f), float(t), p)
            out += dec.flush()
            by_frame = {d.frame_index: classes.index(d.behaviour) for d in out}
            keep = rec.labels >= 0
            ref.append(rec.labels[keep])
            pred.append(np.array([by_frame[int(f)] for f in rec.frames[keep]], np.int64))
        r, p = np.concatenate(ref), np.concatenate(pred)
        m = confusion_matrix(r, p, len(classes))
        kappa = cohen_kappa(m)
        table.append({"min_bout_s": min_bout_s, "kappa": kappa, "accuracy": float(np.trace(m) / m.sum())})
        if kappa > best[0] + 1e-12:
            best = (kappa, min_bout_s)
    return best[1], table


def _plot(recordings: list[Recording], classes: list[str], thresholds: list[float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.concatenate([r.features for r in recordings])
    y = np.concatenate([r.labels for r in recordings])
    fig, ax = plt.subplots(figsize=(6, 3.4))
    hi = float(np.quantile(x, 0.995)) if x.size else 1.0
    bins = np.linspace(0, max(hi, 1e-6), 60)
    for i, c in enumerate(classes):
        ax.hist(np.clip(x[y == i], 0, hi), bins=bins, alpha=0.5, label=f"{c} (n={int(np.sum(y == i))})")
    for t in thresholds:
        ax.axvline(t, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("mean flow magnitude over the clip (px/frame at the model size)")
    ax.set_ylabel("labelled frames")
    ax.set_title("Motion feature per class; dashed: fitted thresholds", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    from stream.runner import default_model_dir

    p = argparse.ArgumentParser(prog="export-fit-motion", description=__doc__.splitlines()[0].replace("``", ""))
    add_version_argument(p)
    p.add_argument("--videos", nargs="+", required=True, metavar="VIDEO", help="annotated videos (globs expanded)")
    p.add_argument("--labels", nargs="+", required=True, type=Path, metavar="FILE",
                   help="one annotation file per video, same order (per-frame CSV, BORIS, DeepEthogram)")
    p.add_argument("--arenas", nargs="+", type=Path, metavar="FILE",
                   help="arena file per video (or one for all); default: <video>.arenas.json, else the whole frame")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="model folder to write (e.g. trained_models/NAME)")
    p.add_argument("--like", type=Path, default=default_model_dir(), metavar="DIR",
                   help="model whose classes, fps, input size and flow settings to use (default: the bundled model)")
    p.add_argument("--name", default=None, help="model name (default: the --out folder's name)")
    p.add_argument("--device", default="cpu", help="where the flow runs: cpu, cuda (default: cpu)")
    p.add_argument("--max-frames", type=int, default=None, metavar="N", help="only the first N model-rate frames per video")
    p.add_argument("--no-flow-warm-start", action="store_true", help="flow of each frame from scratch (as stream-run's flag)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


@cli_main("export-fit-motion")
def main(argv: list[str] | None = None) -> int:
    import dataclasses
    import json

    from export.validate import labels_at_ticks, read_labels, source_frame_of_tick, video_items
    from stream.arenas import resolve_arenas
    from stream.modelfile import ModelCard, load_card
    from stream.engine.motion import MotionParams, save_motion_model

    args = build_parser().parse_args(argv)
    logging.basicConfig(level={0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    like = load_card(args.like)
    classes = list(like.classes)
    ns = argparse.Namespace(videos=args.videos, labels=args.labels, arenas=args.arenas, rater2=None)
    items = video_items(ns)
    recordings: list[Recording] = []
    from tqdm import tqdm

    for item in tqdm(items, desc="flow features", unit="video", disable=None):
        arenas = resolve_arenas(arena_file=item.arenas, video=item.video)
        matched, video_fps, n_src = read_labels(item.labels, item.video, classes, [a.id for a in arenas])
        feats = live_features(item.video, arenas, like, device=args.device, max_frames=args.max_frames,
                              flow_warm_start=not args.no_flow_warm_start)
        src = source_frame_of_tick(n_src, video_fps, like.fps)
        for arena_id, ann in matched.items():
            frames, times, x = feats[arena_id]
            recordings.append(Recording(item.video.name, arena_id, frames, times, x, labels_at_ticks(ann.labels, frames, src)))
    x = np.concatenate([r.features for r in recordings])
    y = np.concatenate([r.labels for r in recordings])
    keep = y >= 0
    if not keep.any():
        raise UserError("no labelled frames in the given videos; nothing to fit")
    order, thresholds, kappa = fit_thresholds(x[keep], y[keep], classes)
    params = MotionParams(tuple(order), tuple(thresholds), 0.0)
    min_bout_s, bout_table = fit_min_bout(recordings, params, like)
    params = dataclasses.replace(params, min_bout_s=min_bout_s)
    chosen = next(r for r in bout_table if r["min_bout_s"] == min_bout_s)
    medians = {c: float(np.median(x[keep][y[keep] == i])) for i, c in enumerate(classes)}
    card = ModelCard(
        name=args.name or args.out.name, view=like.view, classes=classes, immobile_classes=list(like.immobile_classes),
        input_size_px=like.input_size_px, fps=like.fps, flow=dict(like.flow), flow_weight=1.0,
        init=f"motion threshold fitted by export-fit-motion (flow settings from {like.name})",
        training={"fitted_on": {"videos": [str(i.video) for i in items], "labels": [str(i.labels) for i in items],
                                "labelled_frames": int(keep.sum()), "max_frames": args.max_frames},
                  "feature": params.feature, "classes_low_to_high": order, "thresholds_px": thresholds,
                  "median_feature_px": medians, "objective": "Cohen's kappa on labelled frames",
                  "min_bout_candidates": bout_table, "flow_settings_from": str(args.like)},
        metrics={"in_sample_kappa_thresholds_only": kappa, "in_sample_kappa": chosen["kappa"],
                 "in_sample_accuracy": chosen["accuracy"],
                 "note": "on the fitting data (in-sample); validate on other videos with export-validate --baseline"},
    )  # fmt: skip
    save_motion_model(args.out, card, params)
    _plot(recordings, classes, thresholds, args.out / "fit.png")
    print(f"export-fit-motion: {card.name}: {' < '.join(order)} at thresholds "
          f"{', '.join(f'{t:.4g}' for t in thresholds)} px; min bout {min_bout_s:g} s; in-sample kappa "
          f"{chosen['kappa']:.3f}, accuracy {chosen['accuracy']:.3f} on {int(keep.sum())} frames -> {args.out}")
    log.debug("card: %s", json.dumps(card.training))
    return 0


if __name__ == "__main__":
    sys.exit(main())
