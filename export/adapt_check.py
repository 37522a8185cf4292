"""Does adapting pay on this video? (CLI ``export-adapt-check``): a model scored on labelled video as
it is and after ``export-adapt``'s AdaBN, side by side, per recording and per held-out group.

Why a command of its own: whether new BatchNorm statistics help is not something we can predict
(on our first simulator three of six models gained and three lost a little), so it is measured
before a lab trusts it, and the figures in the README must come from a command anyone can rerun.

What is adapted on what (``--scope``):
- ``recording``: each video on its own unlabelled clips, the lab that adapts before scoring each
  recording (transductive: the statistics come from the very video that is scored);
- ``group``: the videos of one held-out family (or of one rig) together;
- ``all``: every video together, one adapted model, the lab that adapts once on the day's videos.
The labels are read only to score; the adaptation never sees them (``export.adapt``'s sources carry
all-zero labels). The flow weight is the card's, before and after, as it would be live.

Written to ``--out``: ``adapt_check.csv`` (a row per recording: accuracy, immobile time annotated /
before / after, near-constant flags), ``adapt_check.json`` (every figure, both per-group tables, the
accuracy at every flow weight before and after, and the settings) and ``adapt_check.png`` (per group, accuracy before and after).
"""

from __future__ import annotations

import argparse
import dataclasses
import csv
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from export import evaluate as ev
from export import train as tr
from export.adapt import predict_adapted
from export.train_config import apply_threads
from export.train_data import card_data_args
from stream.adabn import DEFAULT_FRAME_STEP
from stream.atomic import atomic_write
from stream.errors import UserError, cli_main
from stream.modelfile import load_card, load_model
from stream.run_config import ADAPT_CLIPS_DEFAULT
from stream.version import add_version_argument

log = logging.getLogger(__name__)

__all__ = ["SCOPES", "adaptation_units", "per_recording_rows", "main"]

SCOPES = ("recording", "group", "all")
SCOPE_TEXT = {"recording": "each video on itself", "group": "each group's videos together", "all": "all videos together"}
CSV_NAME, JSON_NAME, PLOT_NAME = "adapt_check.csv", "adapt_check.json", "adapt_check.png"


def adaptation_units(videos: Sequence[Path], group_of_video: Sequence[str], scope: str) -> list[list[int]]:
    """Indices of the videos adapted together, in the order given: one per video, per group, or one."""
    if scope == "recording":
        return [[i] for i in range(len(videos))]
    if scope == "group":
        groups = list(dict.fromkeys(group_of_video))
        return [[i for i, g in enumerate(group_of_video) if g == name] for name in groups]
    if scope == "all":
        return [list(range(len(videos)))]
    raise UserError(f"--scope {scope!r}: expected one of {', '.join(SCOPES)}")


def per_recording_rows(before: dict[str, Any], after: dict[str, Any], rates_before: list[dict[str, Any]],
                       rates_after: list[dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """A row per recording from the two ``heldout_groups`` results and the two ``prediction_rates``."""
    flags_before = {r["recording"]: r["near_constant"] for r in rates_before}
    flags_after = {r["recording"]: r["near_constant"] for r in rates_after}
    rows = []
    for g_before, g_after in zip(before["groups"], after["groups"]):
        imm_before = {r["video"]: r for r in g_before["immobility"]}
        imm_after = {r["video"]: r for r in g_after["immobility"]}
        for rec in g_before["recordings"]:
            row: dict[str, Any] = {
                "recording": rec,
                "group": g_before["group"],
                "accuracy_before": round(g_before["accuracy_per_recording"][rec], 4),
                "accuracy_after": round(g_after["accuracy_per_recording"][rec], 4),
                "annotated_immobile_s": None,
                "immobile_before_s": None,
                "immobile_after_s": None,
                "near_constant_before": flags_before[rec],
                "near_constant_after": flags_after[rec],
            }
            if rec in imm_before:
                row.update(annotated_immobile_s=round(imm_before[rec]["annotated_s"], 2), immobile_before_s=round(imm_before[rec]["predicted_s"], 2),
                           immobile_after_s=round(imm_after[rec]["predicted_s"], 2))  # fmt: skip
            rows.append(row)
    return rows


def _plot(path: Path, before: dict[str, Any], after: dict[str, Any], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [g["group"] for g in before["groups"]]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2.0), 3.8))
    ax.bar(x - 0.2, [g["accuracy"] for g in before["groups"]], 0.4, label=f"as shipped (mean {before['spread']['accuracy_mean']:.3f})", color="#999999")
    ax.bar(x + 0.2, [g["accuracy"] for g in after["groups"]], 0.4, label=f"adapted (mean {after['spread']['accuracy_mean']:.3f})", color="#1f77b4")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy per clip")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _summary_line(result: dict[str, Any], rates: list[dict[str, Any]]) -> str:
    s = result["spread"]
    imm = "n/a" if s["immobile_abs_error_pct_mean"] is None else f"{s['immobile_abs_error_pct_mean']:.0f} %"
    constant = sum(r["near_constant"] for r in rates)
    return f"mean {s['accuracy_mean']:.3f} +- {s['accuracy_std']:.3f}, worst group {s['accuracy_min']:.3f}, immobile time error {imm}, near-constant recordings {constant}/{len(rates)}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export-adapt-check",
        description="Score a model on labelled video as it is and after adapting its BatchNorm statistics (export-adapt's AdaBN) "
        "to that video, per recording and per held-out group. The labels are only used to score.",
        epilog="Example: export-adapt-check --model trained_models/fst-top-112 --videos heldout/test_*.mp4 --out runs/adapt-check",
    )
    add_version_argument(p)
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="the model folder (as shipped or trained)")
    p.add_argument("--videos", nargs="+", type=Path, required=True, metavar="VIDEO", help="annotated videos to score (labels and arenas next to each, as for export-train)")
    p.add_argument("--labels", nargs="+", type=Path, metavar="FILE", help="label file per video, same order (default: next to the video)")
    p.add_argument("--arenas", nargs="+", type=Path, metavar="JSON", help="arenas file per video, same order (default: VIDEO stem + .arenas.json if present)")
    p.add_argument("--scope", choices=SCOPES, default="recording",
                   help="adapt each video on itself, each held-out group's videos together, or all videos together (default: recording)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help=f"folder for {CSV_NAME}, {JSON_NAME} and {PLOT_NAME}")
    p.add_argument("--clips", type=int, default=ADAPT_CLIPS_DEFAULT, help=f"unlabelled clips per adaptation (default: {ADAPT_CLIPS_DEFAULT})")
    p.add_argument("--adapt-frame-step", type=int, default=DEFAULT_FRAME_STEP, help=f"candidate clip centres for the adaptation every Nth model-rate frame (default: {DEFAULT_FRAME_STEP})")
    p.add_argument("--frame-step", type=int, default=30, help="scored clips every Nth model-rate frame (default: 30)")
    p.add_argument("--cache-dir", type=Path, default=Path("runs/cache"), help="decoded crops and TV-L1 flow cache (default: runs/cache)")
    p.add_argument("--batch-size", type=int, default=8, help="(default: 8)")
    p.add_argument("--seed", type=int, default=0, help="which clips the adaptation draws (default: 0)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


@cli_main("export-adapt-check")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    apply_threads(args.threads)
    if args.clips < 1 or args.batch_size < 1 or args.frame_step < 1 or args.adapt_frame_step < 1:
        raise UserError("--clips, --batch-size, --frame-step and --adapt-frame-step must be >= 1")
    videos = list(args.videos)
    tr._pair_up(videos, args.labels, "--labels")  # before any model or video is read
    arenas = tr._pair_up(videos, args.arenas, "--arenas")
    if len({v.resolve() for v in videos}) != len(videos):
        raise UserError("--videos: a video is given twice")
    t0 = time.monotonic()
    kind = load_card(args.model).kind
    if kind != "i3d":
        raise UserError(f"--model {args.model}: a {kind!r} model has no BatchNorm statistics to adapt")
    model, card = load_model(args.model)
    model.eval()
    ns = argparse.Namespace(videos=videos, labels=args.labels, arenas=args.arenas, test_videos=videos, test_labels=args.labels, test_arenas=args.arenas,
                            frame_step=args.frame_step, cache_dir=args.cache_dir, device="cpu")  # fmt: skip
    data = card_data_args(ns, card, what=f"--model {args.model}:")  # test_* = the same videos: test_groups reads them
    classes, immobile = tr.classes_from_args(data)
    ds, spec = tr.dataset_from_args(data, classes, progress=args.verbose)
    group_names, group_of_source = ev.test_groups(data, ds)
    index_of = {v.resolve(): i for i, v in enumerate(videos)}
    video_of_source = np.array([index_of[s.video_path.resolve()] for s in ds.sources])
    group_of_video = [group_names[int(group_of_source[np.flatnonzero(video_of_source == i)[0]])] for i in range(len(videos))]
    units = adaptation_units(videos, group_of_video, args.scope)

    before = ev.held_out_of(tr.predict_streams(model, ds, batch_size=args.batch_size, device="cpu", progress=args.verbose), ds.items,
                            group_of_source[ds.items[:, 0]])  # fmt: skip
    parts, moved = [], []
    for idx, pred, change in predict_adapted(model, card, ds, video_of_source[ds.items[:, 0]],
                                             tqdm(units, desc=f"adapting {SCOPE_TEXT[args.scope]}", unit="unit", disable=not args.verbose and len(units) < 2),
                                             videos, arenas, count=args.clips, seed=args.seed, frame_step=args.adapt_frame_step,
                                             batch_size=args.batch_size, cache_dir=args.cache_dir):  # fmt: skip
        moved.append(change)
        parts.append(ev.held_out_of(pred, ds.items[idx], group_of_source[ds.items[idx, 0]]))
    after = ev.HeldOut(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(ev.HeldOut)))

    names = ev.recording_names(ds)
    seconds_per_item = [args.frame_step / (spec.fps * spec.stride)] * len(ds.sources)
    result = {}
    for key, held in (("before", before), ("after", after)):
        result[key] = ev.heldout_groups(held, card.flow_weight, classes, immobile, names, seconds_per_item, group_names)
        result[f"rates_{key}"] = ev.prediction_rates(held, held.fused(card.flow_weight).argmax(1), classes, names)
        # which stream carries it on this video: mean over groups per flow weight, on the scored clips themselves
        result[f"by_flow_weight_{key}"] = {f"{r['flow_weight']:.1f}": round(r["accuracy_mean"], 4) for r in ev.sweep_flow_weight(held, len(classes))}
    rows = per_recording_rows(result["before"], result["after"], result["rates_before"], result["rates_after"])

    args.out.mkdir(parents=True, exist_ok=True)
    def write_rows(f) -> None:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(args.out / CSV_NAME, write_rows)
    settings = {"model": card.name, "weights_sha256": card.weights_sha256, "flow_weight": card.flow_weight, "scope": args.scope, "clips": args.clips,
                "adapt_frame_step": args.adapt_frame_step, "frame_step": args.frame_step, "seed": args.seed, "videos": [v.name for v in videos],
                "scored_clips": len(ds), "median_relative_change_of_variances": [round(m, 4) for m in moved]}  # fmt: skip
    atomic_write(args.out / JSON_NAME, json.dumps({"settings": settings, **result}, indent=1))
    _plot(args.out / PLOT_NAME, result["before"], result["after"], f"{card.name}: as shipped vs adapted, {SCOPE_TEXT[args.scope]} ({len(ds)} clips)")

    print(f"{'group':<28} {'clips':>5}  accuracy before -> after   immobile error before -> after")
    for g_before, g_after in zip(result["before"]["groups"], result["after"]["groups"]):
        e0, e1 = g_before["immobile_abs_error_pct_mean"], g_after["immobile_abs_error_pct_mean"]
        err = "n/a" if e0 is None else f"{e0:5.0f} % -> {e1:3.0f} %"
        print(f"{g_before['group']:<28} {g_before['clips']:>5}  {g_before['accuracy']:.3f} -> {g_after['accuracy']:.3f}            {err}")
    print(f"as shipped: {_summary_line(result['before'], result['rates_before'])}")
    print(f"adapted ({SCOPE_TEXT[args.scope]}): {_summary_line(result['after'], result['rates_after'])}")
    for key, label in (("before", "as shipped"), ("after", "adapted")):
        sweep = result[f"by_flow_weight_{key}"]
        print(f"{label:>10} by flow weight (0 = RGB .. 1 = flow; chosen on these clips, so optimistic): "
              + " ".join(f"{w}:{a:.3f}" for w, a in sweep.items()))
    print(f"export-adapt-check: {len(units)} adaptation(s) on {args.clips} clips each; wrote {args.out} in {time.monotonic() - t0:.0f} s")
    return 0
