"""export-fit-motion: threshold and minimum-bout fits, and the fitted model live and in a validation report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.motion_fit import Recording, fit_min_bout, fit_thresholds
from export.motion_fit import main as fit_main
from stream.engine.motion import MotionParams

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "synth_side.mp4"
DEMO_LABELS = REPO / "demo" / "synth_side.labels.csv"
CLASSES = ["swim", "struggle", "float"]


class _Card:
    classes = CLASSES
    immobile_classes = ["float"]
    fps = 10.0


def test_thresholds_separate_separable_classes_in_the_fitted_order():
    rng = np.random.default_rng(0)
    # struggle moves LESS than swim here (as on the simulator): the order must come from the data
    x = np.concatenate([rng.uniform(0, 1, 120), rng.uniform(2, 3, 80), rng.uniform(5, 6, 40)])
    y = np.array([2] * 120 + [1] * 80 + [0] * 40)
    order, thresholds, kappa = fit_thresholds(x, y, CLASSES)
    assert order == ["float", "struggle", "swim"]
    assert kappa == pytest.approx(1.0)
    assert x[y == 2].max() < thresholds[0] <= x[y == 1].min() and x[y == 1].max() < thresholds[1] <= x[y == 0].min()


def test_thresholds_two_classes_and_overlap():
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    y = np.array([1, 1, 1, 0, 1, 0, 0, 0])  # classes ["mobile", "immobile"]: immobile is low motion
    order, thresholds, kappa = fit_thresholds(x, y, ["mobile", "immobile"])
    assert order == ["immobile", "mobile"] and len(thresholds) == 1
    # best cut: below 0.4 or below 0.6 -> 7 of 8 right, kappa = (7/8 - 1/2) / (1/2) = 0.75
    assert kappa == pytest.approx(0.75)
    with pytest.raises(Exception, match="no labelled frames of immobile"):
        fit_thresholds(x, np.zeros(8, int), ["mobile", "immobile"])


def test_min_bout_removes_short_false_immobility():
    # labels: swim throughout except one 3-s float bout; the motion rule also calls two 0.3-s dips float
    n = 100
    labels = np.zeros(n, np.int64)
    labels[50:80] = 2
    feat = np.full(n, 5.0)
    feat[50:80] = 0.1
    feat[10:13] = 0.1
    feat[30:33] = 0.1
    rec = Recording("v", "a", np.arange(n), np.arange(n) / 10.0, feat, labels)
    params = MotionParams(("float", "struggle", "swim"), (1.0, 3.0), 0.0)
    best, table = fit_min_bout([rec], params, _Card(), candidates_s=(0.0, 0.5, 1.0, 4.0))
    assert best == 0.5  # shortest bout that drops the dips; 4 s would drop the real bout too
    by = {r["min_bout_s"]: r for r in table}
    assert by[0.0]["accuracy"] == pytest.approx(0.94) and by[0.5]["accuracy"] == pytest.approx(1.0)
    assert by[4.0]["accuracy"] == pytest.approx(0.7)


def test_fit_run_live_and_validate_side_by_side(tmp_path, tiny_model, one_torch_thread):
    """Fitted on the demo, the motion model runs in stream-run (its in-sample accuracy is the CSV's) and the
    validation report shows it beside the I3D."""
    from export.validate import main as validate_main
    from stream.outputs.csv_log import read_frames_csv
    from stream.run import main as stream_run

    model = tmp_path / "motion-demo"
    assert fit_main(["--videos", str(DEMO), "--labels", str(DEMO_LABELS), "--out", str(model), "--like",
                     str(tiny_model), "--max-frames", "150"]) == 0  # fmt: skip
    card = json.loads((model / "card.json").read_text())
    assert card["kind"] == "motion" and card["flow"] == json.loads((tiny_model / "card.json").read_text())["flow"]
    assert (model / "fit.png").is_file()
    run = tmp_path / "run"
    assert stream_run(["--video", str(DEMO), "--model", str(model), "--out", str(run), "--no-zmq", "--no-metrics",
                       "-q", "--max-frames", "150"]) == 0  # fmt: skip
    rows = read_frames_csv(run / "arena0.frames.csv")
    labels = [line.split(",")[1] for line in DEMO_LABELS.read_text().splitlines()[1:]]
    accuracy = np.mean([r["behaviour"] == labels[r["frame"]] for r in rows])
    assert len(rows) == 150 and accuracy == pytest.approx(card["metrics"]["in_sample_accuracy"], abs=1e-12)

    out = tmp_path / "val"
    assert validate_main(["--model", str(tiny_model), "--baseline", str(model), "--videos", str(DEMO), "--labels",
                          str(DEMO_LABELS), "--out", str(out), "--max-frames", "150", "--test-duration-s", "60",
                          "--scoring-window-s", "40", "--bin-s", "10"]) == 0  # fmt: skip
    metrics = json.loads((out / "validation.json").read_text())
    kinds = {s["name"]: s["kind"] for s in metrics["scorers"]}
    assert kinds == {"tiny-test": "i3d", "motion-demo": "motion"}
    motion = next(s for s in metrics["scorers"] if s["kind"] == "motion")
    i3d = next(s for s in metrics["scorers"] if s["kind"] == "i3d")
    assert motion["frames"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    beats = i3d["frames"]["kappa"] > motion["frames"]["kappa"]
    assert any("does NOT beat the motion baseline" in f for f in i3d["flags"]) == (not beats)
    page = (out / "validation.html").read_text()
    assert "motion-demo" in page and "tiny-test" in page
    summary = (out / "summary.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in summary[1:]] == ["tiny-test", "motion-demo"]
