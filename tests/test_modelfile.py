"""Model directories: safetensors weights + card, checksums, consistency checks."""

from __future__ import annotations

import json

import pytest
import torch

from stream.model import FusedI3D
from stream.modelfile import CARD_FILE, ModelCard, ModelFileError, load_card, load_model, save_model

FLOW = {"tau": 0.25, "lambda_": 0.15, "theta": 0.3}


def make_card(**overrides) -> ModelCard:
    base = dict(
        name="tiny", view="side", classes=["swim", "struggle", "float"], immobile_classes=["float"],
        input_size_px=32, fps=15.0, flow=dict(FLOW), flow_weight=0.4,
        training={"data": "synthetic (swim-stream simulator)"},
    )  # fmt: skip
    base.update(overrides)
    return ModelCard(**base)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return FusedI3D(num_classes=3, flow_weight=0.4).eval()


@pytest.mark.parametrize("half", [False, True])
def test_round_trip(tmp_path, tiny_model, half):
    save_model(tiny_model, make_card(), tmp_path / "m", half=half)
    model, card = load_model(tmp_path / "m")
    assert card.classes == ["swim", "struggle", "float"] and card.flow == FLOW and card.flow_weight == 0.4
    assert len(card.weights_sha256) == 64 and card.weights_dtype == ("float16" if half else "float32")
    assert model.flow_weight == 0.4 and not model.training
    rgb, flow = torch.randn(1, 3, 16, 32, 32), torch.randn(1, 2, 16, 32, 32)
    with torch.no_grad():
        a, b = tiny_model(rgb, flow)[0], model(rgb, flow)[0]
    assert torch.allclose(a, b, atol=1e-2 if half else 1e-6)
    assert all(v.dtype in (torch.float32, torch.int64) for v in model.state_dict().values())


def test_checksum_and_truncation(tmp_path, tiny_model):
    d = save_model(tiny_model, make_card(), tmp_path / "m")
    weights = d / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="model.safetensors: checksum mismatch"):
        load_model(d)
    weights.write_bytes(bytes(data[:5000]))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_model(d)
    with pytest.raises(ModelFileError, match="cannot read safetensors"):
        load_model(d, verify=False)


def test_card_classes_disagree_with_weights(tmp_path, tiny_model):
    d = save_model(tiny_model, make_card(), tmp_path / "m")
    card = json.loads((d / CARD_FILE).read_text())
    card["classes"] = ["mobile", "immobile"]
    card["immobile_classes"] = ["immobile"]
    (d / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match=r"card lists 2 classes .* weights have \[3\] outputs"):
        load_model(d)


def test_bad_cards(tmp_path, tiny_model):
    with pytest.raises(ModelFileError, match="model directory not found"):
        load_card(tmp_path / "nope")
    d = save_model(tiny_model, make_card(), tmp_path / "m")
    (d / CARD_FILE).write_text("{not json")
    with pytest.raises(ModelFileError, match="card.json: not valid JSON"):
        load_card(d)
    (d / CARD_FILE).write_text(json.dumps({"name": "x"}))
    with pytest.raises(ModelFileError, match="missing field"):
        load_card(d)
    with pytest.raises(ModelFileError, match="immobile_classes"):
        make_card(immobile_classes=["rest"]).validate()
