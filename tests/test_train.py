"""Tests of export/train.py: the training loop's promises (learns, deterministic, resumable,
early stopping, logs, class balancing), model initialisation, and the real I3D on tiny input.

Most loop tests use a tiny stand-in with FusedI3D's forward signature (two 3D convnets with
BatchNorm and dropout) so that each runs in well under a second; one test runs the real
FusedI3D at 32 px.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from export import train as tr
from stream.errors import UserError
from stream.flow import FlowConfig
from stream.model import FusedI3D, I3D, fuse

T = 16  # clip frames


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TinyFused(nn.Module):
    """FusedI3D's interface (rgb/flow streams, forward -> fused, rgb logits, flow logits) at toy size."""

    def __init__(self, num_classes: int = 3, flow_weight: float = 0.5) -> None:
        super().__init__()

        def stream(c: int) -> nn.Module:
            return nn.Sequential(
                nn.Conv3d(c, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(8, num_classes)
            )

        self.rgb, self.flow, self.flow_weight = stream(3), stream(2), flow_weight

    def forward(self, rgb, flow):
        r, f = self.rgb(rgb), self.flow(flow)
        return fuse(r, f, self.flow_weight), r, f


class ToyClips(Dataset):
    """Random clips whose mean brightness (RGB) and motion (flow) depend on the class."""

    def __init__(self, n: int, num_classes: int = 3, size: int = 8, seed: int = 0, labels=None, signal: float = 1.0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = np.asarray(labels if labels is not None else np.arange(n) % num_classes, dtype=np.int64)
        y = torch.as_tensor(self.labels, dtype=torch.float32).view(-1, 1, 1, 1, 1)
        self.rgb = torch.randn(n, 3, T, size, size, generator=g) * 0.5 + signal * (y - 1)
        self.flow = torch.randn(n, 2, T, size, size, generator=g) * 0.5 - signal * (y - 1)
        self.reads = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        self.reads += 1
        return self.rgb[i], self.flow[i], torch.tensor(self.labels[i])


class InterruptAfter(Dataset):
    """Raises KeyboardInterrupt on the n-th read: a Ctrl-C in the middle of an epoch."""

    def __init__(self, base: Dataset, n: int) -> None:
        self.base, self.n, self.reads, self.labels = base, n, 0, base.labels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads == self.n:
            raise KeyboardInterrupt
        return self.base[i]


def cfg(**kw) -> tr.TrainConfig:
    base = dict(epochs=3, batch_size=4, lr=0.05, lr_floor=1e-4, patience_epochs=0, device="cpu", seed=1)
    base.update(kw)
    return tr.TrainConfig(**base)


def fresh(seed: int = 1) -> TinyFused:
    torch.manual_seed(seed)
    return TinyFused()


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_learns_class_dependent_clips(tmp_path):
    model = fresh()
    result = tr.train(model, ToyClips(24), ToyClips(12, seed=5), cfg(epochs=6), tmp_path, num_classes=3, progress=False)
    assert result.epochs_run == 6
    pred = tr.predict_streams(model, ToyClips(30, seed=9), batch_size=8, device="cpu", progress=False)
    assert pred.rgb_probs.shape == (30, 3) and pred.flow_probs.shape == (30, 3)
    np.testing.assert_allclose(pred.rgb_probs.sum(1), 1.0, atol=1e-5)
    fused_acc = (fuse(np.log(pred.rgb_probs), np.log(pred.flow_probs), 0.5).argmax(1) == pred.labels).mean()
    assert fused_acc > 0.8  # chance is 1/3


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a, b, c = fresh(), fresh(), fresh()
    ra = tr.train(a, ToyClips(16), None, cfg(epochs=2), tmp_path / "a", num_classes=3, progress=False)
    rb = tr.train(b, ToyClips(16), None, cfg(epochs=2), tmp_path / "b", num_classes=3, progress=False)
    tr.train(c, ToyClips(16), None, cfg(epochs=2, seed=2), tmp_path / "c", num_classes=3, progress=False)
    assert states_equal(a, b)
    assert [r["train_loss"] for r in ra.history] == [r["train_loss"] for r in rb.history]
    assert not states_equal(a, c)


def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path):
    config = cfg(epochs=3)
    whole = fresh()
    tr.train(whole, ToyClips(16), ToyClips(8, seed=3), config, tmp_path / "whole", num_classes=3, progress=False)

    broken = fresh()
    data = InterruptAfter(ToyClips(16), n=16 + 6)  # dies 6 clips into epoch 2
    with pytest.raises(KeyboardInterrupt):
        tr.train(broken, data, ToyClips(8, seed=3), config, tmp_path / "run", num_classes=3, progress=False)
    ckpt = tr.load_checkpoint(tmp_path / "run" / tr.CHECKPOINT_NAME)
    assert ckpt["epoch"] == 1
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config"} <= ckpt.keys()

    resumed = fresh(seed=99)  # whatever the new process initialises is overwritten by the checkpoint
    result = tr.train(resumed, ToyClips(16), ToyClips(8, seed=3), config, tmp_path / "run", num_classes=3, resume=True, progress=False)
    assert states_equal(whole, resumed)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    rows = [json.loads(line) for line in (tmp_path / "run" / tr.LOG_JSONL_NAME).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # the interrupted epoch is not logged twice


def test_resume_with_other_settings_is_a_user_error(tmp_path):
    tr.train(fresh(), ToyClips(8), None, cfg(epochs=1), tmp_path, num_classes=3, progress=False)
    with pytest.raises(UserError, match="different settings.*lr"):
        tr.train(fresh(), ToyClips(8), None, cfg(epochs=1, lr=0.01), tmp_path, num_classes=3, resume=True, progress=False)


def test_early_stopping_keeps_best_validation_epoch(tmp_path):
    # validation labels are the opposite of what the training data teaches: validation loss rises
    train_set = ToyClips(24, num_classes=2, labels=np.arange(24) % 2)
    val_set = ToyClips(12, num_classes=2, labels=1 - np.arange(12) % 2, seed=4)
    model = TinyFused(num_classes=2)
    result = tr.train(model, train_set, val_set, cfg(epochs=20, patience_epochs=2, lr=0.1), tmp_path, num_classes=2, progress=False)
    assert result.stopped_early and result.epochs_run < 20
    assert result.epochs_run - result.best_epoch == 2
    best = tr.load_checkpoint(tmp_path / tr.BEST_NAME)
    assert best["epoch"] == result.best_epoch
    params = dict(model.named_parameters())
    assert all(torch.equal(v, params[k]) for k, v in best["model"].items() if k in params)


def test_batchnorm_statistics_are_recalibrated_under_the_final_weights(tmp_path):
    data = ToyClips(8)
    model = fresh()
    tr.train(model, data, None, cfg(epochs=1, bn_recalibration_clips=64), tmp_path, num_classes=3, progress=False)
    with torch.no_grad():
        conv_out = model.rgb[0](data.rgb)  # (8, C, T, H, W): what the first BatchNorm sees
    np.testing.assert_allclose(model.rgb[1].running_mean.numpy(), conv_out.mean(dim=(0, 2, 3, 4)).numpy(), atol=1e-5)
    assert model.rgb[1].momentum == 0.1 and not model.training


def test_logs_have_one_row_per_epoch(tmp_path):
    tr.train(fresh(), ToyClips(8), ToyClips(4, seed=2), cfg(epochs=2), tmp_path, num_classes=3, progress=False)
    rows = [json.loads(line) for line in (tmp_path / tr.LOG_JSONL_NAME).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("lr", "train_loss", "train_rgb_acc", "train_flow_acc", "train_fused_acc", "val_loss", "val_fused_acc", "time_s"):
        assert key in rows[0]
    assert rows[1]["lr"] < rows[0]["lr"]  # cosine decay
    header = (tmp_path / tr.LOG_CSV_NAME).read_text().splitlines()[0].split(",")
    assert header[0] == "epoch" and "val_loss" in header


def test_cosine_schedule_ends_at_floor(tmp_path):
    result = tr.train(fresh(), ToyClips(8), None, cfg(epochs=2, lr=0.05, lr_floor=0.001), tmp_path, num_classes=3, progress=False)
    assert result.history[-1]["lr"] == pytest.approx(0.001)


def test_balanced_sampler_draws_classes_equally():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    loader = tr._train_loader(ToyClips(100, labels=labels), labels, 3, cfg(batch_size=50, clips_per_epoch=3000), epoch=0)
    drawn = np.concatenate([y.numpy() for _, _, y in loader])
    counts = np.bincount(drawn, minlength=3) / drawn.size
    np.testing.assert_allclose(counts, 1 / 3, atol=0.05)
    unbalanced = tr._train_loader(ToyClips(100, labels=labels), labels, 3, cfg(batch_size=50, balance="none"), epoch=0)
    assert np.bincount(np.concatenate([y.numpy() for _, _, y in unbalanced]), minlength=3).tolist() == [90, 9, 1]


def test_config_is_validated():
    with pytest.raises(UserError, match="lr floor"):
        tr.TrainConfig(lr=1e-3, lr_floor=1e-2)
    with pytest.raises(UserError, match="balance"):
        tr.TrainConfig(balance="oversample")


def test_real_fused_i3d_trains_and_predicts_at_32px(tmp_path):
    torch.manual_seed(0)
    model = FusedI3D(num_classes=2)
    before = model.flow.logits.conv3d.weight.detach().clone()
    data = ToyClips(2, num_classes=2, size=32, labels=[0, 1])
    result = tr.train(model, data, None, cfg(epochs=1, batch_size=2, lr=1e-3), tmp_path, num_classes=2, progress=False)
    assert np.isfinite(result.history[0]["train_loss"])
    assert not torch.equal(before, model.flow.logits.conv3d.weight)
    assert abs(model.rgb.dropout.p - (1 - 0.36)) < 1e-9  # keep 0.36 -> PyTorch drop 0.64
    pred = tr.predict_streams(model, data, batch_size=2, device="cpu", progress=False)
    np.testing.assert_allclose(pred.flow_probs.sum(1), 1.0, atol=1e-5)


def test_build_model_from_published_i3d_layout_and_previous_model(tmp_path):
    from stream.modelfile import ModelCard, save_model

    torch.manual_seed(0)
    rgb, flow = I3D(num_classes=400, in_channels=3), I3D(num_classes=400, in_channels=2)
    torch.save(rgb.state_dict(), tmp_path / "rgb_imagenet.pt")
    torch.save(flow.state_dict(), tmp_path / "flow_imagenet.pt")
    model, text = tr.build_model(f"i3d:{tmp_path / 'rgb_imagenet.pt'},{tmp_path / 'flow_imagenet.pt'}", num_classes=3)
    assert "rgb_imagenet.pt" in text and model.rgb.num_classes == 3
    assert torch.equal(model.flow.Mixed_5c.b0.conv3d.weight, flow.Mixed_5c.b0.conv3d.weight)

    card = ModelCard(name="step1", view="side", classes=["a", "b", "c"], immobile_classes=[], input_size_px=32, fps=15, flow=dataclasses.asdict(FlowConfig()), flow_weight=0.5)
    save_model(model, card, tmp_path / "step1")
    step2, text = tr.build_model(f"model:{tmp_path / 'step1'}", num_classes=2)
    assert "step1" in text and step2.rgb.num_classes == 2
    assert torch.equal(step2.rgb.Mixed_4b.b1b.conv3d.weight, model.rgb.Mixed_4b.b1b.conv3d.weight)


@pytest.mark.parametrize("init, match", [("imagenet", "expected random"), ("i3d:only_one.pt", "two checkpoint"), ("inflate:/no/such.pt", "does not exist"), ("model:/no/such/dir", "not found")])
def test_bad_init_is_a_user_error(init, match):
    with pytest.raises(UserError, match=match):
        tr.build_model(init, num_classes=3)


def test_cli_bad_arguments_are_one_line_user_errors(tmp_path, capsys):
    assert tr.main(["--videos", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("export-train: error:") and "none.mp4" in err and err.count("\n") == 1
    assert tr.main(["--jhuang", str(tmp_path / "nodir"), "--out", str(tmp_path / "m")]) == 2
    assert "--jhuang" in capsys.readouterr().err
    assert tr.main(["--videos", "x.mp4", "--out", str(tmp_path / "m"), "--lr", "0.001", "--lr-floor", "0.1"]) == 2
    assert "lr floor" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_two_step_training_on_simulator_video(tmp_path):
    """Step 2 starts from the step-1 model; both write a model directory the runtime can load."""
    from export.synth import SynthConfig, render_video
    from stream.modelfile import load_model

    synth = render_video(SynthConfig(view="side", duration_s=12.0, fps=15.0, arenas=1, arena_size_px=64, seed=1), tmp_path / "data")
    top = render_video(SynthConfig(view="top", duration_s=12.0, fps=15.0, arenas=1, arena_size_px=64, seed=2), tmp_path / "data")
    common = ["--cache-dir", str(tmp_path / "cache"), "--size-px", "32", "--frame-step", "20", "--flow-preset", "fast",
              "--epochs", "1", "--batch-size", "3", "--val-folds", "0", "--device", "cpu"]  # fmt: skip
    assert tr.main(["--videos", str(top.video_path), "--view", "top", "--out", str(tmp_path / "step1"), *common]) == 0
    assert tr.main(["--videos", str(synth.video_path), "--out", str(tmp_path / "step2"), "--init", f"model:{tmp_path / 'step1'}", *common]) == 0
    model, card = load_model(tmp_path / "step2")
    assert card.classes == ["swim", "struggle", "float"] and card.input_size_px == 32
    assert "step1" in card.init and card.training["synthetic"]
    assert (tmp_path / "step2" / "log.csv").is_file() and (tmp_path / "step2" / "training_curves.png").is_file()


def write_jhuang_clips(folder, pairs: int) -> None:
    """``pairs`` x (a walking clip that moves, a resting clip that does not), named as Jhuang's."""
    import cv2

    rng = np.random.default_rng(0)
    for i in range(1, pairs + 1):
        for name, moving in ((f"clip_w_{i:02d}.avi", True), (f"clip_rs_{i:02d}.avi", False)):
            writer = cv2.VideoWriter(str(folder / name), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (40, 40))
            base = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            for t in range(24):
                writer.write(np.roll(base, 2 * t if moving else 0, axis=1))
            writer.release()


def test_cli_step1_on_a_jhuang_clip_folder(tmp_path):
    """Step 1 reads the Jhuang clipped-database layout (one behaviour per clip, named by token)."""
    from stream.modelfile import load_card

    write_jhuang_clips(tmp_path, 2)
    argv = ["--jhuang", str(tmp_path), "--out", str(tmp_path / "step1"), "--work-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
            "--size-px", "32", "--fps", "15", "--frame-step", "12", "--flow-preset", "fast", "--epochs", "1", "--batch-size", "4",
            "--val-folds", "0", "--bn-recalibration-clips", "4", "--device", "cpu", "--flow-texture-sigma", "2"]  # fmt: skip
    assert tr.main([*argv, "--flow-texture-sigma", "-1"]) == 2  # one line, before any work
    assert tr.main(argv) == 0
    card = load_card(tmp_path / "step1")
    assert card.flow == dataclasses.asdict(FlowConfig.fast(texture_sigma=2.0))  # live flow will pre-filter as training did
    assert card.classes[:3] == ["drink", "eat", "groom"] and len(card.classes) == 8
    assert card.fps == 15.0 and card.training["video_stride"] == 1  # 30 fps clips resampled to 15 fps by timestamp
    assert card.training["step"].startswith("source") and not card.training["synthetic"]
    assert card.input_stats["clips"] > 0 and card.input_stats["brightness"]["p01"] > 0  # issue 24.12: recorded at training


# ------------------------------------------------------------------ a run that diverges stops


def test_a_diverging_run_stops_at_the_first_nonfinite_loss(tmp_path):
    """lr 1e30: the first step blows the weights up, the next loss is not finite. Training stops
    there with one line, before any checkpoint, best weights or log of a NaN epoch is written."""
    with pytest.raises(UserError, match=r"epoch 1, batch 2: the training loss is (nan|inf) \(not finite\): training stopped, no model written") as info:
        tr.train(fresh(), ToyClips(16), ToyClips(8, seed=3), cfg(lr=1e30), tmp_path, num_classes=3, progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / tr.CHECKPOINT_NAME).exists() and not (tmp_path / tr.BEST_NAME).exists()


def test_epoch_end_check_stops_on_a_nonfinite_mean_loss_or_weight():
    """What stops a torchrun job (its ranks cannot stop alone mid-epoch): the summed losses and the weights."""
    ok = tr.EpochStats(loss=1.0)
    model = fresh()
    tr._stop_if_diverged(1, ok, ok, model)
    with pytest.raises(UserError, match="epoch 3: the mean validation loss is nan"):
        tr._stop_if_diverged(3, ok, tr.EpochStats(loss=float("nan")), model)
    with torch.no_grad():
        model.flow[0].weight[0, 0, 0, 0, 0] = float("inf")
    with pytest.raises(UserError, match=r"epoch 2: 1 tensor\(s\) hold NaN or infinite values \(first: flow.0.weight\)"):
        tr._stop_if_diverged(2, ok, None, model)


def test_export_train_exits_2_with_one_line_and_no_model_when_the_loss_is_nan(tmp_path, capsys, monkeypatch):
    real = tr._forward_losses

    def nan_loss(*args, **kwargs):
        fused, rgb_logits, flow_logits, rgb_loss, flow_loss = real(*args, **kwargs)
        return fused, rgb_logits, flow_logits, rgb_loss * float("nan"), flow_loss

    monkeypatch.setattr(tr, "_forward_losses", nan_loss)
    write_jhuang_clips(tmp_path, 1)
    argv = ["--jhuang", str(tmp_path), "--out", str(tmp_path / "model"), "--work-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
            "--size-px", "32", "--fps", "15", "--frame-step", "12", "--flow-preset", "fast", "--epochs", "1", "--batch-size", "2",
            "--val-folds", "0", "--device", "cpu"]  # fmt: skip
    assert tr.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("export-train: error: epoch 1, batch 1: the training loss is nan") and err.count("\n") == 1, err
    assert not (tmp_path / "model").exists()


def test_training_input_stats_are_what_stream_run_measures_on_the_same_clips() -> None:
    """Issue 24.12: the card's input_stats come from the un-augmented training clips, through the
    same per-clip function the runtime uses, so a trial is compared like with like."""
    import torch

    from export.train import training_input_stats
    from stream.input_check import clip_input_stats

    class Clips:
        augment = True

        def __init__(self) -> None:
            self.items = [(torch.full((3, 16, 8, 8), -1.0 + 2.0 * k / 99), torch.zeros(2, 16, 8, 8), 0)
                          for k in range(100)]

        def with_augment(self, augment: bool) -> "Clips":
            other = Clips()
            other.augment = augment
            return other

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int):
            assert not self.augment, "input statistics must be taken on un-augmented clips"
            return self.items[i]

    stats = training_input_stats(Clips(), max_clips=50)
    assert stats["clips"] == 50
    brightness = [clip_input_stats(*Clips().items[k][:2])[0][0] for k in (0, 99)]
    assert stats["brightness"]["p01"] >= brightness[0] - 1e-6 and stats["brightness"]["p99"] <= brightness[1] + 1e-6
    assert stats["brightness"]["p50"] == pytest.approx(127.5, abs=2.0)
    assert stats["flow_magnitude"] == {"p01": 0.0, "p50": 0.0, "p99": 0.0}


def test_cli_crop_mouse_trains_on_mouse_windows_and_says_so_in_the_card(tmp_path):
    """Issue 21: --crop mouse (export-train and export-evaluate share it) reaches the dataset and the card."""
    from export import evaluate as ev
    from export.synth import SynthConfig, render_video
    from stream.modelfile import load_card

    top = render_video(SynthConfig(view="top", duration_s=6.0, fps=15.0, arenas=1, arena_size_px=64, seed=2), tmp_path / "data")
    argv = ["--videos", str(top.video_path), "--view", "top", "--out", str(tmp_path / "m"), "--cache-dir", str(tmp_path / "cache"),
            "--size-px", "32", "--frame-step", "30", "--flow-preset", "fast", "--epochs", "1", "--batch-size", "3", "--val-folds", "0",
            "--bn-recalibration-clips", "0", "--device", "cpu", "--threads", "1", "--crop", "mouse"]  # fmt: skip
    assert tr.main(argv) == 0
    card = load_card(tmp_path / "m")
    assert card.crop == "mouse" and card.input_size_px == 32
    assert list((tmp_path / "cache").glob("*-64px-*.frames.npy")) and list((tmp_path / "cache").glob("*.track.npy"))  # the arena at 2x
    assert ev.build_parser().parse_args(["--videos", "v.mp4", "--out", "o", "--crop", "mouse"]).crop == "mouse"
    assert ev.build_parser().parse_args(["--videos", "v.mp4", "--out", "o"]).crop == "roi"
