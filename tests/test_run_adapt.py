"""``stream-run --adapt``: each recorded video scored by the model with its own BatchNorm statistics
(stream/adabn.py), end to end with a real torch engine on a small generated video: the adapted model
is kept in the run folder, credited in results.csv, and is what scored the frames; ``--resume`` keeps
it; the mistakes are one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import stream.run as run_mod
from stream.errors import EXIT_USER_ERROR
from stream.modelfile import load_card, load_model
from stream.outputs.csv_log import read_frames_csv
from stream.outputs.results import read_table
from stream.runner import ADAPTED_MODEL_DIR, ADAPTED_SUFFIX
from tests.test_run_e2e import write_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLASSES = ["swim", "struggle", "float"]


@pytest.fixture()
def video(tmp_path) -> Path:
    path = write_video(tmp_path / "two.mp4", frames=60)
    (tmp_path / "two.arenas.json").write_text(json.dumps({"arenas": [{"id": "A1", "roi": [0, 0, 48, 48]}, {"id": "A2", "roi": [48, 0, 48, 48]}]}))
    return path


def _run(video: Path, model: Path, out: Path, *extra: str) -> int:
    return run_mod.main(["--video", str(video), "--model", str(model), "--out", str(out), "--no-zmq", "--no-metrics", "--engine", "torch",
                         "--device", "cpu", *extra])  # fmt: skip


def _probabilities(out: Path, arena: str) -> list[list[float]]:
    return [[r[f"p_{c}"] for c in CLASSES] for r in read_frames_csv(out / f"{arena}.frames.csv")]


def test_each_video_is_scored_by_its_own_adapted_model_which_results_credit(video, tiny_model, tmp_path, capsys):
    assert _run(video, tiny_model, tmp_path / "plain", "-q") == 0
    assert _run(video, tiny_model, tmp_path / "adapted", "--adapt", "6") == 0
    printed = capsys.readouterr().out
    assert "adapted tiny-test to two.mp4 (6 clips" in printed

    folder = tmp_path / "adapted" / ADAPTED_MODEL_DIR
    card = load_card(folder)
    source = load_card(tiny_model)
    facts = card.training["adaptation"]
    assert card.name == "tiny-test" + ADAPTED_SUFFIX and facts["source_weights_sha256"] == source.weights_sha256
    assert facts["videos"] == ["two.mp4"] and facts["clips"] == 6 and facts["recordings"] == 2
    assert card.flow == source.flow and card.flow_weight == source.flow_weight
    adapted, _ = load_model(folder)
    original, _ = load_model(tiny_model)
    bn = next(k for k in original.state_dict() if k.endswith("running_var"))
    assert not torch.allclose(adapted.state_dict()[bn], original.state_dict()[bn])  # the video's own statistics
    assert not (tmp_path / "adapted" / f"{ADAPTED_MODEL_DIR}.partial").exists()

    rows = read_table(tmp_path / "adapted" / "results.csv")
    assert {r["model"] for r in rows} == {card.name} and {r["model_sha256"] for r in rows} == {card.weights_sha256}
    summary = json.loads((tmp_path / "adapted" / "A1.summary.json").read_text())
    assert summary["provenance"]["model_sha256"] == card.weights_sha256
    assert _probabilities(tmp_path / "adapted", "A1") != _probabilities(tmp_path / "plain", "A1")  # the engine ran the adapted weights


def test_resume_keeps_the_adapted_model_and_refuses_one_from_other_weights(video, tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(video, tiny_model, out, "--adapt", "4", "--max-frames", "30", "-q") == 0
    weights = out / ADAPTED_MODEL_DIR / "model.safetensors"
    first = weights.stat().st_mtime_ns
    os.utime(weights, ns=(first - 10**9, first - 10**9))
    assert _run(video, tiny_model, out, "--adapt", "4", "--resume", "-q") == 0
    assert weights.stat().st_mtime_ns == first - 10**9  # not estimated again
    assert len(read_frames_csv(out / "A1.frames.csv")) == 60

    card = out / ADAPTED_MODEL_DIR / "card.json"  # as if adapted from another model's weights
    card.write_text(json.dumps({**json.loads(card.read_text()), "training": {"adaptation": {"source_weights_sha256": "f" * 64}}}))
    capsys.readouterr()
    assert _run(video, tiny_model, out, "--adapt", "4", "--resume", "-q") == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "was adapted from other weights" in err and err.count("\n") == 1


@pytest.mark.parametrize("case", ["streaming engine on a camera", "motion model"])
def test_adapt_mistakes_are_one_line(case, video, tiny_model, tmp_path, capsys):
    if case.startswith("streaming"):
        argv = ["--camera", "0", "--model", str(tiny_model), "--engine", "streaming-torch", "--adapt", "--out", str(tmp_path / "o"),
                "--no-zmq", "--no-metrics"]  # fmt: skip
        message = "carries its state from frame to frame"
    else:
        motion = Path(__file__).resolve().parents[1] / "trained_models" / "fst-side-motion"
        argv = ["--video", str(video), "--model", str(motion), "--adapt", "--out", str(tmp_path / "o"), "--no-zmq", "--no-metrics"]
        message = "no BatchNorm statistics to adapt"
    assert run_mod.main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_on_a_cpu_with_onnxruntime_the_adapted_model_runs_there_and_its_graph_leaves_the_cache(video, tiny_model, tmp_path):
    """engine auto + --adapt: onnxruntime when it is installed (a graph per video, exported in seconds),
    and that graph, which no other video can use, is not left in the user's cache."""
    pytest.importorskip("onnxruntime")
    from stream.runner import _cached_graph

    out = tmp_path / "out"
    assert run_mod.main(["--video", str(video), "--model", str(tiny_model), "--out", str(out), "--no-zmq", "--no-metrics", "--device", "cpu",
                         "--adapt", "4", "--max-frames", "20", "-q"]) == 0  # fmt: skip
    summary = json.loads((out / "A1.summary.json").read_text())
    assert summary["run"]["engine"].startswith("onnxruntime")
    folder = out / ADAPTED_MODEL_DIR
    graph = _cached_graph(folder, load_card(folder))
    assert str(graph).startswith(os.environ["SWIM_STREAM_CACHE"]) and not graph.exists()


def test_two_videos_in_one_run_each_get_their_own_adapted_model(tmp_path, tiny_model):
    from tests.conftest import write_moving_square_video

    one = write_video(tmp_path / "one.mp4", frames=40)
    other = write_moving_square_video(tmp_path / "other.mp4", frames=40, size_px=48)
    out = tmp_path / "out"
    assert run_mod.main(["--video", str(one), str(other), "--model", str(tiny_model), "--out", str(out), "--no-zmq", "--no-metrics",
                         "--engine", "torch", "--device", "cpu", "--adapt", "4", "-q"]) == 0  # fmt: skip
    cards = {stem: load_card(out / stem / ADAPTED_MODEL_DIR) for stem in ("one", "other")}
    assert cards["one"].training["adaptation"]["videos"] == ["one.mp4"] and cards["other"].training["adaptation"]["videos"] == ["other.mp4"]
    assert cards["one"].weights_sha256 != cards["other"].weights_sha256
    rows = read_table(out / "results.csv")
    assert {r["model_sha256"] for r in rows} == {c.weights_sha256 for c in cards.values()}


def test_a_camera_is_adapted_on_its_first_clips_and_the_adapted_model_scores_on(tiny_model, tmp_path, capsys):
    """A live source (an MJPEG camera on loopback, real time): the source model scores while its first
    clips are kept; then the adapted model, saved to the run folder, takes over mid-stream. The summary
    credits it and says from when; the frames before the swap keep the source model's scores."""
    from tests.test_faults import FlakyMjpegCamera

    camera = FlakyMjpegCamera(session_s=30.0)
    camera.streaming.set()
    out = tmp_path / "out"
    try:
        code = run_mod.main(["--url", camera.url, "--model", str(tiny_model), "--out", str(out), "--no-zmq", "--no-metrics",
                             "--engine", "torch", "--device", "cpu", "--adapt", "3", "--max-frames", "180"])  # fmt: skip
    finally:
        camera.close()
    assert code == 0
    printed = capsys.readouterr().out
    assert "stream-run: adapted tiny-test to " in printed and "(3 clips" in printed
    card = load_card(out / ADAPTED_MODEL_DIR)
    facts = card.training["adaptation"]
    assert facts["live"] is True and facts["clips"] == 3 and facts["videos"] == [camera.url] and facts["recordings"] == 1
    summary = json.loads((out / "arena0.summary.json").read_text())
    prov = summary["provenance"]
    assert prov["model"] == card.name and prov["model_sha256"] == card.weights_sha256
    swap_s = prov["live_adaptation"]["scoring_from_source_s"]
    assert 2.0 <= swap_s < 11.5  # 3 clips a second apart from the first clip (centre 0), then built in the background
    assert prov["live_adaptation"]["scored_before_it_s"] == pytest.approx(swap_s, abs=0.2)
    rows = read_table(out / "results.csv")
    assert [r["model_sha256"] for r in rows] == [card.weights_sha256]


@pytest.mark.slow
def test_paced_videos_each_start_from_the_source_model_and_get_their_own_adaptation(tmp_path, tiny_model):
    """Two --realtime videos in one run: each takes the live path (a video paced like a camera is adapted
    like one), and the second is not scored by the first one's adapted model."""
    one = write_video(tmp_path / "one.mp4", frames=150)
    other = write_video(tmp_path / "other.mp4", frames=150)
    out = tmp_path / "out"
    assert run_mod.main(["--video", str(one), str(other), "--model", str(tiny_model), "--out", str(out), "--no-zmq", "--no-metrics",
                         "--engine", "torch", "--device", "cpu", "--realtime", "--adapt", "3", "-q"]) == 0  # fmt: skip
    source = load_card(tiny_model)
    for stem in ("one", "other"):
        card = load_card(out / stem / ADAPTED_MODEL_DIR)
        assert card.training["adaptation"]["live"] is True
        assert card.training["adaptation"]["source_weights_sha256"] == source.weights_sha256
        first = read_frames_csv(next((out / stem).glob("*.frames.csv")))[0]
        plain_first = read_frames_csv(next((out / "one").glob("*.frames.csv")))[0]
        assert [first[f"p_{c}"] for c in CLASSES] == [plain_first[f"p_{c}"] for c in CLASSES]  # same source model, same frame
    rows = read_table(out / "results.csv")
    assert len({r["model_sha256"] for r in rows}) == 2  # each video's own adapted weights


def test_a_live_source_that_ends_before_its_clips_are_kept_says_so(video, tiny_model, tmp_path, caplog):
    """A 4 s paced video cannot give 50 clips a second apart: scored by the source model, with a warning."""
    import logging

    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="stream.runner"):
        assert _run(video, tiny_model, out, "--realtime", "--adapt", "50", "-q") == 0
    assert any("of the 50 clips kept" in r.getMessage() and "the source model scored it throughout" in r.getMessage()
               for r in caplog.records)
    assert not (out / ADAPTED_MODEL_DIR).exists()
    rows = read_table(out / "results.csv")
    assert {r["model_sha256"] for r in rows} == {load_card(tiny_model).weights_sha256}
