"""export-validate: the live code path's accuracy, label alignment, inter-rater agreement, user errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from export.validate import labels_at_ticks, main, source_frame_of_tick

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "synth_side.mp4"
DEMO_LABELS = REPO / "demo" / "synth_side.labels.csv"
DEMO_BORIS = REPO / "demo" / "synth_side.boris.csv"
CLASSES = ["swim", "struggle", "float"]
# the demo is 60 s: a 60-s test scored over its last 40 s, in 10-s bins
SHORT_TEST = ["--test-duration-s", "60", "--scoring-window-s", "40"]


def _demo_labels() -> np.ndarray:
    lines = DEMO_LABELS.read_text().splitlines()[1:]
    return np.array([CLASSES.index(line.split(",")[1]) for line in lines])


def test_source_frame_of_tick_follows_the_live_resampler():
    assert source_frame_of_tick(10, 15.0, 15.0).tolist() == list(range(10))
    assert source_frame_of_tick(10, 30.0, 15.0).tolist() == [0, 2, 4, 6, 8]
    # 25 -> 15 fps: tick k (k/15 s) takes a source frame less than one source period from it
    got = source_frame_of_tick(25, 25.0, 15.0)
    assert len(got) == 15 and got[0] == 0 and got[3] == 5  # 0.2 s is exactly frame 5
    assert np.all(np.abs(got / 25.0 - np.arange(15) / 15.0) < 1 / 25.0) and np.all(np.diff(got) >= 1)


def test_labels_at_ticks_marks_unlabelled_and_out_of_range():
    labels = np.array([0, 1, -1, 2])
    src = np.array([0, 1, 2, 3, 7])
    assert labels_at_ticks(labels, np.array([0, 1, 2, 3, 4, 9]), src).tolist() == [0, 1, -1, 2, -1, -1]


def test_validate_accuracy_equals_a_stream_run_csv(tmp_path, tiny_model, one_torch_thread):
    """Same settings, same code path: the report's accuracy is the stream-run CSV's accuracy."""
    from stream.outputs.csv_log import read_frames_csv
    from stream.run import main as stream_run

    opts = ["--max-frames", "90", "--stride", "2", "--min-bout-s", "0.5", "--smoothing", "average", *SHORT_TEST]
    out = tmp_path / "val"
    assert main(["--model", str(tiny_model), "--videos", str(DEMO), "--labels", str(DEMO_LABELS), "--out", str(out),
                 "--bin-s", "10", *opts]) == 0  # fmt: skip
    metrics = json.loads((out / "validation.json").read_text())
    model = metrics["scorers"][0]
    assert stream_run(["--video", str(DEMO), "--model", str(tiny_model), "--out", str(tmp_path / "run"), "--no-zmq",
                       "--no-metrics", "-q", *opts]) == 0  # fmt: skip
    rows = read_frames_csv(tmp_path / "run" / "arena0.frames.csv")
    labels = _demo_labels()
    assert len(rows) == 90
    expected = np.mean([CLASSES.index(r["behaviour"]) == labels[r["frame"]] for r in rows])
    assert model["frames"]["frames"] == 90
    assert model["frames"]["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert sum(map(sum, model["frames"]["confusion"])) == 90
    assert (out / "validation.html").stat().st_size > 10_000  # plots embedded
    for table in ("summary", "per_animal", "per_bin", "per_class", "confusion"):
        assert (out / f"{table}.csv").is_file()
    # per-recording class shares: predictions beside labels
    animal = model["animals"][0]
    assert sum(animal["label_share"].values()) == pytest.approx(1.0)
    assert animal["label_share"] == pytest.approx({c: float(np.mean(labels[:90] == i)) for i, c in enumerate(CLASSES)})


def test_rater2_same_labels_agree_perfectly_and_a_changed_copy_by_hand(tmp_path):
    out = tmp_path / "same"
    assert main(["--videos", str(DEMO), "--labels", str(DEMO_LABELS), "--rater2", str(DEMO_BORIS), "--out", str(out),
                 "--bin-s", "10", *SHORT_TEST]) == 0  # fmt: skip
    human = json.loads((out / "validation.json").read_text())["scorers"][0]
    assert human["kind"] == "human" and human["frames"]["accuracy"] == 1.0 and human["frames"]["kappa"] == 1.0
    assert human["bins_pooled"]["n"] == 6 and human["bins_pooled"]["icc_a1"] == pytest.approx(1.0)
    # rater 2 calls the first 150 frames float and leaves frames 600-899 unlabelled
    labels = _demo_labels()
    other = labels.copy()
    other[:150] = 2
    lines = ["frame,label"] + [f"{i},{CLASSES[v]}" for i, v in enumerate(other[:600])]
    r2 = tmp_path / "r2.csv"
    r2.write_text("\n".join(lines) + "\n")
    out = tmp_path / "changed"
    assert main(["--videos", str(DEMO), "--labels", str(DEMO_LABELS), "--rater2", str(r2), "--out", str(out),
                 "--bin-s", "10", *SHORT_TEST]) == 0  # fmt: skip
    human = json.loads((out / "validation.json").read_text())["scorers"][0]
    assert human["frames"]["frames"] == 600
    assert human["frames"]["accuracy"] == pytest.approx(np.mean(labels[:600] == other[:600]))
    immobile_1 = np.sum(labels[:600] == 2) / 15.0
    immobile_2 = np.sum(other[:600] == 2) / 15.0
    assert human["animals"][0]["human_immobile_s"] == pytest.approx(immobile_1)
    assert human["animals"][0]["model_immobile_s"] == pytest.approx(immobile_2)


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["--videos", str(DEMO), "--labels", str(DEMO_LABELS), str(DEMO_LABELS), "--rater2", str(DEMO_BORIS),
                 "--out", str(tmp_path)]) == 2  # fmt: skip
    assert "one per video" in capsys.readouterr().err
    assert main(["--videos", str(DEMO), "--labels", str(DEMO_LABELS), "--out", str(tmp_path)]) == 2
    assert "nothing to compare" in capsys.readouterr().err
    assert main(["--videos", str(DEMO), "--labels", str(tmp_path / "nope.csv"), "--rater2", str(DEMO_BORIS),
                 "--out", str(tmp_path)]) == 2  # fmt: skip
    assert "no such file" in capsys.readouterr().err
    # the floor and cap on bins stream-run and stream-report have (issue 24.9): 0.0001 s bins over a
    # 6-minute test would be 3.6 million bins
    assert main(["--videos", str(DEMO), "--labels", str(DEMO_LABELS), "--rater2", str(DEMO_BORIS),
                 "--out", str(tmp_path), "--bin-s", "0.0001"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "at least 1 s" in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_bundled_model_and_motion_baseline_on_the_demo(tmp_path, one_torch_thread):
    """The full bundled model and the shipped motion baseline, side by side, at stride 4 (5 min 20 s on 2 shared cores)."""
    from stream.outputs.csv_log import read_frames_csv
    from stream.run import main as stream_run

    i3d, motion = REPO / "trained_models" / "fst-side-64", REPO / "trained_models" / "fst-side-motion"
    opts = ["--stride", "4", *SHORT_TEST]
    out = tmp_path / "val"
    assert main(["--model", str(i3d), "--baseline", str(motion), "--videos", str(DEMO), "--labels", str(DEMO_LABELS),
                 "--rater2", str(DEMO_BORIS), "--out", str(out), "--bin-s", "10", *opts]) == 0  # fmt: skip
    scorers = {s["name"]: s for s in json.loads((out / "validation.json").read_text())["scorers"]}
    assert set(scorers) == {"fst-side-64", "fst-side-motion", "human (rater 2)"}
    labels = _demo_labels()
    for name, model in (("fst-side-64", i3d), ("fst-side-motion", motion)):
        assert stream_run(["--video", str(DEMO), "--model", str(model), "--out", str(tmp_path / name), "--no-zmq",
                           "--no-metrics", "-q", *opts]) == 0  # fmt: skip
        rows = read_frames_csv(tmp_path / name / "arena0.frames.csv")
        expected = np.mean([CLASSES.index(r["behaviour"]) == labels[r["frame"]] for r in rows])
        assert scorers[name]["frames"]["accuracy"] == pytest.approx(expected, abs=1e-12)


def test_r_and_icc_of_fewer_than_five_animals_are_reported_as_not_meaningful(tmp_path, capsys):
    """Two animals always give r = +-1: the report and the console say so instead of printing it."""
    import csv
    import html

    from export.agreement import MIN_ANIMALS_FOR_AGREEMENT

    second = tmp_path / "second.mp4"
    shutil.copyfile(DEMO, second)
    labels = _demo_labels()
    other = labels.copy()
    other[:150] = 2  # rater 2 disagrees on the first 10 s of the second recording
    r2 = tmp_path / "r2.csv"
    r2.write_text("\n".join(["frame,label"] + [f"{i},{CLASSES[v]}" for i, v in enumerate(other)]) + "\n")
    out = tmp_path / "two"
    assert main(["--videos", str(DEMO), str(second), "--labels", str(DEMO_LABELS), str(DEMO_LABELS), "--rater2",
                 str(DEMO_BORIS), str(r2), "--out", str(out), "--bin-s", "10", *SHORT_TEST]) == 0  # fmt: skip
    console = capsys.readouterr().out
    note = f"not meaningful (n=2 < {MIN_ANIMALS_FOR_AGREEMENT})"
    assert f"immobility r {note}, ICC {note}" in console, console
    (summary,) = list(csv.DictReader(open(out / "summary.csv")))
    assert summary["immobile_n"] == "2"
    assert summary["immobile_pearson_r"] == note and summary["immobile_icc_a1"] == note
    assert summary["bins_n"] == "12" and summary["bins_pearson_r"] != note  # 2 animals x 6 bins
    assert html.escape(note) in (out / "validation.html").read_text()
    human = json.loads((out / "validation.json").read_text())["scorers"][0]
    assert human["immobility"]["meaningful"] is False and human["bins_pooled"]["meaningful"] is True


def _trial_labels(path: Path, video_frames: int, fps: float, changed: str | None = None) -> Path:
    """``frame,arena,label`` of tests/trial_video.py: float/swim in 10-frame turns while a mouse is in the
    water, unlabelled outside; ``changed``: that animal is labelled float throughout (a second rater)."""
    from trial_video import TRUTH

    lines = ["frame,arena,label"]
    for arena, trials in TRUTH.items():
        for f in range(video_frames):
            t = f / fps
            label = ""
            for animal, _g, t_in, t_out in trials:
                if t_in <= t < t_out:
                    label = "float" if animal == changed or (f // 10) % 2 == 0 else "swim"
            lines.append(f"{f},{arena},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_trials_are_scored_and_compared_per_animal(tmp_path, tiny_model, monkeypatch, capsys):
    """Two mice per cylinder, one after the other (a schedule): each trial is an animal, for the model
    and for the second rater; before --schedule only the first 4 s of each arena were scored."""
    import csv

    import stream.run as run_mod
    from test_trials import ScriptedEngine
    from trial_video import DURATION_S, FPS as VIDEO_FPS, TRUTH, write_schedule, write_trials_video

    monkeypatch.setattr("stream.runner._build_engine", lambda *a, **k: ScriptedEngine())
    video = write_trials_video(tmp_path / "rec")
    n = int(DURATION_S * VIDEO_FPS)
    labels = _trial_labels(tmp_path / "labels.csv", n, VIDEO_FPS)
    rater2 = _trial_labels(tmp_path / "rater2.csv", n, VIDEO_FPS, changed="M2")
    schedule = write_schedule(tmp_path / "schedule.csv", video)
    out = tmp_path / "val"
    assert main(["--model", str(tiny_model), "--videos", str(video), "--labels", str(labels), "--rater2", str(rater2),
                 "--schedule", str(schedule), "--out", str(out), "--test-duration-s", "4", "--scoring-window-s", "2",
                 "--bin-s", "1", "-q"]) == 0  # fmt: skip
    scorers = {s["name"]: s for s in json.loads((out / "validation.json").read_text())["scorers"]}
    truth = {(a, m) for a, trials in TRUTH.items() for m, *_ in trials}
    for s in scorers.values():
        assert {(a["arena"], a["animal"]) for a in s["animals"]} == truth, s["name"]
        assert s["immobility"]["n"] == 4
    human = {a["animal"]: a for a in scorers["human (rater 2)"]["animals"]}
    for animal, a in human.items():  # rater 2 differs on M2 only: 4 s of water, half of it float for rater 1
        assert a["frames_scored"] == 60
        assert a["human_immobile_s"] == pytest.approx(2.0, abs=0.4)
        assert a["model_immobile_s"] == (pytest.approx(4.0) if animal == "M2" else a["human_immobile_s"])
    model = next(s for n_, s in scorers.items() if s["kind"] != "human")
    for a in model["animals"]:  # the model's frames of each trial, labelled inside the trial
        assert a["frames_scored"] == a["frames_total"] == 60
    per_animal = list(csv.DictReader(open(out / "per_animal.csv")))
    assert {r["animal"] for r in per_animal} == {"M1", "M2", "M3", "M4"}
    # the human ceiling alone: the trials come from the schedule, no model run needed
    assert main(["--videos", str(video), "--labels", str(labels), "--rater2", str(rater2), "--schedule", str(schedule),
                 "--out", str(tmp_path / "human"), "--test-duration-s", "4", "--bin-s", "1", "--scoring-window-s", "2",
                 "-q"]) == 0  # fmt: skip
    (only,) = json.loads((tmp_path / "human" / "validation.json").read_text())["scorers"]
    assert {a["animal"]: a["model_immobile_s"] for a in only["animals"]} == {
        a: v["model_immobile_s"] for a, v in human.items()}


def test_an_adapted_model_is_scored_as_stream_run_adapt_scores_it(tmp_path, tiny_model, one_torch_thread):
    """``--adapted-model``: the same model once more, each video by its own adapted statistics; its
    accuracy is that of ``stream-run --adapt``'s CSV, and the two scorers are told apart by name."""
    from stream.outputs.csv_log import read_frames_csv
    from stream.run import main as stream_run

    opts = ["--max-frames", "60", "--stride", "2", *SHORT_TEST]
    out = tmp_path / "val"
    assert main(["--model", str(tiny_model), "--adapted-model", str(tiny_model), "--adapt-clips", "4", "--videos", str(DEMO),
                 "--labels", str(DEMO_LABELS), "--out", str(out), "--bin-s", "10", "-q", *opts]) == 0  # fmt: skip
    scorers = {s["name"]: s for s in json.loads((out / "validation.json").read_text())["scorers"]}
    assert set(scorers) == {"tiny-test", "tiny-test+adabn"}
    assert (out / "runs" / "tiny-test+adabn" / DEMO.stem / "adapted-model" / "card.json").is_file()
    assert stream_run(["--video", str(DEMO), "--model", str(tiny_model), "--adapt", "4", "--out", str(tmp_path / "run"), "--no-zmq",
                       "--no-metrics", "-q", *opts]) == 0  # fmt: skip
    rows = read_frames_csv(tmp_path / "run" / "arena0.frames.csv")
    labels = _demo_labels()
    expected = np.mean([CLASSES.index(r["behaviour"]) == labels[r["frame"]] for r in rows])
    assert scorers["tiny-test+adabn"]["frames"]["accuracy"] == pytest.approx(expected, abs=1e-12)


def test_realtime_scores_each_video_paced_like_a_camera(tmp_path, tiny_model, monkeypatch):
    """``--realtime`` reaches stream-run's config (and so --adapted-model takes the live path), and the
    report's settings say so; without it, videos are read as fast as they decode."""
    import export.validate as validate

    seen: list = []

    def fake_run(config):
        seen.append(config.source.realtime)
        raise SystemExit(0)  # the config is all this test needs

    monkeypatch.setattr("stream.runner.run", fake_run)
    for extra, paced in (([], False), (["--realtime"], True)):
        args = validate.build_parser().parse_args(["--model", str(tiny_model), "--videos", str(DEMO), "--labels", str(DEMO_LABELS),
                                                   "--out", str(tmp_path / "v"), *extra])  # fmt: skip
        with pytest.raises(SystemExit):
            validate.run_stream(tiny_model, DEMO, tmp_path / "r", None, args, adapt=True)
        assert seen[-1] is paced
