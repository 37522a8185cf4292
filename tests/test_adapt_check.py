"""Tests of export/adapt_check.py: what is adapted together, and ``export-adapt-check`` end to end on
two small generated videos, its per-recording figures checked against the same adaptation done by
hand with ``export.adapt``'s functions."""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from export import adapt_check
from export import train as tr
from export.adapt import adapt_batchnorm, unlabelled_clips
from export.train_data import card_data_args
from stream.errors import EXIT_USER_ERROR, UserError
from stream.flow import FlowConfig
from stream.model import FusedI3D
from stream.modelfile import ModelCard, load_model, save_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_units_are_each_video_each_group_or_all_of_them():
    videos, groups = ["a", "b", "c", "d"], ["mouse", "light", "mouse", "light"]
    assert adapt_check.adaptation_units(videos, groups, "recording") == [[0], [1], [2], [3]]
    assert adapt_check.adaptation_units(videos, groups, "group") == [[0, 2], [1, 3]]
    assert adapt_check.adaptation_units(videos, groups, "all") == [[0, 1, 2, 3]]
    with pytest.raises(UserError, match="--scope"):
        adapt_check.adaptation_units(videos, groups, "arena")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Two short annotated side videos of two held-out families, and a 32 px model whose TV-L1
    settings are export-train's fast preset (so the clips can be rebuilt from its card)."""
    from export.synth import SynthConfig, render_video

    out = tmp_path_factory.mktemp("adapt-check")
    videos = []
    for seed, family, light in ((31, "mouse", 1.0), (32, "lighting", 0.6)):
        v = render_video(SynthConfig(view="side", duration_s=12.0, fps=15.0, arenas=1, arena_size_px=48, seed=seed), out / f"test_{family}")
        meta = json.loads(v.arenas_json.read_text())
        meta.update(randomized=True, held_out=[family])
        v.arenas_json.write_text(json.dumps(meta))
        videos.append(v)
    torch.manual_seed(0)
    card = ModelCard(name="check-test", view="side", classes=["swim", "struggle", "float"], immobile_classes=["float"], input_size_px=32, fps=15.0,
                     flow=dataclasses.asdict(FlowConfig.fast()), flow_weight=0.5, init="random", training={"note": "test"})  # fmt: skip
    model_dir = save_model(FusedI3D(num_classes=3), card, out / "model")
    return videos, model_dir


def _argv(videos, model_dir, tmp_path, *extra) -> list[str]:
    return ["--model", str(model_dir), "--videos", *(str(v.video_path) for v in videos), "--out", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path.parent / "adapt-check-cache"), "--clips", "6", "--adapt-frame-step", "4", "--frame-step", "6",
            "--batch-size", "3", "--threads", "1", *extra]  # fmt: skip


def test_per_recording_figures_are_those_of_the_same_adaptation_done_by_hand(labelled, tmp_path, capsys):
    videos, model_dir = labelled
    assert adapt_check.main(_argv(videos, model_dir, tmp_path)) == 0
    printed = capsys.readouterr().out
    assert "as shipped: mean" in printed and "adapted (each video on itself): mean" in printed
    with open(tmp_path / "out" / adapt_check.CSV_NAME, newline="") as f:
        rows = {r["group"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"mouse", "lighting"}
    facts = json.loads((tmp_path / "out" / adapt_check.JSON_NAME).read_text())
    assert facts["settings"]["scope"] == "recording" and len(facts["settings"]["median_relative_change_of_variances"]) == 2
    assert all(m > 0 for m in facts["settings"]["median_relative_change_of_variances"])
    assert (tmp_path / "out" / adapt_check.PLOT_NAME).stat().st_size > 0
    assert len(facts["by_flow_weight_after"]) == 11 and "by flow weight" in printed
    mean_after = np.mean([g["accuracy"] for g in facts["after"]["groups"]])
    assert facts["by_flow_weight_after"]["0.5"] == pytest.approx(mean_after, abs=1e-4)  # the card's weight: the table's mean

    # the "lighting" video adapted alone, by hand: the same statistics, the same predictions, the same accuracy
    model, card = load_model(model_dir)
    lighting = videos[1]
    adapted = copy.deepcopy(model).eval()
    clips = unlabelled_clips(card, [lighting.video_path], [None], frame_step=4, cache_dir=tmp_path.parent / "adapt-check-cache")
    adapt_batchnorm(adapted, clips, count=6, seed=0, batch_size=3)
    ns = argparse.Namespace(videos=[lighting.video_path], labels=None, arenas=None, test_videos=None, test_labels=None, test_arenas=None,
                            frame_step=6, cache_dir=tmp_path.parent / "adapt-check-cache", device="cpu")  # fmt: skip
    data = card_data_args(ns, card, what="test")
    ds, _ = tr.dataset_from_args(data, card.classes, progress=False)
    pred = tr.predict_streams(adapted, ds, batch_size=3, device="cpu", progress=False)
    fused = (card.flow_weight * pred.flow_probs + (1 - card.flow_weight) * pred.rgb_probs).argmax(1)
    assert float(rows["lighting"]["accuracy_after"]) == pytest.approx(float(np.mean(fused == pred.labels)), abs=1e-4)


def test_scope_all_adapts_once_and_group_once_per_family(labelled, tmp_path, capsys):
    videos, model_dir = labelled
    for scope, n in (("all", 1), ("group", 2)):
        assert adapt_check.main(_argv(videos, model_dir, tmp_path, "--scope", scope)) == 0
        facts = json.loads((tmp_path / "out" / adapt_check.JSON_NAME).read_text())
        assert facts["settings"]["scope"] == scope and len(facts["settings"]["median_relative_change_of_variances"]) == n
        assert [g["group"] for g in facts["before"]["groups"]] == [g["group"] for g in facts["after"]["groups"]]
    assert "adapted (each group's videos together)" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["motion model", "labels count", "twice"])
def test_mistakes_are_one_line(labelled, tmp_path, capsys, case):
    videos, model_dir = labelled
    argv = _argv(videos, model_dir, tmp_path)
    if case == "motion model":
        motion = tmp_path / "motion"
        motion.mkdir()
        card = json.loads((model_dir / "card.json").read_text())
        (motion / "card.json").write_text(json.dumps({**card, "kind": "motion"}))
        argv[1] = str(motion)
    elif case == "labels count":
        argv += ["--labels", str(videos[0].labels_csv)]
    else:
        argv[3] = argv[4]
    assert adapt_check.main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("export-adapt-check: error:") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
