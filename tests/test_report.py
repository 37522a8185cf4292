"""Tests of export/report.py: the plots render to real PNGs and the page embeds / links them."""

from __future__ import annotations

import base64
import re

import matplotlib.image as mpimg
import numpy as np

from export import report


def summary() -> dict:
    weights = [round(0.1 * i, 1) for i in range(11)]
    mean = [0.6 + 0.3 * w * (1 - w) for w in weights]
    rows = [{"flow_weight": w, "accuracy_mean": m, "accuracy_std": 0.05, "macro_f1": m - 0.1} for w, m in zip(weights, mean)]
    return {
        "name": "toy-model",
        "note": "Synthetic data & <not> real mice",
        "classes": ["swim", "struggle", "float"],
        "num_clips": 120,
        "folds": 3,
        "split_by": "segments",
        "best_flow_weight": 0.5,
        "majority_baseline": {"accuracy_mean": 0.55, "accuracy_std": 0.02},
        "accuracy_by_flow_weight": rows,
        "per_class_at_best": {c: {"precision": 0.8, "recall": 0.7, "f1": 0.75, "support": 40} for c in ["swim", "struggle", "float"]},
        "immobility_per_video": [{"video": "v#arena1", "evaluated_s": 60.0, "annotated_s": 30.0, "predicted_s": 27.5, "annotated_pct": 50.0, "predicted_pct": 45.8}],
    }


def png_shape(path) -> tuple[int, ...]:
    return mpimg.imread(path).shape


def test_accuracy_plot_is_a_png_with_content(tmp_path):
    path = report.plot_accuracy_vs_flow_weight([0.0, 0.5, 1.0], [0.6, 0.8, 0.7], [0.1, 0.05, 0.0], tmp_path / "a.png", baseline=0.5, best_weight=0.5)
    h, w, _ = png_shape(path)
    assert h > 200 and w > 300
    img = mpimg.imread(path)[..., :3]
    assert img.std() > 0.05  # not a blank canvas


def test_confusion_plot_handles_an_empty_row(tmp_path):
    cm = np.array([[5, 1, 0], [0, 0, 0], [2, 0, 7]])
    path = report.plot_confusion_matrix(cm, ["swim", "struggle", "float"], tmp_path / "cm.png")
    assert png_shape(path)[0] > 150


def test_training_curves_with_and_without_validation(tmp_path):
    hist = [{"epoch": e, "train_loss": 2.0 / e, "train_fused_acc": 0.3 * e, "val_loss": 2.2 / e, "val_fused_acc": 0.25 * e} for e in (1, 2, 3)]
    report.plot_training_curves(hist, tmp_path / "t.png")
    report.plot_training_curves([{k: v for k, v in r.items() if not k.startswith("val")} for r in hist], tmp_path / "t2.png")
    assert (tmp_path / "t.png").stat().st_size > 5000 and (tmp_path / "t2.png").stat().st_size > 5000


def test_report_embeds_images_and_escapes_text(tmp_path):
    s = summary()
    images = [
        report.plot_accuracy_vs_flow_weight([r["flow_weight"] for r in s["accuracy_by_flow_weight"]], [r["accuracy_mean"] for r in s["accuracy_by_flow_weight"]], [0.05] * 11, tmp_path / report.ACCURACY_PLOT),
        report.plot_confusion_matrix(np.eye(3, dtype=int) * 10, s["classes"], tmp_path / report.CONFUSION_PLOT),
    ]
    html_path, md_path = report.write_report(tmp_path, s, images)
    page = html_path.read_text()
    blobs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(blobs) == 2
    assert base64.b64decode(blobs[0]) == images[0].read_bytes()
    assert "&lt;not&gt;" in page and "<not>" not in page
    assert "0.550" in page and "v#arena1" in page
    md = md_path.read_text()
    assert f"]({report.ACCURACY_PLOT})" in md and f"]({report.CONFUSION_PLOT})" in md
    assert md.count("\n| ") >= 11  # the sweep table has a row per weight
