"""What ``export-validate`` writes: ``validation.json``, CSV tables, plots and one HTML page.

The page puts every scorer in one table -- the models, the motion baseline and the second person
(the human ceiling) -- so "does the network beat the threshold, and is it as close to rater 1 as
rater 2 is?" is answered at a glance; flags (a model that does not beat the baseline, a recording
predicted as a near-constant class) come first. Plots: the confusion matrix of each scorer, the
immobile seconds against rater 1's with the identity line and a Bland-Altman plot, and the class
shares per recording, labels beside each model's predictions. PNGs are embedded in the HTML so it
survives being mailed alone. Every file is written atomically.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.agreement import MIN_ANIMALS_FOR_AGREEMENT
from stream.atomic import atomic_write
from stream.spreadsheet import spreadsheet_cells

if TYPE_CHECKING:
    from export.validation_results import ScorerResult

__all__ = ["METRICS_JSON", "REPORT_HTML", "agreement_text", "fmt", "write_outputs"]

REPORT_HTML = "validation.html"
METRICS_JSON = "validation.json"
FIGURE_DPI = 110  # as export/report.py: readable on a laptop, small files
_AGREEMENT_COLUMNS = ("n", "pearson_r", "icc_a1", "ba_bias", "ba_sd", "ba_loa_low", "ba_loa_high")
_FEW_ANIMALS_HIDDEN = ("pearson_r", "icc_a1")  # below MIN_ANIMALS_FOR_AGREEMENT animals: words, not a figure


def fmt(v: Any) -> str:
    """Numbers for people: 3 decimals, "-" for undefined (nan/None)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _stat(agreement: Any, key: str) -> Any:
    """``agreement.to_dict()[key]``, but r and ICC of too few animals are the words that say so."""
    value = agreement.to_dict()[key]
    if key in _FEW_ANIMALS_HIDDEN and not agreement.meaningful:
        return agreement.not_meaningful_note()
    return value


def agreement_text(agreement: Any, key: str) -> str:
    """r or ICC for the console: the figure, or why there is none."""
    return agreement.not_meaningful_note() or fmt(agreement.to_dict()[key])


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(spreadsheet_cells(header))
    for row in rows:  # text cells (animal IDs, scorer names) escaped for spreadsheets; numbers as numbers
        w.writerow(["" if (isinstance(v, float) and math.isnan(v)) else (f"{v:.6g}" if isinstance(v, float) else v)
                    for v in spreadsheet_cells(row)])
    return buf.getvalue()


def _tables(scorers: Sequence[ScorerResult], classes: Sequence[str]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    cols = _AGREEMENT_COLUMNS
    summary = (["scorer", "kind", "frames", "accuracy", "kappa", "macro_f1", *[f"immobile_{k}" for k in cols],
                *[f"window_{k}" for k in cols], *[f"bins_{k}" for k in cols], "flags"],
               [[s.name, s.kind, s.frames.frames, s.frames.accuracy, s.frames.kappa, s.frames.macro_f1,
                 *[_stat(s.immobility, k) for k in cols], *[_stat(s.window, k) for k in cols],
                 *[_stat(s.bins_pooled, k) for k in cols], " | ".join(s.flags)] for s in scorers])
    animals = (["scorer", "video", "arena", "animal", "frames_scored", "frames_total", "accuracy", "kappa", "macro_f1",
                "human_immobile_s", "model_immobile_s", "window_human_immobile_s", "window_model_immobile_s",
                *[f"label_share_{c}" for c in classes], *[f"predicted_share_{c}" for c in classes],
                "near_constant_prediction"],
               [[s.name, r.video, r.arena, r.animal, r.agreement.frames, r.frames_total, r.agreement.accuracy, r.agreement.kappa,
                 r.agreement.macro_f1, r.reference_immobile_s, r.other_immobile_s, r.window_reference_immobile_s,
                 r.window_other_immobile_s, *[r.label_share[c] for c in classes],
                 *[r.predicted_share[c] for c in classes], int(r.near_constant)] for s in scorers for r in s.animals])
    bins = (["scorer", "bin", "start_s", "end_s", "human_mean_s", "model_mean_s", *cols],
            [[s.name, b.index, b.start_s, b.end_s, b.reference_mean_s, b.other_mean_s, *[_stat(b.agreement, k) for k in cols]]
             for s in scorers for b in s.bins])
    per_class = (["scorer", "class", "precision", "recall", "f1", "support"],
                 [[s.name, c, s.frames.precision[i], s.frames.recall[i], s.frames.f1[i], s.frames.support[i]]
                  for s in scorers for i, c in enumerate(classes)])
    confusion = (["scorer", "annotated", *[f"predicted_{c}" for c in classes]],
                 [[s.name, c, *s.frames.confusion[i]] for s in scorers for i, c in enumerate(classes)])
    return {"summary": summary, "per_animal": animals, "per_bin": bins, "per_class": per_class, "confusion": confusion}


def _plots(out: Path, scorers: Sequence[ScorerResult], classes: Sequence[str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from export.report import plot_confusion_matrix

    # immobility: scatter with the identity line and Bland-Altman, every scorer in one figure
    fig, (ax_s, ax_b) = plt.subplots(1, 2, figsize=(10, 4))
    lim = 1.0
    for i, s in enumerate(scorers):
        colour, marker = f"C{i}", "osD^v<>"[i % 7]
        per_animal = np.array([(r.reference_immobile_s, r.other_immobile_s) for r in s.animals]).reshape(-1, 2)
        per_bin = np.array(s.bin_points).reshape(-1, 2)
        both = np.concatenate([per_animal, per_bin])
        if both.size == 0:
            continue
        lim = max(lim, float(both.max()))
        ax_s.scatter(per_animal[:, 0], per_animal[:, 1], marker=marker, s=45, color=colour, label=f"{s.name}: animal")
        ax_s.scatter(per_bin[:, 0], per_bin[:, 1], marker=marker, s=12, alpha=0.5, color=colour,
                     label=f"{s.name}: animal x bin")
        ax_b.scatter(per_bin.mean(axis=1), per_bin[:, 1] - per_bin[:, 0], marker=marker, s=14, alpha=0.7, color=colour,
                     label=s.name)
        ba = s.bins_pooled.ba
        for value, style in ((ba.bias, "-"), (ba.loa_low, "--"), (ba.loa_high, "--")):
            if not math.isnan(value):
                ax_b.axhline(value, linestyle=style, color=colour, linewidth=1)
    ax_s.plot([0, lim * 1.05], [0, lim * 1.05], color="grey", linewidth=1, label="identity")
    ax_s.set_xlabel("rater 1: immobile s")
    ax_s.set_ylabel("scorer: immobile s")
    ax_s.set_title("Immobility, scorer vs rater 1", fontsize=10)
    ax_b.axhline(0, color="grey", linewidth=0.8)
    ax_b.set_xlabel("mean of the two (s)")
    ax_b.set_ylabel("scorer - rater 1 (s)")
    ax_b.set_title("Bland-Altman per animal x bin (lines: bias, 95% limits)", fontsize=10)
    for ax in (ax_s, ax_b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    images = [_save(fig, out / "immobility_agreement.png")]
    # class shares per recording: a "labels" bar, then one bar per model; a model that learned the
    # recording shows one colour where the labels show several
    recordings = list(dict.fromkeys(r.name for s in scorers for r in s.animals))
    bars: list[tuple[str, dict[str, float]]] = []
    for rec in recordings:
        found = [(s, r) for s in scorers for r in s.animals if r.name == rec]
        bars.append((f"labels\n{rec}", found[0][1].label_share))
        bars += [(s.name, r.predicted_share) for s, r in found if s.kind != "human"]
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
        images.append(_save(fig, out / "prediction_rates.png"))
    for s in scorers:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s.name)
        images.append(plot_confusion_matrix(np.array(s.frames.confusion), list(classes), out / f"confusion_{safe}.png",
                                            title=f"{s.name} (rows: rater 1)"))
    return images


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return path


_CSS = ("body{font-family:sans-serif;max-width:72em;margin:1em auto;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}"
        "th{background:#eee}img{max-width:100%}.flag{color:#b00;font-weight:bold}.note{color:#555;font-size:90%}")


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    h = "<table><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in header) + "</tr>"
    return h + "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in r) + "</tr>" for r in rows) + "</table>"


def _loa(a: Any) -> str:
    return f"{fmt(a.ba.loa_low)} .. {fmt(a.ba.loa_high)}"


def write_outputs(out: Path, metrics: dict[str, Any], scorers: Sequence[ScorerResult], classes: Sequence[str]) -> Path:
    """``validation.json``, the CSV tables, the plots and ``validation.html``; returns the page's path."""
    atomic_write(out / METRICS_JSON, json.dumps(metrics, indent=1, default=float) + "\n")
    tables = _tables(scorers, classes)
    for name, (header, rows) in tables.items():
        atomic_write(out / f"{name}.csv", _csv_text(header, rows))
    images = _plots(out, scorers, classes)
    settings = metrics["settings"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Validation</title><style>{_CSS}</style></head><body>",
             "<h1>Validation against annotations</h1>",
             "<p class='note'>Every model was run by stream-run itself (capture, resampling, flow settings of its card, "
             "engine and decision rules) with: " + html.escape(", ".join(f"{k}={v}" for k, v in settings.items())) +
             ". Only frames rater 1 labelled are scored. Videos: " + html.escape(", ".join(metrics["videos"])) + "</p>"]
    flags = [(s.name, f) for s in scorers for f in s.flags]
    if flags:
        parts.append("<h2>Flags</h2><ul>" + "".join(f"<li class='flag'>{html.escape(n)}: {html.escape(f)}</li>"
                                                     for n, f in flags) + "</ul>")
    head = ["scorer", "kind", "frames", "accuracy", "kappa", "macro F1", "immobility r", "ICC(A,1)", "bias s",
            "95% LoA s", "window ICC", "animal x bin n", "r", "ICC(A,1)", "bias s", "95% LoA s"]
    rows = [[s.name, s.kind, s.frames.frames, s.frames.accuracy, s.frames.kappa, s.frames.macro_f1,
             _stat(s.immobility, "pearson_r"), _stat(s.immobility, "icc_a1"), s.immobility.ba.bias, _loa(s.immobility),
             _stat(s.window, "icc_a1"), s.bins_pooled.n, _stat(s.bins_pooled, "pearson_r"), _stat(s.bins_pooled, "icc_a1"),
             s.bins_pooled.ba.bias, _loa(s.bins_pooled)]
            for s in scorers]
    parts += ["<h2>Side by side</h2>", _html_table(head, rows),
              "<p class='note'>Immobility r / ICC / Bland-Altman are over animals (video x arena); 'animal x bin' pools "
              f"every (animal, {settings['bin_s']:g}-s bin) pair, which still gives a figure with few animals. "
              "'-' = undefined (fewer than 2 animals, or constant values); r and ICC of fewer than "
              f"{MIN_ANIMALS_FOR_AGREEMENT} animals are 'not meaningful' (2 animals always give r = +-1). ICC(A,1): two-way, absolute agreement, single "
              "measures (McGraw &amp; Wong 1996). Bias: scorer minus rater 1.</p>"]
    for img in images:
        data = base64.b64encode(Path(img).read_bytes()).decode("ascii")
        parts.append(f"<img alt='{html.escape(Path(img).stem)}' src='data:image/png;base64,{data}'>")
    for title, key in (("Per recording: agreement and class shares (labels vs predictions)", "per_animal"),
                       ("Per time bin", "per_bin"), ("Per class", "per_class"), ("Confusion matrices", "confusion")):
        header, trs = tables[key]
        parts += [f"<h2>{title}</h2>", _html_table(header, trs)]
    parts += ["<h2>Scoring window</h2>",
              _html_table(["scorer", "start s", "end s", *_AGREEMENT_COLUMNS],
                          [[s.name, *s.window_s, *[_stat(s.window, k) for k in _AGREEMENT_COLUMNS]] for s in scorers]),
              "<p class='note'>Files: validation.json, summary.csv, per_animal.csv, per_bin.csv, per_class.csv, "
              "confusion.csv, runs/&lt;model&gt;/&lt;video&gt;/ (stream-run's own outputs).</p></body></html>"]
    path = out / REPORT_HTML
    atomic_write(path, "\n".join(parts))
    return path
