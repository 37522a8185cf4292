"""Trials through the real pipeline, flow, decisions and outputs: schedule, auto, control, resume, re-scoring.

The engine is a scripted stand-in (the decisions need immobility of known lengths; the real
engines have their own tests); the frames come from ``trial_video`` (empty lead-in, mouse,
removal, next mouse, ripples, a light that dims and steps).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from stream.arenas import Arena
from stream.capture import EndOfStream, Frame
from stream.decisions import DecisionConfig
from stream.errors import UserError
from stream.flow import TVL1, FlowConfig
from stream.outputs.base import Output
from stream.outputs.csv_log import CsvOutput, read_frames_csv
from stream.outputs.results import RESULTS_FILE, ResultsTable
from stream.pipeline import Pipeline, PipelineConfig
from stream.preprocess import Roi
from stream.report import main as report_main
from stream.run import build_parser as stream_run_parser
from stream.trials import TrialBook, check_schedule, match_schedule, read_schedule, schedule_for
from trial_video import ARENAS, FPS, TRUTH, write_schedule, write_trials_video

S = 32
CLASSES = ["swim", "struggle", "float"]
CHEAP_FLOW = FlowConfig(nscales=1, warps=1, inner_iterations=5, outer_iterations=1)
# immobile runs of 0.5 s, 2.5 s and 1 s between swims: a 2 s minimum bout keeps one of them
SCRIPT = "S" * 6 + "F" * 8 + "S" * 5 + "F" * 38 + "S" * 6 + "F" * 15
CONFIG = DecisionConfig(fps=FPS, min_bout_s=0.0, test_duration_s=4.0, scoring_window_s=2.0, bin_s=1.0)


class ScriptedEngine:
    """Per model call, every arena gets the next letter of SCRIPT (S: swim, F: float), cycling."""

    name = "scripted"
    stepwise = False
    device = "cpu"
    classes = CLASSES
    input_size_px = S

    def __init__(self) -> None:
        self.calls = 0

    def warmup(self, *_batch) -> None:
        pass

    def predict(self, rgb: torch.Tensor, flow: torch.Tensor) -> np.ndarray:
        ch = SCRIPT[self.calls % len(SCRIPT)]
        self.calls += 1
        p = [0.1, 0.1, 0.8] if ch == "F" else [0.8, 0.1, 0.1]
        return np.array([p] * rgb.shape[0])

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    folder = tmp_path_factory.mktemp("session")
    video = write_trials_video(folder)
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return video, frames


class Events(Output):
    def __init__(self) -> None:
        self.started: list = []
        self.ended: list = []

    def on_trial_start(self, trial) -> None:
        self.started.append(trial)

    def on_trial_end(self, trial, summary) -> None:
        self.ended.append((trial, summary))


def run_pipeline(frames, out: Path, mode: str, *, schedule=(), first: int = 0, stop_after: int | None = None,
                 config: DecisionConfig = CONFIG, between=None, resume: bool = False, keep=None):
    """Frames [first, stop_after) through a pipeline with a TrialBook; ``between(i, book)`` runs before frame i."""
    arenas = [Arena(a, Roi(*r)) for a, r in ARENAS.items()]
    book = TrialBook([a.id for a in arenas], CLASSES, config, mode=mode, out_dir=out, source="session.mp4",
                     schedule=schedule, provenance=lambda t: {"model": "scripted", "roi": "x"})
    events = Events()
    csv_out = CsvOutput(out, CLASSES)
    results = ResultsTable(out)
    outputs = [csv_out, results, events]
    if resume:
        for trial in book.resume_running():
            for o in outputs:
                o.on_trial_start(trial)
    pipe = Pipeline(ScriptedEngine(), TVL1(CHEAP_FLOW), arenas, book.arenas, PipelineConfig(fps=FPS, size_px=S),
                    outputs=outputs, trials=book)
    end = len(frames) if stop_after is None else stop_after

    def items():
        for i in range(first, end):
            if between is not None:
                between(i, book)
            if keep is not None and not keep(i):
                continue  # dropped on a full queue: the pipeline sees the index jump
            yield Frame(i - first, (i - first) / FPS, (i - first) / FPS, time.monotonic(), frames[i])
        if stop_after is None:
            yield EndOfStream("end of file")

    result = pipe.run(items())
    if stop_after is None:
        pipe.end_trials(result.end_reason, result.to_dict())
    csv_out.close()
    return book, events, results


def test_schedule_runs_two_trials_per_arena_with_bins_adding_up(session, tmp_path) -> None:
    video, frames = session
    schedule = schedule_for(read_schedule(write_schedule(tmp_path / "s.csv", video)), video)
    _, events, results = run_pipeline(frames, tmp_path / "out", "schedule", schedule=schedule)
    animals = {(t.arena_id, t.animal) for t, _ in events.ended}
    assert animals == {(a, m) for a, trials in TRUTH.items() for m, *_ in trials}
    rows = list(csv.DictReader(open(tmp_path / "out" / RESULTS_FILE)))
    assert len(rows) == 4 and {r["animal"] for r in rows} == {"M1", "M2", "M3", "M4"}
    for r in rows:
        assert r["test_complete"] == "1" and float(r["duration_s"]) == pytest.approx(4.0)
        bins = [float(r[f"immobile_s_bin{k}"]) for k in range(1, 5)]
        assert sum(bins) == pytest.approx(float(r["immobile_s"]), abs=2e-3)
        assert float(r["swim_s"]) + float(r["float_s"]) + float(r["struggle_s"]) == pytest.approx(4.0, abs=2e-3)
    # each trial's clock starts at its scheduled second of the video
    for trial, summary in events.ended:
        truth = next(t_in for m, _g, t_in, _o in TRUTH[trial.arena_id] if m == trial.animal)
        assert trial.start_s == pytest.approx(truth, abs=1 / FPS)
        assert summary.trial["end_reason"] == "test complete"
        assert (tmp_path / "out" / f"{trial.trial_id}.frames.csv").exists()


def test_auto_starts_within_a_frame_of_the_truth_despite_light_and_ripples(session, tmp_path) -> None:
    _, frames = session
    _, events, _ = run_pipeline(frames, tmp_path / "out", "auto")
    starts = sorted((t.arena_id, t.start_s) for t in events.started)
    truth = sorted((a, t_in) for a, trials in TRUTH.items() for _m, _g, t_in, _o in trials)
    assert [a for a, _ in starts] == [a for a, _ in truth]
    errors = [abs(s - t) for (_, s), (_, t) in zip(starts, truth)]
    assert max(errors) <= 1.0 / FPS + 1e-9, errors  # the brief asks for 1 s; measured: within one frame
    assert len(events.ended) == 4


def start_from_another_thread(book: TrialBook, replies: dict, *, animal: str, group: str) -> None:
    """``start`` on arena A1 as the control thread sends it (reply in ``replies["start"]``, the
    thread in ``replies["thread"]`` to join)."""
    t = threading.Thread(target=lambda: replies.setdefault("start", book.command(
        {"cmd": "start", "arena": "A1", "animal": animal, "group": group})))
    t.start()
    replies["thread"] = t


def test_control_commands_start_and_stop_trials_between_frames(session, tmp_path) -> None:
    _, frames = session
    replies = {}

    def between(i: int, book: TrialBook) -> None:
        if i == 20:
            start_from_another_thread(book, replies, animal="M9", group="saline")
        if i == 22:
            replies["thread"].join()
            replies["again"] = book.command({"cmd": "start", "arena": "A1"})
            replies["bad"] = book.command({"cmd": "start", "arena": "Z9"})
            replies["nothing"] = book.command({"cmd": "stop", "arena": "A2"})
            replies["verb"] = book.command({"cmd": "dance"})
        if i == 50:
            replies["status"] = book.command({"cmd": "status"})
            replies["stop"] = book.command({"cmd": "stop", "arena": "A1"})

    _, events, results = run_pipeline(frames[:80], tmp_path / "out", "control", between=between)
    assert replies["start"]["ok"] and replies["start"]["trial_id"] == "A1-t001-M9"
    for key in ("again", "bad", "nothing", "verb"):
        assert replies[key]["ok"] is False and replies[key]["error"], key
    assert replies["status"]["arenas"]["A1"]["state"] == "running"
    assert replies["status"]["arenas"]["A2"]["state"] == "waiting"
    assert replies["stop"]["ok"]
    (trial, summary), = events.ended
    assert trial.animal == "M9" and summary.trial["end_reason"] == "stopped by command"
    assert summary.trial["test_complete"] is False and summary.counters.test_complete is False
    assert results.rows[0]["test_complete"] == "0"


def test_a_restarted_service_resumes_the_running_trial(session, tmp_path) -> None:
    _, frames = session
    out = tmp_path / "out"

    def start(i: int, book: TrialBook) -> None:
        if i == 1:
            book.command({"cmd": "start", "arena": "A1", "animal": "M5"})

    book, events, _ = run_pipeline(frames, out, "control", stop_after=40, between=start)  # then SIGKILL
    (first,) = events.started
    assert not events.ended
    logged = read_frames_csv(out / f"{first.trial_id}.frames.csv")
    assert logged  # decided frames were written before the "crash"
    # a live camera's clock runs with the wall clock: the restart comes >= 1 s after the last logged frame
    started = datetime.fromisoformat(first.start_utc)
    while (datetime.now(timezone.utc) - started).total_seconds() < logged[-1]["timestamp_s"] + 1.0:
        time.sleep(0.05)
    _, events2, results = run_pipeline(frames, out, "control", first=40, stop_after=None, resume=True)
    (resumed,) = events2.started
    assert resumed.trial_id == first.trial_id and resumed.start_utc == first.start_utc and resumed.resumed
    (trial, summary), = events2.ended
    c = summary.counters
    assert c.frames_classified > len(logged)
    assert c.gaps.count >= 1  # the outage between the crash and the restart
    assert summary.trial["start_utc"] == first.start_utc
    # the whole trial's CSV re-scores to the same figures
    report = tmp_path / "report.csv"
    assert report_main([str(out), "--out", str(report), "-q"]) == 0
    live = {r["trial_id"]: r for r in csv.DictReader(open(out / RESULTS_FILE))}
    again = {r["trial_id"]: r for r in csv.DictReader(open(report))}
    assert again == live


def _stream_run_default_config() -> DecisionConfig:
    """CONFIG with stream-run's default smoothing (read from its parser) and a minimum bout: both hold
    frames back, which is what a resumed trial must not log twice."""
    live = stream_run_parser()
    return dataclasses.replace(CONFIG, smoothing=live.get_default("smoothing"),
                               smoothing_window_frames=live.get_default("smoothing_window"), min_bout_s=0.4)


def test_a_resumed_trial_with_default_smoothing_rescores_to_the_live_table(session, tmp_path) -> None:
    _, frames = session
    out = tmp_path / "out"
    config = _stream_run_default_config()
    assert config.smoothing != "none"

    def start(i: int, book: TrialBook) -> None:
        if i == 1:
            book.command({"cmd": "start", "arena": "A1", "animal": "M5"})

    _, events, _ = run_pipeline(frames, out, "control", stop_after=40, between=start, config=config)  # then SIGKILL
    (first,) = events.started
    logged = read_frames_csv(out / f"{first.trial_id}.frames.csv")
    started = datetime.fromisoformat(first.start_utc)
    while (datetime.now(timezone.utc) - started).total_seconds() < logged[-1]["timestamp_s"] + 0.5:
        time.sleep(0.05)
    _, events2, _ = run_pipeline(frames, out, "control", first=40, resume=True, config=config)
    (trial, summary), = events2.ended
    rows = read_frames_csv(out / f"{first.trial_id}.frames.csv")
    assert all(r["frame"] >= 0 for r in rows), [r["frame"] for r in rows if r["frame"] < 0]
    # every classified frame is logged once: the rows held back at the restart are not repeated
    assert len(rows) == summary.counters.frames_classified
    assert len({r["timestamp_s"] for r in rows}) == len(rows)
    report = tmp_path / "report.csv"
    assert report_main([str(out), "--out", str(report), "-q"]) == 0
    live = {r["trial_id"]: r for r in csv.DictReader(open(out / RESULTS_FILE))}
    again = {r["trial_id"]: r for r in csv.DictReader(open(report))}
    assert again == live


def test_trial_numbers_continue_after_the_highest_existing_one(session, tmp_path) -> None:
    _, frames = session
    out = tmp_path / "out"
    out.mkdir()
    # t001 was moved away, t002 is still here: counting files would pick t002 again
    (out / "A1-t002-M1.trial.json").write_text("{}")
    (out / "A1-t002-M1.summary.json").write_text("{}")

    def start(i: int, book: TrialBook) -> None:
        if i == 1:
            book.command({"cmd": "start", "arena": "A1", "animal": "M2"})  # queued: applied at the next frame

    _, events, _ = run_pipeline(frames[:30], out, "control", between=start)
    assert [t.trial_id for t, _ in events.ended] == ["A1-t003-M2"]


def test_a_scheduled_trial_past_the_end_of_the_input_is_listed_as_not_run(session, tmp_path) -> None:
    video, frames = session
    schedule = tmp_path / "s.csv"
    schedule.write_text(f"video,arena,animal,group,start_s\n{video.name},A1,M1,g,1.0\n{video.name},A2,M9,g,60\n")
    entries = schedule_for(read_schedule(schedule), video)
    _, events, results = run_pipeline(frames, tmp_path / "out", "schedule", schedule=entries)
    ended = {t.animal: s for t, s in events.ended}
    assert set(ended) == {"M1", "M9"}
    assert ended["M9"].trial["end_reason"].startswith("not run")
    assert ended["M9"].counters.frames_classified == 0
    row = next(r for r in results.rows if r["animal"] == "M9")
    assert row["test_complete"] == "0" and row["duration_s"] == "0.000"


def test_overlapping_rows_of_one_arena_are_refused_naming_both_lines(tmp_path) -> None:
    schedule = tmp_path / "s.csv"
    schedule.write_text("video,arena,animal,group,start_s\nv.mp4,A1,M1,g,0\nv.mp4,A2,M2,g,1\nv.mp4,A1,M3,g,3\n"
                        "v.mp4,A2,M4,g,5\n")
    entries = read_schedule(schedule)
    with pytest.raises(UserError, match=r"lines 2 and 4 .*arena A1"):
        check_schedule(entries, 4.0)
    check_schedule(entries, 2.0)  # 3 s and 4 s apart: one after the other, fine


def test_the_video_column_matches_by_resolved_path_or_by_name_in_any_case(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "rec"
    folder.mkdir()
    video = folder / "Session.mp4"
    schedule = tmp_path / "plans" / "s.csv"
    schedule.parent.mkdir()
    schedule.write_text("video,arena,animal,group,start_s\n"
                        "session.MP4,A1,M1,g,0\n"  # the name in another case
                        f"{video},A2,M2,g,0\n"  # absolute
                        "../rec/Session.mp4,A1,M3,g,400\n"  # relative to the schedule's folder
                        "rec/day2.mp4,A1,M4,g,0\n"  # relative to the working folder
                        "nothere.mp4,A1,M5,g,0\n")
    monkeypatch.chdir(tmp_path)
    entries = read_schedule(schedule)
    matched, unmatched = match_schedule(entries, [str(video), "rec/day2.mp4"], base_dir=schedule.parent)
    assert [e.animal for e in matched[str(video)]] == ["M1", "M2", "M3"]
    assert [e.animal for e in matched["rec/day2.mp4"]] == ["M4"]
    assert [e.line for e in unmatched] == [6]
    with pytest.raises(UserError, match="fits 2 videos"):
        match_schedule(entries[:1], [str(video), str(tmp_path / "day2" / "SESSION.mp4")])


def test_report_reproduces_the_live_table_and_min_bout_changes_the_bouts(session, tmp_path) -> None:
    video, frames = session
    schedule = schedule_for(read_schedule(write_schedule(tmp_path / "s.csv", video)), video)
    run_pipeline(frames, tmp_path / "out", "schedule", schedule=schedule)
    live_text = (tmp_path / "out" / RESULTS_FILE).read_text()
    report = tmp_path / "report.csv"
    assert report_main([str(tmp_path / "out"), "--out", str(report), "-q", "--summaries", str(tmp_path / "s")]) == 0
    live = sorted(live_text.splitlines()[1:])
    assert sorted(report.read_text().splitlines()[1:]) == live  # to the character
    assert report.read_text().splitlines()[0] == live_text.splitlines()[0]
    stricter = tmp_path / "strict.csv"
    assert report_main([str(tmp_path / "out"), "--out", str(stricter), "-q", "--min-bout-s", "2"]) == 0
    before = {r["trial_id"]: r for r in csv.DictReader(open(report))}
    after = {r["trial_id"]: r for r in csv.DictReader(open(stricter))}
    assert any(int(before[k]["bouts"]) > 0 for k in before)
    for k in before:  # only the 2.5 s immobile runs survive a 2 s minimum
        assert int(after[k]["bouts"]) < int(before[k]["bouts"]) or int(before[k]["bouts"]) == 0
        assert float(after[k]["immobile_s"]) <= float(before[k]["immobile_s"])
    rescored = json.loads(next((tmp_path / "s").glob("*.summary.json")).read_text())
    assert rescored["rescored"]["overrides"] == {} and "provenance" in rescored


HOSTILE = {"M1": ("=2+5", "@SUM(1)"), "M2": ("+M2", "-saline"), "M3": ("-3", "=cmd"), "M4": ("@M4", "=g")}


def _raw_cells(path: Path, column: str) -> list[str]:
    rows = list(csv.reader(open(path, newline="")))
    k = rows[0].index(column)
    return [r[k] for r in rows[1:]]


def test_formula_ids_from_a_schedule_are_escaped_and_re_scoring_stays_byte_for_byte(session, tmp_path) -> None:
    video, frames = session
    text = write_schedule(tmp_path / "s.csv", video).read_text()
    for animal, (new_animal, new_group) in HOSTILE.items():
        text = text.replace(f",{animal},", f",{new_animal},{new_group}-")  # group column follows the animal
    (tmp_path / "s.csv").write_text(text)
    schedule = schedule_for(read_schedule(tmp_path / "s.csv"), video)
    assert {e.animal for e in schedule} == {a for a, _ in HOSTILE.values()}
    run_pipeline(frames, tmp_path / "out", "schedule", schedule=schedule)
    live = tmp_path / "out" / RESULTS_FILE
    assert sorted(_raw_cells(live, "animal")) == sorted(f"'{a}" for a, _ in HOSTILE.values())
    assert all(g.startswith("'") for g in _raw_cells(live, "group"))
    report = tmp_path / "report.csv"
    assert report_main([str(tmp_path / "out"), "--out", str(report), "-q"]) == 0
    live_lines, report_lines = live.read_bytes().splitlines(), report.read_bytes().splitlines()
    assert report_lines[0] == live_lines[0] and sorted(report_lines[1:]) == sorted(live_lines[1:])


def test_formula_ids_from_stream_ctl_are_escaped_in_results(session, tmp_path) -> None:
    _, frames = session
    replies = {}

    def between(i: int, book: TrialBook) -> None:
        if i == 20:
            start_from_another_thread(book, replies, animal="=2+5", group="@SUM(1)")
        if i == 40:
            replies["thread"].join()
            book.command({"cmd": "stop", "arena": "A1"})

    run_pipeline(frames[:60], tmp_path / "out", "control", between=between)
    assert replies["start"]["ok"]
    live = tmp_path / "out" / RESULTS_FILE
    assert _raw_cells(live, "animal") == ["'=2+5"] and _raw_cells(live, "group") == ["'@SUM(1)"]
    summary = json.loads(next((tmp_path / "out").glob("*.summary.json")).read_text())
    assert summary["trial"]["animal"] == "=2+5"  # the JSON keeps the ID as typed


def test_schedule_file_mistakes_are_one_line_errors(tmp_path) -> None:
    bad = tmp_path / "s.csv"
    bad.write_text("video,arena,animal\nx.mp4,A1,M1\n")
    with pytest.raises(UserError, match="start_s"):
        read_schedule(bad)
    bad.write_text("video,arena,animal,group,start_s\nx.mp4,A1,M1,g,soon\n")
    with pytest.raises(UserError, match="line 2"):
        read_schedule(bad)
    with pytest.raises(UserError, match="no such file|No such file"):
        read_schedule(tmp_path / "missing.csv")
    long_id = tmp_path / "long.csv"
    long_id.write_text("video,arena,animal,group,start_s\nx.mp4,A1," + "M" * 300 + ",g,1\n")
    with pytest.raises(UserError, match=r"line 2: animal ID is 300 characters"):
        read_schedule(long_id)
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("video,arena,animal,group,start_s\nx.mp4,A1,Mäus,g,1\n".encode("cp1252"))
    with pytest.raises(UserError, match=r"line 2: not UTF-8"):
        read_schedule(latin)
    ok = tmp_path / "ok.csv"
    ok.write_text("video,arena,animal,group,start_s\nx.mp4,Z9,M1,g,1\n")
    with pytest.raises(UserError, match="Z9"):
        TrialBook(["A1"], CLASSES, CONFIG, mode="schedule", out_dir=tmp_path, source="x.mp4",
                  schedule=read_schedule(ok))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_report_reproduces_a_live_table_with_dropped_frames(session, tmp_path) -> None:
    """Issue 24.1: short gaps are bridged, long ones end the run; re-scoring from the CSV's frame
    indices decides exactly as the live run did (default smoothing and minimum bout)."""
    video, frames = session
    schedule = schedule_for(read_schedule(write_schedule(tmp_path / "s.csv", video)), video)
    config = DecisionConfig(fps=FPS, smoothing="average", min_bout_s=1.0, test_duration_s=4.0, scoring_window_s=2.0,
                            bin_s=1.0)
    keep = lambda i: i % 5 != 3 and not 40 <= i < 58  # noqa: E731 - a frame in 5 dropped, and one 1.2 s outage
    _, events, _ = run_pipeline(frames, tmp_path / "out", "schedule", schedule=schedule, config=config, keep=keep)
    live_text = (tmp_path / "out" / RESULTS_FILE).read_text()
    assert any(s.counters.gaps.frames_missing for _, s in events.ended)
    rows = list(csv.DictReader(live_text.splitlines()))
    assert {r["quality"] for r in rows} == {"frames_missing>5%"} and {r["test_complete"] for r in rows} == {"0"}
    report = tmp_path / "report.csv"
    assert report_main([str(tmp_path / "out"), "--out", str(report), "-q"]) == 0
    assert sorted(report.read_text().splitlines()) == sorted(live_text.splitlines())  # to the character
