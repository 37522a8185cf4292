"""export.streaming_agreement: the harness that measures the streaming engine against the clip model."""

from __future__ import annotations

import json

import pytest

from export.streaming_agreement import compare_video
from tests.conftest import write_moving_square_video


@pytest.fixture()
def video(tmp_path):
    path = write_moving_square_video(tmp_path / "v.mp4", frames=20)
    (tmp_path / "v.arenas.json").write_text(json.dumps({"arenas": [{"id": "A1", "roi": [0, 0, 64, 64]}]}))
    return path


def test_the_harness_finds_no_difference_when_nothing_is_streamed(video, tiny_model, one_torch_thread) -> None:
    """streamed_layers=0 is the clip model through the stream's plumbing: a frame-exact pairing shows 100 %."""
    result, probs = compare_video(video, tiny_model, streamed_layers=0)
    assert probs["clip"].shape == probs["stream"].shape == (20, 1, 3)
    assert result.max_prob_diff < 1e-5 and result.label_agreement == 1.0 and result.arena_frames == 20


def test_the_streaming_engine_is_measured_frame_by_frame(video, tiny_model, one_torch_thread) -> None:
    result, probs = compare_video(video, tiny_model)
    assert probs["stream"].shape == (20, 1, 3) and result.arena_frames == 20
    assert 0.0 <= result.label_agreement <= 1.0 and result.immobile_s_stream <= 20 / 15
    assert result.accuracy_clip is None  # no labels beside the video


def test_a_card_trained_for_streaming_is_compared_with_another_clip_model_and_its_parallel_form(video, tiny_model, tmp_path, one_torch_thread) -> None:
    """Issue 22: the clip reference comes from --clip-model, and the engine matches the card's parallel form."""
    import shutil

    import numpy as np

    streaming = tmp_path / "streaming"
    shutil.copytree(tiny_model, streaming)
    card = json.loads((streaming / "card.json").read_text())
    (streaming / "card.json").write_text(json.dumps({**card, "trained_for": "streaming"}))
    result, probs = compare_video(video, streaming, clip_model_dir=tiny_model, parallel=True)
    assert probs["parallel"].shape == probs["stream"].shape == (20, 1, 3)
    np.testing.assert_allclose(probs["parallel"], probs["stream"], atol=1e-5)
    assert float(np.ptp(probs["stream"], axis=0).max()) > 0  # the frames differ: a misaligned pairing would fail
