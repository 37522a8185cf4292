"""stream-arenas: cylinders found on randomized simulator rigs (side and top, some held out), on
the demo look, and on a side view drawn with OpenCV primitives (not our renderer); IoU with the truth.

The sweep (``-m slow``, or ``python tests/test_arena_finder.py [side|top]``) prints the table of the
issue's measurement: 20 randomized rigs per view, 1-4 cylinders, 7 of them with held-out families (``--second``: seeds 20-39, the disjoint check set);
a rig counts when every true arena is matched one-to-one with IoU >= 0.8 and no box is extra.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from export.synth import SynthConfig, render_frames, render_video
from stream.arena_finder import detect_arenas, grab_frames, iou, main, median_frame, motion_map
from stream.preprocess import Roi

MIN_IOU = 0.8  # the bar
SWEEP_SEEDS = range(20)
SWEEP_SEED_BASE = 1000
# seeds rendered with some families from their held-out range (geometry: 1:1 / 3:2 frames, wide
# margins, strong tilt; background: stripes / checker / wood; ...)
HELD_OUT = {2: ("geometry",), 5: ("background", "cylinder"), 8: ("geometry", "lighting", "water"),
            11: ("geometry", "background", "cylinder", "lighting"), 14: ("mouse", "water", "capture"),
            17: ("geometry", "background"), 19: ("cylinder", "lighting")}
RIG_DURATION_S = 1.0  # 15-30 frames: the finder takes the median of the first GRAB_FRAMES
SWEEP_FLOOR = {"side": 0.6, "top": 0.85}  # measured 17/20 and 20/20 (seeds 20-39: 18/20 and 19/20); a
# seed renders the same bytes on the same software, but another x264 or OpenCV build may move a
# borderline rig (the goal is 0.95)


@dataclass(frozen=True)
class RigResult:
    view: str
    seed: int
    held_out: tuple[str, ...]
    truth: int
    found: int
    ious: tuple[float, ...]  # per true arena, its one-to-one match (0 = unmatched)

    @property
    def ok(self) -> bool:
        return self.found == self.truth and min(self.ious, default=0.0) >= MIN_IOU


def match(found: list[Roi], truth: list[Roi]) -> tuple[float, ...]:
    """One-to-one: each true arena takes its best remaining found box (greedy by IoU)."""
    pairs = sorted(((iou(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)), reverse=True)
    used_f, best = set(), [0.0] * len(truth)
    for v, i, j in pairs:
        if i not in used_f and best[j] == 0.0 and v > 0:
            used_f.add(i)
            best[j] = v
    return tuple(round(v, 3) for v in best)


def randomized_rig(view: str, seed: int, out_dir: Path) -> tuple[list[np.ndarray], list[Roi], tuple[str, ...]]:
    """The frames the CLI would search (read back from the H.264 file) and the true ROIs."""
    held = HELD_OUT.get(seed % len(SWEEP_SEEDS), ())
    cfg = SynthConfig(view=view, randomize=True, held_out=held, duration_s=RIG_DURATION_S,
                      seed=SWEEP_SEED_BASE + seed, arenas=1 + seed % 4, pinned=("arenas",),
                      name=f"{view}_{seed}")
    result = render_video(cfg, out_dir)
    return grab_frames(str(result.video_path)), list(result.rois), held


def sweep(view: str, out_dir: Path, seeds=SWEEP_SEEDS, mode: str = "auto") -> list[RigResult]:
    rows = []
    for seed in seeds:
        frames, truth, held = randomized_rig(view, seed, out_dir)
        found = [a.roi for a in detect_arenas(median_frame(frames), mode, motion_map(frames))]
        rows.append(RigResult(view, seed, held, len(truth), len(found), match(found, truth)))
    return rows


def table(rows: list[RigResult]) -> str:
    lines = [f"{'view':5} {'seed':>4} {'held out':32} {'true':>4} {'found':>5}  IoU per arena"]
    for r in rows:
        lines.append(f"{r.view:5} {r.seed:4d} {','.join(r.held_out) or '-':32} {r.truth:4d} {r.found:5d}  "
                     f"{' '.join(f'{v:.2f}' for v in r.ious)}{'' if r.ok else '   <- miss'}")
    share = sum(r.ok for r in rows) / len(rows)
    lines.append(f"{rows[0].view}: {sum(r.ok for r in rows)}/{len(rows)} rigs found = {100 * share:.0f} %")
    found = sum(v >= MIN_IOU for r in rows for v in r.ious)
    extra = sum(max(0, r.found - sum(v > 0 for v in r.ious)) for r in rows)
    lines.append(f"{rows[0].view}: {found}/{sum(r.truth for r in rows)} cylinders found (IoU >= {MIN_IOU}), "
                 f"{extra} extra boxes")
    return "\n".join(lines)


def drawn_side_rig(n: int, *, gradient: bool, width: int = 720, height: int = 420) -> tuple[np.ndarray, list[Roi]]:
    """A side view not from export-synth: light walls with a dark outline, rim and base ellipses,
    a water line and a dark mouse blob, on a plain or gradient background."""
    xx = np.mgrid[0:height, 0:width][1].astype(np.float32)
    bg = 110 + (50 * xx / width if gradient else 0 * xx)
    img = np.repeat(bg[..., None], 3, axis=2).astype(np.uint8)
    cw = int(0.55 * width / n)
    ch = min(int(1.5 * cw), int(0.8 * height))
    top = (height - ch) // 2
    gap = (width - n * cw) // (n + 1)
    truth = []
    for i in range(n):
        x0 = gap + i * (cw + gap)
        x1 = x0 + cw
        for x in (x0 + 3, x1 - 4):
            cv2.line(img, (x, top + 8), (x, top + ch - 8), (60, 60, 60), 7)
            cv2.line(img, (x, top + 8), (x, top + ch - 8), (215, 215, 215), 3)
        for y in (top + 8, top + ch - 8):
            cv2.ellipse(img, ((x0 + x1) // 2, y), (cw // 2 - 3, 8), 0, 0, 360, (60, 60, 60), 2)
        water = top + int(0.45 * ch)
        cv2.line(img, (x0 + 7, water), (x1 - 8, water), (235, 235, 235), 2)
        mouse_x = x0 + int((0.3 + 0.4 * (i % 2)) * cw)
        cv2.ellipse(img, (mouse_x, water + 6), (int(0.16 * cw), int(0.05 * cw)), 0, 0, 360, (30, 30, 30), -1)
        truth.append(Roi(x0, top, cw, ch))
    return img, truth


def drawn_top_rig(n: int, tile: int, *, width: int = 640, height: int = 480, r: int = 62) -> tuple[np.ndarray, list[Roi]]:
    """A top view not from export-synth: light discs with a grey rim on a tiled floor, in the cells
    of a 2 x 2 grid (the first ``n``)."""
    img = np.full((height, width, 3), (70, 95, 125), np.uint8)
    for x in range(0, width, tile):
        cv2.line(img, (x, 0), (x, height), (40, 55, 75), 2)
    for y in range(0, height, tile):
        cv2.line(img, (0, y), (width, y), (40, 55, 75), 2)
    truth = []
    for cx, cy in [(170, 130), (470, 130), (170, 350), (470, 350)][:n]:
        cv2.circle(img, (cx, cy), r, (215, 220, 225), -1, cv2.LINE_AA)
        cv2.circle(img, (cx, cy), r, (150, 160, 170), 3, cv2.LINE_AA)
        truth.append(Roi(cx - r - 2, cy - r - 2, 2 * r + 4, 2 * r + 4))  # the rim's stroke is part of it
    return img, truth


@pytest.mark.parametrize("view,seeds", [("side", (13, 14, 18)), ("top", (3, 7, 15)),
                                        ("top", (10, 30, 35)),  # tiled floors: a rim Hough never proposed, a tile square
                                        ("side", (38,)),  # one circle across a side rig is not a top view
                                        # a shadow or a striped floor outside the rim is not its outer edge
                                        ("top", (26, 31, 37)),
                                        ("side", (30, 39)),  # circles on a side rig that hold less motion than its boxes
                                        ("side", (45,)),  # one perfectly round decoy on a side rig of two
                                        ("top", (17,)),  # round rims inside the side finder's wider boxes
                                        ("top", (11, 99))])  # a dim rim where the rig's row and column cross
def test_randomized_rigs_are_found_one_to_one(view: str, seeds: tuple[int, ...], tmp_path) -> None:
    rows = sweep(view, tmp_path, seeds)
    print(table(rows))
    assert all(r.ok for r in rows), table(rows)


@pytest.mark.parametrize("gradient", [False, True])
@pytest.mark.parametrize("n", [2, 3])
def test_a_side_view_drawn_by_another_renderer_is_found(n: int, gradient: bool) -> None:
    image, truth = drawn_side_rig(n, gradient=gradient)
    found = [a.roi for a in detect_arenas(image, "auto")]
    assert len(found) == n, found
    assert min(match(found, truth)) >= MIN_IOU, (found, truth)


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("tile", [20, 34])
def test_a_tiled_floor_adds_no_cylinder_of_its_own(n: int, tile: int) -> None:
    """The squares of a tiled floor have rims of about the cylinders' size: none joins the rig
    (the empty cells of the grid are where they would)."""
    image, truth = drawn_top_rig(n, tile)
    found = [a.roi for a in detect_arenas(image, "top")]
    assert len(found) == n, (found, truth)
    assert min(match(found, truth)) >= MIN_IOU, (found, truth)


def test_a_striped_floor_outside_the_rim_is_not_its_outer_edge() -> None:
    """Lines of the floor cross a circle just outside the rim in many places, each both ways (dark
    to light, light to dark); the rim's outer edge runs round one way. Taking the stripes for the
    rim's edge made a circle too big to run round, and both cylinders were lost."""
    img = np.full((480, 640), 150, np.uint8)
    for y in range(0, 480, 9):
        cv2.line(img, (0, y), (640, y), 115, 2)
    truth = []
    for cx in (190, 450):
        cv2.circle(img, (cx, 240), 90, 205, -1, cv2.LINE_AA)  # the water
        cv2.circle(img, (cx, 240), 88, 175, 4, cv2.LINE_AA)  # the rim
        truth.append(Roi(cx - 90, 150, 180, 180))
    found = [a.roi for a in detect_arenas(img, "top")]
    assert len(found) == 2, found
    assert min(match(found, truth)) >= 0.9, (found, truth)


@pytest.mark.parametrize("fourth", [True, False])
def test_a_dim_rim_where_the_rigs_row_and_column_cross_is_a_cylinder(fourth: bool) -> None:
    """Three cylinders of a 2 x 2 rig stand out (water of another shade, plain rims); the fourth's
    rim shows on two thirds of its circumference, with the floor's shade inside and nothing moving
    (top seeds 11 and 99 of the sweep). It completes the rig's grid, so it is taken. An empty
    corner of an L-shaped rig of three is not."""
    img = np.full((480, 640), 150, np.uint8)
    centres = [(190, 130), (450, 130), (190, 350), (450, 350)]
    truth = []
    for i, (cx, cy) in enumerate(centres):
        if i < 3:
            cv2.circle(img, (cx, cy), 90, 205, -1, cv2.LINE_AA)  # the water
            cv2.circle(img, (cx, cy), 88, 175, 4, cv2.LINE_AA)  # the rim
        elif fourth:
            cv2.ellipse(img, (cx, cy), (88, 88), 0, 0, 240, 110, 4, cv2.LINE_AA)  # a dim rim, two thirds of it
        else:
            continue
        truth.append(Roi(cx - 90, cy - 90, 180, 180))
    found = [a.roi for a in detect_arenas(img, "top")]
    assert len(found) == len(truth), (found, truth)
    assert min(match(found, truth)) >= MIN_IOU, (found, truth)


@pytest.mark.parametrize("view", ["side", "top"])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_each_cylinder_of_the_demo_look_is_found_inside_its_cell(view: str, n: int) -> None:
    """The demo (non-randomized) look: its truth is a cell per cylinder with a margin around it;
    the finder's box is the cylinder itself, so it lies inside its cell and covers most of it."""
    cfg = SynthConfig(view=view, arenas=n, duration_s=1.0, seed=10 + n)
    image = np.median(np.stack(list(render_frames(cfg))), axis=0).astype(np.uint8)
    arenas = detect_arenas(image, "auto")
    assert len(arenas) == n
    for a, cell in zip(arenas, cfg.rois()):
        assert iou(a.roi, cell) >= 0.6, (view, n, cell, a.roi)
        assert a.roi.x >= cell.x - 2 and a.roi.x + a.roi.w <= cell.x + cell.w + 2, (cell, a.roi)
    assert [a.id for a in arenas] == [f"A{i + 1}" for i in range(n)]
    assert [a.roi.x for a in arenas] == sorted(a.roi.x for a in arenas)  # left to right


@pytest.mark.slow
@pytest.mark.parametrize("view", ["side", "top"])
def test_sweep_of_20_randomized_rigs(view: str, tmp_path) -> None:
    rows = sweep(view, tmp_path)
    print("\n" + table(rows))
    share = sum(r.ok for r in rows) / len(rows)
    assert share >= SWEEP_FLOOR[view], table(rows)


def test_motion_map_shows_what_moves_and_not_the_static_lines() -> None:
    frames = []
    for t in range(6):
        img = np.full((60, 80), 120, np.uint8)
        img[:, 10] = 30  # a static line of the room
        img[20:30, 40 + 2 * t:50 + 2 * t] = 230  # something that swims
        frames.append(img)
    m = motion_map(frames)
    assert m[25, 48] > 30 and m[:, 10].max() == 0 and m[:, :35].max() == 0
    assert motion_map(frames[:2]) is None  # too few frames to tell motion
    rng = np.random.default_rng(0)
    still = [np.clip(120 + rng.normal(0, 2, (60, 80)), 0, 255).astype(np.uint8) for _ in range(6)]
    assert motion_map(still) is None  # an empty rig: noise is not motion


def test_symmetry_of_a_cylinder_ignores_a_light_gradient_behind_it() -> None:
    from stream.arena_walls import _symmetry

    x = np.arange(100, dtype=np.float32)
    cylinder = 40 * np.exp(-((x - 5) / 3) ** 2) + 40 * np.exp(-((x - 94) / 3) ** 2)  # two bright walls
    grey = np.tile(100 + cylinder + 1.2 * x, (50, 1))  # the room gets lighter to the right
    assert _symmetry(grey, (0, 0, 100, 50)) >= 0.9
    half = np.tile(100 + 40 * np.exp(-((x - 5) / 3) ** 2) + 1.2 * x, (50, 1))  # a wall and the gap beside it
    assert _symmetry(half, (0, 0, 100, 50)) < 0.5


def test_iou() -> None:
    assert iou(Roi(0, 0, 10, 10), Roi(0, 0, 10, 10)) == 1.0
    assert iou(Roi(0, 0, 10, 10), Roi(5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou(Roi(0, 0, 10, 10), Roi(20, 0, 10, 10)) == 0.0


def test_cli_on_a_four_cylinder_video_writes_the_arena_file_and_png(tmp_path, capsys) -> None:
    result = render_video(SynthConfig(view="top", arenas=4, duration_s=2.0, seed=3, name="rig"), tmp_path)
    out = tmp_path / "found.arenas.json"
    assert main(["--video", str(result.video_path), "--out", str(out)]) == 0
    found = json.loads(out.read_text())["arenas"]
    assert len(found) == 4
    rois = [Roi(*a["roi"]) for a in found]
    ious = [max(iou(r, t) for r in rois) for t in result.rois]
    print("IoU", [round(x, 3) for x in ious])
    assert min(ious) >= MIN_IOU
    png = cv2.imread(str(out.with_suffix(".png")))
    assert png is not None and png.shape[1] >= 640
    assert "4 arenas" in capsys.readouterr().out


def test_cli_without_a_cylinder_is_a_one_line_error(tmp_path, capsys) -> None:
    video = tmp_path / "flat.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 15, (64, 64))
    for _ in range(5):
        writer.write(np.full((64, 64, 3), 128, np.uint8))
    writer.release()
    assert main(["--video", str(video), "--out", str(tmp_path / "a.json")]) == 2
    err = capsys.readouterr().err
    assert "no cylinder found" in err
    assert "stream-run" in err and "--arenas FILE" in err  # what exists: stream-arenas has no --roi


def test_stream_run_check_arenas_draws_the_arenas_in_use_and_exits(tmp_path, capsys) -> None:
    from stream.run import main as run_main

    result = render_video(SynthConfig(view="side", arenas=2, duration_s=0.5, seed=1, name="two"), tmp_path)
    assert run_main(["--video", str(result.video_path), "--check-arenas", "--out", str(tmp_path / "o")]) == 0
    png = tmp_path / "o" / "arenas-two.png"
    assert cv2.imread(str(png)) is not None
    assert not list((tmp_path / "o").glob("*.csv"))  # nothing was scored


if __name__ == "__main__":  # the measurement: python tests/test_arena_finder.py [side] [top] [--second | --seeds A-B]
    import tempfile

    # --second: the disjoint check set (seeds 20-39, held-out families as seed - 20), to see that a
    # change tuned on the first 20 rigs holds on others; --seeds 40-99: rigs no change was tuned on
    seeds = range(20, 40) if "--second" in sys.argv else SWEEP_SEEDS
    if "--seeds" in sys.argv:
        first, last = map(int, sys.argv[sys.argv.index("--seeds") + 1].split("-"))
        seeds = range(first, last + 1)
    with tempfile.TemporaryDirectory() as d:
        for v in [a for a in sys.argv[1:] if a in ("side", "top")] or ["side", "top"]:
            print(table(sweep(v, Path(d), seeds)), flush=True)
