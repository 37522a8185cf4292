"""export.streaming_finetune: a clip card fine-tuned for the streaming engine, end to end on a tiny video."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch

from export.streaming_finetune import ClipTargets, main, window_loss
from export.synth import SynthConfig, render_video
from stream.causal_i3d import streaming_state_dict
from stream.errors import UserError
from stream.flow import FlowConfig
from stream.model import FusedI3D
from stream.modelfile import ModelCard, load_card, load_model, save_model

STUDENT_BIAS_SHIFT = [1.0, 0.0, -1.0]  # moves the student's probabilities far from the clip model's


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


def test_window_loss_with_full_distillation_is_the_kl_to_the_clip_probabilities_of_each_stream() -> None:
    torch.manual_seed(1)
    rgb_logits, flow_logits = torch.randn(6, 3), torch.randn(6, 3)
    p_rgb, p_flow = torch.softmax(torch.randn(6, 3), -1), torch.softmax(torch.randn(6, 3), -1)
    p_rgb[4:] = float("nan")  # frames without a clip-model target (--distill-every) add nothing
    p_flow[4:] = float("nan")
    y = torch.tensor([0, 1, 2, -1, 0, 1])
    weights = torch.ones(3)

    def kl(logits, p):  # soft cross-entropy minus the target's entropy, by hand
        return float((-(p * torch.log_softmax(logits, -1)).sum(-1) + (p * p.log()).sum(-1)).mean())

    expected = kl(rgb_logits[:4], p_rgb[:4]) + kl(flow_logits[:4], p_flow[:4])
    got = window_loss(rgb_logits, flow_logits, y, weights, (p_rgb, p_flow), 1.0)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    ce = window_loss(rgb_logits, flow_logits, y, weights)
    half = window_loss(rgb_logits, flow_logits, y, weights, (p_rgb, p_flow), 0.5)
    assert float(half) == pytest.approx(0.5 * float(ce) + 0.5 * expected, rel=1e-5)


def test_distillation_steps_move_the_stream_towards_the_clip_models_probabilities(base_model, tmp_path) -> None:
    from export.streaming_finetune import FinetuneConfig, _Windows, finetune
    from export.train_data import dataset_from_args

    video = render_video(SynthConfig(view="side", duration_s=2.0, arenas=1, arena_size_px=48, seed=3), tmp_path / "v").video_path
    card = load_card(base_model)
    data_args = argparse.Namespace(videos=[video], labels=None, arenas=None, jhuang=None, size_px=32, fps=15.0, frame_step=1,
                                   cache_dir=tmp_path / "cache", flow_preset="fast", device="cpu")
    dataset, _ = dataset_from_args(data_args, card.classes)
    targets = ClipTargets(base_model, dataset)
    assert np.isfinite(targets.rgb[0]).all() and np.allclose(targets.rgb[0].sum(-1), 1.0, atol=1e-5)

    def kl_to_clip(model) -> float:  # over the whole video fed as one segment, unaugmented
        config = FinetuneConfig(window_frames=dataset.num_frames(0) - 7, augment=False)
        model.eval()
        with torch.no_grad():
            _, rgb_logits, flow_logits, _, s, a = _Windows(dataset, config).outputs(model, np.random.default_rng(0))
            rgb_t, flow_t = targets.lookup(s, a, rgb_logits.shape[0])
            return float(window_loss(rgb_logits, flow_logits, torch.full((rgb_logits.shape[0],), -1), torch.ones(3), (rgb_t, flow_t), 1.0))

    model, _ = load_model(base_model)
    with torch.no_grad():  # random weights give near-uniform probabilities to the clip and the stream form alike: move the stream's
        for stream in (model.rgb, model.flow):
            stream.logits.conv3d.bias.add_(torch.tensor(STUDENT_BIAS_SHIFT))
    before = kl_to_clip(model)
    finetune(model, dataset, FinetuneConfig(steps=8, window_frames=16, lr=2e-2, lr_floor=2e-2, train_from="Mixed_5c", augment=False),
             base_model)
    after = kl_to_clip(model)
    assert before > 0.1 and after < 0.2 * before, (before, after)


def test_distill_records_the_clip_card_and_refuses_a_missing_or_streaming_folder(base_model, tmp_path) -> None:
    video = render_video(SynthConfig(view="side", duration_s=2.0, arenas=1, arena_size_px=48, seed=2), tmp_path / "v").video_path
    common = ["--model", str(base_model), "--videos", str(video), "--steps", "1", "--window-frames", "8",
              "--cache-dir", str(tmp_path / "cache"), "--train-from", "Mixed_4b"]
    with pytest.raises(UserError, match="model directory not found"):
        main.__wrapped__([*common, "--out", str(tmp_path / "o"), "--distill", str(tmp_path / "nowhere")])
    out = tmp_path / "distilled"
    assert main([*common, "--out", str(out), "--distill", str(base_model), "--distill-every", "4"]) == 0
    card, clip = load_card(out), load_card(base_model)
    distill = card.training["distill"]
    assert distill["clip_weights_sha256"] == clip.weights_sha256 and distill["weight"] == 1.0
    assert distill["target_frames"] == -(-30 // 4)  # 2 s at 15 fps, every 4th frame
    assert "distilled from the clip model tiny-clip" in card.init
    with pytest.raises(UserError, match="not a clip-trained I3D card"):
        main.__wrapped__([*common, "--out", str(tmp_path / "o2"), "--distill", str(out)])
