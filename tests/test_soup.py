"""Tests of export/soup.py: the weight average, the members it refuses, and ``export-soup`` end to end
on small generated videos with small members that share one start."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from export import soup
from stream.errors import EXIT_USER_ERROR, UserError
from stream.flow import FlowConfig
from stream.model import FusedI3D
from stream.modelfile import ModelCard, load_model, save_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")

START = "checkpoint start.safetensors sha256 0123abcd (a pretrained start shared by every member)"


def _card(**changes) -> ModelCard:
    card = ModelCard(
        name="member", view="side", classes=["swim", "struggle", "float"], immobile_classes=["float"], input_size_px=32, fps=15.0,
        flow=dataclasses.asdict(FlowConfig.fast()), flow_weight=0.5, init=START, training={"data": "test members"},
    )  # fmt: skip
    return dataclasses.replace(card, **changes)


def _members(tmp_path, n: int = 2, noise: float = 0.05, **card_changes) -> list:
    """``n`` members: one random network (the shared "start") plus a different small perturbation each."""
    torch.manual_seed(0)
    start = FusedI3D(num_classes=3).state_dict()
    dirs = []
    for i in range(n):
        g = torch.Generator().manual_seed(100 + i)
        model = FusedI3D(num_classes=3)
        model.load_state_dict({k: v + noise * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in start.items()})
        model.flow_weight = 0.3 + 0.2 * i
        dirs.append(save_model(model, _card(name=f"member{i}", **card_changes), tmp_path / f"m{i}"))
    return dirs


def _loaded(dirs):
    models = [load_model(d) for d in dirs]
    return [c for _, c in models], [m.state_dict() for m, _ in models], [str(d) for d in dirs]


def test_the_average_is_the_mean_of_each_float_tensor_and_keeps_the_first_counters():
    a = {"w": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(7)}
    b = {"w": torch.tensor([3.0, 6.0]), "bn.num_batches_tracked": torch.tensor(9)}
    out = soup.average_weights([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0])) and out["w"].dtype == torch.float32
    assert out["bn.num_batches_tracked"].item() == 7 and out["bn.num_batches_tracked"].dtype == torch.int64


@pytest.mark.parametrize(
    "case, message",
    [
        ("one", "at least 2 models"),
        ("twice", "the same weights"),
        ("random", "random start"),
        ("flow", "differs from"),
        ("classes", "differs from"),
        ("start", "init"),
        ("shape", "other tensors"),
    ],
)
def test_members_whose_average_is_no_model_are_refused_in_one_line(tmp_path, case, message):
    dirs = _members(tmp_path, init="random" if case == "random" else START)
    cards, states, names = _loaded(dirs)
    if case == "one":
        cards, states, names = cards[:1], states[:1], names[:1]
    elif case == "twice":
        cards, states, names = [cards[0], cards[0]], [states[0], states[0]], [names[0], names[0] + "-copy"]
    elif case == "flow":
        cards[1] = dataclasses.replace(cards[1], flow=dataclasses.asdict(FlowConfig()))
    elif case == "classes":
        cards[1] = dataclasses.replace(cards[1], classes=["swim", "float", "struggle"])
    elif case == "start":
        cards[1] = dataclasses.replace(cards[1], init="random")
    elif case == "shape":
        states[1] = dict(states[1])
        states[1].pop(next(iter(states[1])))
    with pytest.raises(UserError, match=message) as err:
        soup.check_members(cards, states, names)
    assert "\n" not in str(err.value)


def test_members_fine_tuned_from_one_start_pass(tmp_path):
    soup.check_members(*_loaded(_members(tmp_path, n=3)))


def test_a_soup_far_below_its_best_member_is_called_out():
    assert soup.collapse_warning([0.80, 0.70], 0.75) is None
    assert soup.collapse_warning([0.80, 0.70], 0.71) is None  # within the margin of the best
    line = soup.collapse_warning([0.80, 0.70], 0.60)
    assert line and "0.600" in line and "0.800" in line and "best member" in line


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A training video (two arenas) and a held-out one whose simulator metadata names a held-out family."""
    from export.synth import SynthConfig, render_video

    out = tmp_path_factory.mktemp("soup-videos")
    train = render_video(SynthConfig(view="side", duration_s=30.0, fps=15.0, arenas=2, arena_size_px=48, seed=21), out / "train")
    test = render_video(SynthConfig(view="side", duration_s=16.0, fps=15.0, arenas=1, arena_size_px=48, seed=22), out / "test")
    meta = json.loads(test.arenas_json.read_text())
    meta.update(randomized=True, held_out=["mouse"], families={"mouse": {"colour": "grey"}})
    test.arenas_json.write_text(json.dumps(meta))
    return train, test


def test_export_soup_end_to_end_averages_recalibrates_scores_and_writes_a_card(videos, tmp_path, capsys):
    train, test = videos
    dirs = _members(tmp_path, n=3)
    members = [load_model(d)[0].state_dict() for d in dirs]
    out, model_dir = tmp_path / "report", tmp_path / "soup-model"
    argv = [
        "--models", *map(str, dirs), "--videos", str(train.video_path), "--test-videos", str(test.video_path),
        "--out", str(out), "--export-model", str(model_dir), "--name", "soup-test", "--cache-dir", str(tmp_path / "cache"),
        "--frame-step", "8", "--val-folds", "4", "--bn-recalibration-clips", "8", "--batch-size", "4", "--threads", "1",
    ]  # fmt: skip
    assert soup.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("member ") == 3 and "weight average of 3: validation accuracy" in printed

    model, card = load_model(model_dir)
    state = model.state_dict()
    conv = next(k for k in state if state[k].dim() == 5)
    assert torch.allclose(state[conv], torch.stack([m[conv] for m in members]).mean(0), atol=1e-6)  # weights: the plain mean
    bn = next(k for k in state if k.endswith("running_mean"))
    assert not torch.allclose(state[bn], torch.stack([m[bn] for m in members]).mean(0), atol=1e-4)  # BatchNorm: estimated again
    assert card.name == "soup-test" and card.init.startswith(soup.SOUP_METHOD) and START in card.init
    assert card.input_size_px == 32 and card.flow == dataclasses.asdict(FlowConfig.fast()) and card.crop == "roi"
    facts = card.training["soup"]
    assert [m["weights_sha256"] for m in facts["members"]] == [load_model(d)[1].weights_sha256 for d in dirs]
    assert "8 training clips" in facts["batchnorm"] and 0.0 <= facts["validation_accuracy"] <= 1.0
    assert card.metrics["evaluation"] == "held-out" and set(card.metrics["heldout"]["groups"]) == {"mouse"}
    assert card.metrics["flow_weight_chosen_on"].startswith("the validation split")
    assert card.input_stats["brightness"]["p50"] > 0
    saved = json.loads((out / "soup.json").read_text())
    assert saved["flow_weight"] == card.flow_weight == model.flow_weight and len(saved["accuracy_by_flow_weight"]) == 11
    for name in ("metrics.json", "report.html", "accuracy_by_heldout_group.png"):
        assert (out / name).stat().st_size > 0, name


def test_export_soup_refuses_members_of_other_starts_before_reading_any_video(tmp_path, capsys):
    a = _members(tmp_path / "a", n=1)
    b = _members(tmp_path / "b", n=1, noise=0.1, init="checkpoint other.safetensors")
    code = soup.main(["--models", str(a[0]), str(b[0]), "--videos", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o"),
                      "--export-model", str(tmp_path / "m")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and err.startswith("export-soup: error:") and "init" in err and err.count("\n") == 1
    assert not (tmp_path / "m").exists()
