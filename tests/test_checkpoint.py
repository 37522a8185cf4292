"""export/checkpoint.py: training checkpoints hold tensors and JSON, and a crafted pickle never runs."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle

import numpy as np
import pytest
import torch

from export import checkpoint as ck
from export import train as tr
from stream.errors import UserError
from test_train import TinyFused, ToyClips, cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Crafted:
    """Unpickling this creates ``marker``: the proof that a loader ran code from the file."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_crafted(path, marker) -> None:
    with open(path, "wb") as fh:
        pickle.dump({"format": 1, "model": _Crafted(marker)}, fh)


@pytest.mark.parametrize("name", ["checkpoint.pt", "best.pt"])
def test_an_old_pickle_checkpoint_is_refused_unopened(tmp_path, name):
    marker = tmp_path / "ran"
    _write_crafted(tmp_path / name, marker)
    with pytest.raises(UserError, match=f"{name}: an old pickle checkpoint.*retrain, or delete it") as err:
        tr.train(TinyFused(), ToyClips(8), None, cfg(epochs=1), tmp_path, num_classes=3, resume=True, progress=False)
    assert "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", [tr.CHECKPOINT_NAME, tr.BEST_NAME])
def test_a_crafted_pickle_under_the_new_name_is_refused(tmp_path, name):
    marker = tmp_path / "ran"
    _write_crafted(tmp_path / name, marker)
    with pytest.raises(UserError, match="not a swim-stream checkpoint") as err:
        tr.load_checkpoint(tmp_path / name)
    assert "\n" not in str(err.value) and not marker.exists()
    torch.save({"model": _Crafted(marker)}, tmp_path / name)  # torch's own zip-pickle format
    with pytest.raises(UserError, match="not a swim-stream checkpoint"):
        tr.load_checkpoint(tmp_path / name)
    assert not marker.exists()


def _jhuang_folder(folder) -> None:
    """Four 24-frame clips in the Jhuang layout: the smallest data the command trains on."""
    import cv2

    rng = np.random.default_rng(0)
    for name, moving in (("clip_w_01.avi", True), ("clip_rs_01.avi", False), ("clip_w_02.avi", True), ("clip_rs_02.avi", False)):
        writer = cv2.VideoWriter(str(folder / name), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (40, 40))
        base = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        for t in range(24):
            writer.write(np.roll(base, 2 * t if moving else 0, axis=1))
        writer.release()


@pytest.mark.parametrize("name", ["checkpoint.pt", tr.CHECKPOINT_NAME])
def test_export_train_resume_refuses_a_crafted_checkpoint_in_one_line(tmp_path, capsys, name):
    """export-train --resume (export-evaluate's folds resume through the same train()) exits 2 with one line."""
    marker = tmp_path / "ran"
    clips, work = tmp_path / "clips", tmp_path / "work"
    clips.mkdir()
    work.mkdir()
    _jhuang_folder(clips)
    _write_crafted(work / name, marker)
    argv = ["--jhuang", str(clips), "--out", str(tmp_path / "model"), "--work-dir", str(work), "--resume", "--cache-dir", str(tmp_path / "cache"),
            "--size-px", "32", "--fps", "15", "--frame-step", "12", "--flow-preset", "fast", "--epochs", "1", "--batch-size", "4",
            "--val-folds", "0", "--device", "cpu"]  # fmt: skip
    assert tr.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("export-train: error:") and name in err and err.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "model").exists()


def test_checkpoint_is_one_safetensors_file_with_a_json_state(tmp_path):
    from safetensors import safe_open

    tr.train(TinyFused(), ToyClips(8), ToyClips(4, seed=2), cfg(epochs=2, optimizer="adam"), tmp_path, num_classes=3, progress=False)
    with safe_open(str(tmp_path / tr.CHECKPOINT_NAME), framework="pt") as f:
        state = json.loads(f.metadata()[ck.STATE_KEY])
        keys = set(f.keys())
    assert state["format"] == tr.CHECKPOINT_FORMAT and state["epoch"] == 2 and len(state["rng"]) == 1
    assert "model/rgb.0.weight" in keys and any(k.startswith("optimizer/state/") for k in keys)
    loaded = tr.load_checkpoint(tmp_path / tr.CHECKPOINT_NAME)
    assert isinstance(loaded["optimizer"]["state"], dict) and all(isinstance(k, int) for k in loaded["optimizer"]["state"])
    assert not list(tmp_path.glob("*.tmp"))


def test_plain_round_trip_keeps_types_and_values():
    tensors: dict[str, torch.Tensor] = {}
    obj = {"state": {0: {"step": torch.tensor(3.0), "buf": torch.arange(4.0)}}, "groups": [{"lr": 0.1 / 3, "betas": (0.9, 0.999), "x": None}]}
    plain = ck.to_plain(obj, "opt", tensors)
    back = ck.from_plain(json.loads(json.dumps(plain)), tensors)
    assert list(back["state"]) == [0] and torch.equal(back["state"][0]["buf"], torch.arange(4.0))
    assert back["groups"][0]["lr"] == 0.1 / 3 and back["groups"][0]["betas"] == [0.9, 0.999]
    with pytest.raises(TypeError, match="cannot store"):
        ck.to_plain({"f": object()}, "x", {})


def test_rng_state_round_trips_through_json():
    import random

    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    saved = json.loads(json.dumps(ck.rng_state()))
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    ck.set_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_checkpoint_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        ck.save_checkpoint(tmp_path / "c.safetensors", {"a": torch.zeros(2)}, {"format": 2})
    finally:
        os.umask(old)
    assert (tmp_path / "c.safetensors").stat().st_mode & 0o777 == 0o640


# ------------------------------------------------------------------ checkpoints whose tensors are not what they say


def _interrupted_run(run, optimizer: str = "sgd"):
    """A checkpoint after epoch 1 of 3 (the run was stopped in epoch 2), and the settings to resume it."""
    from test_train import InterruptAfter

    config = cfg(epochs=3, optimizer=optimizer)
    with pytest.raises(KeyboardInterrupt):
        tr.train(TinyFused(), InterruptAfter(ToyClips(8), n=8 + 3), None, config, run, num_classes=3, progress=False)
    return config


def _resume(run, config):
    return tr.train(TinyFused(), ToyClips(8), None, config, run, num_classes=3, resume=True, progress=False)


def test_resuming_a_checkpoint_with_nan_weights_is_refused(tmp_path):
    """Before: a NaN checkpoint trained on to a NaN model, exit 0."""
    config = _interrupted_run(tmp_path)
    path = tmp_path / tr.CHECKPOINT_NAME
    tensors, state = ck.load_checkpoint(path)
    tensors["model/flow.1.running_var"][0] = float("nan")
    ck.save_checkpoint(path, tensors, state)
    with pytest.raises(UserError, match=rf"{tr.CHECKPOINT_NAME}: 1 tensor\(s\) hold NaN or infinite values \(first: flow.1.running_var\).*delete it") as info:
        _resume(tmp_path, config)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("key, dtype, shape, stored", [
    ("model/rgb.0.weight", "I32", None, "int32"),  # float32 bytes read as integers
    ("model/rgb.0.weight", "F16", [8, 3, 3, 3, 6], "float16"),  # header says float16 for float32 data
    ("optimizer/state/0/momentum_buffer", "I32", None, "int32"),
])  # fmt: skip
def test_resuming_a_checkpoint_with_a_relabelled_tensor_is_refused(tmp_path, key, dtype, shape, stored):
    from test_modelfile import relabel_safetensors

    config = _interrupted_run(tmp_path)
    relabel_safetensors(tmp_path / tr.CHECKPOINT_NAME, key, dtype, shape=shape)
    with pytest.raises(UserError, match=rf"{tr.CHECKPOINT_NAME}: tensor {key} is stored as {stored}") as info:
        _resume(tmp_path, config)
    assert "\n" not in str(info.value)


def test_resuming_a_checkpoint_with_nan_optimizer_state_is_refused(tmp_path):
    config = _interrupted_run(tmp_path, optimizer="adam")
    path = tmp_path / tr.CHECKPOINT_NAME
    tensors, state = ck.load_checkpoint(path)
    tensors["optimizer/state/0/exp_avg"].view(-1)[0] = float("nan")
    ck.save_checkpoint(path, tensors, state)
    with pytest.raises(UserError, match=r"1 tensor\(s\) hold NaN or infinite values \(first: optimizer/state/0/exp_avg\)"):
        _resume(tmp_path, config)


def test_init_from_a_model_with_a_relabelled_tensor_is_refused(tmp_path):
    """--init model:DIR reads the model through stream.modelfile, which checks each stored dtype."""
    from test_modelfile import _resign, relabel_safetensors

    from stream.flow import FlowConfig
    from stream.model import FusedI3D
    from stream.modelfile import ModelCard, save_model

    card = ModelCard(name="step1", view="side", classes=["a", "b"], immobile_classes=[], input_size_px=32, fps=15.0,
                     flow=dataclasses.asdict(FlowConfig()), flow_weight=0.5)  # fmt: skip
    d = save_model(FusedI3D(num_classes=2), card, tmp_path / "step1")
    relabel_safetensors(d / "model.safetensors", "flow.Mixed_5c.b0.conv3d.weight", "I32")
    _resign(d)
    with pytest.raises(UserError, match=r"tensor flow.Mixed_5c.b0.conv3d.weight is stored as int32, not float32"):
        tr.build_model(f"model:{d}", num_classes=2)
