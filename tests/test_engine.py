"""Inference engines: backends agree, auto picks by what is present, bad files give one-line errors.

The model is a real fused I3D at 32 px (the smallest the network takes) with 3 classes. A freshly
initialised I3D maps every clip to the same logits (activations shrink to ~0 through 60 layers),
which would let any backend "agree"; so the fixture first sets batch-norm statistics from one
batch, after which the outputs depend on the clip and a wrong backend shows.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import stream.engine.cache as engine_cache
import stream.engine.factory as factory_mod
import stream.engine.onnx_cache as engine_onnx_cache
import stream.engine.verify as verify
from stream.engine import (
    FP32_ATOL,
    HALF_ATOL,
    ONNX_FILENAME,
    ONNX_INPUT_NAMES,
    ONNX_OUTPUT_NAMES,
    Engine,
    EngineConfig,
    Prediction,
    TensorRTCacheKey,
    build_engine,
    choose_backend,
    load_or_build_cached,
    tensorrt_cache_path,
    write_onnx,
)
from stream.errors import UserError
from stream.flow import FlowConfig
from stream.model import FusedI3D
from stream.modelfile import ModelCard, load_model, save_model

SIZE_PX = 32
CLASSES = ["swim", "struggle", "float"]


def make_model_dir(directory: Path, *, seed: int = 0, size_px: int = SIZE_PX) -> Path:
    """A saved fused I3D whose outputs depend on its input (see module docstring)."""
    torch.manual_seed(seed)
    model = FusedI3D(num_classes=len(CLASSES), flow_weight=0.4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(*clips(2, size_px, seed=seed + 100))
    model.eval()
    card = ModelCard(name="test", view="side", classes=list(CLASSES), immobile_classes=["float"],
                     input_size_px=size_px, fps=15.0, flow=dataclasses.asdict(FlowConfig()), flow_weight=0.4)  # fmt: skip
    return save_model(model, card, directory)


def clips(n: int, size_px: int = SIZE_PX, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips in [-1, 1] with a different brightness per clip, so that their outputs differ."""
    gen = torch.Generator().manual_seed(seed)
    offset = torch.linspace(-0.6, 0.6, n).view(n, 1, 1, 1, 1)
    rgb = (torch.rand(n, 3, 16, size_px, size_px, generator=gen) * 0.8 - 0.4 + offset).clamp(-1, 1)
    flow = (torch.rand(n, 2, 16, size_px, size_px, generator=gen) * 0.8 - 0.4 - offset).clamp(-1, 1)
    return rgb, flow


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path) -> Path:
    """Each test's own cache folder: exported graphs and the manifest key never leak between tests."""
    monkeypatch.setenv("SWIM_STREAM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """Model directory with a model.onnx written by the same code export-model uses."""
    directory = make_model_dir(tmp_path_factory.mktemp("engine") / "model")
    model, card = load_model(directory)
    write_onnx(model, directory / ONNX_FILENAME, card=card)
    return directory


@pytest.fixture
def signed_dir(model_dir, tmp_path) -> Path:
    """``model_dir`` with the signed manifest export-model writes beside model.onnx (this test's key)."""
    signed = tmp_path / "signed"
    signed.mkdir()
    for name in ("card.json", "model.safetensors", ONNX_FILENAME):
        os.symlink(model_dir / name, signed / name)
    engine_onnx_cache.write_beside_manifest(signed / ONNX_FILENAME, load_model(model_dir)[1], SIZE_PX)
    return signed


@pytest.fixture(scope="module")
def reference(model_dir) -> tuple[tuple[torch.Tensor, torch.Tensor], Prediction]:
    """Eager PyTorch on 3 clips: what every backend must reproduce."""
    inputs = clips(3)
    with build_engine("torch", model_dir, device="cpu", optimize=False) as engine:
        assert engine.name == "torch-cpu-eager"
        return inputs, engine.predict_all(*inputs)


def assert_close(got: Prediction, want: Prediction, atol: float) -> None:
    for field in ("fused", "rgb", "flow"):
        a, b = getattr(got, field), getattr(want, field)
        assert a.shape == b.shape and a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=atol, rtol=0, err_msg=field)


# ----------------------------------------------------------------------------------- numbers


def test_reference_outputs_are_probabilities_that_depend_on_the_clip(reference) -> None:
    _, want = reference
    assert want.fused.shape == (3, len(CLASSES))
    for probs in (want.fused, want.rgb, want.flow):
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # the fixture is only useful if clips get different answers (else any backend would agree)
    assert np.abs(want.fused[0] - want.fused[2]).max() > 1e-3
    np.testing.assert_allclose(want.fused, 0.4 * want.flow + 0.6 * want.rgb, atol=1e-6)


def test_onnxruntime_matches_eager_torch(signed_dir, reference) -> None:
    (rgb, flow), want = reference
    with build_engine("onnxruntime", signed_dir) as engine:
        assert engine.name == "onnxruntime-cpu" and engine.device == "cpu"
        assert engine.classes == tuple(CLASSES) and engine.input_size_px == SIZE_PX
        assert_close(engine.predict_all(rgb.numpy(), flow.numpy()), want, FP32_ATOL)
        # one clip at a time (dynamic batch) gives the same rows
        one = engine.predict(rgb[2:], flow[2:])
        np.testing.assert_allclose(one, want.fused[2:], atol=FP32_ATOL, rtol=0)


def test_frozen_torch_matches_eager_torch(model_dir, reference) -> None:
    (rgb, flow), want = reference
    with build_engine("torch", model_dir, device="cpu") as engine:
        assert engine.name == "torch-cpu-frozen"
        assert_close(engine.predict_all(rgb, flow), want, FP32_ATOL)


def test_half_precision_on_cpu_is_refused(model_dir) -> None:
    with pytest.raises(UserError, match="half precision runs on CUDA only"):
        build_engine("torch", model_dir, device="cpu", half=True)


def test_auto_uses_onnxruntime_on_cpu_when_model_onnx_is_there(signed_dir, reference, caplog) -> None:
    (rgb, flow), want = reference
    caplog.set_level(logging.INFO, logger="stream.engine")
    with build_engine("auto", signed_dir, device="cpu") as engine:
        assert engine.name == "onnxruntime-cpu"
        np.testing.assert_allclose(engine.predict(rgb, flow), want.fused, atol=FP32_ATOL, rtol=0)
    assert any("chose onnxruntime" in r.getMessage() and "because" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- batching / API


class _RecordingEngine(Engine):
    """Backend stub with a fixed batch of 2: probabilities = softmax of per-clip means."""

    backend = "stub"

    def __init__(self, card: ModelCard) -> None:
        super().__init__(card, EngineConfig(kind="torch"), Path("."))
        self.batches: list[int] = []

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def fixed_batch(self) -> int | None:
        return 2

    def _run(self, rgb, flow):
        rgb = np.asarray(rgb)
        self.batches.append(rgb.shape[0])
        assert rgb.shape[0] == 2
        means = np.asarray(rgb).mean(axis=(1, 2, 3, 4))
        logits = np.stack([means, -means, np.zeros_like(means)], axis=1)
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return probs, probs, probs


def _card() -> ModelCard:
    return ModelCard(name="t", view="side", classes=list(CLASSES), immobile_classes=[], input_size_px=SIZE_PX, fps=15.0, flow=dataclasses.asdict(FlowConfig()), flow_weight=0.5)


def test_fixed_batch_engines_pad_the_last_chunk_and_keep_row_order() -> None:
    engine = _RecordingEngine(_card())
    rgb = np.stack([np.full((3, 16, SIZE_PX, SIZE_PX), v, np.float32) for v in (0.1, 0.2, 0.3)])
    flow = np.zeros((3, 2, 16, SIZE_PX, SIZE_PX), np.float32)
    got = engine.predict(rgb, torch.from_numpy(flow))
    assert engine.batches == [2, 2] and got.shape == (3, 3)
    assert got[0, 0] < got[1, 0] < got[2, 0]  # rows follow the input, padding rows dropped
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.predict(rgb, flow)


def test_wrong_input_shapes_are_refused_with_the_expected_shape() -> None:
    engine = _RecordingEngine(_card())
    good_flow = np.zeros((1, 2, 16, SIZE_PX, SIZE_PX), np.float32)
    with pytest.raises(ValueError, match=r"expected rgb \(B,3,16,32,32\)"):
        engine.predict(np.zeros((1, 3, 16, 64, 64), np.float32), good_flow)
    with pytest.raises(ValueError):
        engine.predict(np.zeros((2, 3, 16, SIZE_PX, SIZE_PX), np.float32), good_flow)  # batch differs


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "openvino"}, "choose one of auto, tensorrt, torch, onnxruntime"),
        ({"device": "gpu"}, "use cpu, cuda or cuda:N"),
        ({"batch_size": 0}, "at least 1"),
        ({"threads": 0}, "at least 1"),
        ({"input_size_px": 16}, "at least 32"),
    ],
)
def test_engine_config_refuses_bad_values_in_one_line(kwargs, message) -> None:
    with pytest.raises(UserError, match=message) as info:
        EngineConfig(**kwargs)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------- auto choice


def _fake_cuda(monkeypatch, *, tensorrt: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    real = factory_mod._has_module
    monkeypatch.setattr(factory_mod, "_has_module", lambda name: tensorrt if name == "torch_tensorrt" else real(name))


def test_auto_order_tensorrt_then_torch_cuda(monkeypatch, model_dir) -> None:
    _fake_cuda(monkeypatch, tensorrt=True)
    kind, device, reason = choose_backend(model_dir)
    assert (kind, device) == ("tensorrt", "cuda") and "H100" in reason
    _fake_cuda(monkeypatch, tensorrt=False)
    kind, device, reason = choose_backend(model_dir)
    assert (kind, device) == ("torch", "cuda") and "torch-tensorrt not installed" in reason
    # asking for the CPU skips the GPU backends
    assert choose_backend(model_dir, "cpu")[0] == "onnxruntime"


def _bare_copy(model_dir: Path, tmp_path: Path) -> Path:
    """The model without a model.onnx beside it (as shipped, or as export-train writes it)."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("card.json", "model.safetensors"):
        os.symlink(model_dir / name, bare / name)
    return bare


def test_auto_on_cpu_prefers_onnxruntime_and_says_why(monkeypatch, model_dir, signed_dir, tmp_path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    bare = _bare_copy(model_dir, tmp_path)
    kind, device, reason = choose_backend(bare)
    assert (kind, device) == ("onnxruntime", "cpu") and "exporting the model once" in reason
    kind, _, reason = choose_backend(signed_dir)
    assert kind == "onnxruntime" and f"{signed_dir / ONNX_FILENAME} present" in reason
    kind, _, reason = choose_backend(model_dir)  # its model.onnx has no manifest: it is not what runs
    assert kind == "onnxruntime" and "exporting the model once" in reason
    monkeypatch.setattr(factory_mod, "_has_module", lambda name: False)
    kind, _, reason = choose_backend(model_dir)
    assert kind == "torch" and "onnxruntime not installed" in reason
    with pytest.raises(UserError, match="device cuda: no CUDA GPU"):
        choose_backend(model_dir, "cuda")  # asked for a GPU that is not there: say so, do not fall back


def test_onnx_exported_once_into_the_cache(monkeypatch, model_dir, reference, tmp_path) -> None:
    (rgb, flow), want = reference
    monkeypatch.setenv("SWIM_STREAM_CACHE", str(tmp_path / "cache"))
    bare = _bare_copy(model_dir, tmp_path)
    with build_engine("onnxruntime", bare) as engine:
        assert_close(engine.predict_all(rgb, flow), want, FP32_ATOL)
    cached = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(cached) == 1 and f"-{SIZE_PX}px" in cached[0].name
    assert not (bare / ONNX_FILENAME).exists()  # the model folder is left untouched
    stamp = cached[0].stat().st_mtime_ns
    with build_engine("onnxruntime", bare) as engine:  # second start: reused, not exported again
        assert_close(engine.predict_all(rgb, flow), want, FP32_ATOL)
    assert cached[0].stat().st_mtime_ns == stamp


# -------------------------------------------------------------------------------- bad input


def test_truncated_onnx_is_one_line_error_naming_the_file(model_dir, tmp_path) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    for name in ("card.json", "model.safetensors"):
        os.symlink(model_dir / name, broken / name)
    data = (model_dir / ONNX_FILENAME).read_bytes()
    (broken / ONNX_FILENAME).write_bytes(data[: len(data) // 3])
    engine_onnx_cache.write_beside_manifest(broken / ONNX_FILENAME, load_model(model_dir)[1], SIZE_PX)  # ours, yet broken
    with pytest.raises(UserError) as info:
        build_engine("onnxruntime", broken)
    message = str(info.value)
    assert str(broken / ONNX_FILENAME) in message and "export-model" in message and "\n" not in message


def test_onnx_from_other_weights_or_size_is_refused(model_dir, signed_dir, tmp_path) -> None:
    other = make_model_dir(tmp_path / "other", seed=1)  # same card, different weights
    os.symlink(model_dir / ONNX_FILENAME, other / ONNX_FILENAME)
    # a manifest of ours that (wrongly) vouches for it: the graph's own metadata still refuses it
    engine_onnx_cache.write_beside_manifest(other / ONNX_FILENAME, load_model(other)[1], SIZE_PX)
    with pytest.raises(UserError, match="exported from other weights"):
        build_engine("onnxruntime", other)
    with pytest.raises(UserError, match="exported for 32 px input"):
        build_engine("onnxruntime", signed_dir, input_size_px=64)


def test_missing_onnx_and_missing_model_dir(tmp_path) -> None:
    with pytest.raises(UserError, match="no such model directory"):
        build_engine("torch", tmp_path / "nope")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "card.json").write_text(_card().to_json())
    with pytest.raises(UserError, match=r"model\.safetensors: weights file not found"):
        build_engine("onnxruntime", tmp_path / "m")  # no model.onnx: the export to the cache needs the weights


def test_onnxruntime_not_installed_names_the_extra(monkeypatch, model_dir) -> None:
    real = importlib.import_module

    def fake_import(name, *a, **k):
        if name == "onnxruntime":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(UserError, match=r"pip install onnxruntime"):
        build_engine("onnxruntime", model_dir)


# --------------------------------------------------------------------------------- TensorRT


def test_tensorrt_not_installed_is_one_line_with_the_fix(monkeypatch, model_dir) -> None:
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # import raises ImportError
    with pytest.raises(UserError, match=r"torch-tensorrt is not installed: pip install swim-stream\[tensorrt\]"):
        build_engine("tensorrt", model_dir)


def test_tensorrt_cache_key_changes_with_gpu_version_shape_precision_and_weights(tmp_path) -> None:
    base = TensorRTCacheKey("NVIDIA H100 80GB HBM3", "10.3.0", (1, 16, 224), "fp16", "ab" * 32)
    path = tensorrt_cache_path(tmp_path, base)
    assert path.parent == tmp_path / "tensorrt" and path.suffix == ".ep"
    assert tensorrt_cache_path(tmp_path, TensorRTCacheKey(*base.__dict__.values())) == path  # stable
    changed = [
        TensorRTCacheKey("NVIDIA A100-SXM4-40GB", "10.3.0", (1, 16, 224), "fp16", "ab" * 32),
        TensorRTCacheKey("NVIDIA H100 80GB HBM3", "10.4.0", (1, 16, 224), "fp16", "ab" * 32),
        TensorRTCacheKey("NVIDIA H100 80GB HBM3", "10.3.0", (8, 16, 224), "fp16", "ab" * 32),
        TensorRTCacheKey("NVIDIA H100 80GB HBM3", "10.3.0", (1, 16, 112), "fp16", "ab" * 32),
        TensorRTCacheKey("NVIDIA H100 80GB HBM3", "10.3.0", (1, 16, 224), "fp32", "ab" * 32),
        TensorRTCacheKey("NVIDIA H100 80GB HBM3", "10.3.0", (1, 16, 224), "fp16", "cd" * 32),
    ]
    paths = {tensorrt_cache_path(tmp_path, k) for k in changed}
    assert path not in paths and len(paths) == len(changed)
    assert " " not in path.name and "/" not in path.name


def test_cached_engine_is_built_once_then_loaded_and_rebuilt_for_a_new_key(tmp_path) -> None:
    built: list[Path] = []

    def build(tmp: Path) -> None:
        built.append(tmp)
        tmp.write_bytes(b"engine:" + tmp.name.encode())

    def load(path: Path) -> bytes:
        data = path.read_bytes()
        if not data.startswith(b"engine:"):
            raise RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory")
        return data

    key = TensorRTCacheKey("GPU A", "10.3.0", (1, 16, 112), "fp16", "ab" * 32)
    path = tensorrt_cache_path(tmp_path, key)
    assert load_or_build_cached(path, build, load).startswith(b"engine:") and len(built) == 1
    assert built[0] != path and not built[0].exists()  # built under a temporary name, then renamed
    load_or_build_cached(path, build, load)
    assert len(built) == 1  # cached: not rebuilt
    other = tensorrt_cache_path(tmp_path, TensorRTCacheKey("GPU B", "10.3.0", (1, 16, 112), "fp16", "ab" * 32))
    load_or_build_cached(other, build, load)
    assert len(built) == 2 and other.is_file()  # another GPU: rebuilt
    path.write_bytes(b"\x00" * 10)  # truncated / corrupt: its manifest no longer vouches for it
    assert load_or_build_cached(path, build, load).startswith(b"engine:") and len(built) == 3  # rebuilt

    def never_loads(path: Path) -> bytes:
        raise RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory")

    with pytest.raises(UserError) as info:  # a fresh build that does not load either: say so, once
        load_or_build_cached(path, build, never_loads)
    assert str(path) in str(info.value) and "delete the file" in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------ CUDA (unverified here)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_half_graphs_match_cpu(model_dir, reference) -> None:
    (rgb, flow), want = reference
    with build_engine("torch", model_dir, device="cuda", batch_size=2) as engine:
        assert engine.name == "torch-cuda-fp16-graphs" and engine.fixed_batch == 2
        assert_close(engine.predict_all(rgb, flow), want, HALF_ATOL)  # 3 clips = 2 + padded 1
    with build_engine("torch", model_dir, device="cuda", half=False, cuda_graphs=False) as engine:
        # true FP32: cuDNN's default TF32 convolutions were 0.036 away from the CPU on an H200
        assert_close(engine.predict_all(rgb.cuda(), flow.cuda()), want, FP32_ATOL * 10)


def test_cached_onnx_does_not_hide_damaged_weights(monkeypatch, model_dir, tmp_path) -> None:
    monkeypatch.setenv("SWIM_STREAM_CACHE", str(tmp_path / "cache"))
    bare = _bare_copy(model_dir, tmp_path)
    build_engine("onnxruntime", bare).close()  # the graph is now cached
    broken = tmp_path / "broken"
    broken.mkdir()
    os.symlink(model_dir / "card.json", broken / "card.json")
    data = bytearray((model_dir / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="model.safetensors: checksum mismatch"):
        build_engine("onnxruntime", broken)


# ------------------------------------------------------------------- cache manifests (nothing unpickled)


class _Payload:
    """Unpickling this runs code: it writes the marker file named at pickling time."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def _crafted_pickle(path: Path, marker: Path) -> None:
    import pickle

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_Payload(marker)))


def _forged_manifest(artifact: Path, facts: dict) -> None:
    """What someone handing over a folder can write: a manifest with the right sha256 and a made-up key."""
    import hashlib
    import hmac
    import json

    body = {"format": 1, "file": artifact.name, "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
            "size_bytes": artifact.stat().st_size, **facts, "created_utc": "2026-01-01T00:00:00Z"}
    body["hmac"] = hmac.new(b"k" * 32, json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), "sha256").hexdigest()
    engine_cache.manifest_path(artifact).write_text(json.dumps(body))


def test_a_crafted_pickle_in_a_cache_is_refused_without_running_it(tmp_path, caplog) -> None:
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "model" / "tensorrt" / "fused-x.ep"
    facts = {"weights_sha256": "ab" * 32, "input_size_px": 112, "batch": 1, "precision": "fp16"}
    built: list[Path] = []

    def build(tmp: Path) -> None:
        built.append(tmp)
        tmp.write_bytes(pickle.dumps({"engine": 1}))

    def load(p: Path):
        return pickle.loads(p.read_bytes())  # as torch.export.load may: the danger the manifest guards

    caplog.set_level(logging.WARNING, logger="stream.engine")
    for manifest in ("none", "forged", "ours, file swapped after"):
        _crafted_pickle(path, marker)  # on the last round it replaces a file our own manifest describes
        if manifest == "forged":
            _forged_manifest(path, facts)
        caplog.clear()
        assert load_or_build_cached(path, build, load, facts=facts) == {"engine": 1}, manifest
        assert not marker.exists(), f"crafted pickle ran with manifest: {manifest}"
        assert any("refused, not loaded" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records), manifest
    assert len(built) == 3
    # our own build with our own manifest is loaded without rebuilding; other facts are refused
    assert load_or_build_cached(path, build, load, facts=facts) == {"engine": 1} and len(built) == 3
    load_or_build_cached(path, build, load, facts={**facts, "batch": 4})
    assert len(built) == 4


def test_manifest_refuses_forged_changed_and_mismatched_files(tmp_path) -> None:
    artifact = tmp_path / "g.onnx"
    artifact.write_bytes(b"graph")
    facts = {"weights_sha256": "ab" * 32, "input_size_px": 64}
    assert "no manifest" in engine_cache.manifest_problem(artifact, facts)
    engine_cache.write_manifest(artifact, facts)
    assert engine_cache.manifest_problem(artifact, facts) is None
    assert "input_size_px 64" in engine_cache.manifest_problem(artifact, {**facts, "input_size_px": 112})
    artifact.write_bytes(b"grapH")
    assert "sha256 differs" in engine_cache.manifest_problem(artifact, facts)
    _forged_manifest(artifact, facts)
    assert "signature does not verify" in engine_cache.manifest_problem(artifact, facts)
    assert engine_cache.manifest_problem(artifact, facts, signed=False) is None  # the sha256 alone (what an older export-model wrote)
    key = tmp_path / "cache" / "manifest.key"
    assert key.stat().st_mode & 0o077 == 0  # the secret is the user's alone


def test_tensorrt_engine_never_opens_a_handed_over_engine_file(monkeypatch, model_dir, tmp_path) -> None:
    """TensorRTEngine with a stand-in torch-tensorrt on the CPU: what ``torch.export.load`` is given."""
    import hashlib
    import types

    bare = _bare_copy(model_dir, tmp_path)
    fake_trt = types.ModuleType("torch_tensorrt")
    fake_trt.__version__ = "10.0.0-test"
    fake_trt.compile = lambda module, **kw: module
    fake_trt.save = lambda compiled, path, inputs: Path(path).write_bytes(b"engine built here")
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake_trt)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")
    opened: list[str] = []

    def spy_load(path, *a, **k):
        opened.append(hashlib.sha256(Path(path).read_bytes()).hexdigest())
        return types.SimpleNamespace(module=lambda: (lambda rgb, flow: (rgb, rgb, rgb)))

    monkeypatch.setattr(torch.export, "load", spy_load)
    config = EngineConfig(kind="tensorrt", device="cpu", half=False)
    from stream.engine.tensorrt_backend import TensorRTEngine

    first = TensorRTEngine(bare, config)  # builds, signs, loads
    path = first.cache_path
    assert opened == [hashlib.sha256(b"engine built here").hexdigest()]
    marker = tmp_path / "pwned"
    _crafted_pickle(path, marker)
    crafted = hashlib.sha256(path.read_bytes()).hexdigest()
    _forged_manifest(path, first.key.facts())
    TensorRTEngine(bare, config)
    assert crafted not in opened and len(opened) == 2 and not marker.exists()
    assert path.read_bytes() == b"engine built here"  # rebuilt over the crafted file


@pytest.fixture(scope="module")
def exported_cache(model_dir, tmp_path_factory) -> Path:
    """One verified export into a cache folder (key included); tests copy it instead of re-exporting."""
    cache = tmp_path_factory.mktemp("cache") / "cache"
    bare = _bare_copy(model_dir, cache.parent)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWIM_STREAM_CACHE", str(cache))
        build_engine("onnxruntime", bare).close()
    return cache


@pytest.fixture
def fast_export(monkeypatch, exported_cache) -> list[Path]:
    """Re-exports copy the graph exported once (an export costs ~15 s here); what follows it, the
    check against PyTorch, the rename and the signed manifest, runs for real. Returns the paths written."""
    import shutil

    (good,) = (exported_cache / "onnx").glob("*.onnx")
    written: list[Path] = []

    def copy(model, path, **kw):
        written.append(Path(path))
        shutil.copy(good, path)

    monkeypatch.setattr(engine_onnx_cache, "write_onnx", copy)
    return written


def _with_cache(exported_cache: Path, own_cache: Path, model_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    shutil.copytree(exported_cache, own_cache)
    (graph,) = (own_cache / "onnx").glob("*.onnx")
    return graph, _bare_copy(model_dir, tmp_path)


def test_first_export_into_the_cache_is_verified_and_signed(exported_cache, model_dir, monkeypatch) -> None:
    monkeypatch.setenv("SWIM_STREAM_CACHE", str(exported_cache))  # its manifest is signed with that folder's key
    (graph,) = (exported_cache / "onnx").glob("*.onnx")
    card = load_model(model_dir)[1]
    assert engine_cache.manifest_problem(graph, engine_onnx_cache.cached_onnx_facts(card, SIZE_PX)) is None
    assert not list((exported_cache / "onnx").glob("*.partial*"))


@pytest.mark.parametrize("damage", ["flipped byte", "no manifest", "forged manifest", "garbage that ours vouches for"])
def test_a_damaged_cached_graph_is_rebuilt_with_a_log_line(exported_cache, own_cache, model_dir, reference, tmp_path, caplog, damage, fast_export) -> None:
    (rgb, flow), want = reference
    graph, bare = _with_cache(exported_cache, own_cache, model_dir, tmp_path)
    card = load_model(model_dir)[1]
    facts = engine_onnx_cache.cached_onnx_facts(card, SIZE_PX)
    if damage == "flipped byte":
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0xFF
        graph.write_bytes(bytes(data))
    elif damage == "no manifest":
        engine_cache.manifest_path(graph).unlink()
    elif damage == "forged manifest":
        graph.write_bytes(graph.read_bytes()[:1000])
        _forged_manifest(graph, facts)
    else:
        graph.write_bytes(b"not a protobuf at all")
        engine_cache.write_manifest(graph, facts)  # as if the bytes had been ours: onnxruntime still fails
    caplog.set_level(logging.INFO, logger="stream.engine")
    with build_engine("onnxruntime", bare) as engine:
        assert_close(engine.predict_all(rgb, flow), want, FP32_ATOL)
    messages = [r.getMessage() for r in caplog.records]
    assert any(str(graph) in m and ("refused" in m or "does not load" in m) and "exporting it again" in m for m in messages), messages
    assert any("ONNX check against PyTorch" in m for m in messages)
    assert engine_cache.manifest_problem(graph, facts) is None and len(fast_export) == 1  # exported again, once


def test_two_first_exports_of_one_model_side_by_side_each_check_their_own_graph(exported_cache, own_cache, model_dir, tmp_path, monkeypatch) -> None:
    """stream-run and export-validate started together on a new model both export it into the cache.
    The second one's whole export runs while the first checks its graph: with one shared temporary
    name, the second renamed the first's graph away ("the fresh ONNX export does not run")."""
    import shutil

    (good,) = (exported_cache / "onnx").glob("*.onnx")
    bare = _bare_copy(model_dir, tmp_path)
    card = load_model(bare)[1]
    written: list[Path] = []

    def copy_then_the_other_start(model, path, **kw) -> None:
        written.append(Path(path))
        shutil.copy(good, path)
        if len(written) == 1:
            engine_onnx_cache.export_to_cache(bare, card, SIZE_PX)

    monkeypatch.setattr(engine_onnx_cache, "write_onnx", copy_then_the_other_start)
    graph = engine_onnx_cache.export_to_cache(bare, card, SIZE_PX)
    assert len(written) == 2 and written[0] != written[1] and graph not in written
    assert engine_cache.manifest_problem(graph, engine_onnx_cache.cached_onnx_facts(card, SIZE_PX)) is None
    assert sorted(p.name for p in graph.parent.iterdir() if p.suffix == ".onnx") == [graph.name]  # no temporary left


def test_a_first_export_that_disagrees_with_pytorch_is_refused_and_not_kept(monkeypatch, model_dir, own_cache, tmp_path, fast_export) -> None:
    bare = _bare_copy(model_dir, tmp_path)
    real = engine_onnx_cache.reference_probs
    monkeypatch.setattr(engine_onnx_cache, "reference_probs", lambda *a: tuple(p + 1e-3 for p in real(*a)))
    with pytest.raises(UserError, match=r"ONNX export differs from PyTorch by 1\.00e-03") as info:
        build_engine("onnxruntime", bare)
    assert "--engine torch" in str(info.value) and "\n" not in str(info.value)
    assert not list((own_cache / "onnx").glob("*"))  # neither the graph nor a manifest left behind


def _foreign_graph(path: Path) -> Path:
    """A graph someone else made, with the engine's inputs and outputs and no metadata: what a
    hand-placed model.onnx is. It answers from the clip's mean brightness, not as the model does."""
    import onnx
    from onnx import TensorProto, helper

    k = len(CLASSES)
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, k], [4.0, -4.0, 1.0] * 3)
    nodes = [helper.make_node("ReduceMean", ["rgb"], ["m"], axes=[2, 3, 4], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["z"]),
             *(helper.make_node("Softmax", ["z"], [name], axis=1) for name in ONNX_OUTPUT_NAMES)]  # fmt: skip
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", c, 16, SIZE_PX, SIZE_PX])
              for name, c in zip(ONNX_INPUT_NAMES, (3, 2))]  # fmt: skip
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", k]) for name in ONNX_OUTPUT_NAMES]
    graph = helper.make_graph(nodes, "foreign", inputs, outputs, initializer=[weights])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


@pytest.mark.parametrize("manifest", ["none", "unsigned (older export-model)", "forged", "ours, for other weights", "ours, graph changed since"])
def test_a_model_onnx_its_manifest_does_not_vouch_for_is_never_run(model_dir, reference, tmp_path, caplog, fast_export, manifest) -> None:
    """Issue 24: a foreign model.onnx beside the weights ran under the model's name (20.0 s immobile
    where the model gives 10.4 s). Now it is not opened: the start says so and runs the graph
    exported from the weights, whose outputs are the model's."""
    (rgb, flow), want = reference
    copy = tmp_path / "m"
    copy.mkdir()
    for name in ("card.json", "model.safetensors"):
        os.symlink(model_dir / name, copy / name)
    graph = _foreign_graph(copy / ONNX_FILENAME)
    card = load_model(model_dir)[1]
    facts = engine_onnx_cache.beside_onnx_facts(card, SIZE_PX)
    if manifest.startswith("unsigned"):
        engine_cache.write_manifest(graph, facts, signed=False)
    elif manifest == "forged":
        _forged_manifest(graph, facts)
    elif manifest == "ours, for other weights":
        engine_cache.write_manifest(graph, {**facts, "weights_sha256": "ab" * 32})
    elif manifest == "ours, graph changed since":
        engine_onnx_cache.write_beside_manifest(graph, card, SIZE_PX)
        with open(graph, "ab") as fh:
            fh.write(b"\0")
    caplog.set_level(logging.WARNING, logger="stream.engine")
    with build_engine("onnxruntime", copy) as engine:
        assert_close(engine.predict_all(rgb, flow), want, FP32_ATOL)  # the model's numbers, not the foreign graph's
    assert len(fast_export) == 1  # exported from the weights into the cache
    messages = [r.getMessage() for r in caplog.records]
    assert any(str(graph) in m and "not used" in m and "export-model" in m for m in messages), messages


def test_a_model_onnx_signed_by_export_model_is_used(signed_dir, reference, fast_export) -> None:
    (rgb, flow), want = reference
    with build_engine("onnxruntime", signed_dir) as engine:
        assert_close(engine.predict_all(rgb, flow), want, FP32_ATOL)
    assert not fast_export  # the graph beside the weights ran; nothing exported


def test_degenerate_streams_names_saturated_or_constant_outputs() -> None:
    varied = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]], np.float32)
    one_hot = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)  # saturated, though it differs
    same = np.array([[0.2, 0.5, 0.3], [0.2, 0.5, 0.3]], np.float32)
    assert verify.degenerate_streams((varied, varied, varied)) == []
    assert verify.degenerate_streams((varied, one_hot, same)) == ["rgb", "flow"]


BUNDLED = Path(__file__).resolve().parents[1] / "trained_models" / "fst-side-64"


@pytest.mark.skipif(not (BUNDLED / "card.json").is_file(), reason="bundled model not in this checkout")
def test_probe_clips_exercise_both_streams_of_the_bundled_model(one_torch_thread) -> None:
    """Uniform noise pushed the trained flow stream to exactly [1, 0, 0]; the probe clips do not."""
    model, card = load_model(BUNDLED)
    size = card.input_size_px
    gen = torch.Generator().manual_seed(0)
    noise = (torch.rand(3, 3, 16, size, size, generator=gen) * 2 - 1, torch.rand(3, 2, 16, size, size, generator=gen) * 2 - 1)
    assert "flow" in verify.degenerate_streams(verify.reference_probs(model, *noise))
    probs = verify.reference_probs(model, *verify.probe_clips(card.clip_frames, size))
    assert verify.degenerate_streams(probs) == []
    assert len({int(row.argmax()) for row in probs[2]}) >= 2  # the flow stream tells the clips apart


# ------------------------------------------------------------------- the cache's own files


def test_an_empty_weights_sha256_never_names_a_cache_file(model_dir, tmp_path, own_cache, fast_export) -> None:
    """Two models with the same name and no digest in their cards shared `<name>-32px.onnx`: the
    second ran the first one's graph. The cache is keyed by the weights' own digest instead."""
    import json

    from stream.modelfile import load_card, sha256_file

    def without_sha(src: Path, dst: Path) -> Path:
        dst.mkdir()
        os.symlink(src / "model.safetensors", dst / "model.safetensors")
        card = json.loads((src / "card.json").read_text())
        (dst / "card.json").write_text(json.dumps({**card, "weights_sha256": ""}))
        return dst

    first = without_sha(model_dir, tmp_path / "first")
    build_engine("onnxruntime", first).close()
    digest = sha256_file(model_dir / "model.safetensors")
    assert [p.name for p in (own_cache / "onnx").glob("*.onnx")] == [f"{digest[:20]}-{SIZE_PX}px.onnx"]
    second = without_sha(make_model_dir(tmp_path / "other", seed=1), tmp_path / "second")  # same name "test"
    assert engine_onnx_cache.onnx_path(second, load_card(second), SIZE_PX) is None  # nothing cached for these weights
    with pytest.raises(ValueError, match="no weights_sha256"):
        engine_onnx_cache.cached_onnx_path(load_card(second), SIZE_PX)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o620])
def test_a_cache_key_others_may_access_is_refused_in_one_line(tmp_path, own_cache, mode) -> None:
    own_cache.mkdir(mode=0o700)
    key = own_cache / "manifest.key"
    key.write_bytes(os.urandom(32))
    key.chmod(mode)
    artifact = tmp_path / "g.onnx"
    artifact.write_bytes(b"graph")
    with pytest.raises(UserError, match=rf"manifest.key: refused: the cache key has mode {mode:04o}.*delete it") as info:
        engine_cache.write_manifest(artifact, {})
    assert str(key) in str(info.value) and "\n" not in str(info.value)
    key.chmod(0o600)
    engine_cache.write_manifest(artifact, {})  # the same key, private again: accepted
    assert engine_cache.manifest_problem(artifact, {}) is None


def test_a_cache_key_owned_by_someone_else_is_refused(tmp_path, own_cache, monkeypatch) -> None:
    artifact = tmp_path / "g.onnx"
    artifact.write_bytes(b"graph")
    engine_cache.write_manifest(artifact, {})  # makes the key, owned by this user
    me = os.geteuid()
    monkeypatch.setattr(engine_cache.os, "geteuid", lambda: me + 4242)  # as seen by another user
    with pytest.raises(UserError, match=rf"refused: the cache key belongs to user id {me}, not to you") as info:
        engine_cache.manifest_problem(artifact, {})
    assert "\n" not in str(info.value)


def test_cache_folders_are_made_0700_whatever_the_umask(model_dir, tmp_path, own_cache, fast_export) -> None:
    import stat

    bare = _bare_copy(model_dir, tmp_path)
    old = os.umask(0)
    try:
        build_engine("onnxruntime", bare).close()
        engine = tmp_path / "model" / "tensorrt" / "fused-x.ep"  # the TensorRT cache's folder, in a model folder
        load_or_build_cached(engine, lambda tmp: tmp.write_bytes(b"engine"), lambda path: path.read_bytes(), facts={})
    finally:
        os.umask(old)
    for folder in (own_cache, own_cache / "onnx", tmp_path / "model", tmp_path / "model" / "tensorrt"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE((own_cache / "manifest.key").stat().st_mode) == 0o600


def test_stream_run_never_runs_a_foreign_model_onnx_under_the_models_name(tiny_model, moving_square_video, tmp_path, caplog, one_torch_thread) -> None:
    """Issue 24, end to end: a model.onnx without a manifest put beside the weights (as someone handed
    it over) is not what stream-run runs: the log says so, and every probability is the one the
    model itself gives (the same run without that file)."""
    import shutil

    import stream.run as run_mod
    from stream.outputs.csv_log import read_frames_csv

    model = tmp_path / "tiny"
    shutil.copytree(tiny_model, model)
    graph = _foreign_graph(model / ONNX_FILENAME)
    video = moving_square_video(tmp_path / "v.mp4", 40)

    def run(out: Path) -> list[dict]:
        argv = ["--video", str(video), "--model", str(model), "--engine", "onnxruntime",
                "--out", str(out), "--no-zmq", "--no-metrics", "-q"]  # fmt: skip
        assert run_mod.main(argv) == 0
        (frames,) = out.rglob("*.frames.csv")
        return read_frames_csv(frames)

    caplog.set_level(logging.WARNING, logger="stream.engine")
    with_foreign = run(tmp_path / "with")
    assert any(str(graph) in m and "not used (no manifest" in m for m in caplog.messages), caplog.messages
    graph.unlink()
    without = run(tmp_path / "without")
    assert len(with_foreign) == len(without) > 0
    assert with_foreign == without  # the model's own numbers, row for row


@pytest.mark.parametrize("kind", ["torch", "onnxruntime"])
def test_an_engine_refuses_a_model_with_nan_weights_in_one_line(tmp_path, kind) -> None:
    """The torch engine ran NaN weights (every probability NaN); onnxruntime's first export refused
    them only through its check against PyTorch. Both refuse them when the weights are read."""
    torch.manual_seed(0)
    model = FusedI3D(num_classes=len(CLASSES))
    with torch.no_grad():
        model.rgb.Conv3d_1a_7x7.conv3d.weight[0, 0, 0, 0, 0] = float("nan")
    card = ModelCard(name="nan", view="side", classes=list(CLASSES), immobile_classes=["float"], input_size_px=SIZE_PX,
                     fps=15.0, flow=dataclasses.asdict(FlowConfig()), flow_weight=0.5)  # fmt: skip
    directory = save_model(model, card, tmp_path / "nan")
    with pytest.raises(UserError, match=r"model.safetensors: 1 tensor\(s\) hold NaN or infinite values \(first: rgb.Conv3d_1a_7x7.conv3d.weight\)") as info:
        build_engine(kind, directory, device="cpu")
    assert "\n" not in str(info.value)
