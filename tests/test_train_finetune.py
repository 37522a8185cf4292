"""Tests of the fine-tuning options of export/train.py: --freeze-until and --recipe finetune."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from export import train as tr
from stream.errors import UserError
from stream.model import I3D, FusedI3D

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TwoClips(Dataset):
    """Two random 32 px clips of different classes: enough for one optimizer step of the real I3D."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.labels = np.array([0, 1])
        self.rgb = torch.randn(2, 3, 16, 32, 32, generator=g)
        self.flow = torch.randn(2, 2, 16, 32, 32, generator=g)

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):
        return self.rgb[i], self.flow[i], torch.tensor(self.labels[i])


def test_freezable_blocks_are_the_i3d_blocks_in_forward_order():
    names = [n for n, _ in I3D(num_classes=2).named_children()]
    assert tuple(names[: len(tr.FREEZABLE_BLOCKS)]) == tr.FREEZABLE_BLOCKS
    assert names[len(tr.FREEZABLE_BLOCKS) :] == ["dropout", "logits"]


def test_frozen_blocks_keep_weights_and_batchnorm_statistics(tmp_path):
    torch.manual_seed(0)
    model = FusedI3D(num_classes=2)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = tr.TrainConfig(epochs=1, batch_size=2, lr=1e-2, lr_floor=1e-4, optimizer="adam", device="cpu",
                            freeze_until="Mixed_3b", bn_recalibration_clips=2, patience_epochs=0)  # fmt: skip
    tr.train(model, TwoClips(), None, config, tmp_path, num_classes=2, progress=False)
    after = model.state_dict()
    frozen = ("Conv3d_1a_7x7.", "Conv3d_2b_1x1.", "Conv3d_2c_3x3.", "Mixed_3b.")
    for stream in ("rgb", "flow"):
        for key in before:
            if not key.startswith(stream + ".") or key.endswith("num_batches_tracked"):
                continue
            block = key.split(".", 1)[1]
            if block.startswith(frozen):  # weights and running statistics untouched, also by the BN recalibration
                assert torch.equal(before[key], after[key]), key
        assert not torch.equal(before[f"{stream}.Mixed_3c.b0.conv3d.weight"], after[f"{stream}.Mixed_3c.b0.conv3d.weight"])
        assert not torch.equal(before[f"{stream}.Mixed_3c.b0.bn.running_mean"], after[f"{stream}.Mixed_3c.b0.bn.running_mean"])
    assert all(p.requires_grad for p in model.parameters())  # the model leaves train() trainable again


def test_unknown_freeze_block_is_a_user_error():
    with pytest.raises(UserError, match="freeze-until 'Mixed_9z'"):
        tr.TrainConfig(freeze_until="Mixed_9z")


def test_recipe_fills_defaults_and_explicit_options_win():
    parser = tr.build_parser()
    base = ["--videos", "v.mp4", "--out", "m", "--init", "model:trained_models/fst-side-64"]
    plain = tr.parse_with_recipe(parser, base)
    assert (plain.lr, plain.epochs, plain.freeze_until, plain.val_folds) == (1e-3, 20, "", 5)
    tuned = tr.parse_with_recipe(parser, [*base, "--recipe", "finetune"])
    for key, value in tr.FINETUNE_RECIPE.items():
        assert getattr(tuned, key) == value
    mine = tr.parse_with_recipe(parser, [*base, "--recipe", "finetune", "--lr", "0.001", "--freeze-until", "", "--val-folds=5"])
    assert (mine.lr, mine.freeze_until, mine.val_folds, mine.epochs) == (1e-3, "", 5, tr.FINETUNE_RECIPE["epochs"])
    assert tr.config_from_args(tuned).freeze_until == "Mixed_3c"
    assert (tuned.size_px, tuned.fps, tuned.flow_preset, tuned.classes) == (64, 15.0, "fast", "swim,struggle,float")  # the card's
    assert tr.parse_with_recipe(parser, [*base, "--recipe", "finetune", "--size-px", "112"]).size_px == 112
    assert parser.parse_args(base).lr == 1e-3  # the parser's defaults are restored after the second parse


def test_fine_tuning_on_the_same_classes_keeps_the_trained_classifiers(tiny_model):
    from stream.modelfile import load_model

    source, card = load_model(tiny_model)
    kept, text = tr.build_model(f"model:{tiny_model}", num_classes=3, classes=card.classes)
    assert "kept" in text and kept.flow_weight == card.flow_weight
    assert torch.equal(kept.rgb.logits.conv3d.weight, source.rgb.logits.conv3d.weight)
    other, text = tr.build_model(f"model:{tiny_model}", num_classes=2, classes=["mobile", "immobile"])
    assert "replaced" in text and other.num_classes == 2 and other.flow_weight == 0.5
    reordered, _ = tr.build_model(f"model:{tiny_model}", num_classes=3, classes=list(reversed(card.classes)))
    assert not torch.equal(reordered.rgb.logits.conv3d.weight, source.rgb.logits.conv3d.weight)  # logit order matters
    assert torch.equal(reordered.rgb.Mixed_5c.b0.conv3d.weight, source.rgb.Mixed_5c.b0.conv3d.weight)  # the backbone is kept


def test_per_stream_recipe_trains_the_rgb_stem_and_keeps_the_flow_stem(tmp_path):
    """--rgb-freeze-until '' --rgb-lr: the RGB stream learns from its first block at its own rate; flow stays frozen as the recipe says."""
    torch.manual_seed(0)
    model = FusedI3D(num_classes=2)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = tr.TrainConfig(epochs=1, batch_size=2, lr=1e-4, lr_floor=1e-6, optimizer="adam", device="cpu", freeze_until="Mixed_3b",
                            rgb_freeze_until="", rgb_lr=1e-2, bn_recalibration_clips=0, patience_epochs=0)  # fmt: skip
    result = tr.train(model, TwoClips(), None, config, tmp_path, num_classes=2, progress=False)
    after = model.state_dict()
    stem = "Conv3d_1a_7x7.conv3d.weight"
    assert torch.equal(before[f"flow.{stem}"], after[f"flow.{stem}"])
    assert not torch.equal(before[f"rgb.{stem}"], after[f"rgb.{stem}"])
    # one Adam step moves a weight by about its rate: the RGB stream's block moves ~100x the flow stream's
    moved = {s: (after[f"{s}.Mixed_3c.b0.conv3d.weight"] - before[f"{s}.Mixed_3c.b0.conv3d.weight"]).abs().max().item() for s in ("rgb", "flow")}
    assert moved["rgb"] > 20 * moved["flow"] > 0
    row = result.history[0]
    assert row["lr"] == pytest.approx(1e-6) and row["rgb_lr"] == pytest.approx(1e-6)  # one step: both cosines ended at the same floor


def test_per_stream_options_parse_and_validate():
    parser = tr.build_parser()
    args = tr.parse_with_recipe(parser, ["--videos", "v.mp4", "--out", "m", "--init", "model:trained_models/fst-side-64", "--recipe", "finetune",
                                         "--rgb-lr", "0.001", "--rgb-freeze-until", ""])  # fmt: skip
    config = tr.config_from_args(args)
    assert (config.freeze_until, config.rgb_freeze_until, config.lr, config.rgb_lr) == ("Mixed_3c", "", 1e-4, 1e-3)
    assert tr.config_from_args(tr.parse_with_recipe(parser, ["--videos", "v.mp4", "--out", "m"])).rgb_lr is None
    with pytest.raises(UserError, match="rgb-freeze-until 'Mixed_9z'"):
        tr.TrainConfig(rgb_freeze_until="Mixed_9z")
    with pytest.raises(UserError, match="RGB lr"):
        tr.TrainConfig(lr_floor=1e-3, rgb_lr=1e-4)


def test_recipe_fine_tunes_a_mouse_crop_model_on_mouse_crops(tiny_model, tmp_path):
    """Issue 21: a model that learnt mouse windows is fine-tuned on mouse windows, unless --crop says otherwise."""
    import json
    import shutil

    model = tmp_path / "mouse"
    shutil.copytree(tiny_model, model)
    card = json.loads((model / "card.json").read_text())
    (model / "card.json").write_text(json.dumps({**card, "crop": "mouse"}))
    base = ["--videos", "v.mp4", "--out", "m", "--init", f"model:{model}", "--recipe", "finetune"]
    assert tr.parse_with_recipe(tr.build_parser(), base).crop == "mouse"
    assert tr.parse_with_recipe(tr.build_parser(), [*base, "--crop", "roi"]).crop == "roi"


def test_flow_weight_option_takes_a_weight_or_auto(tiny_model):
    base = ["--videos", "v.mp4", "--out", "m"]
    assert tr.build_parser().parse_args([*base, "--flow-weight", "0.3"]).flow_weight == 0.3
    assert tr.build_parser().parse_args([*base, "--flow-weight", "AUTO"]).flow_weight == "auto"
    for bad in ("1.5", "nan", "heavy"):
        with pytest.raises(SystemExit):
            tr.build_parser().parse_args([*base, "--flow-weight", bad])
    assert tr._prior_flow_weight(f"model:{tiny_model}") == 0.5 and tr._prior_flow_weight("random") == 0.5


def test_flow_weight_auto_is_chosen_on_the_validation_split(tmp_path, tiny_model, capsys):
    """--recipe finetune --val-folds 3 --flow-weight auto: the card's weight is the sweep's choice on one held-back arena (one video), and the sweep is in the card."""
    import json
    import shutil

    from export.flow_weight import choose_flow_weight
    from export.synth import SynthConfig, render_video
    from stream.modelfile import load_model

    model = tmp_path / "start"
    shutil.copytree(tiny_model, model)
    card = json.loads((model / "card.json").read_text())
    (model / "card.json").write_text(json.dumps({**card, "flow_weight": 0.8}))  # the prior a tie keeps
    synth = render_video(SynthConfig(view="side", duration_s=6.0, fps=15.0, arenas=2, arena_size_px=48, seed=5), tmp_path / "data")
    common = ["--videos", str(synth.video_path), "--init", f"model:{model}", "--recipe", "finetune", "--epochs", "1", "--batch-size", "4",
              "--frame-step", "3", "--device", "cpu", "--bn-recalibration-clips", "4", "--cache-dir", str(tmp_path / "cache"),
              "--work-dir", str(tmp_path / "work"), "--flow-weight", "auto"]  # fmt: skip
    assert tr.main([*common, "--out", str(tmp_path / "no-val")]) == 2  # the recipe has no validation split
    assert "--val-folds" in capsys.readouterr().err
    assert tr.main([*common, "--val-folds", "3", "--patience", "0", "--out", str(tmp_path / "tuned")]) == 0
    assert "flow weight" in capsys.readouterr().out
    _, tuned = load_model(tmp_path / "tuned")
    choice = tuned.training["flow_weight_choice"]
    assert choice["clips"] == tuned.training["val_clips"] > 0 and choice["tie_prior"] == 0.8
    assert tuned.training["train_clips"] == tuned.training["val_clips"]  # 2 arenas of 6 s: one trains, the other chooses
    assert tuned.flow_weight == choose_flow_weight(choice["accuracy_by_flow_weight"], 0.8)


def test_validation_by_recording_holds_back_whole_videos_or_arenas():
    from types import SimpleNamespace

    items = np.array([[src, frame, frame % 2] for src in range(4) for frame in range(0, 60, 3)])  # (source, frame, label)
    one_video = SimpleNamespace(items=items, stride=1, sources=[SimpleNamespace(video_path="v.mp4")] * 4)
    train, val = tr.split_validation(one_video, np.arange(len(items)), 5, by_recording=True)
    assert len(set(items[val, 0])) == 1 and not set(items[val, 0]) & set(items[train, 0])  # one video: one whole arena
    two_videos = SimpleNamespace(items=items, stride=1, sources=[SimpleNamespace(video_path=v) for v in ("a.mp4", "a.mp4", "b.mp4", "b.mp4")])
    train, val = tr.split_validation(two_videos, np.arange(len(items)), 5, by_recording=True)
    assert set(items[val, 0]) in ({0, 1}, {2, 3}) and not set(items[val, 0]) & set(items[train, 0])  # a whole video, both its arenas
    train, val = tr.split_validation(one_video, np.arange(len(items)), 5)
    assert set(items[val, 0]) == {0, 1, 2, 3}  # the default: a stretch of every arena
    with pytest.raises(UserError, match="cover 1"):
        tr.split_validation(one_video, np.flatnonzero(items[:, 0] == 0), 5, by_recording=True)
