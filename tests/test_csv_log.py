"""Per-frame CSV and summary JSON of ``stream.outputs.csv_log``: content, crash safety, resume."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stream.decisions import ArenaDecisions, Decision, DecisionConfig
from stream.errors import OutputWriteError, UserError
from stream.outputs import csv_log
from stream.outputs.csv_log import ArenaCsvLog, read_frames_csv, replay_frames

CLASSES = ["swim", "struggle", "float"]


def decisions(n: int, *, start: int = 0) -> list[Decision]:
    rng = np.random.default_rng(start)
    arena = ArenaDecisions("A", CLASSES, DecisionConfig(fps=15.0))
    out = []
    for i in range(start, start + n):
        out += arena.update(i, i / 15.0, rng.dirichlet(np.ones(3)))
    return out + arena.flush()


def test_rows_round_trip(tmp_path: Path) -> None:
    ds = decisions(20)
    with ArenaCsvLog(tmp_path, "A", CLASSES) as log:
        for d in ds:
            log.write(d)
    path = tmp_path / "A.frames.csv"
    assert path.read_text().splitlines()[0] == "frame,timestamp_s,behaviour,immobile,p_swim,p_struggle,p_float"
    rows = read_frames_csv(path)
    assert [r["frame"] for r in rows] == [d.frame_index for d in ds]
    assert [r["behaviour"] for r in rows] == [d.behaviour for d in ds]
    assert [r["immobile"] for r in rows] == [d.immobile for d in ds]
    for r, d in zip(rows, ds):
        assert r["timestamp_s"] == pytest.approx(d.timestamp_s, abs=1e-6)
        for c in CLASSES:
            assert r[f"p_{c}"] == pytest.approx(d.probabilities[c], abs=1e-6)


def test_each_row_reaches_the_os_at_once_fsync_is_rate_limited(tmp_path: Path, monkeypatch) -> None:
    syncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(csv_log.os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd)))
    log = ArenaCsvLog(tmp_path, "A", CLASSES, flush_interval_s=3600.0)
    after_open = len(syncs)
    for i, d in enumerate(decisions(10)):
        log.write(d)
        assert len(read_frames_csv(log.csv_path)) == i + 1  # readable by another reader right away
    assert len(syncs) == after_open  # no disk sync per frame within the interval
    log.close()
    assert len(syncs) == after_open + 1  # but one at close


def test_fsync_every_write_with_zero_interval(tmp_path: Path, monkeypatch) -> None:
    syncs = []
    monkeypatch.setattr(csv_log.os, "fsync", lambda fd: syncs.append(fd))
    log = ArenaCsvLog(tmp_path, "A", CLASSES, flush_interval_s=0.0)
    before = len(syncs)
    for d in decisions(5):
        log.write(d)
    assert len(syncs) - before == 5
    log.close()


def test_kill_9_leaves_every_written_row(tmp_path: Path) -> None:
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_csv_log import decisions, CLASSES
from stream.outputs.csv_log import ArenaCsvLog
log = ArenaCsvLog({str(tmp_path)!r}, "A", CLASSES, flush_interval_s=3600.0)
for d in decisions(37):
    log.write(d)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == -9
    assert [r["frame"] for r in read_frames_csv(tmp_path / "A.frames.csv")] == list(range(37))


def test_partial_last_line_is_ignored_and_repaired_on_resume(tmp_path: Path) -> None:
    with ArenaCsvLog(tmp_path, "A", CLASSES) as log:
        for d in decisions(5):
            log.write(d)
    path = tmp_path / "A.frames.csv"
    with open(path, "a") as f:
        f.write("5,0.333333,flo")  # the crash cut this line
    assert [r["frame"] for r in read_frames_csv(path)] == [0, 1, 2, 3, 4]
    with ArenaCsvLog(tmp_path, "A", CLASSES, resume=True) as log:
        assert log.last_frame_index == 4
        for d in decisions(10):  # the run is replayed from the start: frames already written are skipped
            log.write(d)
    rows = read_frames_csv(path)
    assert [r["frame"] for r in rows] == list(range(10))
    assert path.read_text().count("flo\n") == 0 and path.read_text().endswith("\n")


def test_resume_drops_a_complete_but_damaged_last_line(tmp_path: Path) -> None:
    with ArenaCsvLog(tmp_path, "A", CLASSES) as log:
        for d in decisions(3):
            log.write(d)
    path = tmp_path / "A.frames.csv"
    with open(path, "ab") as f:
        f.write(b"\x00\x00\x00\n")  # what a power cut can leave
    with ArenaCsvLog(tmp_path, "A", CLASSES, resume=True) as log:
        assert log.last_frame_index == 2
        log.write(decisions(1, start=3)[0])
    assert [r["frame"] for r in read_frames_csv(path)] == [0, 1, 2, 3]


def test_resume_without_a_file_or_with_a_cut_header(tmp_path: Path) -> None:
    with ArenaCsvLog(tmp_path, "A", CLASSES, resume=True) as log:
        assert log.last_frame_index is None
        log.write(decisions(1)[0])
    (tmp_path / "B.frames.csv").write_text("frame,times")
    with ArenaCsvLog(tmp_path, "B", CLASSES, resume=True) as log:
        log.write(decisions(1)[0])
    assert len(read_frames_csv(tmp_path / "B.frames.csv")) == 1


def test_resume_with_other_classes_is_refused(tmp_path: Path) -> None:
    ArenaCsvLog(tmp_path, "A", CLASSES).close()
    with pytest.raises(UserError, match="A.frames.csv"):
        ArenaCsvLog(tmp_path, "A", ["mobile", "immobile"], resume=True)


def test_damaged_middle_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "A.frames.csv"
    path.write_text("frame,timestamp_s,behaviour,immobile,p_swim,p_struggle,p_float\n0,0.0,swim,0,1,0,0\n"
                    "garbage\n1,0.1,swim,0,1,0,0\n")
    with pytest.raises(UserError, match="line 3"):
        read_frames_csv(path)


def test_summary_is_written_atomically(tmp_path: Path, monkeypatch) -> None:
    arena = ArenaDecisions("A", CLASSES, DecisionConfig(fps=15.0))
    log = ArenaCsvLog(tmp_path, "A", CLASSES)
    first = log.write_summary({"n": np.int64(1), "counters": arena.counters().to_json(), "p": np.float32(0.5)})
    assert first == tmp_path / "A.summary.json"
    assert json.loads(first.read_text())["n"] == 1

    def crash(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(csv_log.os, "replace", crash)
    with pytest.raises(OutputWriteError, match="A.summary.json: No space left on device"):
        log.write_summary({"n": 2})
    assert json.loads(first.read_text())["n"] == 1  # the old summary is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A.frames.csv", "A.summary.json"]  # no temp left
    monkeypatch.undo()
    log.write_summary({"n": 3})
    assert json.loads(first.read_text())["n"] == 3
    log.close()


def test_unwritable_folder_and_bad_arena_id_are_user_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="file"):
        ArenaCsvLog(blocker / "out", "A", CLASSES)
    with pytest.raises(UserError, match="arena id"):
        ArenaCsvLog(tmp_path, "../A", CLASSES)


def test_read_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nope.csv"):
        read_frames_csv(tmp_path / "nope.csv")


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, list):  # the time bins
            value = {str(i): v for i, v in enumerate(value)}
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_rescore_from_csv_reproduces_the_live_counters(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    config = DecisionConfig(fps=15.0, min_bout_s=0.5, test_duration_s=6.0, scoring_window_s=4.0)
    live = ArenaDecisions("A", CLASSES, config)
    with ArenaCsvLog(tmp_path, "A", CLASSES) as log:
        for i in range(120):
            p = np.roll([0.8, 0.15, 0.05], (i // 10) % 3)  # runs of 10 frames per class
            for d in live.update(i, i / 15.0, p + rng.uniform(0, 0.01, 3)):
                log.write(d)
        for d in live.flush():
            log.write(d)
    rows = read_frames_csv(tmp_path / "A.frames.csv")
    again = ArenaDecisions("A", CLASSES, config)
    replay_frames(again, rows)
    again.flush()
    assert flat(again.counters().to_json()) == pytest.approx(flat(live.counters().to_json()), abs=1e-5)  # CSV keeps 6 decimals
    assert live.counters().to_json()["immobility_bouts"] > 0
    stricter = ArenaDecisions("A", CLASSES, DecisionConfig(fps=15.0, min_bout_s=1.0))
    replay_frames(stricter, rows)
    stricter.flush()
    assert stricter.counters().to_json()["immobility_bouts"] == 0  # 10-frame runs are 0.67 s: no bout at 1 s


def test_an_existing_csv_is_never_overwritten(tmp_path: Path) -> None:
    """Issue 14.1: a second run into the same folder truncated the first one's CSV with a warning."""
    with ArenaCsvLog(tmp_path, "A", CLASSES) as log:
        for d in decisions(3):
            log.write(d)
    before = (tmp_path / "A.frames.csv").read_bytes()
    with pytest.raises(UserError, match="never overwritten"):
        ArenaCsvLog(tmp_path, "A", CLASSES)
    assert (tmp_path / "A.frames.csv").read_bytes() == before


_FULL_DISK_CHILD = r"""
import json, os, resource, signal, sys
from stream.errors import OutputWriteError
from stream.decisions import Decision
from stream.outputs.csv_log import ArenaCsvLog
folder = sys.argv[1]
log = ArenaCsvLog(folder, "A", ["swim", "struggle", "float"], flush_interval_s=0)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the kernel then fails the write with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
errors = []
for i in range(100):
    try:
        log.write(Decision(i, i / 15, "swim", False, {"swim": 0.8, "struggle": 0.1, "float": 0.1}))
    except OutputWriteError as exc:
        errors.append(str(exc))
        if len(errors) == 2:
            break
log.close()  # no second exception from a close after the failure
log.write_summary({"rows": log.rows_written})  # a small new file still fits
print(json.dumps({"errors": errors, "rows": log.rows_written}))
"""


def test_a_full_disk_is_one_error_naming_the_file_and_leaves_no_half_row(tmp_path: Path) -> None:
    """Issue 14.2: the write error names the file and the OS error; the CSV ends with a whole row;
    closing does not raise again; a summary that still fits is written."""
    done = subprocess.run([sys.executable, "-c", _FULL_DISK_CHILD, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    first, second = report["errors"]
    assert first == second  # the same error again, nothing written after it
    assert str(tmp_path / "A.frames.csv") in first and "File too large (EFBIG)" in first
    data = (tmp_path / "A.frames.csv").read_bytes()
    assert 0 < len(data) <= 1000 and data.endswith(b"\n")
    rows = read_frames_csv(tmp_path / "A.frames.csv")
    assert [r["frame"] for r in rows] == list(range(report["rows"])) and report["rows"] > 3
    assert json.loads((tmp_path / "A.summary.json").read_text()) == {"rows": report["rows"]}


def test_a_class_name_a_spreadsheet_would_run_is_escaped_and_read_back(tmp_path: Path) -> None:
    classes = ["swim", "=cmd"]
    arena = ArenaDecisions("A", classes, DecisionConfig(fps=15.0, immobile_classes=("=cmd",)))
    ds = arena.update(0, 0.0, np.array([0.1, 0.9])) + arena.flush()
    with ArenaCsvLog(tmp_path, "A", classes) as log:
        for d in ds:
            log.write(d)
    text = (tmp_path / "A.frames.csv").read_text()
    assert text.splitlines()[1].split(",")[2] == "'=cmd"  # the behaviour cell
    assert [r["behaviour"] for r in read_frames_csv(tmp_path / "A.frames.csv")] == ["=cmd"]
