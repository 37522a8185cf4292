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


# --------------------------------------------------------------------------------------------
# held-out groups, per-recording rates, the honest flow-weight choice


def test_heldout_group_from_simulator_metadata(tmp_path):
    meta = tmp_path / "r1.arenas.json"
    meta.write_text(json.dumps({"arenas": [], "randomized": True, "held_out": ["mouse", "background"], "families": {"mouse": {"colour": "white"}}}))
    assert ev.read_heldout_group(meta, tmp_path / "r1.mp4") == "background+mouse"  # sorted: one name per set of families
    meta.write_text(json.dumps({"arenas": [], "randomized": True, "held_out": []}))
    assert ev.read_heldout_group(meta, tmp_path / "r1.mp4") == ev.NOTHING_HELD_OUT
    meta.write_text(json.dumps({"arenas": []}))  # an arenas file without the metadata: the video is its own group
    assert ev.read_heldout_group(meta, tmp_path / "lab_mouse7.mp4") == "lab_mouse7.mp4"
    assert ev.read_heldout_group(None, tmp_path / "lab_mouse7.mp4") == "lab_mouse7.mp4"
    meta.write_text(json.dumps({"arenas": [], "randomized": True, "held_out": "mouse"}))
    with pytest.raises(ev.UserError, match="held_out"):
        ev.read_heldout_group(meta, tmp_path / "r1.mp4")


def test_prediction_rates_flag_a_model_that_learned_the_recording():
    # recording 0: annotated half swim / half float, predicted float throughout -> flagged
    # recording 1: annotated float throughout, predicted float throughout -> right, not flagged
    # recording 2: mixed and mostly right -> not flagged
    labels = np.array([0] * 10 + [2] * 10 + [2] * 20 + [0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    pred = np.array([2] * 20 + [2] * 20 + [0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    source = np.array([0] * 20 + [1] * 20 + [2] * 10)
    held = held_out(one_hot(pred, 3), one_hot(pred, 3), labels, np.zeros(50, int), source)
    rows = ev.prediction_rates(held, pred, ["swim", "struggle", "float"], ["a", "b", "c"])
    assert [r["near_constant"] for r in rows] == [True, False, False]
    assert rows[0]["annotated"] == {"swim": 0.5, "struggle": 0.0, "float": 0.5}
    assert rows[0]["predicted"] == {"swim": 0.0, "struggle": 0.0, "float": 1.0}
    assert rows[0]["rate_distance"] == pytest.approx(0.5) and rows[0]["accuracy"] == pytest.approx(0.5)
    assert rows[2]["accuracy"] == pytest.approx(0.9)


def test_heldout_groups_accuracy_confusion_immobility_and_spread():
    # group 0 ("background"): videos a, b; group 1 ("mouse"): video c. Class 2 = float = immobile.
    labels = np.array([2, 2, 2, 2, 0, 0, 2, 2, 0, 1, 2, 2])
    pred = np.array([2, 2, 2, 0, 0, 0, 2, 2, 2, 1, 2, 0])
    source = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    group = np.array([0] * 8 + [1] * 4)
    held = held_out(one_hot(pred, 3), one_hot(pred, 3), labels, group, source)
    out = ev.heldout_groups(held, 0.5, ["swim", "struggle", "float"], ["float"], ["a", "b", "c"], [0.5, 0.5, 0.5], ["background", "mouse"])
    g0, g1 = out["groups"]
    assert (g0["group"], g0["clips"], g0["accuracy"]) == ("background", 8, 7 / 8)
    assert g0["accuracy_per_recording"] == {"a": 0.75, "b": 1.0}
    assert g0["confusion"] == [[2, 0, 0], [0, 0, 0], [1, 0, 5]]
    imm_a = g0["immobility"][0]
    assert (imm_a["annotated_s"], imm_a["predicted_s"], imm_a["error_s"], imm_a["error_pct"]) == (2.0, 1.5, -0.5, -25.0)
    assert g0["immobility"][1]["error_pct"] == 0.0
    assert g0["immobile_abs_error_pct_mean"] == pytest.approx(12.5)
    assert g1["accuracy"] == 0.5 and g1["immobility"][0]["error_pct"] == 0.0  # one float missed, one swim called float
    sp = out["spread"]
    assert sp["accuracy_mean"] == pytest.approx((7 / 8 + 0.5) / 2)
    assert sp["accuracy_std"] == pytest.approx(np.std([7 / 8, 0.5], ddof=1))
    assert (sp["accuracy_min"], sp["accuracy_max"]) == (0.5, 7 / 8)


def test_flow_weight_is_chosen_inside_each_fold_on_validation_clips():
    # fold 0's validation says trust RGB (w < 0.5), fold 1's says trust flow (w > 0.5). On the test clips
    # RGB is right in fold 1 and flow in fold 0: the honest choice scores 0 where the sweep's
    # best-on-test would score 0.5 -- and the summary must report the honest number.
    n = 20
    labels = np.arange(n) % 2
    fold = np.repeat([0, 1], n // 2)
    wrong = 1 - labels
    rgb_val = one_hot(np.where(fold == 0, labels, wrong), 2, 0.9)
    flow_val = one_hot(np.where(fold == 0, wrong, labels), 2, 0.9)
    val = held_out(rgb_val, flow_val, labels, fold)
    test = held_out(one_hot(np.where(fold == 0, wrong, labels), 2, 0.9), one_hot(np.where(fold == 0, labels, wrong), 2, 0.9), labels, fold)
    sel = ev.choose_flow_weight_per_fold(val, test, 2)
    assert sel["weight_per_fold"] == [0.4, 0.6]  # every w < 0.5 (> 0.5) is perfect on its validation; ties go nearer 0.5
    assert sel["accuracy_per_fold"] == [0.0, 0.0] and sel["accuracy_mean"] == 0.0
    summary = ev.summarize(test, ["a", "b"], [], ["v"], [1.0], split_by="videos", folds=2, selection=sel)
    assert summary["flow_weight_selection"]["honest"] and summary["flow_weight_selection"]["accuracy_mean"] == 0.0
    assert summary["accuracy_at_best"]["mean"] == pytest.approx(0.5)  # the optimistic sweep maximum, kept for the plot
    no_val = ev.summarize(test, ["a", "b"], [], ["v"], [1.0], split_by="videos", folds=2)
    assert not no_val["flow_weight_selection"]["honest"] and "test predictions" in no_val["flow_weight_selection"]["chosen_on"]
    assert no_val["flow_weight"] == no_val["best_flow_weight"]


def test_default_split_is_by_video_then_arena_then_segments_with_a_warning(caplog):
    from types import SimpleNamespace

    def ds(videos):
        return SimpleNamespace(sources=[SimpleNamespace(video_path=v) for v in videos])

    assert ev.resolve_split(ds(["a", "b", "c"]), 3, "auto") == "videos"
    assert ev.resolve_split(ds(["a", "a", "b", "b"]), 3, "auto") == "arenas"
    with caplog.at_level("WARNING"):
        assert ev.resolve_split(ds(["a", "a"]), 3, "auto") == "segments"
    assert "leak" in caplog.text
    assert ev.resolve_split(ds(["a", "b", "c"]), 3, "segments") == "segments"


def test_heldout_results_report_and_card_metrics(tmp_path):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 90)
    pred = np.where(rng.random(90) < 0.8, labels, 2)
    source = np.arange(90) // 30
    pred[source == 2] = 2  # recording 2 is predicted float throughout
    group = np.array([0, 0, 1])[source]
    held = held_out(one_hot(pred, 3), one_hot(labels, 3, 0.4), labels, group, source)
    names = ["r0.mp4#arena0", "r1.mp4#arena0", "r2.mp4#arena0"]
    summary = ev.summarize(held, ["swim", "struggle", "float"], ["float"], names, [1 / 15] * 3, split_by="held-out groups", folds=2,
                           selection={"flow_weight": 0.3, "chosen_on": "the validation split of the training videos"})  # fmt: skip
    summary["heldout"] = ev.heldout_groups(held, summary["flow_weight"], ["swim", "struggle", "float"], ["float"], names, [1 / 15] * 3, ["background", "background+mouse"])
    summary.update(mode="held-out", name="toy", test_videos=["r0.mp4", "r1.mp4", "r2.mp4"], train_videos=["t.mp4"])
    ev.write_results(tmp_path, summary, held)
    for name in ("heldout_groups.csv", "prediction_rates.csv", "accuracy_by_heldout_group.png", "prediction_rates.png", "report.html", "report.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    page = (tmp_path / "report.md").read_text()
    assert "background+mouse" in page and "NEAR-CONSTANT" in page and "Held-out test report" in page
    for table in [b for b in page.split("\n\n") if b.startswith("|")]:  # every Markdown row has its header's columns
        lines = table.strip().splitlines()
        assert {ln.replace("\\|", "").count("|") for ln in lines} == {lines[0].count("|")}, lines
    assert summary["near_constant_recordings"] == ["r2.mp4#arena0"]
    card = ev.card_metrics(json.loads((tmp_path / "metrics.json").read_text()))
    assert set(card["heldout"]["groups"]) == {"background", "background+mouse"}
    assert card["heldout"]["groups"]["background"]["confusion"] == summary["heldout"]["groups"][0]["confusion"]
    assert card["fused_accuracy_mean"] == pytest.approx(summary["accuracy_by_flow_weight"][3]["accuracy_mean"])
    assert card["flow_weight_chosen_on"].startswith("the validation split")


@pytest.fixture(scope="module")
def heldout_videos(tmp_path_factory):
    """One training and two test simulator videos; one test video carries the randomized
    simulator's metadata (held-out family "mouse"), the other none (its own group)."""
    from export.synth import SynthConfig, render_video

    out = tmp_path_factory.mktemp("heldout")
    train = render_video(SynthConfig(view="side", duration_s=40.0, fps=15.0, arenas=2, arena_size_px=48, seed=11), out / "train")
    tests = [render_video(SynthConfig(view="side", duration_s=20.0, fps=15.0, arenas=1, arena_size_px=48, seed=s), out / f"test{s}") for s in (12, 13)]
    meta = json.loads(tests[0].arenas_json.read_text())
    meta.update(randomized=True, held_out=["mouse"], families={"mouse": {"colour": "grey"}})
    tests[0].arenas_json.write_text(json.dumps(meta))
    return train, tests


@pytest.mark.slow
def test_export_evaluate_heldout_videos_end_to_end(heldout_videos, tmp_path):
    from stream.modelfile import load_model

    train, tests = heldout_videos
    out, model_dir = tmp_path / "eval", tmp_path / "model"
    argv = [
        "--videos", str(train.video_path), "--test-videos", *[str(t.video_path) for t in tests], "--out", str(out),
        "--export-model", str(model_dir), "--cache-dir", str(tmp_path / "cache"), "--size-px", "32", "--frame-step", "5",
        "--flow-preset", "fast", "--epochs", "2", "--clips-per-epoch", "32", "--batch-size", "8", "--optimizer", "adam",
        "--lr", "0.001", "--lr-floor", "0.00001", "--val-folds", "4", "--patience", "0", "--bn-recalibration-clips", "16",
        "--device", "cpu", "--threads", "1", "--folds", "2",
    ]  # fmt: skip
    assert ev.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "held-out"
    # the CV inside the training video: one video with two arenas -> auto splits by arena; each fold
    # chose its weight on its own validation clips
    cv = metrics["cross_validation"]
    assert cv["split_by"] == "arenas" and len(cv["flow_weight_selection"]["weight_per_fold"]) == 2
    groups = {g["group"]: g for g in metrics["heldout"]["groups"]}
    assert set(groups) == {"mouse", tests[1].video_path.name}
    n_test = sum(g["clips"] for g in groups.values())
    assert n_test == metrics["num_clips"] == sum(r["clips"] for r in metrics["prediction_rates"])
    assert metrics["flow_weight_selection"]["honest"] and "validation split of the training videos" in metrics["flow_weight_selection"]["chosen_on"]
    for g in groups.values():
        assert np.sum(g["confusion"]) == g["clips"] and len(g["immobility"]) == 1
    for name in ("report.html", "accuracy_by_heldout_group.png", "prediction_rates.csv", "heldout_groups.csv", "immobility.csv"):
        assert (out / name).stat().st_size > 0, name
    model, card = load_model(model_dir)
    assert card.flow_weight == metrics["flow_weight"] == model.flow_weight
    assert set(card.metrics["heldout"]["groups"]) == set(groups)
    assert card.metrics["heldout"]["spread"]["accuracy_min"] == min(g["accuracy"] for g in groups.values())
    assert card.metrics["cv"].startswith("2-fold by arenas")


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_segment_folds_leave_no_shared_frame_at_any_stride(stride):
    """A clip at stride s spans 16 * s source frames: no training clip may share a frame with a test clip."""
    from types import SimpleNamespace

    from stream.preprocess import clip_indices

    frames = np.arange(0, 600)
    items = np.stack([np.zeros(600, int), frames, (frames // 40) % 3], axis=1)
    ds = SimpleNamespace(items=items, stride=stride, sources=[SimpleNamespace(video_path="v.mp4")])
    for fold in ev.make_folds(ds, 4, "segments"):
        test_frames = set(np.concatenate([clip_indices(int(t), 600, stride) for t in items[fold.test, 1]]).tolist())
        shared = [t for t in items[fold.train, 1] if test_frames & set(clip_indices(int(t), 600, stride).tolist())]
        assert not shared, (stride, shared[:5])
        assert fold.train.size > 0 and fold.test.size > 0
