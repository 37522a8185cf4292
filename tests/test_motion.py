"""The motion-threshold model kind: feature, rule, model folder, engine, checksum."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from stream.errors import UserError
from stream.flow import FlowConfig
from stream.modelfile import ModelCard, ModelFileError, load_card
from stream.engine.motion import MOTION_FILE, MotionEngine, MotionParams, classify, motion_feature, save_motion_model

CLASSES = ["swim", "struggle", "float"]


def _card(**kw) -> ModelCard:
    base = dict(name="motion-test", view="side", classes=list(CLASSES), immobile_classes=["float"], input_size_px=32,
                fps=15.0, flow=dataclasses.asdict(FlowConfig(nscales=1, warps=1)), flow_weight=1.0)
    return ModelCard(**{**base, **kw})


def _params(**kw) -> MotionParams:
    return MotionParams(**{"classes_low_to_high": ("float", "struggle", "swim"), "thresholds_px": (1.0, 3.0),
                           "min_bout_s": 2.0, **kw})


def test_feature_is_mean_flow_magnitude_in_pixels():
    flow = torch.zeros(2, 2, 16, 8, 8)
    flow[0, 0] = 3.0 / 20.0  # u = 3 px, v = 4 px everywhere (encoded: / FLOW_CLIP_PX = 20)
    flow[0, 1] = 4.0 / 20.0
    flow[1, 0, :8] = 1.0  # 20 px in half of the frames
    assert motion_feature(flow) == pytest.approx([5.0, 10.0])


def test_threshold_rule_in_fitted_order():
    p = _params()
    got = classify(np.array([0.0, 0.99, 1.0, 2.9, 3.0, 50.0]), p, CLASSES)
    assert [CLASSES[i] for i in got] == ["float", "float", "struggle", "struggle", "swim", "swim"]


def test_saved_model_runs_as_an_engine_and_stream_run_default_min_bout(tmp_path):
    from stream.engine import build_engine

    d = save_motion_model(tmp_path / "m", _card(), _params())
    card = load_card(d)
    assert card.kind == "motion" and card.weights_file == MOTION_FILE and card.decisions == {"min_bout_s": 2.0}
    engine = build_engine("auto", d, device="cpu")
    assert isinstance(engine, MotionEngine) and engine.input_size_px == 32
    engine.warmup(2)
    flow = np.zeros((3, 2, 16, 32, 32), np.float32)
    flow[1, 0] = 2.0 / 20.0
    flow[2, 0] = 5.0 / 20.0
    probs = engine.predict(np.zeros((3, 3, 16, 32, 32), np.float32), flow)
    assert probs.tolist() == [[0, 0, 1], [0, 1, 0], [1, 0, 0]]  # float, struggle, swim in card order
    engine.close()
    # the fitted minimum bout is stream-run's default for this model, an explicit flag wins
    from stream.run import config_from_argv
    from stream.runner import decision_config

    assert decision_config(config_from_argv(["--video", "x.mp4"]).decisions, card).min_bout_s == 2.0
    assert decision_config(config_from_argv(["--video", "x.mp4", "--min-bout-s", "0"]).decisions, card).min_bout_s == 0.0


def test_checksum_and_card_checks(tmp_path):
    from stream.engine import build_engine

    d = save_motion_model(tmp_path / "m", _card(), _params())
    with pytest.raises(UserError, match="leave --engine at auto"):
        build_engine("onnxruntime", d, device="cpu")
    data = json.loads((d / MOTION_FILE).read_text())
    data["thresholds_px"] = [0.5, 3.0]  # someone edits the parameters by hand
    (d / MOTION_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        build_engine("auto", d, device="cpu")
    card = json.loads((d / "card.json").read_text())
    card["kind"] = "svm"
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="kind must be one of"):
        load_card(d)
    with pytest.raises(ModelFileError, match="non-decreasing"):
        save_motion_model(tmp_path / "bad", _card(), _params(thresholds_px=(3.0, 1.0)))
    with pytest.raises(ModelFileError, match="not the card's classes"):
        save_motion_model(tmp_path / "bad", _card(), _params(classes_low_to_high=("float", "swim", "rest")))


def test_i3d_cards_default_to_kind_i3d(tiny_model):
    assert load_card(tiny_model).kind == "i3d" and load_card(tiny_model).decisions == {}
