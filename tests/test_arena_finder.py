"""stream-arenas: cylinders found on simulator rigs of 1-4 cylinders, side and top view (IoU with the truth)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from export.synth import SynthConfig, render_frames, render_video
from stream.arena_finder import detect_arenas, iou, main
from stream.preprocess import Roi

MIN_IOU = 0.8  # the bar


def median_frame(cfg: SynthConfig) -> np.ndarray:
    return np.median(np.stack(list(render_frames(cfg))), axis=0).astype(np.uint8)


@pytest.mark.parametrize("view", ["side", "top"])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_each_cylinder_is_found_with_iou_at_least_0_8(view: str, n: int) -> None:
    cfg = SynthConfig(view=view, arenas=n, duration_s=1.0, seed=10 + n)
    arenas = detect_arenas(median_frame(cfg), "auto")
    truth = cfg.rois()
    assert len(arenas) == n
    for t in truth:
        assert max(iou(a.roi, t) for a in arenas) >= MIN_IOU, (view, n, t, arenas)
    assert [a.id for a in arenas] == [f"A{i + 1}" for i in range(n)]
    assert [a.roi.x for a in arenas] == sorted(a.roi.x for a in arenas)  # left to right


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
    assert "no cylinder found" in capsys.readouterr().err


def test_stream_run_check_arenas_draws_the_arenas_in_use_and_exits(tmp_path, capsys) -> None:
    from stream.run import main as run_main

    result = render_video(SynthConfig(view="side", arenas=2, duration_s=0.5, seed=1, name="two"), tmp_path)
    assert run_main(["--video", str(result.video_path), "--check-arenas", "--out", str(tmp_path / "o")]) == 0
    png = tmp_path / "o" / "arenas-two.png"
    assert cv2.imread(str(png)) is not None
    assert not list((tmp_path / "o").glob("*.csv"))  # nothing was scored
