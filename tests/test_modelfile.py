"""Model directories: safetensors weights + card, checksums, consistency checks."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from stream.model import FusedI3D
from stream.errors import UserError
from stream.flow import FlowConfig
from stream.modelfile import CARD_FILE, MAX_CARD_BYTES, MAX_CARD_DEPTH, ModelCard, ModelFileError, bundled_models, load_card, load_model, save_model

FLOW = dataclasses.asdict(FlowConfig(tau=0.25, lambda_=0.15, theta=0.3))  # a card holds every TV-L1 setting


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


# ------------------------------------------------------------------ strict cards, through stream-run

RAW = "raw JSON: "  # a card value written as the JSON text that follows (json.dumps would not nest this deep)

BAD_CARDS = [
    # (what to change in card.json, the field the one-line error must name)
    ({"input_size_px": "64"}, 'input_size_px must be an integer, got "64"'),
    ({"fps": None}, "fps must be a finite number, got null"),
    ({"fps": 0}, "fps must be in [1, 240], got 0"),
    ({"fps": 1e-9}, "fps must be in [1, 240], got 1e-09"),
    ({"fps": 15000}, "fps must be in [1, 240], got 15000"),
    ({"decisions": {"min_bout_s": "abc"}}, 'decisions.min_bout_s must be a finite number, got "abc"'),
    ({"decisions": {"min_bout_s": [1]}}, "decisions.min_bout_s must be a finite number, got array"),
    ({"decisions": {"min_bout_s": -1}}, "decisions.min_bout_s must be in [0, 60], got -1"),
    ({"decisions": {"min_bout": 1.0}}, "decisions has unknown key(s) min_bout"),
    ({"decisions": [1]}, "decisions must be an object"),
    ({"training": RAW + "[" * 5000 + "]" * 5000}, f"JSON nested deeper than {MAX_CARD_DEPTH} levels"),  # past the parser's stack
    ({"training": RAW + "[" * 200 + "]" * 200}, f"JSON nested deeper than {MAX_CARD_DEPTH} levels"),  # parses, too deep for later copies
    ({"training": {"pad": "x" * MAX_CARD_BYTES}}, "1.0 MiB is not a model card (at most 1 MiB)"),
    ({"flow_weight": "0.5"}, "flow_weight must be a finite number"),
    ({"classes": "swim,float"}, "classes must be a list of strings"),
    ({"classes": ["swim", "swim", "float"]}, "classes must be a non-empty list of distinct"),
    ({"immobile_classes": ["rest"]}, "immobile_classes ['rest'] are not among classes"),
    ({"view": "front"}, "view must be one of 'side', 'top'"),
    ({"weights_file": "../elsewhere.safetensors"}, "weights_file must be a file name inside the model directory"),
    ({"flow": {"nscales": 0}}, "flow: nscales=0 must be an integer >= 1"),
    ({"flow": {"nscale": 3}}, "flow has unknown key(s) nscale"),
    ({"flow": {"warps": "1"}}, 'flow.warps must be an integer, got "1"'),
    ({"flow": {"tau": 0.5}}, "flow: tau=0.5 must be in (0, 0.25]"),
    ({"flow": "tvl1"}, "flow must be an object"),
    ({"flow": {"gamma": None}}, "flow is missing TV-L1 key(s) gamma"),
    ({"flow": {}}, "flow is missing TV-L1 key(s) tau, lambda_, theta"),
]


def _bad_model(src: Path, dst: Path, change: dict) -> Path:
    import shutil

    shutil.copytree(src, dst)
    card = json.loads((dst / CARD_FILE).read_text())
    for key, value in change.items():
        if key == "flow" and isinstance(value, dict) and value:  # {"gamma": None} drops the key
            card["flow"] = {k: v for k, v in {**card["flow"], **value}.items() if v is not None}
        else:
            card[key] = value
    text = json.dumps(card)
    for key, value in change.items():
        if isinstance(value, str) and value.startswith(RAW):
            text = text.replace(json.dumps(value), value.removeprefix(RAW))
    (dst / CARD_FILE).write_text(text)
    return dst


@pytest.fixture(scope="module")
def run_model(tiny_model, tmp_path_factory) -> Path:
    """A saved model directory for stream-run (this module's ``tiny_model`` is the network itself)."""
    return save_model(tiny_model, make_card(), tmp_path_factory.mktemp("run") / "model")


@pytest.fixture
def no_engine(monkeypatch):
    """stream-run's engine hook, recording calls: a bad card must stop the start before it."""
    import stream.run as run_mod

    calls = []

    def build(*args, **kwargs):
        calls.append(args)
        raise AssertionError("engine built despite a bad card")

    monkeypatch.setattr("stream.runner._build_engine", build)
    return calls


@pytest.mark.parametrize("change, needle", BAD_CARDS, ids=[next(iter(c)) + "=" + json.dumps(next(iter(c.values())))[:20] for c, _ in BAD_CARDS])
def test_bad_card_is_one_line_naming_file_and_field_before_anything_loads(change, needle, run_model, moving_square_video, tmp_path, capsys, no_engine):
    import stream.run as run_mod

    model = _bad_model(run_model, tmp_path / "model", change)
    video = moving_square_video(tmp_path / "v.mp4", 20)
    code = run_mod.main(["--video", str(video), "--model", str(model), "--out", str(tmp_path / "out"), "--no-zmq", "--no-metrics", "-q"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("stream-run: error: ") and str(model / CARD_FILE) in err[0] and needle in err[0], err[0][:300]
    assert not no_engine


def test_bad_flow_in_card_stops_a_camera_start_before_the_camera_or_engine(run_model, tmp_path, capsys, no_engine):
    """Before, the flow settings were checked after the engine warmed up (after READY=1 for a camera)."""
    import stream.run as run_mod

    model = _bad_model(run_model, tmp_path / "model", {"flow": {"nscales": 0}})
    code = run_mod.main(["--camera", "97", "--model", str(model), "--out", str(tmp_path / "out"), "--no-zmq", "--no-metrics", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nscales=0" in err[0] and "camera" not in err[0]
    assert not no_engine


def test_bad_card_through_the_installed_console_script(run_model, moving_square_video, tmp_path):
    """The real ``stream-run`` process: exit status 2, one line on stderr, no traceback."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("stream-run") or str(Path(sys.executable).with_name("stream-run"))
    if not Path(exe).is_file():
        pytest.skip("stream-run console script not installed (pip install -e .)")
    model = _bad_model(run_model, tmp_path / "model", {"fps": None})
    video = moving_square_video(tmp_path / "v.mp4", 20)
    proc = subprocess.run([exe, "--video", str(video), "--model", str(model), "--out", str(tmp_path / "out"), "--no-zmq",
                           "--no-metrics", "-q"], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{model / CARD_FILE}: fps must be a finite number, got null" in lines[0]


def test_a_valid_card_round_trips_and_json_integers_become_floats(tmp_path, tiny_model):
    d = save_model(tiny_model, make_card(), tmp_path / "m")
    card = json.loads((d / CARD_FILE).read_text())
    card["fps"] = 15  # JSON has one number type: 15 is a fine fps
    (d / CARD_FILE).write_text(json.dumps(card))
    loaded = load_card(d)
    assert loaded.fps == 15.0 and isinstance(loaded.fps, float)


def test_bad_cards_are_refused_when_saving_too(tiny_model, tmp_path):
    with pytest.raises(ModelFileError, match="flow: nscales=0"):
        save_model(tiny_model, make_card(flow={**FLOW, "nscales": 0}), tmp_path / "m")
    with pytest.raises(ModelFileError, match='input_size_px must be an integer, got "32"'):
        save_model(tiny_model, make_card(input_size_px="32"), tmp_path / "m2")


def test_input_stats_are_an_optional_checked_card_field(tmp_path, tiny_model, caplog):
    """Issue 24.12: training records the input statistics; older cards without them still load."""
    stats = {"clips": 10, "brightness": {"p01": 50.0, "p50": 90.0, "p99": 130.0},
             "contrast": {"p01": 5.0, "p50": 10.0, "p99": 30.0}, "flow_magnitude": {"p01": 0.0, "p50": 0.2, "p99": 1.0}}
    d = save_model(tiny_model, make_card(input_stats=stats), tmp_path / "m")
    with caplog.at_level("WARNING"):
        assert load_card(d).input_stats == stats
    assert "unknown card field" not in caplog.text
    card = json.loads((d / CARD_FILE).read_text())
    del card["input_stats"]  # a card written before the field existed
    (d / CARD_FILE).write_text(json.dumps(card))
    assert load_card(d).input_stats == {}
    card["input_stats"] = {**stats, "contrast": {"p01": 30.0, "p50": 10.0, "p99": 5.0}}
    (d / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match=r"input_stats.contrast must be \{p01, p50, p99\}"):
        load_card(d)
    card["input_stats"] = "bright"
    (d / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="input_stats must be"):
        load_card(d)


def test_bundled_cards_carry_input_stats():
    from stream.modelfile import bundled_model_dir

    for view in ("side", "top"):
        stats = load_card(bundled_model_dir(view)).input_stats
        assert stats["clips"] >= 500 and stats["brightness"]["p01"] < stats["brightness"]["p99"], view


# ------------------------------------------------------------------------------ --view side|top


def _fake_bundle(root: Path, models: dict[str, str]) -> Path:
    for name, view in models.items():
        (root / name).mkdir(parents=True)
        (root / name / CARD_FILE).write_text(json.dumps({"name": name, "view": view}))
    return root


def test_bundled_model_for_a_view_prefers_the_named_one(tmp_path):
    from stream.modelfile import PREFERRED_BUNDLED, bundled_model_dir

    root = _fake_bundle(tmp_path / "tm", {"a-side-old": "side", PREFERRED_BUNDLED["side"]: "side", "z-top": "top"})
    (root / "broken").mkdir()
    (root / "broken" / CARD_FILE).write_text("{not json")  # skipped, not fatal
    assert bundled_model_dir("side", root) == root / PREFERRED_BUNDLED["side"]
    assert bundled_model_dir("top", root) == root / "z-top"  # the preferred name is absent: the one that has the view


def test_bundled_model_for_a_view_missing_names_what_there_is(tmp_path):
    from stream.modelfile import bundled_model_dir

    root = _fake_bundle(tmp_path / "tm", {"fst-side-64": "side"})
    with pytest.raises(UserError) as info:
        bundled_model_dir("top", root)
    assert str(info.value) == "--view top: no bundled model for the top view (bundled: fst-side-64 (side)); pass --model DIR"


@pytest.fixture
def engine_dirs(monkeypatch):
    """stream-run's engine hook: records the model directory, then stops the start (exit 2)."""
    import stream.run as run_mod

    dirs: list[Path] = []

    def build(kind, model_dir, *args, **kwargs):
        dirs.append(Path(model_dir))
        raise UserError("stopped by the test after choosing the model")

    monkeypatch.setattr("stream.runner._build_engine", build)
    return dirs


def test_stream_run_view_picks_the_bundled_model_and_model_wins(run_model, moving_square_video, tmp_path, capsys, engine_dirs, caplog):
    import logging

    import stream.run as run_mod
    from stream.modelfile import BUNDLED_MODELS_DIR

    video = moving_square_video(tmp_path / "v.mp4", 20)
    base = ["--video", str(video), "--no-zmq", "--no-metrics", "-q"]
    if "side" in bundled_models().values():
        assert run_mod.main([*base, "--out", str(tmp_path / "o1"), "--view", "side"]) == 2
        assert engine_dirs[-1].parent == BUNDLED_MODELS_DIR and bundled_models()[engine_dirs[-1].name] == "side"
    caplog.set_level(logging.WARNING, logger="stream.run")
    assert run_mod.main([*base, "--out", str(tmp_path / "o2"), "--view", "top", "--model", str(run_model)]) == 2
    assert engine_dirs[-1] == run_model  # --model wins, with a warning that the views differ
    assert any("--view top" in r.getMessage() and "side-view" in r.getMessage() for r in caplog.records)
    capsys.readouterr()


@pytest.mark.skipif("top" in bundled_models().values(), reason="a top-view model is bundled now")
def test_stream_run_view_without_a_bundled_model_is_one_line(moving_square_video, tmp_path, capsys, engine_dirs):
    import stream.run as run_mod

    video = moving_square_video(tmp_path / "v.mp4", 20)
    code = run_mod.main(["--video", str(video), "--view", "top", "--out", str(tmp_path / "o"), "--no-zmq", "--no-metrics", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--view top: no bundled model for the top view" in err[0] and "--model DIR" in err[0]
    assert not engine_dirs


# ------------------------------------------------------------------ weights that are not what they say


def relabel_safetensors(path: Path, key: str, dtype: str, *, shape: list[int] | None = None) -> None:
    """Rewrite ``key``'s dtype (and shape) in a safetensors header, bytes unchanged: a relabelled tensor."""
    import struct

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header[key]["dtype"] = dtype
    if shape is not None:
        header[key]["shape"] = shape
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])


def _resign(directory: Path) -> None:
    """The card's sha256 made to match the changed weights: the checksum alone cannot catch these."""
    from stream.modelfile import sha256_file

    card = json.loads((directory / CARD_FILE).read_text())
    card["weights_sha256"] = sha256_file(directory / "model.safetensors")
    (directory / CARD_FILE).write_text(json.dumps(card))


@pytest.mark.parametrize("half, dtype, shape", [(False, "I32", None), (False, "F16", [3, 1024 * 2, 1, 1, 1]), (True, "BF16", None), (True, "I16", None)])
def test_a_relabelled_tensor_is_refused_on_load(tmp_path, tiny_model, half, dtype, shape):
    d = save_model(tiny_model, make_card(), tmp_path / "m", half=half)
    key = "rgb.logits.conv3d.weight"  # (3, 1024, 1, 1, 1)
    relabel_safetensors(d / "model.safetensors", key, dtype, shape=shape)
    _resign(d)
    stored = {"I32": "int32", "F16": "float16", "BF16": "bfloat16", "I16": "int16"}[dtype]
    with pytest.raises(ModelFileError, match=rf"tensor {key} is stored as {stored}, not {'float16' if half else 'float32'}.*relabelled") as info:
        load_model(d)
    assert "\n" not in str(info.value)


def test_a_model_with_nan_weights_is_refused_on_load(tmp_path, tiny_model):
    import copy

    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        broken.flow.Mixed_4b.b0.conv3d.weight[0, 0, 0, 0, 0] = float("nan")
    d = save_model(broken, make_card(), tmp_path / "m")
    with pytest.raises(ModelFileError, match=r"1 tensor\(s\) hold NaN or infinite values \(first: flow.Mixed_4b.b0.conv3d.weight\)"):
        load_model(d)


@pytest.mark.parametrize(("field", "value", "default", "bad", "message"), [
    ("trained_for", "streaming", "clip", "stream", "trained_for must be one of clip, streaming, got 'stream'"),  # issue 22
    ("crop", "mouse", "roi", "face", "crop must be one of roi, mouse, got 'face'"),  # issue 21: the input crop the model learnt
])
def test_optional_card_fields_default_for_older_cards_and_are_checked(tmp_path, tiny_model, caplog, field, value, default, bad, message):
    """A field added later: read back as written, its default on a card written before it existed, a wrong value refused."""
    d = save_model(tiny_model, make_card(**{field: value}), tmp_path / "m")
    with caplog.at_level("WARNING"):
        assert getattr(load_card(d), field) == value
    assert "unknown card field" not in caplog.text
    card = json.loads((d / CARD_FILE).read_text())
    del card[field]  # a card written before the field existed
    (d / CARD_FILE).write_text(json.dumps(card))
    assert getattr(load_card(d), field) == default
    card[field] = bad
    (d / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match=re.escape(message)):
        load_card(d)


def test_trained_for_streaming_is_for_i3d_models():
    with pytest.raises(ModelFileError, match="trained_for 'streaming' is for i3d models"):
        make_card(trained_for="streaming", kind="motion", weights_dtype="json").validate()


def test_card_without_texture_sigma_computes_the_flow_it_was_trained_with(tmp_path, tiny_model):
    """A card written before FlowConfig.texture_sigma existed loads, with the pre-filter off; a card with it keeps it."""
    import hashlib

    from export.dataset import _flow_key

    d = save_model(tiny_model, make_card(), tmp_path / "m")
    card = json.loads((d / CARD_FILE).read_text())
    card["flow"].pop("texture_sigma", None)
    (d / CARD_FILE).write_text(json.dumps(card))
    old = load_card(d)
    assert old.flow["texture_sigma"] == 0.0 and FlowConfig(**old.flow) == FlowConfig(**{**FLOW, "texture_sigma": 0.0})
    card["flow"]["texture_sigma"] = 2.5
    (d / CARD_FILE).write_text(json.dumps(card))
    assert FlowConfig(**load_card(d).flow).texture_sigma == 2.5
    # the training cache's key: unchanged for every setting without the pre-filter, another one with it
    plain = FlowConfig.fast()
    legacy = dataclasses.asdict(plain)
    del legacy["texture_sigma"]
    assert _flow_key(plain) == hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:12]
    assert _flow_key(FlowConfig.fast(texture_sigma=2.5)) != _flow_key(plain)


def test_a_mouse_crop_model_runs_clip_wise_and_a_step_wise_engine_refuses_it(tmp_path, tiny_model):
    """Issue 21: the clip-wise engines are fed mouse windows (stream.clip_source); a step-wise engine keeps
    per-layer state over the image, which a window moving from clip to clip would tear apart."""
    from stream.engine import build_engine
    from stream.engine.factory import runs_stepwise

    d = save_model(tiny_model, make_card(crop="mouse"), tmp_path / "m")
    build_engine("torch", d, device="cpu", optimize=False).close()
    with pytest.raises(UserError, match="trained on 'mouse' crops .*, which a step-wise engine cannot follow"):
        build_engine("streaming-torch", d, device="cpu")
    card = load_card(d)
    assert not runs_stepwise("auto", card) and runs_stepwise("streaming", card) and runs_stepwise("streaming-torch", card)
    assert runs_stepwise("auto", make_card(trained_for="streaming")) and not runs_stepwise("torch", make_card())
