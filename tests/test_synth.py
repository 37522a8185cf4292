"""export-synth: deterministic labels and frames, outputs that read back, behaviours that differ in motion."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest

from export.annotations import read_annotations
from export.synth import MIN_BOUT_S, SynthConfig, generate_labels, main, render_frames, render_video


def _small(**kw) -> SynthConfig:
    base = dict(view="side", duration_s=2.0, fps=15.0, arenas=1, arena_size_px=48, seed=0)
    base.update(kw)
    return SynthConfig(**base)


def test_labels_deterministic_seeded_and_size_independent():
    a = generate_labels(_small(duration_s=60.0, seed=3, arenas=2))
    b = generate_labels(_small(duration_s=60.0, seed=3, arenas=2, arena_size_px=96))
    c = generate_labels(_small(duration_s=60.0, seed=4, arenas=2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], a[1])  # each arena has its own mouse


@pytest.mark.parametrize("view", ["side", "top"])
def test_bouts_realistic_and_immobility_grows(view):
    imm = 2 if view == "side" else 1
    first, last = [], []
    for seed in range(6):
        cfg = _small(view=view, duration_s=360.0, seed=seed)
        lab = generate_labels(cfg)[0]
        change = np.flatnonzero(np.diff(lab)) + 1
        lengths = np.diff(np.concatenate([[0], change]))  # all complete bouts (the last may be cut)
        assert lengths.min() >= round(MIN_BOUT_S * cfg.fps)
        assert set(np.unique(lab)) == set(range(len(cfg.classes)))
        third = lab.size // 3
        first.append(np.mean(lab[:third] == imm))
        last.append(np.mean(lab[-third:] == imm))
    assert np.mean(last) > np.mean(first) + 0.15


def test_frames_deterministic_before_compression():
    cfg = _small(view="top", duration_s=1.0, arenas=2)
    a = list(render_frames(cfg))
    b = list(render_frames(cfg))
    assert len(a) == cfg.num_frames and a[0].shape == (48, 96, 3) and a[0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], next(render_frames(_small(view="top", duration_s=1.0, arenas=2, seed=1))))


def _motion(cfg: SynthConfig) -> dict[str, float]:
    """Mean absolute frame difference per class, away from bout boundaries."""
    labels = generate_labels(cfg)[0]
    frames = np.stack([f.astype(np.float32).mean(-1) for f in render_frames(cfg)])
    diff = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2))
    lab = labels[1:]
    keep = np.ones(lab.size, bool)
    for c in np.flatnonzero(np.diff(labels)):
        keep[max(0, c - 8) : c + 8] = False
    return {name: float(diff[(lab == k) & keep].mean()) for k, name in enumerate(cfg.classes)}


def test_behaviours_differ_in_motion():
    clean = dict(duration_s=40.0, arena_size_px=64, seed=3, noise_std=0.0, shake_px=0.0, light_change=0.0)
    side = _motion(_small(view="side", **clean))
    assert side["swim"] > 1.3 * side["struggle"] and side["swim"] > 1.3 * side["float"]
    top = _motion(_small(view="top", **clean))
    assert top["mobile"] > 1.5 * top["immobile"]
    assert top["immobile"] > 0  # ripples keep the water moving after a mobile bout


def test_render_video_outputs_read_back(tmp_path):
    cfg = _small(duration_s=2.0, arenas=2, name="clip")
    r = render_video(cfg, tmp_path)
    cap = cv2.VideoCapture(str(r.video_path))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (48, 96, 3)
        n += 1
    assert n == cfg.num_frames == 30
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(15.0)
    meta = json.loads(r.arenas_json.read_text())
    assert [a["roi"] for a in meta["arenas"]] == [[0, 0, 48, 48], [48, 0, 48, 48]]
    assert meta["classes"] == ["swim", "struggle", "float"] and meta["num_frames"] == 30
    got = read_annotations(r.labels_csv)
    assert [a.subject for a in got] == ["arena0", "arena1"]
    assert [a["id"] for a in meta["arenas"]] == ["arena0", "arena1"]
    assert all(np.array_equal(a.labels, b) for a, b in zip(got, r.labels))


def test_cli_writes_files_and_rejects_bad_arguments(tmp_path, capsys):
    assert main(["--view", "top", "--seconds", "1", "--arena-size-px", "48", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "synth_top.arenas.json", "synth_top.boris.csv", "synth_top.labels.csv", "synth_top.mp4"]  # fmt: skip
    assert main(["--arenas", "0", "--out", str(tmp_path)]) == 2
    assert "export-synth: error: --arenas" in capsys.readouterr().err
    assert main(["--width", "40", "--height", "40", "--arenas", "2", "--out", str(tmp_path)]) == 2
    assert "too small" in capsys.readouterr().err


@pytest.mark.slow
def test_one_minute_side_video_renders_in_seconds(tmp_path):
    start = time.perf_counter()
    assert main(["--view", "side", "--minutes", "1", "--out", str(tmp_path)]) == 0
    assert time.perf_counter() - start < 30.0
    assert (tmp_path / "synth_side.mp4").stat().st_size < 3_000_000
