"""Tests of export/learning_curve.py: kappa by hand, the table, and the whole command end to end on a
tiny model and tiny simulator videos (resumable: a second run recomputes nothing)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from export import learning_curve as lc


def test_cohen_kappa_by_hand():
    # 2x2 table [[20, 5], [10, 15]]: p_o = 35/50 = 0.7, p_e = (25*30 + 25*20)/50^2 = 0.5, kappa = 0.4
    labels = np.array([0] * 25 + [1] * 25)
    predicted = np.array([0] * 20 + [1] * 5 + [0] * 10 + [1] * 15)
    assert lc.cohen_kappa(labels, predicted, 2) == pytest.approx(0.4)
    assert lc.cohen_kappa(labels, labels, 2) == pytest.approx(1.0)


def test_table_puts_the_zero_minute_point_in_every_series_of_its_start(tmp_path):
    points = [
        {"start": "model", "select": "none", "minutes": 0.0, "accuracy": 0.5, "kappa": 0.1},
        {"start": "model", "select": "uncertainty", "minutes": 1.0, "accuracy": 0.8, "kappa": 0.6},
        {"start": "model", "select": "random", "minutes": 1.0, "accuracy": 0.7, "kappa": 0.5},
        {"start": "random", "select": "random", "minutes": 1.0, "accuracy": 0.4, "kappa": 0.0},
    ]
    _, md = lc.write_table(tmp_path, points)
    text = md.read_text()
    assert "| labelled minutes | model+random | model+uncertainty | random+random |" in text
    assert "| 0 | 50.0 % (kappa 0.10) | 50.0 % (kappa 0.10) |  |" in text
    assert "| 1 | 70.0 % (kappa 0.50) | 80.0 % (kappa 0.60) | 40.0 % (kappa 0.00) |" in text
    assert lc.plot_curve(tmp_path / "c.png", points).stat().st_size > 1000


def test_plot_draws_each_series_beside_its_adapted_twin(tmp_path):
    """--adapt-test: the adapted figures are a line of their own beside the series they adapt, over the
    minutes that have them; a series without them (motion) keeps one line."""
    points = [
        {"start": "model", "select": "none", "minutes": 0.0, "seed": 0, "accuracy": 0.8, "kappa": 0.6, "adapted_accuracy": 0.9},
        *({"start": "per-stream", "select": "random", "minutes": 2.0, "seed": s, "accuracy": 0.7 + s / 100, "kappa": 0.5,
           "adapted_accuracy": 0.92 + s / 100} for s in range(3)),
        {"start": "motion", "select": "random", "minutes": 2.0, "seed": 0, "accuracy": 0.6, "kappa": 0.3},
    ]
    lines = {(ln.series, ln.adapted): ln for ln in lc.curve_lines(points)}
    assert set(lines) == {("motion+random", False), ("per-stream+random", False), ("per-stream+random", True)}
    twin = lines["per-stream+random", True]
    assert twin.minutes == [0.0, 2.0] and twin.mean_pct == pytest.approx([90.0, 93.0])
    assert twin.sd_pct == pytest.approx([0.0, 1.0]) and "adapted" in twin.label and "3 seeds" in twin.label
    assert lines["per-stream+random", False].mean_pct == pytest.approx([80.0, 71.0])
    assert lc.plot_curve(tmp_path / "c.png", points).stat().st_size > 1000


def _curve(tmp_path, tiny_model, *extra, train_arenas: int = 1):
    from export.synth import SynthConfig, render_video

    data = tmp_path / "data"
    train = render_video(SynthConfig(view="side", duration_s=6.0, fps=15.0, arenas=train_arenas, arena_size_px=48, seed=11, name="train"), data)
    test = render_video(SynthConfig(view="side", duration_s=4.0, fps=15.0, arenas=1, arena_size_px=48, seed=12, name="test"), data)
    out = tmp_path / "curve"
    argv = ["--init", f"model:{tiny_model}", "--train-videos", str(train.video_path), "--test-videos", str(test.video_path),
            "--minutes", "0,0.05", "--stretch-s", "1.5", "--out", str(out), "--epochs", "1", "--batch-size", "4",
            "--frame-step", "5", "--eval-frame-step", "6", "--bn-recalibration-clips", "4", "--cache-dir", str(tmp_path / "cache"), *extra]  # fmt: skip
    assert lc.main(argv) == 0
    names = sorted(p.stem for p in (out / lc.POINTS_DIR).glob("*.json"))
    points = {n: json.loads((out / lc.POINTS_DIR / f"{n}.json").read_text()) for n in names}
    for p in points.values():
        assert p["test_clips"] == 10  # 60 test frames, every 6th
        if p["start"] == "motion":
            continue
        assert 0.0 <= p["accuracy"] <= 1.0
        sweep = p["accuracy_by_flow_weight"]
        assert sorted(sweep) == [f"{w / 10:.1f}" for w in range(11)]
        # the reported accuracy is the sweep's entry at the weight it was fused with; the ends are the streams alone
        assert sweep[f"{p['flow_weight']:.1f}"] == pytest.approx(p["accuracy"], abs=1e-4)
        assert sweep["0.0"] == pytest.approx(p["rgb_accuracy"], abs=1e-4) and sweep["1.0"] == pytest.approx(p["flow_accuracy"], abs=1e-4)
    for f in (lc.TABLE_CSV, lc.TABLE_MD, lc.PLOT_PNG):
        assert (out / f).is_file()
    return out, argv, points


@pytest.mark.usefixtures("one_torch_thread")
def test_learning_curve_end_to_end_and_resumable(tmp_path, tiny_model, capsys):
    """One fine-tuned point (the model, export-select minutes) and the untouched model; a rerun recomputes nothing."""
    out, argv, points = _curve(tmp_path, tiny_model, "--starts", "model", "--select", "uncertainty")
    assert sorted(points) == ["model-0min", "model-uncertainty-0.05min"]
    tuned = points["model-uncertainty-0.05min"]
    # 0.05 min = two stretches of 1.5 s, each 22 whole frames at 15 fps (round(22.5) = 22)
    assert tuned["labelled_minutes"] == pytest.approx(2 * 22 / 15 / 60, abs=1e-3) and 8 <= tuned["train_clips"] <= 10
    assert tuned["config"]["freeze_until"] == "Mixed_3c" and tuned["config"]["lr"] == 1e-4
    labels = (out / "labels" / "uncertainty-0.05min" / "train.labels.csv").read_text().splitlines()
    assert len(labels) == 1 + 44 and all(line.split(",")[2] for line in labels[1:])  # every picked frame labelled
    capsys.readouterr()
    files = sorted((out / lc.POINTS_DIR).glob("*.json"))
    before = [f.stat().st_mtime_ns for f in files]
    assert lc.main(argv) == 0  # resumed: every point is read back, none recomputed
    assert before == [f.stat().st_mtime_ns for f in files]
    assert "training clips" not in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_learning_curve_compares_starts_and_selections(tmp_path, tiny_model):
    """All four series: model vs random init, export-select vs random minutes, on the same labelled frames."""
    _, _, points = _curve(tmp_path, tiny_model)
    assert sorted(points) == ["model-0min", "model-random-0.05min", "model-uncertainty-0.05min", "motion-random-0.05min", "motion-uncertainty-0.05min",
                              "random-random-0.05min", "random-uncertainty-0.05min"]  # fmt: skip
    assert points["motion-uncertainty-0.05min"]["train_clips"] == points["model-uncertainty-0.05min"]["train_clips"]
    assert points["random-uncertainty-0.05min"]["config"]["freeze_until"] == ""
    assert points["random-uncertainty-0.05min"]["train_clips"] == points["model-uncertainty-0.05min"]["train_clips"]
    assert points["random-random-0.05min"]["train_clips"] == points["model-random-0.05min"]["train_clips"]


def test_report_only_tabulates_points_of_several_runs(tmp_path, capsys):
    """--report-only reads every finished point (here from two runs copied together) and trains nothing."""
    points_dir = tmp_path / lc.POINTS_DIR
    points_dir.mkdir()
    sweep = {f"{w / 10:.1f}": 0.5 for w in range(11)} | {"0.7": 0.75}
    for p in [
        {"start": "model", "select": "none", "minutes": 0.0, "accuracy": 0.6, "kappa": 0.3, "flow_weight": 0.4, "rgb_accuracy": 0.4,
         "flow_accuracy": 0.55, "accuracy_by_flow_weight": sweep},
        {"start": "random", "select": "uncertainty", "minutes": 1.0, "accuracy": 0.45, "kappa": 0.1},
    ]:  # fmt: skip
        (points_dir / f"{p['start']}-{p['minutes']:g}.json").write_text(json.dumps(p))
    assert lc.main(["--out", str(tmp_path), "--report-only"]) == 0
    text = (tmp_path / lc.TABLE_MD).read_text()
    assert "| 0 | 60.0 % (kappa 0.30) |" in text and "| 1 |  | 45.0 % (kappa 0.10) |" in text
    assert "| model+none | 0 | 60.0 % (0.4) | 40.0 % | 55.0 % | 75.0 % (0.7) |" in text
    assert (tmp_path / lc.PLOT_PNG).stat().st_size > 1000
    assert "from 2 points" in capsys.readouterr().out


def test_report_only_refuses_an_empty_folder_and_a_missing_model(tmp_path, capsys):
    assert lc.main(["--out", str(tmp_path), "--report-only"]) == 2
    assert "no finished points" in capsys.readouterr().err
    assert lc.main(["--out", str(tmp_path)]) == 2
    assert "--init, --train-videos, --test-videos required" in capsys.readouterr().err


def test_motion_baseline_point_fits_thresholds_on_the_labelled_frames():
    """Three classes separated by motion: thresholds from the labelled frames classify the test frames."""
    classes = ["swim", "struggle", "float"]
    rng = np.random.default_rng(0)
    level = {0: 3.0, 1: 1.5, 2: 0.2}  # swim moves most, float least (the order is fitted, not assumed)
    y_train = np.repeat([0, 1, 2], 30)
    y_test = np.array([2, 0, 1, 1, 2, 0, 2, 2])
    train = (np.array([level[c] for c in y_train]) + rng.uniform(-0.3, 0.3, y_train.size), y_train)
    test = (np.array([level[c] for c in y_test]), y_test)
    point = lc._motion_point(train, test, classes)
    assert point["classes_low_to_high"] == ["float", "struggle", "swim"]
    assert point["accuracy"] == 1.0 and point["kappa"] == pytest.approx(1.0) and point["test_clips"] == 8
    x, y = train
    t_low, t_high = point["thresholds_px"]  # "x < t is the lower class": each threshold lies between two classes' values
    assert x[y == 2].max() < t_low <= x[y == 1].min() and x[y == 1].max() < t_high <= x[y == 0].min()
    # one class never labelled: no threshold for it, so no result rather than a guess
    missing = lc._motion_point((train[0][:60], train[1][:60]), test, classes)
    assert np.isnan(missing["accuracy"]) and "float" in missing["note"]


def test_table_flags_a_fine_tuned_model_below_the_motion_baseline(tmp_path):
    points = [
        {"start": "model", "select": "uncertainty", "minutes": 1.0, "accuracy": 0.6, "kappa": 0.3},
        {"start": "motion", "select": "uncertainty", "minutes": 1.0, "accuracy": 0.7, "kappa": 0.5},
        {"start": "model", "select": "uncertainty", "minutes": 2.0, "accuracy": 0.8, "kappa": 0.6},
        {"start": "motion", "select": "uncertainty", "minutes": 2.0, "accuracy": 0.7, "kappa": 0.5},
    ]
    text = lc.write_table(tmp_path, points)[1].read_text()
    assert "**Below the motion baseline**" in text and "uncertainty 1 min (60.0 % vs 70.0 %)" in text
    assert "2 min (" not in text


def test_table_gives_mean_and_sd_over_seeds(tmp_path):
    """Repeated seeds: one cell per point of the curve with mean ± sample sd; the CSV keeps every run."""
    points = [
        {"start": "model", "select": "none", "minutes": 0.0, "accuracy": 0.5, "kappa": 0.1, "seed": 0},
        {"start": "model", "select": "random", "minutes": 1.0, "accuracy": 0.6, "kappa": 0.2, "seed": 0},
        {"start": "model", "select": "random", "minutes": 1.0, "accuracy": 0.8, "kappa": 0.4, "seed": 1},
        {"start": "model", "select": "random", "minutes": 1.0, "accuracy": 0.7, "kappa": 0.3, "config": {"seed": 2}},  # an older point
    ]
    csv_path, md = lc.write_table(tmp_path, points)
    text = md.read_text()
    assert "| 1 | 70.0 ± 10.0 % (kappa 0.30, 3 seeds) |" in text  # sd of 0.6, 0.7, 0.8 (ddof 1) = 0.1
    assert "| 0 | 50.0 % (kappa 0.10) |" in text
    rows = csv_path.read_text().splitlines()
    assert rows[0].split(",")[3] == "seed" and [r.split(",")[3] for r in rows[1:]] == ["0", "0", "1", "2"]
    assert lc.plot_curve(tmp_path / "c.png", points).stat().st_size > 1000


def test_seed_names_and_parsing():
    assert lc.point_name("model", "random", 2.0) == "model-random-2min"  # seed 0: the name points always had
    assert lc.point_name("model", "random", 2.0, seed=2) == "model-random-2min-seed2"
    assert lc.seed_of({"seed": 3}) == 3 and lc.seed_of({"config": {"seed": 1}}) == 1 and lc.seed_of({}) == 0
    assert lc._parse_seeds("0,1,2,1") == [0, 1, 2]
    for bad in ("a", "", "-1"):
        with pytest.raises(lc.UserError, match="--seed"):
            lc._parse_seeds(bad)


@pytest.mark.usefixtures("one_torch_thread")
def test_learning_curve_repeats_points_per_seed(tmp_path, tiny_model):
    """--seed 0,1: every fine-tuned point once per seed (random minutes drawn per seed), the untouched model once."""
    out, _, points = _curve(tmp_path, tiny_model, "--starts", "model", "--select", "random", "--seed", "0,1", "--epochs", "1")
    assert sorted(points) == ["model-0min", "model-random-0.05min", "model-random-0.05min-seed1"]
    assert [points[n]["seed"] for n in sorted(points)] == [0, 0, 1]
    assert points["model-random-0.05min-seed1"]["config"]["seed"] == 1
    picked = [(out / "labels" / d / "train.labels.csv").read_text() for d in ("random-0.05min", "random-0.05min-seed1")]
    assert picked[0] != picked[1]  # each seed labels its own random minutes
    assert "2 seeds" in (out / lc.TABLE_MD).read_text()


def test_untouched_model_starts_both_fine_tuning_recipes():
    points = [
        {"start": "model", "select": "none", "minutes": 0.0, "accuracy": 0.5, "kappa": 0.1},
        {"start": "model", "select": "random", "minutes": 1.0, "accuracy": 0.6, "kappa": 0.2},
        {"start": "per-stream", "select": "random", "minutes": 1.0, "accuracy": 0.7, "kappa": 0.3},
        {"start": "random", "select": "random", "minutes": 1.0, "accuracy": 0.4, "kappa": 0.0},
    ]
    series = lc._series(points)
    assert sorted(series) == ["model+random", "per-stream+random", "random+random"]
    assert 0.0 in series["model+random"] and 0.0 in series["per-stream+random"] and 0.0 not in series["random+random"]


@pytest.mark.usefixtures("one_torch_thread")
def test_per_stream_start_unfreezes_the_rgb_stream_only(tmp_path, tiny_model):
    """--starts per-stream: the same labelled frames as the recipe, the RGB stream at its own rate and unfrozen, the flow stream's blocks frozen."""
    _, _, points = _curve(tmp_path, tiny_model, "--starts", "model,per-stream", "--select", "uncertainty", "--minutes", "0.05", "--rgb-lr", "0.002")
    assert sorted(points) == ["model-uncertainty-0.05min", "per-stream-uncertainty-0.05min"]
    recipe, per_stream = points["model-uncertainty-0.05min"]["config"], points["per-stream-uncertainty-0.05min"]["config"]
    assert (recipe["rgb_lr"], recipe["rgb_freeze_until"]) == (None, None)
    assert (per_stream["rgb_lr"], per_stream["rgb_freeze_until"], per_stream["freeze_until"], per_stream["lr"]) == (0.002, "", "Mixed_5c", 1e-4)
    assert recipe["freeze_until"] == "Mixed_3c"
    assert points["per-stream-uncertainty-0.05min"]["train_clips"] == points["model-uncertainty-0.05min"]["train_clips"]


def test_held_back_stretches_are_one_whole_recording_near_a_fifth():
    from types import SimpleNamespace as NS

    def picks(videos_arenas):
        return [NS(video=v, arena=a, animal="") for v, a in videos_arenas]

    ranked = picks([("v1", "a0")] * 6 + [("v2", "a0")] * 3 + [("v2", "a1")] * 2 + [("v3", "a0")] * 4)  # 15: a fifth is 3
    trained, held = lc.split_held_back(ranked)
    assert {s.video for s in held} == {"v3"} and len(held) == 4 and all(s.video != "v3" for s in trained)  # a whole video, 4 nearest 3
    _, held = lc.split_held_back(picks([("v1", "a0"), ("v1", "a1"), ("v1", "a0"), ("v1", "a1")]))  # one video: an animal (a tie: the later)
    assert {s.arena for s in held} == {"a1"} and len(held) == 2
    named = [NS(video="v.mp4", arena="arena0", animal="m1"), NS(video="v.mp4", arena="arena1", animal="m1"), NS(video="v.mp4", arena="arena0", animal="m2")]
    assert [s.animal for s in lc.split_held_back(named)[1]] == ["m2"]  # a trial run's named animal is one animal across arenas
    with pytest.raises(lc.UserError, match="one video and one animal"):
        lc.split_held_back(picks([("v1", "a0")] * 3))


def test_flow_weight_is_the_held_back_best_and_ties_keep_the_card_nearest():
    sweep = {f"{w / 10:.1f}": 0.5 for w in range(11)}
    assert lc.choose_flow_weight(sweep, 0.7) == 0.7  # nothing better held back: the card's weight stays
    sweep.update({"0.2": 0.8, "0.3": 0.8, "0.9": 0.8})
    assert lc.choose_flow_weight(sweep, 0.7) == 0.9  # a tie among the best: nearest the card's
    sweep["0.0"] = 0.81
    assert lc.choose_flow_weight(sweep, 0.7) == 0.0  # a strictly better weight wins however far it is
    with pytest.raises(ValueError):
        lc.choose_flow_weight({}, 0.5)


@pytest.mark.usefixtures("one_torch_thread")
def test_learning_curve_rechooses_the_flow_weight_on_held_back_stretches(tmp_path, tiny_model):
    """--flow-weight held-back: one recording's picked stretches (here, of one video, an animal's) are not trained on; the weight they choose fuses the test clips."""
    from stream.modelfile import load_card

    out, _, points = _curve(tmp_path, tiny_model, "--starts", "per-stream,motion", "--select", "uncertainty", "--minutes", "0.075",
                            "--flow-weight", "held-back", train_arenas=2)  # fmt: skip
    assert sorted(points) == ["motion-uncertainty-0.075min", "per-stream-uncertainty-0.075min-wheld"]
    p = points["per-stream-uncertainty-0.075min-wheld"]
    assert p["weight_choice"] == "held-back" and p["card_flow_weight"] == load_card(tiny_model).flow_weight
    stretch_min = 22 / 15 / 60  # a 1.5 s stretch: 22 whole frames
    assert p["labelled_minutes"] == pytest.approx(3 * stretch_min, abs=1e-3)
    assert p["labelled_minutes"] == pytest.approx(p["trained_minutes"] + p["held_back_minutes"], abs=1e-3)
    held_stretches = round(p["held_back_minutes"] / stretch_min)
    assert held_stretches in (1, 2) and p["held_back_clips"] == 11 * held_stretches  # 22 frames each, every 2nd
    assert p["flow_weight"] == lc.choose_flow_weight(p["held_back_sweep"], p["card_flow_weight"])
    assert p["train_clips"] < points["motion-uncertainty-0.075min"]["train_clips"]  # motion fits on all labelled frames
    label_dir = out / "labels" / "uncertainty-0.075min"
    trained = (label_dir / "trained" / "train.labels.csv").read_text().splitlines()[1:]
    held = (label_dir / "held-back" / "train.labels.csv").read_text().splitlines()[1:]
    animals = lambda lines: {line.split(",")[1] for line in lines if line.split(",")[2]}  # noqa: E731
    assert len(animals(held)) == 1 and not animals(trained) & animals(held)  # one whole animal held back
    text = (out / lc.TABLE_MD).read_text()
    assert "per-stream+uncertainty+held-back weight" in text and "Flow weight re-chosen on the held-back" in text


@pytest.mark.usefixtures("one_torch_thread")
def test_adapt_test_scores_each_test_video_on_its_own_statistics(tmp_path, tiny_model):
    """--adapt-test: every point is scored again with each test video adapted on itself, as stream-run
    --adapt would score it; the figure equals adapting that video with export.adapt's own steps."""
    import copy

    from export.adapt import adapt_batchnorm, unlabelled_clips
    from export.train import predict_streams
    from stream.model import fuse
    from stream.modelfile import load_model

    out, _, points = _curve(tmp_path, tiny_model, "--starts", "model", "--select", "random", "--minutes", "0", "--adapt-test")
    untouched = points["model-0min"]
    assert 0.0 <= untouched["adapted_accuracy"] <= 1.0 and len(untouched["adapted_variance_change"]) == 1
    model, card = load_model(tiny_model)
    test_video = next((tmp_path / "data").glob("test*.mp4"))
    clips = unlabelled_clips(card, [test_video], [None], frame_step=15, cache_dir=tmp_path / "cache")
    adapted = copy.deepcopy(model)
    adapt_batchnorm(adapted, clips, count=64, seed=0, batch_size=4)
    from export.dataset import ClipDataset
    from export.learning_curve import _sources
    from stream.flow import FlowConfig

    labels = next((tmp_path / "data").glob("test*.labels.csv"))
    ds = ClipDataset(_sources([test_video], [labels], card.classes), card.classes, size_px=card.input_size_px, cache_dir=tmp_path / "cache",
                     frame_step=6, flow_config=FlowConfig(**card.flow))  # fmt: skip
    pred = predict_streams(adapted, ds, batch_size=4, device="cpu", progress=False)
    fused = fuse(np.log(np.clip(pred.rgb_probs, 1e-12, None)), np.log(np.clip(pred.flow_probs, 1e-12, None)), card.flow_weight).argmax(1)
    assert untouched["adapted_accuracy"] == pytest.approx(float((fused == pred.labels).mean()), abs=1e-9)
    assert untouched["adapted_variance_change"][0] > 0  # the statistics did move
    table = (out / lc.TABLE_MD).read_text()
    assert "each test video scored on its own BatchNorm statistics" in table
    assert "adapted_accuracy" in (out / lc.TABLE_CSV).read_text().splitlines()[0]
