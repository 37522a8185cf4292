"""Tests of export/adapt.py: unlabelled sources, and ``export-adapt`` end to end on a small generated
video with a small model: only BatchNorm statistics change, and the card says from what."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from export import adapt
from stream.errors import EXIT_USER_ERROR, UserError
from stream.modelfile import load_model
from tests.conftest import write_moving_square_video


pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ["swim", "struggle", "float"]


def test_every_arena_of_every_video_is_a_source_and_no_label_file_is_needed(tmp_path):
    two = write_moving_square_video(tmp_path / "two.mp4", frames=30)
    (tmp_path / "two.arenas.json").write_text(json.dumps({"arenas": [{"id": "A1", "roi": [0, 0, 32, 64]}, {"id": "A2", "roi": [32, 0, 32, 64]}]}))
    whole = write_moving_square_video(tmp_path / "whole.mp4", frames=20)
    sources = adapt.unlabelled_sources([two, whole], [None, None], CLASSES)
    assert [s.name for s in sources] == ["two.mp4#A1", "two.mp4#A2", "whole.mp4"]
    assert sources[2].roi is None and sources[0].roi is not None
    assert [s.annotation.num_frames for s in sources] == [30, 30, 20]
    with pytest.raises(UserError, match="missing.mp4: video not found"):
        adapt.unlabelled_sources([tmp_path / "missing.mp4"], [None], CLASSES)
    (tmp_path / "bad.arenas.json").write_text(json.dumps({"arenas": [{"id": "A1", "roi": [40, 0, 64, 64]}]}))
    with pytest.raises(UserError, match="does not fit"):
        adapt.unlabelled_sources([two], [tmp_path / "bad.arenas.json"], CLASSES)


def test_export_adapt_changes_only_batchnorm_statistics_and_says_so(tiny_model, tmp_path, capsys):
    video = write_moving_square_video(tmp_path / "rig.mp4", frames=60)
    out = tmp_path / "adapted"
    argv = ["--model", str(tiny_model), "--videos", str(video), "--export-model", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--clips", "8", "--frame-step", "3", "--batch-size", "4", "--threads", "1"]  # fmt: skip
    assert adapt.main(argv) == 0
    assert "export-adapt: 1 recording(s), 8 clips" in capsys.readouterr().out
    (source, source_card), (model, card) = load_model(tiny_model), load_model(out)
    before, after = source.state_dict(), model.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.allclose(before[k], after[k]) for k in stats[:5])  # the statistics are the rig's now
    others = [k for k in before if k not in stats and before[k].is_floating_point()]
    for k in others:  # every weight as it was (the source is stored as float16, so is the copy)
        assert torch.equal(before[k], after[k]), k
    assert card.flow_weight == source_card.flow_weight and card.flow == source_card.flow and card.input_size_px == source_card.input_size_px
    facts = card.training["adaptation"]
    assert facts["method"] == adapt.ADAPT_METHOD and facts["source_weights_sha256"] == source_card.weights_sha256
    assert facts["videos"] == ["rig.mp4"] and facts["clips"] == 8 and facts["source_metrics"] == source_card.metrics
    assert card.name == "adapted" and "before" in card.metrics["evaluation"]


@pytest.mark.parametrize("case", ["same folder", "motion model", "arenas count"])
def test_export_adapt_mistakes_are_one_line(tiny_model, tmp_path, capsys, case):
    video = write_moving_square_video(tmp_path / "rig.mp4", frames=20)
    model = tiny_model
    extra: list[str] = []
    out = tmp_path / "out"
    if case == "same folder":
        out = tiny_model
    elif case == "motion model":
        model = tmp_path / "motion"
        shutil.copytree(tiny_model, model)
        card = json.loads((model / "card.json").read_text())
        (model / "card.json").write_text(json.dumps({**card, "kind": "motion"}))
    else:
        extra = ["--arenas", str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    code = adapt.main(["--model", str(model), "--videos", str(video), "--export-model", str(out), *extra])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and err.startswith("export-adapt: error:") and err.count("\n") == 1, err
