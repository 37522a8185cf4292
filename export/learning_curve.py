"""How many labelled minutes a new setup needs (CLI ``export-learning-curve``).

The paper's promise is that a lab labels only a few minutes of its own video. This command
measures it on a setup held out from training: for each amount of labelled minutes it fine-tunes,
then measures per-frame agreement with the labels of held-out test videos. It compares

* **start**: the given model (``--init model:DIR``, fine-tuned with ``--recipe finetune``'s
  settings) against random initialisation (same data and epochs; Adam at 1e-3, nothing frozen: the
  settings the bundled model was trained from scratch with);
* **the recipe, per stream** (``--starts ...,per-stream``): the same model and minutes, but its RGB
  stream trains from its first block at ``--rgb-lr`` (1e-3) while the flow stream keeps its
  features (frozen to ``--flow-freeze-until``, ``Mixed_5c``: only its classifier adapts, at 1e-4):
  the RGB stream has a new look to learn, the flow stream is the part that transfers, and the
  recipe's fine-tuning wore it down (fst-side-112 on held-out lighting: flow alone 0.76 untouched,
  0.68-0.74 after 1-2 minutes, while RGB alone rose from 0.56 to 0.68-0.71);
* **the motion baseline** (``--starts ...,motion``): flow-magnitude thresholds fitted on the same
  labelled frames (``export.motion_fit.fit_thresholds``, what ``export-fit-motion`` fits), no
  training; a fine-tuned point below it is flagged in the table;
* **select**: the minutes ``export-select`` picks from the given model's uncertainty against
  minutes picked at random (non-overlapping stretches, seeded).

Labelling is simulated: the picked frames get the labels of each training video's complete label
file (the simulator's, or a lab's full annotation). Both starts train on the same labelled frames
for a given (select, minutes), so their difference is the start alone. Picks are nested: the
2-minute set contains the 1-minute set.

Agreement is measured on the offline clip path (``export.dataset.ClipDataset``, the clips training
uses, fused with the given model's flow weight), on every ``--eval-frame-step``-th labelled frame
of the test videos: the number a model's per-frame accuracy means, without the live decision rules.

**The flow weight** (``--flow-weight``): ``card`` fuses the fine-tuned streams with the given
model's weight. That weight was chosen for the streams before fine-tuning; after it, the RGB stream
may have become the better one (fst-side-112 on held-out lighting: 0.7 kept, while 0.0-0.4 would
have been best on the test clips). ``held-back`` re-chooses it as a lab would have to, from its
own labels only: one recording's picked stretches (a video's; one animal's if all come from one
video) are not trained on, the fine-tuned model is swept over 0, 0.1, ..., 1 on their clips, and
the best weight is kept (ties: the one nearest the card's). The point still counts all labelled
minutes, of which that recording's chose the weight.

A fine-tune on a few minutes moves by several points from one seed to the next (the random
minutes drawn, the clip order, dropout), so ``--seed 0,1,2`` repeats every fine-tuned point per seed
and the table and plot give mean ± sd; a difference between two series smaller than their spread is
not a result.

Resumable: each point (start, select, minutes, seed) is one JSON file under ``OUT/points``, written
when the point is finished; a rerun skips finished points and resumes an interrupted training from
its checkpoint. At the end: ``learning_curve.csv``, ``learning_curve.md`` and
``learning_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.flow_weight import choose_flow_weight, weight_sweep
from stream.errors import UserError, cli_main
from stream.version import add_version_argument

__all__ = ["cohen_kappa", "point_name", "write_table", "plot_curve", "main"]

log = logging.getLogger(__name__)

DEFAULT_MINUTES = (0.0, 1.0, 2.0, 5.0, 10.0)  # the steps
STARTS = ("model", "per-stream", "random", "motion")  # motion: the threshold baseline fitted on the same labelled frames
FINE_TUNED = ("model", "per-stream")  # the given model, fine-tuned by the recipe or by the per-stream recipe
# per-stream: the RGB stream has to learn the new setup's look, which the recipe's frozen stem and
# 1e-4 hold back; it gets the from-scratch rate and no frozen block. The flow stream, the part that
# transfers, keeps every block and only its classifier adapts (see the module docstring).
PER_STREAM_RGB_LR = 1e-3
PER_STREAM_RGB_FREEZE_UNTIL = ""
PER_STREAM_FLOW_FREEZE_UNTIL = "Mixed_5c"
TARGET_AGREEMENT = 0.90  # the goal: 90 % per-frame agreement from <= 2 labelled minutes
DEFAULT_EVAL_FRAME_STEP = 4  # every 4th test frame: neighbouring frames are nearly the same clip
SCRATCH_LR = 1e-3  # random init: the bundled model's from-scratch Adam rate
SCRATCH_LR_FLOOR = 1e-5
SCRATCH_BN_RECALIBRATION_CLIPS = 64  # export-train's default: from scratch the running statistics trail far behind
NO_SELECTION = "none"  # the 0-minute point: the model as it comes, nothing picked
WEIGHT_CHOICES = ("card", "held-back")  # --flow-weight: the given model's, or re-chosen on held-back labelled stretches
HELD_BACK_SHARE = 0.2  # about this share of the picked stretches (one recording's) chooses the weight instead of training
HELD_BACK_FRAME_STEP = 2  # its clips: every 2nd frame (only predicted, so cheap; a 4 s stretch gives 30)
POINTS_DIR = "points"
TABLE_CSV = "learning_curve.csv"
TABLE_MD = "learning_curve.md"
PLOT_PNG = "learning_curve.png"


def cohen_kappa(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Cohen's kappa: agreement beyond what the two marginal distributions give by chance."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    if labels.size == 0:
        return float("nan")
    m = np.zeros((num_classes, num_classes))
    np.add.at(m, (labels, predicted), 1)
    n = m.sum()
    observed = np.trace(m) / n
    expected = float((m.sum(0) * m.sum(1)).sum()) / n**2
    return 1.0 if expected == 1.0 else float((observed - expected) / (1.0 - expected))


def point_name(start: str, select: str, minutes: float, seed: int = 0, weight: str = "card") -> str:
    """File stem of a point; seed 0 and the card's weight keep the names points had before either was varied."""
    return f"{start}-{select}-{minutes:g}min" + ("-wheld" if weight == "held-back" else "") + (f"-seed{seed}" if seed else "")


def weight_choice_of(point: dict[str, Any]) -> str:
    """How a point's flow weight was chosen (points written before the choice existed kept the card's)."""
    return str(point.get("weight_choice", "card"))


def _weight_suffix(point: dict[str, Any]) -> str:
    """What a series' name adds for a point whose flow weight was re-chosen ("" for the card's)."""
    return "+held-back weight" if weight_choice_of(point) == "held-back" else ""


def split_held_back(stretches: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """(trained on, held back to choose the flow weight): one recording's stretches are held back.

    A recording is a video file, or, when the stretches come from one video only, an animal (its
    arena, or the animal a trial run names). The one held back is the one whose stretch count is
    nearest a ``HELD_BACK_SHARE`` of all (ties: the later-ranked).

    Whole recordings, because the fine-tuned RGB stream learns each recording's look. Measured
    (fst-side-112, held-out lighting, each pool video lit its own way, per-stream recipe): on every
    5th stretch the RGB stream alone scored 0.94, on a held-back animal of the same videos 0.99 at
    1 minute and 0.97 at 2, against 0.69-0.77 on the test videos; the weights those chose (0.2-0.5
    instead of the card's 0.7) lost 1.7-9.7 points on the test videos. On a held-back video it
    scored 0.59 at 1 minute, as on the test videos (0.60-0.72).
    """
    stretches = list(stretches)
    by_video = len({str(st.video) for st in stretches}) >= 2
    groups: dict[tuple[str, str], list[int]] = {}
    for i, st in enumerate(stretches):
        groups.setdefault(("video", str(st.video)) if by_video else _animal_of(st), []).append(i)
    if len(groups) < 2:
        raise UserError(f"--flow-weight held-back holds back one recording's stretches, and the {len(stretches)} picked stretch(es) come "
                        "from one video and one animal; give more --minutes, more videos, or a shorter --stretch-s")  # fmt: skip
    target = HELD_BACK_SHARE * len(stretches)
    order = list(groups)
    held_key = min(order, key=lambda k: (abs(len(groups[k]) - target), -order.index(k)))
    held = set(groups[held_key])
    return [st for i, st in enumerate(stretches) if i not in held], [stretches[i] for i in sorted(held)]


def _animal_of(stretch: Any) -> tuple[str, str]:
    """An animal: the one named in a trial run, else the arena of its video."""
    return ("", stretch.animal) if getattr(stretch, "animal", "") else (str(stretch.video), str(stretch.arena))


def seed_of(point: dict[str, Any]) -> int:
    """The seed a point was run with (points written before seeds were recorded carry it in their config)."""
    return int(point.get("seed", (point.get("config") or {}).get("seed", 0)))


def _summary(points: Sequence[dict[str, Any]], key: str) -> tuple[float, float, int]:
    """Mean, sample sd (nan for one point) and count of ``key`` over the seeds of one point of the curve."""
    values = np.array([p[key] for p in points if p.get(key) is not None and np.isfinite(p[key])], dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan"), 0
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else float("nan"), int(values.size)


def _atomic_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# table and plot


def _series(points: Sequence[dict[str, Any]]) -> dict[str, dict[float, list[dict[str, Any]]]]:
    """{"start+select": {minutes: [the point of each seed]}}; the 0-minute point (no selection) belongs to every series of its start."""
    series: dict[str, dict[float, list[dict[str, Any]]]] = {}
    for p in points:
        if p["select"] != NO_SELECTION:
            series.setdefault(f"{p['start']}+{p['select']}{_weight_suffix(p)}", {}).setdefault(p["minutes"], []).append(p)
    for p in points:
        if p["select"] == NO_SELECTION:  # the untouched model starts both fine-tuning recipes' curves
            owners = FINE_TUNED if p["start"] == "model" else (p["start"],)
            for name in [n for n in series if n.split("+")[0] in owners] or [f"{p['start']}+{NO_SELECTION}"]:
                series.setdefault(name, {}).setdefault(p["minutes"], []).append(p)
    return series


def _cell(points: Sequence[dict[str, Any]], prefix: str = "") -> str:
    """One point of the curve: the single run as before, or mean +- sd over seeds (kappa as a mean);
    ``prefix`` "adapted_": the same point with each test video adapted on itself (``--adapt-test``)."""
    acc, sd, n = _summary(points, f"{prefix}accuracy")
    kappa = _summary(points, f"{prefix}kappa")[0]
    if n <= 1:
        return f"{100 * acc:.1f} % (kappa {kappa:.2f})"
    return f"{100 * acc:.1f} ± {100 * sd:.1f} % (kappa {kappa:.2f}, {n} seeds)"


def write_table(out: Path, points: Sequence[dict[str, Any]], *, note: str = "") -> tuple[Path, Path]:
    """CSV (one row per point) and a markdown table (minutes x start+select, accuracy / kappa)."""
    columns = ["start", "select", "minutes", "seed", "labelled_minutes", "train_clips", "accuracy", "kappa", "flow_weight", "weight_choice",
               "held_back_clips", "rgb_accuracy", "flow_accuracy", "adapted_accuracy", "adapted_kappa", "adapted_rgb_accuracy",
               "adapted_flow_accuracy", "train_time_s"]  # fmt: skip
    rows = sorted(points, key=lambda p: (p["start"], p["select"], weight_choice_of(p), p["minutes"], seed_of(p)))
    special = {"seed": seed_of, "weight_choice": weight_choice_of}
    csv_lines = [",".join(columns)] + [",".join(str(special[c](p) if c in special else p.get(c, "")) for c in columns) for p in rows]
    csv_path = out / TABLE_CSV
    csv_path.write_text("\n".join(csv_lines) + "\n")
    series = _series(points)
    names = sorted(series)
    minutes = sorted({p["minutes"] for p in points})
    md = ["| labelled minutes | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for m in minutes:
        cells = []
        for name in names:
            ps = series[name].get(m)
            cells.append("" if not ps else _cell(ps))
        md.append(f"| {m:g} | " + " | ".join(cells) + " |")
    if any("adapted_accuracy" in p for p in points):  # --adapt-test: the same points, each test video on its own statistics
        adapted = {name: {m: [p for p in ps if "adapted_accuracy" in p] for m, ps in by_m.items()} for name, by_m in series.items()}
        md += ["", "The same points with each test video scored on its own BatchNorm statistics (`stream-run --adapt`'s, "
               "`--adapt-test`; 64 unlabelled clips per video)", "",
               "| labelled minutes | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for m in minutes:
            md.append(f"| {m:g} | " + " | ".join("" if not adapted[name].get(m) else _cell(adapted[name][m], "adapted_") for name in names) + " |")
    streams = [p for p in rows if "rgb_accuracy" in p]
    if streams:  # why a point lands where it does: each stream alone, and the best weight in hindsight (not a result)
        md += ["", "Each stream alone, and the fused agreement at the flow weight that would have been best on these test "
               "clips (hindsight, shown to explain the curve, never used as a result)", "",
               "| start+select | minutes | fused (flow weight) | RGB alone | flow alone | best weight in hindsight |", "|---|---|---|---|---|---|"]
        for p in streams:
            sweep = p.get("accuracy_by_flow_weight") or {}
            best = max(sweep.items(), key=lambda kv: kv[1]) if sweep else None
            seed = f" (seed {seed_of(p)})" if seed_of(p) else ""
            md.append(f"| {p['start']}+{p['select']}{_weight_suffix(p)}{seed} | {p['minutes']:g} | {100 * p['accuracy']:.1f} % ({p.get('flow_weight', float('nan')):g}) | "
                      f"{100 * p['rgb_accuracy']:.1f} % | {100 * p['flow_accuracy']:.1f} % | "
                      + (f"{100 * best[1]:.1f} % ({best[0]})" if best else "") + " |")  # fmt: skip
    below = [f"{p['select']} {p['minutes']:g} min ({100 * p['accuracy']:.1f} % vs {100 * m['accuracy']:.1f} %)" for p in rows
             for m in rows if p["start"] in FINE_TUNED and m["start"] == "motion" and m["select"] == p["select"] and m["minutes"] == p["minutes"]
             and seed_of(m) == seed_of(p) and m["accuracy"] > p["accuracy"]]  # fmt: skip
    held = [p for p in rows if weight_choice_of(p) == "held-back" and p.get("held_back_sweep")]
    if held:  # the weight as chosen, next to what the held-back clips saw at each weight
        md += ["", "Flow weight re-chosen on the held-back labelled stretches (not trained on): the weight kept, and the held-back "
               "accuracy at 0.0 / 0.5 / 1.0 and at the card's weight", "",
               "| start+select | minutes | seed | held-back clips | chosen weight | held-back acc. 0.0 / 0.5 / 1.0 | card's weight (held-back acc.) |",
               "|---|---|---|---|---|---|---|"]  # fmt: skip
        for p in held:
            sw, card_w = p["held_back_sweep"], float(p.get("card_flow_weight", float("nan")))
            at_card = sw.get(f"{card_w:.1f}", float("nan"))
            md.append(f"| {p['start']}+{p['select']} | {p['minutes']:g} | {seed_of(p)} | {p.get('held_back_clips', '')} | {p['flow_weight']:g} | "
                      f"{100 * sw['0.0']:.1f} / {100 * sw['0.5']:.1f} / {100 * sw['1.0']:.1f} % | {card_w:g} ({100 * at_card:.1f} %) |")  # fmt: skip
    if below:
        md += ["", "**Below the motion baseline** (the fine-tuned model agrees less than thresholds fitted on the same "
               "labelled frames): " + "; ".join(below) + "."]
    md_path = out / TABLE_MD
    md_path.write_text("Per-frame agreement with the held-out labels (start+select)\n\n" + "\n".join(md) + "\n" + (f"\n{note}\n" if note else ""))
    return csv_path, md_path


SERIES_LABELS = {"model": "model fine-tuned (recipe)", "per-stream": "model fine-tuned per stream", "random": "from random init",
                 "motion": "motion baseline"}  # fmt: skip


@dataclass(frozen=True)
class CurveLine:
    """One line of the plot: a series (start+select), as trained or with each test video adapted."""

    series: str  # "start+select" (and "+held-back")
    start: str
    select: str
    adapted: bool
    label: str
    minutes: list[float]
    mean_pct: list[float]
    sd_pct: list[float]  # 0 where one seed


def curve_lines(points: Sequence[dict[str, Any]]) -> list[CurveLine]:
    """The plot's lines: every series, and beside it (``--adapt-test``) the same series with each test
    video adapted, so the two are read against each other rather than from two tables."""
    lines = []
    for name, by_min in sorted(_series(points).items()):
        start, select, *held = name.split("+")
        label = SERIES_LABELS.get(start, start) + f", {select} minutes" + "".join(f", {h}" for h in held)
        for adapted in (False, True):
            key = "adapted_accuracy" if adapted else "accuracy"
            stats = {x: _summary(by_min[x], key) for x in sorted(by_min)}
            xs = [x for x, (_, _, n) in stats.items() if n]
            if not xs:
                continue
            seeds = max(stats[x][2] for x in xs)
            lines.append(CurveLine(name, start, select, adapted, label + (", each test video adapted" if adapted else "")
                                   + (f" (mean ± sd, {seeds} seeds)" if seeds > 1 else ""), xs,
                                   [100 * stats[x][0] for x in xs], [0.0 if np.isnan(stats[x][1]) else 100 * stats[x][1] for x in xs]))  # fmt: skip
    return lines


def plot_curve(path: Path, points: Sequence[dict[str, Any]], *, title: str = "Learning curve") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    styles = {"model": "-", "per-stream": "-.", "random": "--", "motion": ":"}
    markers = {"uncertainty": "o", "random": "s"}
    colours: dict[str, str] = {}  # a series and its adapted twin share a colour; the twin has open markers
    for line in curve_lines(points):
        drawn = ax.errorbar(line.minutes, line.mean_pct, yerr=line.sd_pct, fmt=styles.get(line.start, "-"),
                            marker=markers.get(line.select, "o"), capsize=3, color=colours.get(line.series),
                            mfc="white" if line.adapted else None, alpha=0.8 if line.adapted else 1.0, label=line.label)  # fmt: skip
        colours.setdefault(line.series, drawn.lines[0].get_color())
    ax.axhline(100 * TARGET_AGREEMENT, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("labelled minutes of the new setup")
    ax.set_ylabel("per-frame agreement on held-out videos (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below the axes: six series hid the curves
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# the command


def build_parser() -> argparse.ArgumentParser:
    from export.train import FINETUNE_RECIPE

    p = argparse.ArgumentParser(
        prog="export-learning-curve",
        description="Held-out per-frame agreement against labelled minutes of a new setup: fine-tuned model vs random init, "
        "export-select minutes vs random minutes.",
        epilog="Example: export-learning-curve --init model:trained_models/fst-side-64 --train-videos new/train*.mp4 "
        "--test-videos new/test*.mp4 --minutes 0,1,2,5,10 --out runs/curve",
    )
    add_version_argument(p)
    p.add_argument("--init", metavar="model:DIR", help="the model to start from (and to pick minutes with); required unless --report-only")
    p.add_argument("--train-videos", nargs="+", type=Path, metavar="VIDEO", help="videos the minutes are picked from; required unless --report-only")
    p.add_argument("--train-labels", nargs="+", type=Path, metavar="FILE", help="their complete labels, same order (default: sibling .labels.csv)")
    p.add_argument("--test-videos", nargs="+", type=Path, metavar="VIDEO", help="held-out videos agreement is measured on; required unless --report-only")
    p.add_argument("--test-labels", nargs="+", type=Path, metavar="FILE", help="their labels, same order (default: sibling .labels.csv)")
    p.add_argument("--minutes", default=",".join(f"{m:g}" for m in DEFAULT_MINUTES), help="labelled minutes per point (default: %(default)s)")
    p.add_argument("--select", default="uncertainty,random", help="how minutes are picked: uncertainty, random or both (default: %(default)s)")
    p.add_argument("--starts", default="model,random,motion",
                   help="what learns from the minutes: model (fine-tuned), per-stream (fine-tuned, RGB stream unfrozen at --rgb-lr), "
                        "random (I3D from random init), motion (the threshold "
                        "baseline fitted on the same frames; no training); a comma list (default: %(default)s)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="results folder (points/, table, plot; resumable)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the table and plot from every finished point in OUT/points (e.g. points of "
                        "several runs copied into one folder, or a look at a run still going)")  # fmt: skip
    p.add_argument("--rgb-lr", type=float, default=PER_STREAM_RGB_LR,
                   help="--starts per-stream: the RGB stream's rate (the flow stream keeps the recipe's 1e-4) (default: %(default)g)")
    p.add_argument("--rgb-freeze-until", default=PER_STREAM_RGB_FREEZE_UNTIL, metavar="BLOCK",
                   help="--starts per-stream: the RGB stream's frozen blocks ('' = none) (default: '%(default)s')")
    p.add_argument("--flow-freeze-until", default=PER_STREAM_FLOW_FREEZE_UNTIL, metavar="BLOCK",
                   help="--starts per-stream: the flow stream's frozen blocks (default: %(default)s, all: only its classifier adapts)")
    p.add_argument("--flow-weight", choices=WEIGHT_CHOICES, default="card",
                   help="fusion weight of the fine-tuned streams: the given model's (card), or re-chosen on one video's picked "
                        "stretches (one animal's if there is one video), held back from training (held-back) (default: %(default)s)")
    p.add_argument("--adapt-test", action="store_true",
                   help="also score each point with every test video's own BatchNorm statistics (stream-run --adapt's: 64 "
                        "unlabelled clips of the video): adapted_* columns and a second table, beside the plain figures")
    p.add_argument("--stretch-s", type=float, default=4.0, help="length of a picked stretch (default: 4)")
    p.add_argument("--score-stride", type=int, default=1, help="stream-run --stride when scoring the training videos (default: 1)")
    p.add_argument("--frame-step", type=int, default=1, help="train on every Nth labelled frame (default: 1)")
    p.add_argument("--eval-frame-step", type=int, default=DEFAULT_EVAL_FRAME_STEP, help=f"measure on every Nth test frame (default: {DEFAULT_EVAL_FRAME_STEP})")
    p.add_argument("--epochs", type=int, default=FINETUNE_RECIPE["epochs"], help="epochs per point, both starts (default: the recipe's %(default)s)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--bn-recalibration-clips", type=int, help="BatchNorm recalibration clips (default: the recipe's for the model start, 64 from random)")
    p.add_argument("--cache-dir", type=Path, default=Path("runs/cache"), help="clip and flow cache (default: runs/cache)")
    p.add_argument("--seed", default="0",
                   help="seeds random picks and training; a comma list (0,1,2) repeats every fine-tuned point per seed, "
                   "and the table gives mean ± sd (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto (default: cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 on a shared machine)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _parse_list(text: str, allowed: Sequence[str], option: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if not items or bad:
        raise UserError(f"{option} {text!r}: expected a comma list of {', '.join(allowed)}")
    return items


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = list(dict.fromkeys(int(t) for t in text.split(",") if t.strip()))
    except ValueError:
        raise UserError(f"--seed {text!r}: expected whole numbers, e.g. 0 or 0,1,2") from None
    if not seeds or min(seeds) < 0:
        raise UserError(f"--seed {text!r}: need one or more seeds >= 0")
    return seeds


def _parse_minutes(text: str) -> list[float]:
    try:
        minutes = sorted({float(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UserError(f"--minutes {text!r}: expected numbers, e.g. 0,1,2,5,10") from None
    if not minutes or minutes[0] < 0:
        raise UserError(f"--minutes {text!r}: need minutes >= 0")
    return minutes


def _labels_for(videos: Sequence[Path], given: Sequence[Path] | None, option: str) -> list[Path]:
    from export.train import LABEL_SUFFIXES, _sibling

    if given is not None and len(given) != len(videos):
        raise UserError(f"{option}: {len(given)} files for {len(videos)} videos; give one per video, in the same order")
    out = []
    for i, v in enumerate(videos):
        if not v.is_file():
            raise UserError(f"{v}: video not found")
        label = given[i] if given is not None else _sibling(v, LABEL_SUFFIXES)
        if label is None or not Path(label).is_file():
            raise UserError(f"{v}: no label file ({option}, or {v.stem}.labels.csv next to it)")
        out.append(Path(label))
    return out


def _sources(videos: Sequence[Path], labels: Sequence[Path], classes: Sequence[str]):
    from export.dataset import sources_from_files
    from export.train import ARENAS_SUFFIX, _sibling

    return [s for v, lab in zip(videos, labels) for s in sources_from_files(v, lab, arenas_json=_sibling(v, (ARENAS_SUFFIX,)), classes=classes)]


def _evaluate(model, test_ds, flow_weight: float, num_classes: int, batch_size: int, device: str) -> dict[str, float]:
    from export.train import predict_streams

    return _scores(predict_streams(model, test_ds, batch_size=batch_size, device=device, progress=False), flow_weight, num_classes)


def _scores(pred, flow_weight: float, num_classes: int) -> dict[str, Any]:
    """A point's figures from each stream's softmax on the test clips (``export.train.StreamPredictions``)."""
    from stream.model import fuse

    log_rgb, log_flow = np.log(np.clip(pred.rgb_probs, 1e-12, None)), np.log(np.clip(pred.flow_probs, 1e-12, None))
    predicted = fuse(log_rgb, log_flow, flow_weight).argmax(1)
    # Not used to choose anything: the sweep shows which stream carried the result and what another
    # weight would have given, so a curve that falls can be read (a stream that got worse, or a
    # weight that no longer fits the fine-tuned streams).
    sweep = weight_sweep(pred.rgb_probs, pred.flow_probs, pred.labels)
    return {"accuracy": float((predicted == pred.labels).mean()), "kappa": cohen_kappa(pred.labels, predicted, num_classes),
            "test_clips": int(pred.labels.size), "flow_weight": float(flow_weight),
            "rgb_accuracy": float((pred.rgb_probs.argmax(1) == pred.labels).mean()),
            "flow_accuracy": float((pred.flow_probs.argmax(1) == pred.labels).mean()),
            "accuracy_by_flow_weight": sweep}  # fmt: skip


def _evaluate_adapted(model, card, test_ds, flow_weight: float, num_classes: int, batch_size: int, device: str,
                      cache_dir: Path | None) -> dict[str, Any]:
    """The point again with each test video scored by the model with that video's own BatchNorm
    statistics (``stream-run --adapt``'s: 64 unlabelled clips of the video, every 15th frame, seed 0;
    ``export.adapt``), so a curve says what the labelled minutes add on top of adapting, not instead of it."""
    from export.adapt import predict_adapted
    from export.train import StreamPredictions
    from stream.adabn import DEFAULT_FRAME_STEP
    from stream.run_config import ADAPT_CLIPS_DEFAULT

    video_of_source = [s.video_path.resolve() for s in test_ds.sources]
    videos = list(dict.fromkeys(video_of_source))
    video_of_item = np.array([videos.index(video_of_source[s]) for s in test_ds.items[:, 0]])
    parts = list(predict_adapted(model, card, test_ds, video_of_item, [[i] for i in range(len(videos))], videos, [None] * len(videos),
                                 count=ADAPT_CLIPS_DEFAULT, seed=0, frame_step=DEFAULT_FRAME_STEP, batch_size=batch_size,
                                 cache_dir=cache_dir, device=device))  # fmt: skip
    pred = StreamPredictions(*(np.concatenate([getattr(p, f) for _, p, _ in parts]) for f in ("rgb_probs", "flow_probs", "labels")))
    scores = _scores(pred, flow_weight, num_classes)
    return {**{f"adapted_{k}": scores[k] for k in ("accuracy", "kappa", "rgb_accuracy", "flow_accuracy")},
            "adapted_variance_change": [round(moved, 4) for _, _, moved in parts]}


@cli_main("export-learning-curve")
def main(argv: list[str] | None = None) -> int:
    import torch

    from export import select as sel
    from export.dataset import ClipDataset, probe_video
    from export.train import FINETUNE_RECIPE, TrainConfig, build_model, seed_everything, train
    from stream.flow import FlowConfig
    from stream.modelfile import CROP_ROI, load_card

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.report_only:
        return _report_only(args.out)
    missing = [o for o, v in (("--init", args.init), ("--train-videos", args.train_videos), ("--test-videos", args.test_videos)) if not v]
    if missing:
        raise UserError(f"{', '.join(missing)} required (or --report-only to tabulate finished points)")
    kind, _, model_arg = args.init.partition(":")
    if kind != "model" or not model_arg:
        raise UserError(f"--init {args.init!r}: expected model:DIR (the model to fine-tune and to pick minutes with)")
    model_dir = Path(model_arg)
    card = load_card(model_dir)
    if card.crop != CROP_ROI:
        raise UserError(f"--init {args.init}: a model trained on {card.crop!r} crops; the learning curve builds {CROP_ROI!r} clips only")
    minutes = _parse_minutes(args.minutes)
    seeds = _parse_seeds(args.seed)
    selects = _parse_list(args.select, sel.STRATEGIES, "--select")
    starts = _parse_list(args.starts, STARTS, "--starts")
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    classes = list(card.classes)
    train_labels = _labels_for(args.train_videos, args.train_labels, "--train-labels")
    test_labels = _labels_for(args.test_videos, args.test_labels, "--test-labels")
    flow_config = FlowConfig(**card.flow)
    fps_values = {round(probe_video(v)[1], 2) for v in [*args.train_videos, *args.test_videos]}
    if len(fps_values) != 1:
        raise UserError(f"videos have different frame rates {sorted(fps_values)}; convert them to one rate first")
    (video_fps,) = fps_values
    stride = max(1, round(video_fps / card.fps))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    def dataset(sources, frame_step: int) -> ClipDataset:
        return ClipDataset(sources, classes, size_px=card.input_size_px, cache_dir=args.cache_dir, stride=stride,
                           frame_step=frame_step, flow_config=flow_config, progress=sys.stderr.isatty())  # fmt: skip

    test_ds = dataset(_sources(args.test_videos, test_labels, classes), args.eval_frame_step)
    print(f"export-learning-curve: {len(test_ds)} held-out test clips from {len(args.test_videos)} videos; scoring the training videos with {card.name}")
    run_dirs = sel.score_videos(args.train_videos, out / "scores", model=model_dir, stride=args.score_stride)
    runs = [a for v, d in zip(args.train_videos, run_dirs) for a in sel.read_scored_run(v, d)]
    count = max(1, math.ceil(max(minutes) * 60.0 / args.stretch_s))
    picks = {(s, seed): sel.select_stretches(runs, count=count, stretch_s=args.stretch_s, strategy=s, seed=seed) for s in selects for seed in seeds}
    truth = dict(zip(args.train_videos, train_labels))
    video_info = {v: probe_video(v) for v in args.train_videos}

    points: list[dict[str, Any]] = []
    test_motion: tuple[np.ndarray, np.ndarray] | None = None  # the test clips' motion features, computed once
    # seed by seed, so that an interrupted run has whole curves; the untouched model is one point for every seed
    plan = [(st, se, m, seed) for seed in seeds for m in minutes if m > 0 for se in selects for st in starts]
    if 0 in minutes and any(st in FINE_TUNED for st in starts):
        plan.insert(0, ("model", NO_SELECTION, 0.0, seeds[0]))

    def label_files_for(stretches, label_dir: Path) -> list[tuple[Path, Path]]:
        """Each video's picked stretches as a filled template: the labels a lab would have given."""
        files = []
        for video in dict.fromkeys(s.video for s in stretches):
            n, vfps, _, _ = video_info[video]
            template = sel.write_template(label_dir / f"{video.stem}{sel.TEMPLATE_SUFFIX}", [s for s in stretches if s.video == video], fps=vfps, num_frames=n)
            files.append((video, sel.fill_template(template, truth[video], label_dir / f"{video.stem}.labels.csv",
                                                   fps=vfps, num_frames=n, classes=classes)))  # fmt: skip
        return files

    for start, select, m, seed in plan:
        held_back = args.flow_weight == "held-back" and m > 0 and start in FINE_TUNED  # motion and the untouched model have no weight to choose
        name = point_name(start, select, m, seed, "held-back" if held_back else "card") if m > 0 else f"{start}-{m:g}min"
        result_path = out / POINTS_DIR / f"{name}.json"
        if result_path.is_file():
            points.append(json.loads(result_path.read_text()))
            if args.adapt_test and start != "motion" and "adapted_accuracy" not in points[-1]:
                log.warning("%s was scored without --adapt-test (its model is not kept); delete %s to train and score it again", name, result_path)
            continue
        t0 = time.monotonic()
        seed_everything(seed)
        if m == 0:  # the model as it comes
            model, _ = _load(model_dir)
            point = {"labelled_minutes": 0.0, "train_clips": 0, "train_time_s": 0.0}
        else:
            k = max(1, math.ceil(m * 60.0 / args.stretch_s))
            chosen = picks[select, seed][:k]
            label_dir = out / "labels" / (f"{select}-{m:g}min" + (f"-seed{seed}" if seed else ""))
            labelled = {"labelled_minutes": round(sum(s.stop_s - s.start_s for s in chosen) / 60.0, 3)}
            trained_on, held = split_held_back(chosen) if held_back else (chosen, [])
            label_files = label_files_for(trained_on, label_dir / "trained" if held_back else label_dir)
            train_ds = dataset(_sources([v for v, _ in label_files], [f for _, f in label_files], classes), args.frame_step).with_augment(True)
            labelled["train_clips"] = len(train_ds)
            if held_back:
                held_files = label_files_for(held, label_dir / "held-back")
                held_ds = dataset(_sources([v for v, _ in held_files], [f for _, f in held_files], classes), HELD_BACK_FRAME_STEP)
                labelled.update(trained_minutes=round(sum(s.stop_s - s.start_s for s in trained_on) / 60.0, 3),
                                held_back_minutes=round(sum(s.stop_s - s.start_s for s in held) / 60.0, 3), held_back_clips=len(held_ds))  # fmt: skip
        if start == "motion":  # nothing trained: thresholds fitted on the labelled frames, as export-fit-motion fits them
            if test_motion is None:
                test_motion = _motion_features(test_ds)
            point = {**labelled, **_motion_point(_motion_features(train_ds.with_augment(False)), test_motion, classes),
                     "train_time_s": round(time.monotonic() - t0, 1)}  # fmt: skip
        elif m > 0:
            if start in FINE_TUNED:
                per_stream = ({"rgb_lr": args.rgb_lr, "rgb_freeze_until": args.rgb_freeze_until, "freeze_until": args.flow_freeze_until}
                              if start == "per-stream" else {"freeze_until": FINETUNE_RECIPE["freeze_until"]})  # fmt: skip
                config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=FINETUNE_RECIPE["optimizer"], lr=FINETUNE_RECIPE["lr"],
                                     lr_floor=FINETUNE_RECIPE["lr_floor"], **per_stream,
                                     bn_recalibration_clips=FINETUNE_RECIPE["bn_recalibration_clips"] if args.bn_recalibration_clips is None else args.bn_recalibration_clips,
                                     seed=seed, device=args.device)  # fmt: skip
                model, _ = build_model(args.init, num_classes=len(classes), dropout_keep_prob=config.dropout_keep_prob, classes=classes)
            else:
                config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer="adam", lr=SCRATCH_LR, lr_floor=SCRATCH_LR_FLOOR,
                                     bn_recalibration_clips=SCRATCH_BN_RECALIBRATION_CLIPS if args.bn_recalibration_clips is None else args.bn_recalibration_clips,
                                     seed=seed, device=args.device)  # fmt: skip
                model, _ = build_model("random", num_classes=len(classes), dropout_keep_prob=config.dropout_keep_prob)
            train(model, train_ds, None, config, out / "work" / name, num_classes=len(classes), resume=True, progress=sys.stderr.isatty())
            point = {**labelled, "train_time_s": round(time.monotonic() - t0, 1), "config": asdict(config)}
        point.update({"start": start, "select": select if m > 0 else NO_SELECTION, "minutes": m, "seed": seed})
        flow_weight = card.flow_weight
        if held_back:  # chosen before the test clips are looked at, from the held-back labels only
            from export.train import predict_streams

            pred = predict_streams(model, held_ds, batch_size=args.batch_size, device=args.device, progress=False)
            sweep = weight_sweep(pred.rgb_probs, pred.flow_probs, pred.labels)
            flow_weight = choose_flow_weight(sweep, card.flow_weight)
            point.update(weight_choice="held-back", card_flow_weight=float(card.flow_weight), held_back_sweep=sweep)
            log.info("%s: flow weight %.1f chosen on %d held-back clips (card's %.1f: %.3f, chosen: %.3f)", name, flow_weight, len(held_ds),
                     card.flow_weight, sweep[f"{card.flow_weight:.1f}"], sweep[f"{flow_weight:.1f}"])  # fmt: skip
        if start != "motion":
            point.update(_evaluate(model, test_ds, flow_weight, len(classes), args.batch_size, args.device))
            if args.adapt_test:
                point.update(_evaluate_adapted(model, card, test_ds, flow_weight, len(classes), args.batch_size, args.device, args.cache_dir))
        _atomic_json(result_path, point)
        points.append(point)
        how = f"thresholds fitted on {point['train_clips']} clips" if start == "motion" else f"{point['train_clips']} training clips, {point['train_time_s']:.0f} s"
        print(f"  {name}: {100 * point['accuracy']:.1f} % agreement (kappa {point['kappa']:.2f}), {how}")

    note = (f"Model {card.name} ({model_dir}); training videos {', '.join(v.name for v in args.train_videos)}; test videos "
            f"{', '.join(v.name for v in args.test_videos)}; {args.epochs} epochs per point, stretches of {args.stretch_s:g} s; "
            f"seeds {', '.join(map(str, seeds))}; flow weight: {args.flow_weight}; "
            f"{time.monotonic() - t_start:.0f} s this run, torch threads {torch.get_num_threads()}, device {args.device}.")  # fmt: skip
    write_table(out, points, note=note)
    plot_curve(out / PLOT_PNG, points, title=f"{card.name}: learning curve on held-out videos")
    print(f"export-learning-curve: wrote {out / TABLE_MD}, {out / TABLE_CSV}, {out / PLOT_PNG}")
    print((out / TABLE_MD).read_text())
    return 0


def _motion_features(ds) -> tuple[np.ndarray, np.ndarray]:
    """(motion feature, label) of every clip: the mean TV-L1 magnitude the motion engine thresholds live."""
    from stream.engine.motion import motion_feature

    features, labels = np.empty(len(ds)), np.empty(len(ds), np.int64)
    for i in range(len(ds)):
        _, flow, y = ds[i]
        features[i] = motion_feature(flow[None])[0]
        labels[i] = int(y)
    return features, labels


def _motion_point(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], classes: list[str]) -> dict[str, Any]:
    """The motion baseline on the same labelled frames: thresholds fitted by kappa, measured per frame on the test clips.

    Per frame and without the minimum-bout rule, like the I3D points beside it (the clip path, no
    decision rules). A class absent from the labelled frames leaves no threshold to fit: the point
    is recorded as not fitted rather than guessed.
    """
    from export.motion_fit import fit_thresholds
    from stream.engine.motion import MotionParams, classify

    try:
        order, thresholds, fit_kappa = fit_thresholds(train[0], train[1], classes)
    except UserError as e:
        log.warning("motion baseline not fitted: %s", e)
        return {"accuracy": float("nan"), "kappa": float("nan"), "test_clips": int(test[1].size), "note": str(e)}
    predicted = classify(test[0], MotionParams(classes_low_to_high=tuple(order), thresholds_px=tuple(thresholds), min_bout_s=0.0), classes)
    return {"accuracy": float((predicted == test[1]).mean()), "kappa": cohen_kappa(test[1], predicted, len(classes)),
            "test_clips": int(test[1].size), "thresholds_px": thresholds, "classes_low_to_high": order, "fit_kappa": fit_kappa}  # fmt: skip


def _report_only(out: Path) -> int:
    files = sorted((out / POINTS_DIR).glob("*.json"))
    if not files:
        raise UserError(f"{out / POINTS_DIR}: no finished points to tabulate; run without --report-only first")
    points = []
    for f in files:
        try:
            point = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{f}: not a learning-curve point ({e})") from None
        if not isinstance(point, dict) or not {"start", "select", "minutes", "accuracy", "kappa"} <= point.keys():
            raise UserError(f"{f}: not a learning-curve point (needs start, select, minutes, accuracy, kappa)")
        points.append(point)
    write_table(out, points, note=f"Tabulated from {len(points)} finished points in {out / POINTS_DIR} (--report-only).")
    plot_curve(out / PLOT_PNG, points)
    print(f"export-learning-curve: wrote {out / TABLE_MD}, {out / TABLE_CSV}, {out / PLOT_PNG} from {len(points)} points")
    print((out / TABLE_MD).read_text())
    return 0


def _load(model_dir: Path):
    from stream.modelfile import load_model

    model, card = load_model(model_dir, device="cpu")
    return model.float(), card
