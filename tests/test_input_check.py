"""``stream.input_check``: a trial the model is out of its depth on is said to be (issue 24.12)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import stream.run as run_mod
from stream.input_check import (NEAR_CONSTANT_MIN_S, NEAR_CONSTANT_SHARE, ArenaInputCheck, InputReference,
                                clip_input_stats, input_stats_problems, input_stats_summary)

TOP = ("mobile", "immobile")
RANGES = {"brightness": {"p01": 60.0, "p50": 90.0, "p99": 120.0},
          "contrast": {"p01": 5.0, "p50": 20.0, "p99": 40.0},
          "flow_magnitude": {"p01": 0.0, "p50": 0.3, "p99": 1.5}}


def reference(stats=RANGES, fps: float = 15.0) -> InputReference:
    return InputReference(model="m", classes=TOP, fps=fps, input_stats=stats)


def test_clip_stats_are_grey_levels_and_pixels_per_frame() -> None:
    rgb = torch.ones(2, 3, 16, 8, 8)  # white
    rgb[1] = -1.0  # black...
    rgb[1, :, :, :, :4] = 1.0  # ...left half white: contrast 127.5
    flow = torch.zeros(2, 2, 16, 8, 8)
    flow[0, 0] = 0.5  # 10 px/frame to the right (encoded: / 20 px)
    stats = clip_input_stats(rgb, flow)
    np.testing.assert_allclose(stats[0], [255.0, 0.0, 10.0], atol=1e-4)
    np.testing.assert_allclose(stats[1], [127.5, 127.5, 0.0], atol=1e-3)
    np.testing.assert_allclose(clip_input_stats(rgb[0].numpy(), flow[0].numpy()), stats[:1], atol=1e-5)  # one clip


def test_summary_percentiles_and_schema() -> None:
    samples = np.stack([np.linspace(0, 100, 101), np.linspace(10, 20, 101), np.full(101, 0.5)], axis=1)
    s = input_stats_summary(samples)
    assert s["clips"] == 101 and s["brightness"] == {"p01": 1.0, "p50": 50.0, "p99": 99.0}
    assert input_stats_problems(s) == [] and input_stats_problems({}) == []
    bad = {**s, "contrast": {"p01": 3, "p50": 2, "p99": 1}}
    assert input_stats_problems(bad) == ["input_stats.contrast must be {p01, p50, p99}: finite numbers in order"]
    assert input_stats_problems({"brightness": RANGES["brightness"]})  # the other two missing


def _trial(check: ArenaInputCheck, frames: int, p_immobile, clip=(90.0, 20.0, 0.5)) -> dict:
    for i in range(frames):
        p = p_immobile(i) if callable(p_immobile) else p_immobile
        check.add_prediction(np.array([1 - p, p]))
        check.add_clip(np.array(clip))
    return check.result()


def test_a_constant_prediction_trial_is_warned_about() -> None:
    frames = int(NEAR_CONSTANT_MIN_S * 15)
    r = _trial(ArenaInputCheck(reference()), frames, lambda i: 0.9 if i % 200 else 0.1)  # 99.5 % immobile
    assert r["majority_class"] == "immobile" and r["majority_share"] >= NEAR_CONSTANT_SHARE
    assert len(r["warnings"]) == 1 and "near-constant" in r["warnings"][0] and "'immobile'" in r["warnings"][0]
    # a real FST alternates: no warning; a trial too short to judge: no warning
    assert _trial(ArenaInputCheck(reference()), frames, lambda i: 0.9 if (i // 60) % 2 else 0.2)["warnings"] == []
    assert _trial(ArenaInputCheck(reference()), frames - 15, 0.9)["warnings"] == []


def test_input_far_outside_the_training_range_is_warned_about_and_a_reset_starts_a_new_trial() -> None:
    check = ArenaInputCheck(reference())
    mixed = lambda i: 0.9 if (i // 30) % 2 else 0.1  # noqa: E731
    r = _trial(check, 100, mixed, clip=(230.0, 20.0, 0.5))  # much brighter than 60-120 (+- 30)
    assert r["input"]["brightness"] == pytest.approx(230.0)
    assert r["training_range"]["brightness"] == [60.0, 120.0]
    assert len(r["warnings"]) == 1 and r["warnings"][0].startswith("brightness 230.0 is far outside")
    check.reset()
    assert _trial(check, 100, mixed, clip=(145.0, 20.0, 0.5))["warnings"] == []  # inside the margin
    check.reset()
    assert [w.split()[0] for w in _trial(check, 100, mixed, clip=(90.0, 20.0, 9.0))["warnings"]] == ["flow"]
    # an older card without input_stats: only the constancy check
    assert _trial(ArenaInputCheck(reference({})), 100, mixed, clip=(230.0, 20.0, 0.5))["warnings"] == []


# -------------------------------------------------------------------------------- stream-run
def _bright_video(path: Path, frames: int = 30, size: int = 64) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, (size, size))
    for i in range(frames):
        img = np.full((size, size, 3), 250, np.uint8)
        img[20:30, (3 * i) % 50:(3 * i) % 50 + 10] = 200
        writer.write(img)
    writer.release()
    return path


@pytest.fixture()
def ranged_model(tiny_model, tmp_path) -> Path:
    """The tiny model with a card whose training input was dim (grey 60-120)."""
    from stream.modelfile import CARD_FILE, load_card, write_model_text

    model = tmp_path / "ranged"
    shutil.copytree(tiny_model, model)
    card = dataclasses.replace(load_card(model), input_stats={**RANGES, "clips": 100})
    write_model_text(model / CARD_FILE, card.to_json())
    return model


def test_stream_run_warns_on_a_video_far_brighter_than_training(ranged_model, tmp_path, caplog,
                                                                one_torch_thread) -> None:
    video = _bright_video(tmp_path / "bright.mp4")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert run_mod.main(["--video", str(video), "--model", str(ranged_model), "--engine", "torch", "--device",
                             "cpu", "--test-duration-s", "2", "--scoring-window-s", "2", "--out", str(out), "--no-zmq", "--no-metrics",
                             "-q"]) == 0
    lines = [r.getMessage() for r in caplog.records if "OUT OF ITS DEPTH" in r.getMessage()]
    assert len(lines) == 1 and "brightness" in lines[0] and "training range 60-120" in lines[0]
    summary = json.loads(next(out.glob("*.summary.json")).read_text())
    check = summary["input_check"]
    assert check["input"]["brightness"] > 200 and check["warnings"] and check["model"] == "tiny-test"
    row = (out / "results.csv").read_text().splitlines()
    header, first = row[0].split(","), row[1].split(",")
    assert first[header.index("quality")] == "out_of_depth"


@pytest.mark.slow
def test_top_model_on_a_real_open_field_says_it_is_out_of_its_depth(real_video, tmp_path, caplog,
                                                                      one_torch_thread) -> None:
    """Issue 24.12: on a real top-view open field (the mouse walks across the arena) the top model
    called 99.5 % of the frames immobile, without a word. That model is ``fst-top-64``; the default
    top model since, ``fst-top-mouse``, calls 73 % of them mobile there, inside its card's input
    ranges, and is rightly not flagged (README, "Out of its depth")."""
    out = tmp_path / "out"
    model = Path(__file__).resolve().parents[1] / "trained_models" / "fst-top-64"
    with caplog.at_level(logging.WARNING):
        assert run_mod.main(["--video", str(real_video), "--model", str(model), "--engine", "torch", "--device", "cpu",
                             "--stride", "4", "--out", str(out), "--no-zmq", "--no-metrics", "-q"]) == 0
    summary = json.loads(next(out.glob("*.summary.json")).read_text())
    assert summary["input_check"]["warnings"], summary["input_check"]
    assert any("OUT OF ITS DEPTH" in r.getMessage() for r in caplog.records)
    assert "out_of_depth" in (out / "results.csv").read_text()
