"""Tests of export/select.py: the stretch scoring, the spread, the outputs, and the round trip
export-select -> labels (the simulator's, standing in for a person) -> export-train --init model:."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from export import select as sel
from stream.errors import UserError

CLASSES = ["swim", "struggle", "float"]
FPS = 15.0


def arena(probs, name="arena0", video="v.mp4") -> sel.ScoredArena:
    probs = np.asarray(probs, dtype=np.float64)
    return sel.ScoredArena(Path(video), name, list(CLASSES), np.arange(len(probs)) / FPS, probs)


def sure(n, k=2):  # n frames the model is certain are class k
    p = np.zeros((n, 3))
    p[:, k] = 1.0
    return p


def test_uncertainty_measures_by_hand():
    p = np.array([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [0.7, 0.2, 0.1]])
    h = sel.frame_uncertainty(p, "entropy")
    np.testing.assert_allclose(h[:3], [0.0, 1.0, math.log(2) / math.log(3)], atol=1e-12)
    expected = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)) / math.log(3)
    assert h[3] == pytest.approx(expected)
    np.testing.assert_allclose(sel.frame_uncertainty(p, "margin"), [0.0, 1.0, 1.0, 0.5], atol=1e-12)


def test_rarity_is_zero_at_a_fair_share_and_one_for_a_class_never_predicted():
    runs = [arena(np.concatenate([sure(60, 2), sure(30, 0)]))]  # float 2/3, swim 1/3, struggle never
    np.testing.assert_allclose(sel.class_rarity(runs), [0.0, 1.0, 0.0])


def test_the_most_uncertain_stretch_is_picked_first():
    p = sure(300)
    p[150:210] = [1 / 3, 1 / 3, 1 / 3]  # 10.0 - 14.0 s: the model cannot tell
    (best,) = sel.select_stretches([arena(p)], count=1, stretch_s=4.0, rarity_weight=0.0)
    assert (best.start_s, best.stop_s) == (10.0, 14.0)
    assert best.uncertainty == pytest.approx(1.0) and best.score == pytest.approx(1.0)


def test_a_rarely_predicted_class_breaks_a_tie_of_uncertainty():
    p = sure(300)
    p[30:90] = [0.5, 0.0, 0.5]  # uncertain between swim (predicted elsewhere too) and float
    p[180:240] = [0.0, 0.5, 0.5]  # equally uncertain, but struggle is never the model's answer
    p[270:] = sure(30, 0)
    first, second = sel.select_stretches([arena(p)], count=2, stretch_s=4.0, rarity_weight=0.5)
    assert first.start_s == 12.0 and first.rarity > second.rarity
    assert second.start_s == 2.0


def test_picks_spread_over_arenas_and_never_overlap():
    a = sure(300)
    a[:] = [0.4, 0.3, 0.3]  # arena A: uncertain everywhere
    b = sure(300)
    b[60:120] = [0.45, 0.25, 0.3]  # arena B: a little less uncertain, in one place
    runs = [arena(a, "A"), arena(b, "B")]
    no_spread = sel.select_stretches(runs, count=3, stretch_s=4.0, spread=1.0)
    assert [s.arena for s in no_spread] == ["A", "A", "A"]
    spread = sel.select_stretches(runs, count=3, stretch_s=4.0, spread=0.5)
    assert {s.arena for s in spread} == {"A", "B"}
    for picks in (no_spread, spread):
        assert not any(x.overlaps(y) for i, x in enumerate(picks) for y in picks[i + 1 :])


def test_picks_are_nested_and_random_strategy_is_seeded():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=600)
    runs = [arena(p)]
    five = sel.select_stretches(runs, count=5)
    assert sel.select_stretches(runs, count=3) == five[:3]
    r1 = sel.select_stretches(runs, count=5, strategy="random", seed=1)
    assert r1 == sel.select_stretches(runs, count=5, strategy="random", seed=1)
    assert r1 != sel.select_stretches(runs, count=5, strategy="random", seed=2)
    assert not any(x.overlaps(y) for i, x in enumerate(r1) for y in r1[i + 1 :])


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="spread"):
        sel.select_stretches([arena(sure(30))], spread=0.0)
    with pytest.raises(UserError, match="strategy"):
        sel.select_stretches([arena(sure(30))], strategy="greedy")


def test_template_lists_the_video_frames_of_each_stretch(tmp_path):
    s = sel.Stretch(Path("v.mp4"), "arena1", 2.0, 3.0, 1.0, 1.0, 0.0, "float")
    path = sel.write_template(tmp_path / "t.csv", [s], fps=30.0, num_frames=1000)  # a 30 fps video, 15 fps model
    lines = path.read_text().splitlines()
    assert lines[0] == "frame,arena,label" and lines[1] == "60,arena1," and lines[-1] == "89,arena1," and len(lines) == 31


def test_boris_project_has_the_parts_boris_reads(tmp_path):
    video = tmp_path / "media" / "m1.mp4"
    video.parent.mkdir()
    video.write_bytes(b"")
    stretches = [sel.Stretch(video, "arena1", 12.0, 16.0, 0.9, 0.8, 0.2, "float"),
                 sel.Stretch(video, "arena0", 30.0, 34.0, 0.8, 0.7, 0.2, "swim")]  # fmt: skip
    path = sel.write_boris_project(tmp_path / "out" / "p.boris", stretches, classes=CLASSES, media={video: (15.0, 360.0)})
    pj = json.loads(path.read_text())
    assert pj["project_format_version"] == "7.0"
    assert sorted(b["code"] for b in pj["behaviors_conf"].values()) == sorted(CLASSES)
    assert all(b["type"] == "State event" for b in pj["behaviors_conf"].values())
    assert sorted(s["name"] for s in pj["subjects_conf"].values()) == ["arena0", "arena1"]
    assert len(pj["observations"]) == 2
    obs = pj["observations"][next(iter(pj["observations"]))]
    assert obs["type"] == "MEDIA" and obs["observation time interval"] == [12.0, 16.0]
    media = obs["file"]["1"][0]
    assert (path.parent / media).resolve() == video.resolve()  # relative to the project, as BORIS resolves it
    assert obs["media_info"]["fps"][media] == 15.0 and len(obs["file"]) == 8


@pytest.mark.usefixtures("one_torch_thread")
def test_select_label_round_trip_then_finetune(tmp_path, tiny_model):
    """export-select (scoring with stream-run) -> template filled from the simulator's labels, and
    the same labels as a BORIS export -> export-train --init model: --recipe finetune, end to end."""
    from export import train as tr
    from export.annotations import read_annotations, write_boris_aggregated
    from export.synth import SynthConfig, render_video
    from stream.modelfile import load_model

    synth = render_video(SynthConfig(view="side", duration_s=8.0, fps=FPS, arenas=2, arena_size_px=48, seed=3), tmp_path / "data")
    out = tmp_path / "select"
    assert sel.main(["--videos", str(synth.video_path), "--model", str(tiny_model), "--count", "3", "--stretch-s", "2", "--out", str(out)]) == 0
    rows = (out / sel.SELECTION_CSV).read_text().splitlines()[1:]
    assert len(rows) == 3
    assert {r.split(",")[2] for r in rows} == {"arena0", "arena1"}  # spread over both animals
    template = out / (synth.video_path.stem + sel.TEMPLATE_SUFFIX)
    assert (out / sel.BORIS_PROJECT).is_file() and template.is_file()

    filled = sel.fill_template(template, synth.labels_csv, tmp_path / "filled.csv", fps=FPS, num_frames=synth.num_frames, classes=CLASSES)
    anns = {a.subject: a for a in read_annotations(filled, fps=FPS, num_frames=synth.num_frames, classes=CLASSES)}
    listed = 0
    for i, label in enumerate(synth.labels):
        a = anns.get(f"arena{i}")
        if a is None:
            continue
        known = a.labels >= 0
        listed += int(known.sum())
        np.testing.assert_array_equal(a.labels[known], label[known])  # exactly the simulator's labels on the picked frames
    assert listed == 3 * 30  # three 2 s stretches at 15 fps, nothing else

    # the lab's other way back: the same labels coded in BORIS and exported as aggregated events
    boris = write_boris_aggregated(tmp_path / "exported.boris.csv", list(anns.values()), media_file=synth.video_path.name)
    back = {a.subject: a for a in read_annotations(boris, fps=FPS, num_frames=synth.num_frames, classes=CLASSES)}
    assert back.keys() == anns.keys() and all(np.array_equal(back[k].labels, anns[k].labels) for k in anns)

    assert tr.main(["--videos", str(synth.video_path), "--labels", str(filled), "--arenas", str(synth.arenas_json),
                    "--init", f"model:{tiny_model}", "--recipe", "finetune", "--epochs", "1", "--batch-size", "4",
                    "--frame-step", "6", "--flow-preset", "fast", "--device", "cpu", "--bn-recalibration-clips", "4",
                    "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "tuned"), "--work-dir", str(tmp_path / "work")]) == 0  # fmt: skip
    _, card = load_model(tmp_path / "tuned")
    assert card.input_size_px == 32 and card.classes == CLASSES  # from the tiny model's card, by the recipe
    assert card.training["config"]["freeze_until"] == "Mixed_3c" and card.training["config"]["lr"] == 1e-4
    assert card.training["train_clips"] == 15 and "tiny-test" in card.init  # 90 labelled frames, every 6th


def test_runs_and_videos_must_pair_up(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    assert sel.main(["--videos", str(video), "--runs", str(tmp_path), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--runs" in capsys.readouterr().err
    assert sel.main(["--videos", str(video), "--runs", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "frames.csv" in capsys.readouterr().err


def test_trial_runs_give_video_time_and_arena_templates_that_train_and_fit_motion_read(tmp_path, tiny_model,
                                                                                        monkeypatch):
    """A scheduled run (two mice per arena, one after the other): every stretch lies inside a trial on
    the video's clock, and the filled template is read by export-fit-motion's and export-train's readers."""
    import stream.run as run_mod
    from export.dataset import sources_from_files
    from export.validate import read_labels
    from stream.arenas import resolve_arenas
    from test_trials import ScriptedEngine
    from trial_video import ARENAS, TRUTH, write_schedule, write_trials_video

    monkeypatch.setattr("stream.runner._build_engine", lambda *a, **k: ScriptedEngine())
    video = write_trials_video(tmp_path / "rec")
    schedule = write_schedule(tmp_path / "schedule.csv", video)
    test_s = 4.0
    assert run_mod.main(["--video", str(video), "--model", str(tiny_model), "--no-zmq", "--no-metrics", "-q",
                         "--schedule", str(schedule), "--out", str(tmp_path / "run"), "--test-duration-s", str(test_s),
                         "--scoring-window-s", "2", "--bin-s", "1"]) == 0  # fmt: skip
    out = tmp_path / "select"
    assert sel.main(["--videos", str(video), "--runs", str(tmp_path / "run"), "--count", "8", "--stretch-s", "1",
                     "--spread", "0.5", "--out", str(out)]) == 0  # fmt: skip
    trials = {(a, m): t_in for a, ts in TRUTH.items() for m, _g, t_in, _o in ts}
    rows = [dict(zip(sel.SELECTION_COLUMNS, r.split(","))) for r in (out / sel.SELECTION_CSV).read_text().splitlines()[1:]]
    assert len(rows) == 8 and {r["arena"] for r in rows} <= set(ARENAS)
    assert {r["animal"] for r in rows} >= {"M2", "M4"}  # the second mouse of each arena is picked too
    for r in rows:
        t_in = trials[(r["arena"], r["animal"])]  # its own trial, on the video's clock
        assert t_in - 1e-6 <= float(r["start_s"]) and float(r["stop_s"]) <= t_in + test_s + 1e-6, r
    # a person fills the template; both training readers take it
    template = out / (video.stem + sel.TEMPLATE_SUFFIX)
    lines = template.read_text().splitlines()
    filled = tmp_path / "filled.csv"
    filled.write_text("\n".join([lines[0]] + [line + CLASSES[i % 3] for i, line in enumerate(lines[1:])]) + "\n")
    arena_ids = [a.id for a in resolve_arenas(arena_file=None, video=video)]
    matched, _fps, _n = read_labels(filled, video, list(CLASSES), arena_ids)  # export-fit-motion's reader
    assert set(matched) == {r["arena"] for r in rows}
    sources = sources_from_files(video, filled, arenas_json=video.with_suffix(".arenas.json"), classes=list(CLASSES))
    assert {s.annotation.subject for s in sources} == {r["arena"] for r in rows}
    for s in sources:  # the labelled frames are the picked stretches' frames of the video
        labelled = np.flatnonzero(s.annotation.labels >= 0) / FPS
        picked = [(float(r["start_s"]), float(r["stop_s"])) for r in rows if r["arena"] == s.annotation.subject]
        bad = [t for t in labelled if not any(a - 1e-3 <= t < b for a, b in picked)]  # selection.csv: 3 decimals
        assert not bad, (bad, picked)
