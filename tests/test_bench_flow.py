"""``stream-bench flow`` smoke runs: tiny frames, one repeat, the fast setting."""

from __future__ import annotations

import argparse

import pytest
import torch

from stream.bench import flow as bench_flow
from stream.errors import UserError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_flow.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_reports_ours_and_opencv_on_the_same_frames(capsys):
    threads = torch.get_num_threads()
    code = bench_flow.run(_args("--sizes", "32", "--batches", "1,2", "--repeats", "1", "--settings", "fast",
                                "--devices", "cpu", "--synthetic", "--threads", "1"))
    assert code == 0
    assert torch.get_num_threads() == threads, "the thread count of the caller is restored"
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.startswith("fast")]
    assert [(r[2], r[3]) for r in rows] == [("opencv", "1"), ("ours-cpu", "1"), ("ours-cpu", "2")]
    for row in rows:
        pairs_per_s, ms_per_call, ratio, epe_vs_cv = float(row[4]), float(row[5]), float(row[6]), float(row[7])
        assert pairs_per_s > 0 and ratio > 0
        assert ms_per_call == pytest.approx(int(row[3]) * 1e3 / pairs_per_s, rel=0.02)
        assert epe_vs_cv < 0.15, "same setting, same frames: our flow should match OpenCV's"


def test_without_opencv_optflow_reports_ours_alone(capsys, monkeypatch):
    import cv2

    monkeypatch.delattr(cv2, "optflow")
    assert bench_flow.run(_args("--sizes", "24", "--batches", "1", "--repeats", "1", "--settings", "fast",
                                "--devices", "cpu", "--synthetic", "--threads", "1")) == 0
    out = capsys.readouterr().out
    assert "no contrib optflow" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("fast")]
    assert [r[2] for r in rows] == ["ours-cpu"] and rows[0][6:9] == ["-", "-", "-"]


def test_reads_pairs_from_the_real_video(capsys, real_video):
    assert bench_flow.run(_args("--sizes", "24", "--batches", "1", "--repeats", "1", "--settings", "fast",
                                "--devices", "cpu", "--threads", "1", "--video", str(real_video))) == 0
    out = capsys.readouterr().out
    assert real_video.name in out and "ours-cpu" in out


def test_without_video_or_environment_variable_falls_back_to_synthetic_frames_and_says_so(capsys, monkeypatch):
    """Issue 14.11: the default video was a path outside the package (``parents[3]/shared/...``)."""
    monkeypatch.delenv(bench_flow.VIDEO_ENV, raising=False)
    assert bench_flow.run(_args("--sizes", "24", "--batches", "1", "--repeats", "1", "--settings", "fast",
                                "--devices", "cpu", "--threads", "1")) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "synthetic" in header and bench_flow.VIDEO_ENV in header and "openfield" not in header


def test_environment_variable_names_the_video(capsys, monkeypatch, tmp_path, moving_square_video):
    video = moving_square_video(tmp_path / "lab.mp4", bench_flow.VIDEO_START_FRAME + 3, size_px=32)
    monkeypatch.setenv(bench_flow.VIDEO_ENV, str(video))
    assert bench_flow.run(_args("--sizes", "24", "--batches", "1,2", "--repeats", "1", "--settings", "fast",
                                "--devices", "cpu", "--threads", "1")) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "lab.mp4" in header and bench_flow.VIDEO_ENV in header
    monkeypatch.setenv(bench_flow.VIDEO_ENV, str(tmp_path / "gone.mp4"))
    with pytest.raises(UserError, match="gone.mp4"):
        bench_flow.run(_args("--sizes", "24", "--batches", "1", "--repeats", "1", "--settings", "fast",
                             "--devices", "cpu"))


@pytest.mark.parametrize("argv", [("--sizes", "abc"), ("--sizes", "8"), ("--batches", "0"), ("--settings", "slowest"),
                                  ("--devices", "tpu"), ("--repeats", "0")])
def test_bad_arguments_are_user_errors(argv):
    with pytest.raises(UserError):
        bench_flow.run(_args(*argv, "--synthetic"))


def test_missing_video_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot open"):
        bench_flow.run(_args("--sizes", "24", "--batches", "1", "--repeats", "1", "--settings", "fast",
                             "--video", str(tmp_path / "nope.mp4"), "--devices", "cpu"))


def test_console_script_runs_and_reports_user_errors_in_one_line(capsys):
    from stream.bench import main

    assert main(["flow", "--sizes", "24", "--batches", "1", "--repeats", "1", "--settings", "fast", "--synthetic",
                 "--devices", "cpu", "--threads", "1"]) == 0
    assert "ours-cpu" in capsys.readouterr().out
    assert main(["flow", "--settings", "slowest", "--synthetic"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stream-bench: error: --settings") and "Traceback" not in err
