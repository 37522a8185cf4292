"""Tests of export/evaluate.py: metrics, the flow-weight sweep on stored probabilities, the
majority baseline, immobility per video, the result files, and the real command end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from export import evaluate as ev
from stream.errors import EXIT_USER_ERROR


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def held_out(rgb, flow, labels, fold, source=None, frame=None) -> ev.HeldOut:
    n = len(labels)
    return ev.HeldOut(
        np.asarray(rgb, float), np.asarray(flow, float), np.asarray(labels), np.asarray(fold),
        np.zeros(n, int) if source is None else np.asarray(source), np.arange(n) if frame is None else np.asarray(frame),
    )  # fmt: skip


def one_hot(idx, k, p=0.8):
    out = np.full((len(idx), k), (1 - p) / (k - 1))
    out[np.arange(len(idx)), idx] = p
    return out


def test_confusion_and_scores_match_a_hand_count():
    labels = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    cm = ev.confusion_matrix(labels, pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    s = ev.per_class_scores(cm)
    np.testing.assert_allclose(s["precision"], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(s["recall"], [2 / 3, 0.5, 1.0])
    np.testing.assert_allclose(s["f1"], [0.8, 0.5, 2 / 3])
    assert s["support"].tolist() == [3, 2, 1]
    assert ev.per_class_scores(np.zeros((2, 2)))["f1"].tolist() == [0.0, 0.0]  # undefined -> 0, no warning


def test_sweep_finds_that_fusing_beats_either_stream():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    fold = np.arange(300) % 5
    # RGB is confidently right on classes 0 and 1 but wrong on 2; flow is right on 2 (p=0.6) and
    # unsure-and-wrong elsewhere (p=0.4): any w in (0.68, 0.89) gets every clip right
    rgb_pred = np.where(labels == 2, rng.integers(0, 2, 300), labels)
    flow_pred = np.where(labels == 2, 2, (labels + 1) % 2)
    flow = np.where((labels == 2)[:, None], one_hot(flow_pred, 3, 0.6), one_hot(flow_pred, 3, 0.4))
    held = held_out(one_hot(rgb_pred, 3, 0.9), flow, labels, fold)
    rows = ev.sweep_flow_weight(held, 3)
    assert [r["flow_weight"] for r in rows] == list(ev.FLOW_WEIGHTS)
    by_w = {r["flow_weight"]: r for r in rows}
    assert by_w[0.0]["accuracy_pooled"] == pytest.approx(np.mean(rgb_pred == labels))
    assert by_w[1.0]["accuracy_pooled"] == pytest.approx(np.mean(flow_pred == labels))
    per_fold = [np.mean(rgb_pred[fold == f] == labels[fold == f]) for f in range(5)]
    assert by_w[0.0]["accuracy_mean"] == pytest.approx(np.mean(per_fold))
    assert by_w[0.0]["accuracy_std"] == pytest.approx(np.std(per_fold, ddof=1))
    best = ev.best_flow_weight(rows)
    assert best in (0.7, 0.8) and by_w[best]["accuracy_mean"] == 1.0
    assert by_w[best]["accuracy_mean"] > max(by_w[0.0]["accuracy_mean"], by_w[1.0]["accuracy_mean"])
    assert np.sum(by_w[best]["confusion"]) == 300


def test_best_weight_ties_go_to_smaller_std_then_nearer_half():
    rows = [{"flow_weight": w, "accuracy_mean": 0.9, "accuracy_std": s} for w, s in [(0.0, 0.1), (0.3, 0.05), (0.6, 0.05), (1.0, 0.05)]]
    assert ev.best_flow_weight(rows) == 0.6


def test_majority_baseline_uses_the_other_folds_majority():
    labels = np.array([0, 0, 0, 1, 1, 0, 1, 1, 1, 1])
    fold = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    base = ev.majority_baseline(labels, fold, 2)
    # fold 0 is tested with fold 1's majority (1): 2/5; fold 1 with fold 0's majority (0): 1/5
    assert base["majority_class_per_fold"] == [1, 0]
    assert base["accuracy_per_fold"] == pytest.approx([0.4, 0.2])


def test_immobility_per_video_in_seconds_and_percent():
    labels = np.array([2, 2, 0, 1, 2, 2, 2, 0])
    pred = np.array([2, 0, 0, 1, 2, 2, 2, 2])
    source = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    held = held_out(one_hot(pred, 3), one_hot(pred, 3), labels, np.zeros(8, int), source)
    rows = ev.immobility_per_video(held, pred, [2], ["a", "b"], [0.5, 2.0])
    assert rows[0] == {"video": "a", "evaluated_s": 2.0, "annotated_s": 1.0, "predicted_s": 0.5, "annotated_pct": 50.0, "predicted_pct": 25.0}
    assert rows[1]["annotated_s"] == 6.0 and rows[1]["predicted_s"] == 8.0 and rows[1]["predicted_pct"] == 100.0


def test_heldout_round_trip(tmp_path):
    held = held_out(one_hot([0, 1], 2), one_hot([1, 1], 2), [0, 1], [0, 1])
    held.save(tmp_path / "h.npz")
    back = ev.HeldOut.load(tmp_path / "h.npz")
    np.testing.assert_array_equal(back.flow_probs, held.flow_probs)
    both = ev.HeldOut.concatenate([held, back])
    assert both.labels.tolist() == [0, 1, 0, 1]


def test_write_results_tables_plots_and_report(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 60)
    pred = np.where(rng.random(60) < 0.7, labels, rng.integers(0, 3, 60))
    held = held_out(one_hot(pred, 3), one_hot(labels, 3, 0.5), labels, np.arange(60) % 3, np.arange(60) // 30)
    summary = ev.summarize(held, ["swim", "struggle", "float"], ["float"], ["v1#arena1", "v1#arena2"], [1 / 15, 1 / 15], split_by="segments", folds=3)
    summary["name"] = "toy"
    written = ev.write_results(tmp_path, summary, held)
    for name in ("metrics.json", "accuracy_by_flow_weight.csv", "per_class.csv", "confusion_matrices.csv", "immobility.csv", "predictions.npz", "report.html", "report.md", "accuracy_vs_flow_weight.png", "confusion_best.png"):
        assert (tmp_path / name).is_file(), name
    assert all(p.exists() for p in written)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["best_flow_weight"] in ev.FLOW_WEIGHTS
    with open(tmp_path / "accuracy_by_flow_weight.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 11
    with open(tmp_path / "confusion_matrices.csv") as fh:
        assert len(list(csv.reader(fh))) == 1 + 11 * 3
    assert [r["video"] for r in metrics["immobility_per_video"]] == ["v1#arena1", "v1#arena2"]


def test_bad_arguments_are_one_line_user_errors(tmp_path, capsys):
    assert ev.main(["--videos", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o")]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("export-evaluate: error:") and "missing.mp4" in err and err.count("\n") == 1
    assert ev.main(["--videos", str(tmp_path / "x.mp4"), "--out", str(tmp_path / "o"), "--folds", "1"]) == EXIT_USER_ERROR
    assert "at least 2 folds" in capsys.readouterr().err


@pytest.fixture(scope="module")
def synth_side(tmp_path_factory):
    """A minute of 3-class side-view simulator video with two arenas (labels, BORIS, arenas file)."""
    from export.synth import SynthConfig, render_video

    out = tmp_path_factory.mktemp("synth")
    return render_video(SynthConfig(view="side", duration_s=60.0, fps=15.0, arenas=2, arena_size_px=64, seed=3), out)


@pytest.mark.slow
def test_export_evaluate_end_to_end_beats_majority_baseline(synth_side, tmp_path):
    from stream.modelfile import load_model

    out, model_dir = tmp_path / "eval", tmp_path / "model"
    argv = [
        "--videos", str(synth_side.video_path), "--out", str(out), "--export-model", str(model_dir), "--name", "e2e",
        "--cache-dir", str(tmp_path / "cache"), "--size-px", "64", "--frame-step", "6", "--flow-preset", "fast",
        "--folds", "2", "--epochs", "3", "--clips-per-epoch", "96", "--batch-size", "8", "--optimizer", "adam",
        "--lr", "0.001", "--lr-floor", "0.00001", "--val-folds", "0", "--bn-recalibration-clips", "32",
        "--device", "cpu", "--threads", "1", "--half",
    ]  # fmt: skip
    assert ev.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    best = metrics["accuracy_at_best"]["mean"]
    baseline = metrics["majority_baseline"]["accuracy_mean"]
    assert best >= baseline + 0.1, (best, baseline)
    for name in ("report.html", "report.md", "accuracy_vs_flow_weight.png", "confusion_best.png", "immobility.csv", "training_curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert len(metrics["immobility_per_video"]) == 2
    model, card = load_model(model_dir)
    assert card.flow_weight == metrics["best_flow_weight"] == model.flow_weight
    assert card.training["synthetic"] and card.input_size_px == 64 and card.weights_dtype == "float16"
    assert card.metrics["fused_accuracy_mean"] == pytest.approx(best)
    # a rerun finds every fold's held-out predictions and retrains nothing
    assert ev.main([*argv[:4], *argv[6:]]) == 0
