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

__all__ = [
    "ACCURACY_PLOT",
    "CONFUSION_PLOT",
    "TRAINING_PLOT",
    "REPORT_HTML",
    "REPORT_MD",
    "plot_accuracy_vs_flow_weight",
    "plot_confusion_matrix",
    "plot_training_curves",
    "write_report",
]

log = logging.getLogger(__name__)

ACCURACY_PLOT = "accuracy_vs_flow_weight.png"
CONFUSION_PLOT = "confusion_best.png"
TRAINING_PLOT = "training_curves.png"
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
    title: str = "Fused accuracy vs flow weight",
) -> Path:
    """Mean held-out accuracy per fusion weight with +-1 std error bars over folds."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.errorbar(weights, mean, yerr=std, fmt="o-", capsize=3, color="tab:blue", label="fused (mean +- std over folds)")
    if baseline is not None:
        ax.axhline(baseline, color="tab:grey", linestyle="--", label=f"majority class ({baseline:.2f})")
    if best_weight is not None:
        ax.axvline(best_weight, color="tab:red", linestyle=":", label=f"best w = {best_weight:.1f}")
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
    md = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    md += "".join("| " + " | ".join(row) + " |\n" for row in cells)
    return h, md


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

    ``summary`` is what ``export-evaluate`` writes to ``metrics.json``.
    """
    out_dir = Path(out_dir)
    classes = summary["classes"]
    best = summary["best_flow_weight"]
    baseline = summary["majority_baseline"]
    sweep = summary["accuracy_by_flow_weight"]
    best_row = next(r for r in sweep if abs(r["flow_weight"] - best) < 1e-9)

    title = f"Cross-validation report: {summary.get('name', 'model')}"
    facts = [
        ("data", summary.get("data", "")),
        ("clips (held-out predictions)", summary["num_clips"]),
        ("folds", f"{summary['folds']} ({summary['split_by']})"),
        ("best flow weight", f"{best:.1f}"),
        ("fused accuracy at best weight", f"{best_row['accuracy_mean']:.3f} +- {best_row['accuracy_std']:.3f}"),
        ("RGB only (w = 0) / flow only (w = 1)", f"{sweep[0]['accuracy_mean']:.3f} / {sweep[-1]['accuracy_mean']:.3f}"),
        ("majority-class baseline", f"{baseline['accuracy_mean']:.3f} +- {baseline['accuracy_std']:.3f}"),
    ]
    facts += [(k, v) for k, v in summary.get("facts", {}).items()]
    facts_h, facts_md = _table(["", ""], facts)
    sweep_h, sweep_md = _table(
        ["flow weight", "accuracy mean", "accuracy std", "macro F1"],
        [(f"{r['flow_weight']:.1f}", r["accuracy_mean"], r["accuracy_std"], r["macro_f1"]) for r in sweep],
    )
    per_class = summary["per_class_at_best"]
    cls_h, cls_md = _table(
        ["class", "precision", "recall", "F1", "annotated clips"],
        [(c, per_class[c]["precision"], per_class[c]["recall"], per_class[c]["f1"], per_class[c]["support"]) for c in classes],
    )
    imm = summary.get("immobility_per_video", [])
    imm_h, imm_md = _table(
        ["video", "annotated s", "predicted s", "annotated %", "predicted %", "error s"],
        [(v["video"], v["annotated_s"], v["predicted_s"], v["annotated_pct"], v["predicted_pct"], v["predicted_s"] - v["annotated_s"]) for v in imm],
    )
    note = html.escape(summary.get("note", ""))

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>{html.escape(title)}</h1>")
    if note:
        parts.append(f"<p class='note'>{note}</p>")
    parts.append(facts_h)
    for img in images:
        data = base64.b64encode(Path(img).read_bytes()).decode("ascii")
        parts.append(f"<img alt='{html.escape(Path(img).stem)}' src='data:image/png;base64,{data}'>")
    parts += ["<h2>Accuracy per flow weight</h2>", sweep_h, f"<h2>Per class at w = {best:.1f}</h2>", cls_h]
    if imm:
        parts += [f"<h2>Immobility time per video at w = {best:.1f}</h2>", imm_h]
    parts.append(
        "<p class='note'>Every prediction comes from the fold model that did not see the clip in training. "
        "std is the sample standard deviation over folds. The best weight is picked on these same held-out "
        "predictions, so its accuracy is slightly optimistic. Files: metrics.json, accuracy_by_flow_weight.csv, "
        "per_class.csv, confusion_matrices.csv, immobility.csv, predictions.npz.</p></body></html>"
    )
    html_path = out_dir / REPORT_HTML
    html_path.write_text("\n".join(parts))

    md = [f"# {title}\n"]
    if note:
        md.append(f"_{summary.get('note', '')}_\n")
    md.append(facts_md)
    md += [f"![{Path(img).stem}]({Path(img).name})\n" for img in images]
    md += ["## Accuracy per flow weight\n", sweep_md, f"## Per class at w = {best:.1f}\n", cls_md]
    if imm:
        md += [f"## Immobility time per video at w = {best:.1f}\n", imm_md]
    md_path = out_dir / REPORT_MD
    md_path.write_text("\n".join(md))
    log.info("report written to %s and %s", html_path, md_path)
    return html_path, md_path
