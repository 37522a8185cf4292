"""export.streaming_finetune: a clip card fine-tuned for the streaming engine, end to end on a tiny video."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from export.streaming_finetune import main
from export.synth import SynthConfig, render_video
from stream.causal_i3d import streaming_state_dict
from stream.errors import UserError
from stream.flow import FlowConfig
from stream.model import FusedI3D
from stream.modelfile import ModelCard, load_card, load_model, save_model


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A 32 px clip card with the fast TV-L1 settings (export-train's data loading offers that preset)."""
    torch.manual_seed(0)
    card = ModelCard(name="tiny-clip", view="side", classes=["swim", "struggle", "float"], immobile_classes=["float"],
                     input_size_px=32, fps=15.0, flow=dataclasses.asdict(FlowConfig.fast()), flow_weight=0.5)
    return save_model(FusedI3D(num_classes=3), card, tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.mark.parametrize("mode", [[], ["--cached-stem"]])
def test_finetune_writes_a_card_trained_for_streaming_that_the_engine_runs_exactly(base_model, tmp_path, mode) -> None:
    video = render_video(SynthConfig(view="side", duration_s=2.0, arenas=1, arena_size_px=48, seed=2), tmp_path / "v").video_path
    out = tmp_path / "streaming"
    assert main(["--model", str(base_model), "--videos", str(video), "--out", str(out), "--steps", "2", "--window-frames", "8",
                 "--cache-dir", str(tmp_path / "cache"), "--train-from", "Mixed_4b", *mode]) == 0
    card = load_card(out)
    assert card.trained_for == "streaming" and card.name == "tiny-clip-streaming"
    assert card.training["steps_run"] == 2 and card.training["base_model"]["name"] == "tiny-clip"
    assert card.training["check_max_prob_diff"] < 1e-4  # the streaming engine on the folder vs the parallel form
    tuned, _ = load_model(out)
    base, _ = load_model(base_model)
    folded = streaming_state_dict(base)
    state = tuned.state_dict()
    assert float(state["rgb.Conv3d_1a_7x7.conv3d.weight"][:, :, 4:].abs().max()) == 0.0  # after-now taps: zero
    torch.testing.assert_close(state["rgb.Mixed_3c.b1b.conv3d.weight"], folded["rgb.Mixed_3c.b1b.conv3d.weight"])  # frozen
    assert not torch.equal(state["flow.Mixed_4b.b1b.conv3d.weight"], folded["flow.Mixed_4b.b1b.conv3d.weight"])  # trained
    torch.testing.assert_close(state["rgb.Mixed_4b.b1b.bn.running_mean"], folded["rgb.Mixed_4b.b1b.bn.running_mean"])  # BN frozen


def test_a_card_with_other_flow_settings_is_refused(base_model, tmp_path) -> None:
    other = tmp_path / "other"
    card = json.loads((base_model / "card.json").read_text())
    (other).mkdir()
    for f in base_model.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "card.json").write_text(json.dumps({**card, "flow": {**card["flow"], "inner_iterations": 3}}))
    with pytest.raises(UserError, match="TV-L1 settings are neither"):
        main.__wrapped__(["--model", str(other), "--videos", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "o")])
