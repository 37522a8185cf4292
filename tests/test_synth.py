"""export-synth: deterministic labels and frames, outputs that read back, behaviours that differ in motion."""

from __future__ import annotations

import hashlib
import json
import math
import time

import cv2
import numpy as np
import pytest

from export.annotations import SIDE_CLASSES, TOP_CLASSES, UNLABELLED, read_annotations
from export.synth import MIN_BOUT_S, SynthConfig, arena_rois, generate_labels, main, render_frames, render_video, resolve
from export.synth_families import FAMILIES, FAMILY_NAMES, FLOAT_DRIFT_MAX_OF_SWIM, draw_families, draw_family, splits
from export.synth_scene import FLOAT_DRIFT_MID, FLOAT_DRIFT_RANGE, NOSE_CLEAR, float_depth, head_top, layout, render_scene
from export.synth_sheet import CELL_PX, CLASS_BGR, contact_sheet
from export.synth_trials import ABSENT, HELD, IN_WATER, parse_trials, plan_trials


@pytest.fixture(autouse=True)
def _one_cv2_thread():
    """A shared 2-core box: OpenCV's thread pool only adds contention to these small frames."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    yield
    cv2.setNumThreads(previous)


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


def test_a_seed_renders_the_same_video_bytes(tmp_path):
    """After compression too: x264's macroblock-tree rate control made a randomized 2-cylinder rig
    another video on each of 3 renders in one process (decoded pixels up to 28 grey levels apart),
    so arena sweeps and training sets did not repeat."""
    cfg = SynthConfig(view="top", randomize=True, duration_s=1.0, seed=7, arenas=2, name="rig")
    digests = {hashlib.sha256(render_video(cfg, tmp_path / str(i)).video_path.read_bytes()).hexdigest()
               for i in range(3)}
    assert len(digests) == 1


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


# ----------------------------------------------------------------------------------------------
# domain randomization (export.synth_families, export.synth_scene)


SMALL_RIG = dict(width_px=320, height_px=240, fps=15.0, pinned=("width_px", "height_px", "fps"))


def _rand(**kw) -> SynthConfig:
    base = dict(view="side", duration_s=1.0, seed=0, randomize=True, **SMALL_RIG)
    base.update(kw)
    return SynthConfig(**base)


def test_every_family_has_a_disjoint_train_and_held_out_part():
    rng = np.random.default_rng(0)
    for family in FAMILY_NAMES:
        params = splits(family)
        assert any(s.is_split for s in params.values()), family
        for name, s in params.items():
            if not s.is_split:
                continue
            assert not s.train.overlaps(s.held_out) and not s.held_out.overlaps(s.train), (family, name)
            for _ in range(200):
                assert not s.held_out.contains(s.train.draw(rng)), (family, name)
                assert not s.train.contains(s.held_out.draw(rng)), (family, name)


def test_held_out_families_draw_only_held_out_values_and_fix_pins_nominal():
    held = {"background", "mouse", "geometry"}
    for seed in range(20):
        fam = draw_families(seed, held_out=held, fixed={"capture"})
        assert set(fam) == set(FAMILIES)
        for family, values in fam.items():
            for name, s in splits(family).items():
                v = values[name]
                if family == "capture":
                    assert v == s.nominal
                elif s.is_split:
                    assert (s.held_out if family in held else s.train).contains(v), (family, name, v)
                else:
                    assert s.train.contains(v)
        json.dumps(fam)  # the contract: JSON-serialisable
    # holding one family out leaves what the others draw unchanged
    a, b = draw_families(3), draw_families(3, held_out={"mouse"})
    assert {k: v for k, v in a.items() if k != "mouse"} == {k: v for k, v in b.items() if k != "mouse"}
    assert a["mouse"] != b["mouse"]
    assert draw_family("water", np.random.default_rng(0), "nominal")["colour"] == "clear"


def test_randomized_frames_deterministic_and_seeded():
    a = list(render_frames(_rand(view="top", seed=4)))
    b = list(render_frames(_rand(view="top", seed=4)))
    assert len(a) == 15 and a[0].shape == (240, 320, 3) and a[0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[5], next(iter(list(render_frames(_rand(view="top", seed=5)))[5:])))


@pytest.mark.parametrize("view", ["side", "top"])
def test_each_family_changes_the_frames(view):
    everything = tuple(FAMILY_NAMES)
    base = list(render_frames(_rand(view=view, duration_s=0.6, seed=2, fixed=everything)))
    for family in FAMILY_NAMES:
        others = tuple(f for f in everything if f != family)
        frames = list(render_frames(_rand(view=view, duration_s=0.6, seed=2, fixed=others)))
        assert len(frames) == len(base)
        diff = max(float(np.abs(x.astype(np.int16) - y).mean()) for x, y in zip(frames, base))
        assert diff > 0.2, (family, diff)


@pytest.mark.parametrize("view", ["side", "top"])
def test_randomized_render_keeps_the_contract(tmp_path, view):
    cfg = SynthConfig(view=view, duration_s=2.5, seed=11, randomize=True, held_out=("mouse", "background"), name="r")
    r = render_video(cfg, tmp_path)
    meta = json.loads(r.arenas_json.read_text())
    assert meta["randomized"] is True and meta["held_out"] == ["background", "mouse"]
    assert set(meta["families"]) == set(FAMILY_NAMES)
    assert meta["families"]["mouse"]["colour"] in ("agouti", "brown")
    fam = meta["families"]
    assert meta["fps"] == fam["capture"]["fps"] and splits("capture")["fps"].train.contains(meta["fps"])
    assert meta["num_frames"] == round(2.5 * meta["fps"]) and meta["view"] == view
    assert meta["classes"] == list(cfg.classes) and meta["immobile_classes"] == (["float"] if view == "side" else ["immobile"])
    assert len(meta["arenas"]) == fam["geometry"]["cylinders"]
    w, h = meta["width"], meta["height"]
    boxes = []
    for a in meta["arenas"]:
        assert set(a) == {"id", "name", "roi"}
        x, y, bw, bh = a["roi"]
        assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h and bw >= 16 and bh >= 16
        boxes.append((x, y, x + bw, y + bh))
    for i, p in enumerate(boxes):  # cylinders do not overlap
        for q in boxes[i + 1 :]:
            assert min(p[2], q[2]) <= max(p[0], q[0]) or min(p[3], q[3]) <= max(p[1], q[1])
    cap = cv2.VideoCapture(str(r.video_path))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(meta["fps"])
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (h, w, 3)
        n += 1
    assert n == meta["num_frames"]
    got = read_annotations(r.labels_csv)
    assert len(got) == len(meta["arenas"]) and all(np.array_equal(a.labels, b) for a, b in zip(got, r.labels))
    assert "randomized" not in json.loads(render_video(_small(name="plain"), tmp_path).arenas_json.read_text())


def test_roi_is_the_cylinder_the_camera_sees():
    """The rim of a top-view cylinder, found in the rendered frame, fills its ROI."""
    cfg = _rand(view="top", seed=6, fixed=("background", "lighting", "capture"), arenas=1,
                pinned=SMALL_RIG["pinned"] + ("arenas",))  # fmt: skip
    eff, fam = resolve(cfg)

    roi = arena_rois(eff, fam)[0]
    frame = next(iter(render_frames(cfg))).astype(np.float32).mean(-1)
    floor_grey = float(np.median(frame))  # the nominal room: flat grey
    inside = np.abs(frame - floor_grey) > 12
    ys, xs = np.nonzero(inside)
    got = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    want = (roi.x, roi.y, roi.x + roi.w, roi.y + roi.h)
    assert np.abs(np.subtract(got, want)).max() <= 2, (got, want)
    assert layout("top", fam["geometry"]).rois[0] == roi


def _roi_motion(cfg: SynthConfig) -> dict[str, float]:
    """Frame-difference magnitude inside the ROI per class, away from bout boundaries: the 98th
    percentile of |difference| (motion is local: the mouse and its ripples), on 4x-downsampled
    crops (sensor noise averages out, motion does not) with each row normalised to its mean (a
    lighting flicker, also one a rolling shutter reads out as moving bands, is not motion)."""
    eff, fam = resolve(cfg)

    labels = generate_labels(eff)[0]
    r = arena_rois(eff, fam)[0]
    size = (r.w // 4, r.h // 4)
    crops = [cv2.resize(f[r.y : r.y + r.h, r.x : r.x + r.w].astype(np.float32).mean(-1), size, interpolation=cv2.INTER_AREA)
             for f in render_frames(cfg)]  # fmt: skip
    frames = np.stack([100 * c / c.mean(axis=1, keepdims=True) for c in crops])
    diff = np.percentile(np.abs(np.diff(frames, axis=0)).reshape(len(frames) - 1, -1), 98, axis=1)
    lab = labels[1:]
    keep = np.ones(lab.size, bool)
    for c in np.flatnonzero(np.diff(labels)):
        keep[max(0, c - 8) : c + 8] = False
    return {name: float(diff[(lab == k) & keep].mean()) for k, name in enumerate(eff.classes) if np.any((lab == k) & keep)}


@pytest.mark.parametrize(("seed", "held_out"), [(3, ()), (4, ("dynamics", "capture", "lighting"))])
def test_randomized_classes_differ_in_motion(seed, held_out):
    pins = SMALL_RIG["pinned"] + ("arenas",)
    side = _roi_motion(_rand(view="side", duration_s=45.0, seed=seed, arenas=1, pinned=pins, held_out=held_out))
    assert set(side) == {"swim", "struggle", "float"}
    assert side["swim"] > 1.3 * side["float"] and side["struggle"] > 1.3 * side["float"], side
    top = _roi_motion(_rand(view="top", duration_s=45.0, seed=seed, arenas=1, pinned=pins, held_out=held_out))
    assert top["mobile"] > 1.3 * top["immobile"], top


def test_cli_randomization_options(tmp_path, capsys):
    assert main(["--list-families"]) == 0
    out = capsys.readouterr().out
    assert all(f in out for f in FAMILY_NAMES) and "held-out" in out and "agouti" in out
    assert main(["--held-out", "mouse,nosuch", "--out", str(tmp_path)]) == 2
    assert "nosuch" in capsys.readouterr().err
    assert main(["--held-out", "mouse", "--fix", "mouse", "--out", str(tmp_path)]) == 2
    assert "both held out and fixed" in capsys.readouterr().err
    args = ["--view", "top", "--seconds", "1", "--held-out", "water", "--arenas", "2", "--fps", "25", "--width", "320",
            "--height", "240", "--out", str(tmp_path), "--name", "t"]  # fmt: skip
    assert main(args) == 0
    meta = json.loads((tmp_path / "t.arenas.json").read_text())
    assert meta["randomized"] and meta["held_out"] == ["water"] and meta["fps"] == 25.0
    assert len(meta["arenas"]) == 2 and (meta["width"], meta["height"]) == (320, 240)
    assert meta["families"]["capture"]["fps"] == 25.0 and meta["families"]["geometry"]["cylinders"] == 2


def test_contact_sheet_grid_of_labelled_frames(tmp_path, capsys):

    path = contact_sheet(tmp_path / "sheet.png", ("side", "top"), seed=1, columns=2, rows_per_view=1)
    sheet = cv2.imread(str(path))
    assert sheet.shape == (2 * CELL_PX[1], 2 * CELL_PX[0], 3)
    assert path.stat().st_size < 1_000_000
    # every cell has its ROIs outlined in a class colour (exact pixels: the boxes are not anti-aliased)
    colours = {tuple(c) for c in CLASS_BGR.values()}
    h, w = CELL_PX[1], CELL_PX[0]
    for r in range(2):
        for c in range(2):
            cell = sheet[r * h : (r + 1) * h, c * w : (c + 1) * w].reshape(-1, 3)
            assert any(np.all(cell == np.array(col), axis=1).sum() > 20 for col in colours), (r, c)
    assert main(["--contact-sheet", str(tmp_path / "sheet.jpg")]) == 2
    assert "PNG" in capsys.readouterr().err
    assert main(["--view", "both", "--out", str(tmp_path)]) == 2
    assert "--contact-sheet" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# the widened ranges (issue 21 part 3): lighting, capture, float posture, water depth


# every parameter the widening added, by family; each must be split train / held out
WIDENED = {
    "lighting": ("colour_cast", "vignette", "hotspot", "banding"),
    "capture": ("auto_gain", "shot_noise", "defocus_px", "downscale", "interlace", "jpeg_quality"),
    "dynamics": ("float_pitch", "float_depth", "float_drift"),
    "water": ("depth_fade",),
}
# sha256 of the raw frames (before H.264) of the fixed look and of the nominal scene of a --trials
# render, taken before the widening: neither may change. (OpenCV's drawing and warping are
# deterministic for a given OpenCV build; a different build may round differently.)
UNCHANGED_FRAMES = {
    "legacy_side": "e74787c99cac423f2ecd0cf9d4bc1cfbbb8ae7c4a20ac7cd759a40e814d0aecc",
    "legacy_top": "71e714608678acdf3822f0acdf954dca47bb435e6e06afdab96e21d1c46bdaf5",
    "trials_side": "9e64ff4223045c4ab4212be49d2e8e25212d9b6bf42154e9a69f1c77bb1a8ac4",
    "trials_top": "2428ce86bcfee9838d309b4fbecabc1c66c476d7907fd6c58ecaf1ebb36caa68",
}


def test_fixed_look_and_nominal_scene_frames_are_unchanged():
    configs = {
        "legacy_side": SynthConfig(view="side", duration_s=3.0, arenas=2, arena_size_px=64, seed=5),
        "legacy_top": SynthConfig(view="top", duration_s=3.0, arenas=1, arena_size_px=64, seed=6),
        # swim, struggle and float bouts: the nominal float posture and drift are rendered too
        "trials_side": SynthConfig(view="side", trials="empty:1,mouse:8", width_px=160, height_px=120, seed=1),
        "trials_top": SynthConfig(view="top", trials="mouse:4", width_px=160, height_px=120, seed=3),
    }
    assert set(np.unique(generate_labels(configs["trials_side"])[0])) == {UNLABELLED, 0, 1, 2}
    for name, cfg in configs.items():
        digest = hashlib.sha256()
        for frame in render_frames(cfg):
            digest.update(frame.tobytes())
        assert digest.hexdigest() == UNCHANGED_FRAMES[name], name


def test_widened_ranges_draw_from_their_own_part():
    for family, names in WIDENED.items():
        params = splits(family)
        for name in names:
            assert params[name].is_split, (family, name)
        for seed in range(40):
            train = draw_families(seed)[family]
            held = draw_families(seed, held_out={family})[family]
            nominal = draw_families(seed, fixed={family})[family]
            for name in names:
                s = params[name]
                assert s.train.contains(train[name]) and not s.held_out.contains(train[name]), (family, name, train[name])
                assert s.held_out.contains(held[name]) and not s.train.contains(held[name]), (family, name, held[name])
                assert nominal[name] == s.nominal


def _nominal_scene(view: str, **changes) -> dict:
    """Every family nominal on a small one-cylinder rig with no noise, shake or flicker (so that
    a change shows alone), then ``changes`` as {family: {parameter: value}}."""
    fam = draw_families(0, fixed=FAMILY_NAMES)
    fam["geometry"].update(width_px=192, cylinders=1)
    fam["capture"].update(noise_std=0.0, shake_px=0.0)
    fam["lighting"].update(drift=0.0, flicker=0.0)
    for family, values in changes.items():
        fam[family].update(values)
    return fam


def _scene_frames(fam: dict, view: str = "side", label: str = "float", seconds: float = 1.5) -> list[np.ndarray]:
    classes = SIDE_CLASSES if view == "side" else TOP_CLASSES
    n = round(15 * seconds)
    return list(render_scene(view, classes, fam, [np.full(n, classes.index(label), np.int64)], 15.0, n, seed=0))


@pytest.mark.parametrize("view", ["side", "top"])
def test_each_widened_parameter_changes_the_frames(view):
    label = "float" if view == "side" else "immobile"
    dim = {"lighting": {"level": 0.7}}  # the camera's gain only makes up for a dim room
    for family, names in WIDENED.items():
        if view == "top" and family in ("dynamics", "water"):
            continue  # float posture and depth fading are side-view looks
        for name in names:
            context = dim if name == "auto_gain" else {}
            base = _scene_frames(_nominal_scene(view, **context), view, label, 0.6)
            value = splits(family)[name].held_out.draw(np.random.default_rng(1))
            frames = _scene_frames(_nominal_scene(view, **{**context, family: {name: value}}), view, label, 0.6)
            diff = max(float(np.abs(x.astype(np.int16) - y).mean()) for x, y in zip(frames, base))
            assert diff > 0.05, (family, name, value, diff)


def _above_water(fam: dict) -> tuple[float, float]:
    """(area in px, mean column) of the floating mouse above the water line in the last frame:
    dark pixels (the nominal mouse is black, the nominal room grey) between the walls, from
    below the rim to above the highest ripple."""
    frame = _scene_frames(fam)[-1].astype(np.float32).mean(-1)
    c = layout("side", fam["geometry"]).cylinders[0]
    water_y = c.y + float(fam["water"]["level"]) * c.h
    rim, wall = 0.06 * c.w + 2, 0.03 * c.w + 2
    box = frame[int(c.y + rim) : int(water_y - 0.01 * c.h), int(c.x + wall) : int(c.x + c.w - wall)]
    dark = box < 90
    return float(dark.sum()), float(np.nonzero(dark)[1].mean()) if dark.any() else math.nan


def test_float_posture_flat_to_upright_and_partly_under_water():
    mouse_l = 0.3 * layout("side", _nominal_scene("side")["geometry"]).cylinders[0].w  # nominal length
    flat, _ = _above_water(_nominal_scene("side", dynamics={"float_pitch": 0.05, "float_depth": 0.3}))
    upright, _ = _above_water(_nominal_scene("side", dynamics={"float_pitch": 1.2, "float_depth": 0.3}))
    deep, _ = _above_water(_nominal_scene("side", dynamics={"float_pitch": 1.2, "float_depth": 0.5}))
    shallow, _ = _above_water(_nominal_scene("side", dynamics={"float_pitch": 1.2, "float_depth": 0.1}))
    # a flat mouse shows its back, an upright one its head and shoulders; deeper, only the head
    assert 0 < flat < 0.7 * upright, (flat, upright)
    assert 0 < deep < 0.6 * upright < 0.6 * shallow, (deep, upright, shallow)
    assert deep < 0.1 * mouse_l**2  # about the head's top: no more than a tenth of a body length squared
    # and the head never goes under, however deep the drawn depth
    for pitch in np.linspace(0.0, 1.3, 14):
        for depth in (0.1, 0.3, 0.5, 0.8):
            assert head_top(pitch) - float_depth(pitch, depth) >= NOSE_CLEAR - 1e-9


def test_submerged_part_fades_with_depth():
    """Depth fading: the water hides the deep body of an upright floater more than the turbidity
    alone does, and the surface band looks as before."""
    fam = _nominal_scene("side", dynamics={"float_pitch": 1.2, "float_depth": 0.4})
    plain = _scene_frames(fam)[-1].astype(np.float32).mean(-1)
    fam["water"]["depth_fade"] = 2.5
    faded = _scene_frames(fam)[-1].astype(np.float32).mean(-1)
    c = layout("side", fam["geometry"]).cylinders[0]
    water_y = c.y + float(fam["water"]["level"]) * c.h
    deep_rows = slice(int(water_y + 0.2 * c.h), int(c.y + c.h - 0.1 * c.w))
    assert np.abs(faded[deep_rows] - plain[deep_rows]).mean() > 5  # the deep water is more opaque
    above = slice(int(c.y), int(water_y - 0.02 * c.h))
    assert np.array_equal(faded[above], plain[above])


def test_float_drift_is_slow_and_follows_its_range():
    # the fastest float bout stays far slower than the slowest swim (the paper's float is passive)
    fastest = splits("dynamics")["float_drift"].held_out.hi * FLOAT_DRIFT_RANGE[1] / FLOAT_DRIFT_MID
    for part in ("train", "held_out"):
        slowest_swim = splits("dynamics")["swim_speed"].part(part).lo
        assert fastest <= FLOAT_DRIFT_MAX_OF_SWIM * slowest_swim
    # rendered: a faster drift moves the floating mouse further, within its drawn speed
    length = 0.3 * layout("side", _nominal_scene("side")["geometry"]).cylinders[0].w
    travel = {}
    for drift in (0.01, 0.12):
        fam = _nominal_scene("side", dynamics={"float_drift": drift})
        frames = _scene_frames(fam, seconds=3.0)
        xs = []
        for f in (frames[8], frames[-1]):
            fam_frame = f.astype(np.float32).mean(-1)
            c = layout("side", fam["geometry"]).cylinders[0]
            band = fam_frame[int(c.y + 0.1 * c.h) : int(c.y + 0.7 * c.h), int(c.x + 4) : int(c.x + c.w - 4)]
            xs.append(np.nonzero(band < 90)[1].mean())
        travel[drift] = abs(xs[1] - xs[0]) / length / ((len(frames) - 1 - 8) / 15)  # body lengths per second
    assert travel[0.12] > 3 * travel[0.01], travel
    assert travel[0.12] <= 0.12 * FLOAT_DRIFT_RANGE[1] / FLOAT_DRIFT_MID + 0.02, travel


# ----------------------------------------------------------------------------------------------
# trials (export.synth_trials)



def test_trial_spec_parses_and_rejects_mistakes():
    segs = parse_trials("empty:20,mouse:60,empty:10,mouse:60", 2)
    assert len(segs) == 2 and segs[0] == segs[1] and [s.kind for s in segs[0]] == ["empty", "mouse", "empty", "mouse"]
    assert [s.duration_s for s in parse_trials("empty:5,empty:5,mouse:30;mouse:30", 2)[0]] == [10.0, 30.0]
    for bad in ("empty:20,mouse", "nap:3", "mouse:-1", "mouse:1", "mouse:10,mouse:10", "empty:x"):
        with pytest.raises(ValueError, match="--trials"):
            parse_trials(bad, 1)
    with pytest.raises(ValueError, match="3 patterns for 2 arenas"):
        parse_trials("mouse:5;mouse:5;mouse:5", 2)


def test_trial_plan_states_hands_and_truth():
    fps = 10.0
    plan = plan_trials(parse_trials("empty:2,mouse:3,empty:0.5,mouse:3;mouse:4", 2), fps, 90, ["arena0", "arena1"])
    s0, h0 = plan.state[0], plan.hand[0]
    # arena0: absent, 8 frames lowered by the hand, in water 20-50, a 5-frame gap shared by the
    # removal and the next insertion, in water 55-85, lifted out after
    assert np.all(s0[:12] == ABSENT) and np.all(s0[12:20] == HELD) and np.all(s0[20:50] == IN_WATER)
    assert np.all(s0[50:55] == HELD) and np.all(s0[55:85] == IN_WATER) and np.all(s0[85:] == HELD)
    assert np.all(np.diff(h0[12:20]) > 0) and h0[19] == 1.0 and np.all(h0[:12] == -1)
    # arena1: a trial from frame 0 (no insertion), lifted out at 40, empty after
    s1 = plan.state[1]
    assert np.all(s1[:40] == IN_WATER) and np.all(s1[40:48] == HELD) and np.all(s1[48:] == ABSENT)
    got = [(t.arena, t.animal, t.trial_index, t.start_s, t.end_s) for t in plan.trials]
    assert got == [("arena1", "M1", 0, 0.0, 4.0), ("arena0", "M2", 0, 2.0, 5.0), ("arena0", "M3", 1, 5.5, 8.5)]


def test_trial_render_labels_truth_and_visible_mouse(tmp_path):
    cfg = SynthConfig(view="side", trials="empty:2,mouse:4,empty:1.6,mouse:3", arenas=2, width_px=320, height_px=240,
                      seed=5, name="tr", pinned=("width_px", "height_px"))  # fmt: skip
    r = render_video(cfg, tmp_path)
    truth = json.loads(r.trials_json.read_text())
    assert truth["num_frames"] == 159 and truth["fps"] == 15.0 and truth["arenas"] == ["arena0", "arena1"]
    assert [(t["arena"], t["animal"], t["start_s"], t["end_s"]) for t in truth["trials"]] == [
        ("arena0", "M1", 2.0, 6.0), ("arena1", "M2", 2.0, 6.0), ("arena0", "M3", 7.6, 10.6), ("arena1", "M4", 7.6, 10.6)]
    got = read_annotations(r.labels_csv)
    for a, lab in enumerate(r.labels):
        assert np.array_equal(got[a].labels, lab)
        inside = np.zeros(lab.size, bool)
        for t in truth["trials"]:
            if t["arena_index"] == a:
                inside[t["start_frame"] : t["end_frame"]] = True
        assert np.all(lab[inside] >= 0) and np.all(lab[~inside] == UNLABELLED)
    meta = json.loads(r.arenas_json.read_text())
    assert meta["randomized"] is False and meta["num_frames"] == 159
    # the mouse is visible: inside a trial the ROI differs from the empty cylinder far more than
    # the empty cylinder differs from itself
    roi = meta["arenas"][0]["roi"]
    frames = [cv2.resize(f[roi[1] : roi[1] + roi[3], roi[0] : roi[0] + roi[2]].astype(np.float32).mean(-1),
                         (roi[2] // 4, roi[3] // 4), interpolation=cv2.INTER_AREA) for f in render_frames(cfg)]  # fmt: skip
    empty = np.median(np.stack(frames[:10]), axis=0)
    change = np.array([np.abs(f - empty).mean() for f in frames])
    assert change[40:80].min() > 3 * change[:15].max()


def test_empty_cylinders_still_see_ripples_and_lighting_changes():
    cfg = SynthConfig(view="top", trials="empty:40", arenas=1, width_px=320, height_px=240, seed=1,
                      pinned=("width_px", "height_px"))  # fmt: skip
    eff, fam = resolve(cfg)

    r = arena_rois(eff, fam)[0]
    crops = [f[r.y : r.y + r.h, r.x : r.x + r.w].astype(np.float32).mean(-1) for f in render_frames(cfg)]
    level = np.array([c.mean() for c in crops])
    assert level.max() / level.min() > 1.06  # a lighting step, beyond the nominal slow drift
    # ripples from bumps, then calm water: frame-to-frame change of 4x-downsampled crops (sensor
    # noise averages out) normalised to their mean (a lighting change is not a ripple)
    small = [cv2.resize(c, (r.w // 4, r.h // 4), interpolation=cv2.INTER_AREA) for c in crops]
    small = np.stack([100 * c / c.mean() for c in small])
    change = np.abs(np.diff(small, axis=0)).mean(axis=(1, 2))
    assert change.max() > 2 * np.median(change)
    assert all(np.all(lab == UNLABELLED) for lab in generate_labels(eff))


@pytest.mark.parametrize("view", ["side", "top"])
def test_rigs_of_one_to_four_cylinders_have_exact_rois(view):
    """Empty rigs (for the arena detector's tests): the rendered cylinders' bounding boxes are the ROIs."""
    for n in (1, 2, 3, 4):
        cfg = SynthConfig(view=view, trials="empty:0.2", arenas=n, seed=n, randomize=True,
                          fixed=("background", "lighting", "capture", "cylinder"), pinned=("arenas",))  # fmt: skip
        eff, fam = resolve(cfg)
    
        rois = arena_rois(eff, fam)
        frame = next(iter(render_frames(cfg))).astype(np.float32).mean(-1)
        mask = (np.abs(frame - np.median(frame)) > 12).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        boxes = [tuple(s[:4]) for s in stats[1:] if s[4] > 200]
        assert len(rois) == n and len(boxes) == n, (view, n, boxes, rois)
        for roi in rois:
            ious = []
            for x, y, w, h in boxes:
                ix = max(0, min(roi.x + roi.w, x + w) - max(roi.x, x))
                iy = max(0, min(roi.y + roi.h, y + h) - max(roi.y, y))
                ious.append(ix * iy / (roi.w * roi.h + w * h - ix * iy))
            assert max(ious) > 0.9, (view, n, roi, boxes)


def test_cli_trials(tmp_path, capsys):
    args = ["--view", "top", "--trials", "empty:1,mouse:2;mouse:2,empty:1", "--width", "320", "--height", "240",
            "--out", str(tmp_path), "--name", "c"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "c.trials.json" in out and "no mouse" in out
    truth = json.loads((tmp_path / "c.trials.json").read_text())
    assert [(t["arena"], t["start_s"], t["end_s"]) for t in truth["trials"]] == [("arena1", 0.0, 2.0), ("arena0", 1.0, 3.0)]
    assert main(["--trials", "empty:1,mouse:2", "--seconds", "3", "--out", str(tmp_path)]) == 2
    assert "sets the duration" in capsys.readouterr().err
    assert main(["--trials", "empty:1,walk:2", "--out", str(tmp_path)]) == 2
    assert "walk:2" in capsys.readouterr().err
    assert main(["--trials", "mouse:2;mouse:2", "--arenas", "3", "--out", str(tmp_path)]) == 2
    assert "2 patterns" in capsys.readouterr().err
    assert main(["--randomize", "--arenas", "8", "--width", "320", "--height", "240", "--out", str(tmp_path)]) == 2
    assert "each needs >= 32 px" in capsys.readouterr().err


@pytest.mark.parametrize("view", ["side", "top"])
def test_the_mouse_positions_are_where_the_mouse_is_drawn(view):
    """The truth tools/mouse_locator_check.py scores the locator on: one (x, y) per arena and frame,
    in frame pixels (through the camera's homography), on the mouse; recording it changes no pixel."""
    cfg = _rand(view=view, duration_s=0.6, seed=2, arenas=2, fixed=tuple(FAMILY_NAMES))
    truth: list[list[tuple[float, float]]] = []
    frames = list(render_frames(cfg, positions=truth))
    assert all(np.array_equal(a, b) for a, b in zip(frames, render_frames(cfg)))
    assert len(truth) == len(frames) and all(len(t) == 2 for t in truth)
    rois = arena_rois(*resolve(cfg))
    for frame, per_arena in zip(frames, truth):
        grey = frame.astype(np.float32).mean(-1)
        for (x, y), roi in zip(per_arena, rois):
            assert roi.x <= x < roi.x + roi.w and roi.y <= y < roi.y + roi.h
            arena = grey[roi.y : roi.y + roi.h, roi.x : roi.x + roi.w]
            near = grey[int(round(y)) - 3 : int(round(y)) + 4, int(round(x)) - 3 : int(round(x)) + 4]
            assert np.abs(near - np.median(arena)).max() > 30  # the dark body within 3 px, not water
    with pytest.raises(ValueError, match="randomized"):
        next(render_frames(_small(view=view, duration_s=0.2), positions=[]))
