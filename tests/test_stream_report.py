"""``stream-report`` (stream/report.py) guards: it never writes into a run, and bins have a floor and a cap.

The re-scoring itself (live table reproduced to the character) is tested on real pipeline runs in
``test_trials.py``; here a small run folder is made with the same writers ``stream-run`` uses.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from stream.decisions import MAX_BINS, MIN_BIN_S, ArenaDecisions, DecisionConfig
from stream.errors import UserError
from stream.outputs.csv_log import ArenaCsvLog
from stream.outputs.results import ResultsTable
from stream.report import main

CLASSES = ["swim", "struggle", "float"]
FPS = 15.0


def make_run(folder: Path, arena: str = "A1") -> Path:
    """A finished 4-s trial as stream-run leaves it: frames CSV, summary JSON, results.csv."""
    config = DecisionConfig(fps=FPS, test_duration_s=4.0, scoring_window_s=2.0, bin_s=1.0)
    decisions = ArenaDecisions(arena, CLASSES, config)
    rng = np.random.default_rng(0)
    with ArenaCsvLog(folder, arena, CLASSES) as log:
        for i in range(int(4 * FPS)):
            for d in decisions.update(i, i / FPS, rng.dirichlet(np.ones(3))):
                log.write(d)
        for d in decisions.flush():
            log.write(d)
        summary = decisions.summary()
        log.write_summary(summary)
    ResultsTable(folder).on_trial_end(None, summary)
    return folder


@pytest.fixture()
def run(tmp_path) -> Path:
    return make_run(tmp_path / "run")


def _unchanged(run: Path):
    before = {p: p.read_bytes() for p in run.iterdir()}
    return lambda: {p: p.read_bytes() for p in run.iterdir()} == before


def test_out_or_summaries_inside_a_run_are_refused_in_one_line(run, tmp_path, capsys) -> None:
    same = _unchanged(run)
    other = make_run(tmp_path / "other", "B1")  # a run folder that is not being re-scored
    (tmp_path / "link").symlink_to(run)
    (tmp_path / "table-link.csv").symlink_to(run / "results.csv")
    for extra in (["--out", str(run / "results.csv")], ["--out", str(run / "new.csv")],
                  ["--out", str(run / "sub" / "deeper" / "t.csv")], ["--out", str(tmp_path / "link" / "results.csv")],
                  ["--out", str(tmp_path / "table-link.csv")], ["--out", str(other / "t.csv")],
                  ["--out", str(tmp_path / "ok.csv"), "--summaries", str(run)],
                  ["--out", str(tmp_path / "ok.csv"), "--summaries", str(tmp_path / "link")],
                  ["--out", str(tmp_path / "ok.csv"), "--summaries", str(other)],
                  ["--out", str(tmp_path / "ok.csv"), "--summaries", str(run / "rescored")]):
        assert main([str(run), "-q", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert "never writes over a run's live results" in err and err.count("\n") == 1, err
    assert same() and not (tmp_path / "ok.csv").exists()


def test_outputs_outside_runs_are_written_and_may_be_rewritten(run, tmp_path) -> None:
    out, summaries = tmp_path / "analysis" / "results.csv", tmp_path / "analysis" / "rescored"
    for _ in range(2):  # an earlier report's table and re-scored summaries are not live results
        assert main([str(run), "-q", "--out", str(out), "--summaries", str(summaries)]) == 0
    assert out.read_text() == (run / "results.csv").read_text()
    assert len(list(summaries.glob("*.summary.json"))) == 1


def test_bin_s_below_the_floor_or_too_many_bins_is_one_line_and_quick(run, tmp_path, capsys) -> None:
    for bin_s, words in (("0.0001", f"at least {MIN_BIN_S:g} s"), ("0", "at least"), ("nan", "at least"),
                         ("-1", "at least")):
        t0 = time.monotonic()
        assert main([str(run), "-q", "--out", str(tmp_path / "t.csv"), "--bin-s", bin_s]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
        assert time.monotonic() - t0 < 5.0
    args = [str(run), "-q", "--out", str(tmp_path / "t.csv"), "--bin-s", "1", "--test-duration-s", str(MAX_BINS + 1),
            "--scoring-window-s", "2"]
    assert main(args) == 2
    assert f"at most {MAX_BINS}" in capsys.readouterr().err
    assert main([str(run), "-q", "--out", str(tmp_path / "t.csv"), "--bin-s", "1"]) == 0


def test_decision_config_bounds_bins() -> None:
    DecisionConfig(fps=FPS, bin_s=MIN_BIN_S)
    DecisionConfig(fps=FPS, test_duration_s=MAX_BINS * 1.0, scoring_window_s=1.0, bin_s=1.0)
    with pytest.raises(UserError, match="at least"):
        DecisionConfig(fps=FPS, bin_s=MIN_BIN_S / 2)
    with pytest.raises(UserError, match="at most"):
        DecisionConfig(fps=FPS, test_duration_s=MAX_BINS + 1.0, scoring_window_s=1.0, bin_s=1.0)


def test_xlsx_and_assign_write_new_files_and_leave_the_live_ones(run, tmp_path, capsys) -> None:
    openpyxl = pytest.importorskip("openpyxl", reason="openpyxl not installed (pip install -e .)")
    same = _unchanged(run)
    animals = tmp_path / "animals.csv"
    animals.write_text("video,arena,order,animal,group\nx.mp4,A1,1,M9,saline\n")
    assert main([str(run), "-q", "--out", str(tmp_path / "n.csv"), "--assign", str(animals)]) == 2
    assert "line 2: trial 1 of arena A1 in x.mp4 is not among" in capsys.readouterr().err  # a typo is not ignored
    animals.write_text("trial_id,animal,group\nA1,M9,=saline\n")
    assert main([str(run), "-q", "--out", str(tmp_path / "n.csv"), "--xlsx", str(tmp_path / "n.xlsx"),
                 "--assign", str(animals)]) == 0
    assert same()
    (row,) = list(__import__("csv").DictReader(open(tmp_path / "n.csv")))
    assert row["animal"] == "M9" and row["group"] == "'=saline"
    wb = openpyxl.load_workbook(tmp_path / "n.xlsx")
    assert wb.sheetnames == ["results", "=saline"]
    assert [c.value for c in wb["results"][2]][:3] == ["A1", "M9", "=saline"]
    assert main([str(run), "-q", "--xlsx", str(run / "day.xlsx")]) == 2  # never into the run
    assert main([str(run), "-q"]) == 2  # neither --out nor --xlsx
    assert same()
