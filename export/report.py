"""Plots and a one-page report of a cross-validation run (written by ``export-evaluate``).

A lab decides whether to trust a model from one page: accuracy against the fusion weight (with
the spread over folds and the majority-class baseline drawn in, so "better than guessing" is
visible at a glance), the confusion matrix at the chosen weight, per-class precision/recall/F1,
and the immobility time per video next to the annotated one -- the figure the FST is about.

The HTML page embeds its PNGs as data URIs so it survives being mailed or copied alone; the
Markdown twin links the PNG files next to it (for a repository or a README).
Matplotlib runs on the Agg backend: no display is needed (servers, CI).
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never try to open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from stream.atomic import atomic_write

__all__ = [
    "ACCURACY_PLOT",
    "CONFUSION_PLOT",
    "TRAINING_PLOT",
    "REPORT_HTML",
    "REPORT_MD",
    "GROUP_PLOT",
    "RATES_PLOT",
    "plot_accuracy_by_group",
    "plot_accuracy_vs_flow_weight",
    "plot_prediction_rates",
    "plot_confusion_matrix",
    "plot_training_curves",
    "write_report",
]

log = logging.getLogger(__name__)

ACCURACY_PLOT = "accuracy_vs_flow_weight.png"
CONFUSION_PLOT = "confusion_best.png"
TRAINING_PLOT = "training_curves.png"
GROUP_PLOT = "accuracy_by_heldout_group.png"
RATES_PLOT = "prediction_rates.png"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
FIGURE_DPI = 110  # sharp enough to read on a laptop, small enough (~30-60 kB) to keep in git


def plot_accuracy_vs_flow_weight(
    weights: Sequence[float],
    mean: Sequence[float],
    std: Sequence[float],
    path: Path,
    *,
    baseline: float | None = None,
    best_weight: float | None = None,
    chosen_weight: float | None = None,
    title: str = "Fused accuracy vs flow weight",
) -> Path:
    """Mean held-out accuracy per fusion weight with +-1 std error bars over folds (the full sweep).

    ``best_weight`` is the sweep's maximum (chosen on these predictions: optimistic); ``chosen_weight``
    the one picked on validation clips, drawn when it differs.
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.errorbar(weights, mean, yerr=std, fmt="o-", capsize=3, color="tab:blue", label="fused (mean +- std over folds)")
    if baseline is not None:
        ax.axhline(baseline, color="tab:grey", linestyle="--", label=f"majority class ({baseline:.2f})")
    if best_weight is not None:
        ax.axvline(best_weight, color="tab:red", linestyle=":", label=f"best on these predictions w = {best_weight:.1f}")
    if chosen_weight is not None and (best_weight is None or abs(chosen_weight - best_weight) > 1e-9):
        ax.axvline(chosen_weight, color="tab:green", linestyle="-.", label=f"chosen on validation w = {chosen_weight:.1f}")
    ax.set_xlabel("flow weight w   (p = w p_flow + (1 - w) p_rgb)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(0.0, 1.02)
    ax.set_xticks(np.linspace(0.0, 1.0, 11))
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: Path, *, title: str = "Confusion matrix") -> Path:
    """Counts in the cells, colour = fraction of the true class (rows sum to 1), so rare classes stay readable."""
    matrix = np.asarray(matrix, dtype=np.int64)
    rows = matrix.sum(axis=1, keepdims=True)
    frac = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=np.float64), where=rows > 0)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.4, 1.1 * k + 1.8))
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{matrix[i, j]}\n{frac[i, j]:.0%}", ha="center", va="center", fontsize=8, color="white" if frac[i, j] > 0.6 else "black")
    ax.set_xticks(range(k), classes, rotation=30, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("annotated")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of row")
    return _save(fig, path)


def plot_accuracy_by_group(
    groups: Sequence[str], accuracy: Sequence[float], std: Sequence[float], path: Path, *, baseline: float | None = None, title: str = "Accuracy per held-out group"
) -> Path:
    """Per-frame accuracy per held-out group; error bars = std over the group's recordings."""
    n = len(groups)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * n + 2.0), 3.8))
    x = np.arange(n)
    ax.bar(x, accuracy, yerr=std, capsize=4, color="tab:blue", alpha=0.8, label="accuracy (+- std over recordings)")
    for i, a in enumerate(accuracy):
        ax.text(i, min(a + 0.03, 0.98), f"{a:.2f}", ha="center", fontsize=8)
    if n:
        ax.axhline(float(np.mean(accuracy)), color="tab:red", linestyle=":", label=f"mean over groups ({np.mean(accuracy):.2f})")
    if baseline is not None:
        ax.axhline(baseline, color="tab:grey", linestyle="--", label=f"majority class ({baseline:.2f})")
    ax.set_xticks(x, list(groups), rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("per-frame accuracy")
    ax.set_ylim(0.0, 1.05)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_prediction_rates(rates: Sequence[dict[str, Any]], classes: Sequence[str], path: Path, *, title: str = "Annotated vs predicted class rates") -> Path:
    """Per recording, two stacked bars: the annotated class mix (A) and the predicted one (P).

    A model that learned the recording instead of the behaviour shows as a one-colour P bar next
    to a mixed A bar (those recordings are marked with !).
    """
    n = len(rates)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * n + 2.5), 3.8))
    colours = plt.get_cmap("tab10").colors
    for i, r in enumerate(rates):
        for j, key in enumerate(("annotated", "predicted")):
            bottom = 0.0
            for c_idx, c in enumerate(classes):
                v = r[key][c]
                ax.bar(i + (j - 0.5) * 0.4, v, width=0.38, bottom=bottom, color=colours[c_idx % 10], label=c if i == 0 and j == 0 else None)
                bottom += v
            ax.text(i + (j - 0.5) * 0.4, 1.01, "AP"[j] + ("!" if j == 1 and r["near_constant"] else ""), ha="center", fontsize=7)
    ax.set_xticks(range(n), [r["recording"] for r in rates], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("fraction of clips")
    ax.set_ylim(0.0, 1.1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def plot_training_curves(history: Sequence[dict[str, Any]], path: Path, *, title: str = "Training") -> Path:
    """Loss and fused accuracy per epoch (train and, when present, validation) from a training log."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(8, 3.2))
    for split, style in (("train", "-"), ("val", "--")):
        if history and f"{split}_loss" in history[0]:
            ax_loss.plot(epochs, [row[f"{split}_loss"] for row in history], style, marker="o", label=split)
            ax_acc.plot(epochs, [row[f"{split}_fused_acc"] for row in history], style, marker="o", label=split)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (rgb CE + flow CE)")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("fused accuracy")
    ax_acc.set_ylim(0.0, 1.02)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# the page


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> tuple[str, str]:
    """The same table as HTML and as Markdown."""
    cells = [[_fmt(v) for v in row] for row in rows]
    h = "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr>"
    h += "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells) + "</table>"
    md = "| " + " | ".join(_md_cell(c) for c in header) + " |\n|" + "---|" * len(header) + "\n"
    md += "".join("| " + " | ".join(_md_cell(c) for c in row) + " |\n" for row in cells)
    return h, md


def _md_cell(text: str) -> str:
    """A ``|`` inside a Markdown cell would end it (group names, file names): escape it."""
    return str(text).replace("|", "\\|")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


_CSS = (
    "body{font-family:sans-serif;max-width:60em;margin:1em auto;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}"
    "th{background:#eee}img{max-width:48%;vertical-align:top}.note{color:#555;font-size:90%}"
)


def write_report(out_dir: Path, summary: dict[str, Any], images: Sequence[Path]) -> tuple[Path, Path]:
    """Write ``report.html`` (images embedded) and ``report.md`` (images linked) from an evaluation summary.

    ``summary`` is what ``export-evaluate`` writes to ``metrics.json``: a cross-validation, or a
    held-out test (``"heldout"``: per-group figures), both with per-recording prediction rates.
    """
    out_dir = Path(out_dir)
    classes = summary["classes"]
    best = summary["best_flow_weight"]
    chosen = summary.get("flow_weight", best)
    selection = summary.get("flow_weight_selection", {})
    baseline = summary["majority_baseline"]
    sweep = summary["accuracy_by_flow_weight"]
    chosen_row = next(r for r in sweep if abs(r["flow_weight"] - chosen) < 1e-9)
    best_row = next(r for r in sweep if abs(r["flow_weight"] - best) < 1e-9)
    heldout = summary.get("heldout")
    spread_over = "held-out groups" if heldout else "folds"

    kind = "Held-out test report" if heldout else "Cross-validation report"
    title = f"{kind}: {summary.get('name', 'model')}"
    facts = [("data", summary.get("data", ""))]
    if heldout:
        facts += [("trained on", ", ".join(summary.get("train_videos", []))), ("tested on", ", ".join(summary.get("test_videos", []))),
                  ("held-out groups", summary["folds"])]  # fmt: skip
    else:
        facts.append(("folds", f"{summary['folds']} ({summary['split_by']})"))
    facts += [
        ("clips (held-out predictions)", summary["num_clips"]),
        ("flow weight (chosen on)", f"{chosen:.1f} ({selection.get('chosen_on', 'these predictions')})"),
        (f"fused accuracy of that choice (mean +- std over {spread_over})", f"{selection.get('accuracy_mean', chosen_row['accuracy_mean']):.3f} +- {selection.get('accuracy_std', chosen_row['accuracy_std']):.3f}"),
        ("best of the sweep on these predictions (optimistic)", f"w = {best:.1f}: {best_row['accuracy_mean']:.3f} +- {best_row['accuracy_std']:.3f}"),
        ("RGB only (w = 0) / flow only (w = 1)", f"{sweep[0]['accuracy_mean']:.3f} / {sweep[-1]['accuracy_mean']:.3f}"),
        ("majority-class baseline", f"{baseline['accuracy_mean']:.3f} +- {baseline['accuracy_std']:.3f}"),
    ]
    if heldout:
        sp = heldout["spread"]
        facts.append(("accuracy across groups (min .. max)", f"{sp['accuracy_min']:.3f} .. {sp['accuracy_max']:.3f}"))
        if sp["immobile_abs_error_pct_mean"] is not None:
            facts.append(("immobile-time error, mean absolute % over groups (worst)", f"{sp['immobile_abs_error_pct_mean']:.1f} % ({sp['immobile_abs_error_pct_max']:.1f} %)"))
    facts += [(k, v) for k, v in summary.get("facts", {}).items()]
    if summary.get("near_constant_recordings"):
        facts.append(("WARNING: near-constant predictions", ", ".join(summary["near_constant_recordings"])))
    tables: list[tuple[str, tuple[str, str]]] = [("", _table(["", ""], facts))]

    if "weight_per_fold" in selection:
        tables.append(("Flow weight chosen inside each fold (on its validation split)", _table(
            ["fold", "chosen weight", "test accuracy"], list(zip(selection["folds"], [f"{w:.1f}" for w in selection["weight_per_fold"]], selection["accuracy_per_fold"])))))  # fmt: skip
    if heldout:
        tables.append((f"Per held-out group at w = {chosen:.1f}", _table(
            ["group", "recordings", "clips", "accuracy", "recording mean", "recording std", "immobile-time abs. error %"],
            [(g["group"], len(g["recordings"]), g["clips"], g["accuracy"], g["accuracy_recording_mean"], g["accuracy_recording_std"],
              "-" if g["immobile_abs_error_pct_mean"] is None else f"{g['immobile_abs_error_pct_mean']:.1f}") for g in heldout["groups"]])))  # fmt: skip
        for g in heldout["groups"]:
            tables.append((f"Confusion matrix, group {g['group']} (rows annotated, columns predicted)", _table(
                ["annotated", *classes], [(c, *g["confusion"][i]) for i, c in enumerate(classes)])))  # fmt: skip
    tables.append(("Accuracy per flow weight (the full sweep)", _table(
        ["flow weight", "accuracy mean", "accuracy std", "macro F1"],
        [(f"{r['flow_weight']:.1f}", r["accuracy_mean"], r["accuracy_std"], r["macro_f1"]) for r in sweep])))  # fmt: skip
    per_class = summary.get("per_class_at_chosen", summary["per_class_at_best"])
    tables.append((f"Per class at w = {chosen:.1f}", _table(
        ["class", "precision", "recall", "F1", "annotated clips"],
        [(c, per_class[c]["precision"], per_class[c]["recall"], per_class[c]["f1"], per_class[c]["support"]) for c in classes])))  # fmt: skip
    imm = summary.get("immobility_per_video", [])
    if imm:
        tables.append((f"Immobility time per video at w = {chosen:.1f}", _table(
            ["video", "annotated s", "predicted s", "annotated %", "predicted %", "error s", "error %"],
            [(v["video"], v["annotated_s"], v["predicted_s"], v["annotated_pct"], v["predicted_pct"], v["predicted_s"] - v["annotated_s"],
              "-" if v.get("error_pct") is None else f"{v['error_pct']:.1f}") for v in imm])))  # fmt: skip
    rates = summary.get("prediction_rates", [])
    if rates:
        tables.append(("Per recording: predicted vs annotated class rates", _table(
            ["recording", "clips", *[f"annotated {c}" for c in classes], *[f"predicted {c}" for c in classes], "accuracy", "flag"],
            [(r["recording"], r["clips"], *(r["annotated"][c] for c in classes), *(r["predicted"][c] for c in classes), r["accuracy"],
              "NEAR-CONSTANT" if r["near_constant"] else "") for r in rates])))  # fmt: skip
    note = html.escape(summary.get("note", ""))
    if heldout:
        closing = ("Every prediction comes from a model that never saw the held-out videos. Groups are the simulator families held out "
                   "of training (from each video's .arenas.json); a video without that metadata is its own group. ")  # fmt: skip
    else:
        closing = "Every prediction comes from the fold model that did not see the clip in training. std is the sample standard deviation over folds. "
    if selection.get("honest", False):
        closing += f"The flow weight was chosen on {selection.get('chosen_on')}, never on the test clips; the sweep is shown for reference. "
    else:
        closing += "There was no validation split (--val-folds 0): the weight was chosen on the test predictions themselves, so its accuracy is slightly optimistic. "
    closing += ("A recording flagged NEAR-CONSTANT got one class for nearly all its clips while its annotations are mixed: the model "
                "recognises the recording (background, light), not the behaviour. Files: metrics.json, *.csv, predictions.npz.")  # fmt: skip

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>{html.escape(title)}</h1>")
    if note:
        parts.append(f"<p class='note'>{note}</p>")
    md = [f"# {title}\n"]
    if note:
        md.append(f"_{summary.get('note', '')}_\n")
    heading, (first_h, first_md) = tables[0]
    parts.append(first_h)
    md.append(first_md)
    for img in images:
        data = base64.b64encode(Path(img).read_bytes()).decode("ascii")
        parts.append(f"<img alt='{html.escape(Path(img).stem)}' src='data:image/png;base64,{data}'>")
    md += [f"![{Path(img).stem}]({Path(img).name})\n" for img in images]
    for heading, (t_h, t_md) in tables[1:]:
        parts += [f"<h2>{html.escape(heading)}</h2>", t_h]
        md += [f"## {heading}\n", t_md]
    parts.append(f"<p class='note'>{html.escape(closing)}</p></body></html>")
    md.append(f"_{closing}_\n")
    html_path = out_dir / REPORT_HTML
    md_path = out_dir / REPORT_MD
    atomic_write(html_path, "\n".join(parts))
    atomic_write(md_path, "\n".join(md))
    log.info("report written to %s and %s", html_path, md_path)
    return html_path, md_path


