"""``export-model``: writes a checked, verified ONNX graph; bad inputs end in one line, exit 2."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import export.export_model as export_mod
from export.export_model import main
from stream.engine import FP32_ATOL, ONNX_FILENAME, ONNX_INPUT_NAMES, ONNX_OUTPUT_NAMES, build_engine
from stream.flow import FlowConfig
from stream.model import FusedI3D
from stream.modelfile import ModelCard, load_model, save_model

SIZE_PX = 32
CLASSES = ["swim", "struggle", "float"]


def make_model_dir(directory: Path, *, seed: int = 0) -> Path:
    """A saved 32 px fused I3D whose outputs depend on the clip (batch-norm statistics set once)."""
    torch.manual_seed(seed)
    model = FusedI3D(num_classes=len(CLASSES), flow_weight=0.4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 16, SIZE_PX, SIZE_PX) * 2 - 1, torch.rand(2, 2, 16, SIZE_PX, SIZE_PX) * 2 - 1)
    model.eval()
    card = ModelCard(name="test", view="side", classes=list(CLASSES), immobile_classes=["float"],
                     input_size_px=SIZE_PX, fps=15.0, flow=dataclasses.asdict(FlowConfig()), flow_weight=0.4)  # fmt: skip
    return save_model(model, card, directory)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, str]:
    """A model directory after one real ``export-model`` run, and what it printed."""
    directory = make_model_dir(tmp_path_factory.mktemp("export") / "model")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(directory)])
    assert code == 0, err.getvalue()
    return directory, out.getvalue() + err.getvalue()


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("export-model: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_onnx_is_written_checked_and_verified(exported) -> None:
    directory, output = exported
    path = directory / ONNX_FILENAME
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == list(ONNX_INPUT_NAMES)
    assert [o.name for o in proto.graph.output] == list(ONNX_OUTPUT_NAMES)
    for value in (*proto.graph.input, *proto.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch axis
    assert proto.opset_import[0].version >= 17
    meta = {p.key: p.value for p in proto.metadata_props}
    card = json.loads((directory / "card.json").read_text())
    assert meta["weights_sha256"] == card["weights_sha256"] and meta["classes"] == ",".join(CLASSES)
    assert "onnx.checker passed" in output
    diff = float(output.split("max abs diff fused ")[1].split(",")[0])
    assert diff <= FP32_ATOL
    assert "TensorRT engine skipped" in output and "pip install swim-stream[tensorrt]" in output
    assert not list(directory.glob("*.unverified")) and not list(directory.glob("*.partial"))


def test_exported_graph_runs_any_batch_and_matches_pytorch(exported) -> None:
    directory, _ = exported
    model, _ = load_model(directory)
    gen = torch.Generator().manual_seed(5)
    for batch in (1, 4):
        offset = torch.linspace(-0.5, 0.5, batch).view(batch, 1, 1, 1, 1)
        rgb = (torch.rand(batch, 3, 16, SIZE_PX, SIZE_PX, generator=gen) - 0.5 + offset).clamp(-1, 1)
        flow = (torch.rand(batch, 2, 16, SIZE_PX, SIZE_PX, generator=gen) - 0.5 - offset).clamp(-1, 1)
        with torch.no_grad():
            want, rgb_logits, _ = model(rgb, flow)
        with build_engine("onnxruntime", directory) as engine:
            got = engine.predict_all(rgb.numpy(), flow.numpy())
        np.testing.assert_allclose(got.fused, want.numpy(), atol=FP32_ATOL, rtol=0)
        np.testing.assert_allclose(got.rgb, rgb_logits.softmax(-1).numpy(), atol=FP32_ATOL, rtol=0)


def test_check_passes_on_a_good_export(exported, capsys) -> None:
    directory, _ = exported
    code, out, _ = run_cli([str(directory), "--check"], capsys)
    assert code == 0 and f"{directory / ONNX_FILENAME}: OK" in out


def test_check_refuses_a_truncated_onnx(exported, tmp_path, capsys) -> None:
    directory = copy_model(exported[0], tmp_path / "m")
    data = (directory / ONNX_FILENAME).read_bytes()
    (directory / ONNX_FILENAME).write_bytes(data[: len(data) // 2])
    code, _, err = run_cli([str(directory), "--check"], capsys)
    assert_one_line_error(code, err, str(directory / ONNX_FILENAME), "export-model")


def test_check_refuses_an_onnx_from_other_weights(exported, tmp_path, capsys) -> None:
    from stream.engine.cache import manifest_path

    directory = make_model_dir(tmp_path / "retrained", seed=1)
    shutil.copy(exported[0] / ONNX_FILENAME, directory / ONNX_FILENAME)
    code, _, err = run_cli([str(directory), "--check"], capsys)  # the graph alone: no manifest vouches for it
    assert_one_line_error(code, err, str(directory / ONNX_FILENAME), "no manifest", "export-model")
    shutil.copy(manifest_path(exported[0] / ONNX_FILENAME), manifest_path(directory / ONNX_FILENAME))
    code, _, err = run_cli([str(directory), "--check"], capsys)  # with its own (signed) manifest: for other weights
    assert_one_line_error(code, err, str(directory / ONNX_FILENAME), "built for weights_sha256", "export-model")


def test_truncated_weights_are_refused(exported, tmp_path, capsys) -> None:
    directory = copy_model(exported[0], tmp_path / "m")
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = run_cli([str(directory)], capsys)
    assert_one_line_error(code, err, str(weights))


def test_card_classes_disagreeing_with_weights_are_refused(exported, tmp_path, capsys) -> None:
    directory = copy_model(exported[0], tmp_path / "m")
    card = json.loads((directory / "card.json").read_text())
    card["classes"] = ["mobile", "immobile"]
    card["immobile_classes"] = ["immobile"]
    (directory / "card.json").write_text(json.dumps(card))
    code, _, err = run_cli([str(directory)], capsys)
    assert_one_line_error(code, err, "card.json", "2 classes")


def test_missing_directory_and_bad_size(tmp_path, exported, capsys) -> None:
    code, _, err = run_cli([str(tmp_path / "nope")], capsys)
    assert_one_line_error(code, err, str(tmp_path / "nope"))
    code, _, err = run_cli([str(exported[0]), "--size", "16", "--check"], capsys)
    assert_one_line_error(code, err, "--size 16")


def test_tensorrt_asked_for_but_not_installed(exported, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)
    monkeypatch.setattr(export_mod, "_tensorrt_possible", lambda: (False, "torch-tensorrt is not installed: pip install swim-stream[tensorrt]"))
    code, _, err = run_cli([str(exported[0]), "--no-onnx", "--tensorrt"], capsys)
    assert_one_line_error(code, err, "pip install swim-stream[tensorrt]")


def test_a_graph_that_fails_verification_is_not_left_behind(exported, tmp_path, monkeypatch, capsys) -> None:
    directory = copy_model(exported[0], tmp_path / "m")
    good = tmp_path / "good.onnx"
    (directory / ONNX_FILENAME).rename(good)
    # re-exporting costs ~15 s here; the good graph stands in for a fresh export
    monkeypatch.setattr(export_mod, "write_onnx", lambda model, path, **kw: shutil.copy(good, path))
    real = export_mod._reference

    def off_by_a_bit(*args):
        return tuple(o + 1e-3 for o in real(*args))  # as if the exporter had mis-translated an op

    monkeypatch.setattr(export_mod, "_reference", off_by_a_bit)
    code, out, err = run_cli([str(directory), "--no-tensorrt"], capsys)
    assert_one_line_error(code, err, str(directory / ONNX_FILENAME), "differs from PyTorch by 1.00e-03")
    assert "max abs diff fused 1.00e-03" in out
    assert not (directory / ONNX_FILENAME).exists()


def test_manifest_records_the_verified_graph_and_check_refuses_a_changed_one(exported, tmp_path, capsys) -> None:
    from stream.engine.cache import manifest_path

    directory = copy_model(exported[0], tmp_path / "m")
    manifest = json.loads(manifest_path(directory / ONNX_FILENAME).read_text())
    card = json.loads((directory / "card.json").read_text())
    assert manifest["file"] == ONNX_FILENAME and manifest["weights_sha256"] == card["weights_sha256"]
    assert manifest["size_bytes"] == (directory / ONNX_FILENAME).stat().st_size and len(manifest["sha256"]) == 64
    assert len(manifest["hmac"]) == 64  # signed with this user's key, as the cache's manifests are
    with pytest.MonkeyPatch.context() as mp:  # the same folder on another machine (another user's key)
        mp.setenv("SWIM_STREAM_CACHE", str(tmp_path / "elsewhere"))
        code, _, err = run_cli([str(directory), "--check"], capsys)
    assert_one_line_error(code, err, str(directory / ONNX_FILENAME), "not written by this user's swim-stream", "export-model")
    with open(directory / ONNX_FILENAME, "ab") as fh:
        fh.write(b"\0")  # still a loadable protobuf for some readers: only the sha256 tells
    code, _, err = run_cli([str(directory), "--check"], capsys)
    assert_one_line_error(code, err, str(directory / ONNX_FILENAME), "sha256 differs from its manifest", "export-model")
