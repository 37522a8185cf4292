"""``stream.outputs.results``: the columns of ``results.csv`` (version 2: video offsets, recording time, per-bin
bouts and class seconds, after every version-1 column)."""

from __future__ import annotations

import numpy as np

from stream.decisions import ArenaDecisions, DecisionConfig
from stream.outputs.results import COLUMNS_VERSION, ResultsTable, read_table, results_row, table_columns

CLASSES = ["swim", "struggle", "float"]
FPS = 15.0
V1 = ["trial_id", "animal", "group", "arena", "source", "start_utc", "duration_s", "test_complete", "model",
      "model_sha256", "swim_stream_version", "roi", "immobile_s", "bouts", "latency_s", "window_immobile_s",
      "window_bouts", "swim_s", "struggle_s", "float_s", "immobile_s_bin1", "immobile_s_bin2", "immobile_s_bin3",
      "immobile_s_bin4", "frames_missing"]


def summary(start_s: float = 12.5, recorded: str | None = "2026-05-01T09:30:00.000+00:00", seed: int = 0) -> dict:
    decisions = ArenaDecisions("A1", CLASSES, DecisionConfig(fps=FPS, test_duration_s=4.0, scoring_window_s=2.0,
                                                             bin_s=1.0, min_bout_s=0.0, smoothing="none"))
    rng = np.random.default_rng(seed)
    for i in range(int(4 * FPS)):
        p = rng.dirichlet(np.ones(3) * 0.3)
        decisions.update(i, i / FPS, p)
    decisions.flush()
    s = decisions.summary()
    s["trial"] = {"trial_id": "A1-t001-M1", "arena_id": "A1", "animal": "M1", "group": "saline",
                  "source": "day1.mp4", "start_utc": "2026-06-01T10:00:00.000+00:00", "start_s": start_s}
    s["provenance"] = {"recording_start_utc": recorded}
    return s


def test_version_2_columns_follow_every_version_1_column_and_add_up() -> None:
    s = summary()
    row = results_row(s)
    columns = table_columns([row])
    assert COLUMNS_VERSION == 2
    assert columns[: len(V1)] == V1  # a version-1 reader's columns stay where they were
    assert columns[len(V1):] == ["quality", "video_start_s", "video_end_s", "recording_start_utc",
                                 *(f"bouts_bin{k}" for k in range(1, 5)),
                                 *(f"{c}_s_bin{k}" for c in CLASSES for k in range(1, 5))]
    assert row["video_start_s"] == "12.500" and row["video_end_s"] == "16.500"  # 4 s scored from 12.5 s
    assert row["recording_start_utc"] == "2026-05-01T09:30:00.000+00:00"
    assert sum(int(row[f"bouts_bin{k}"]) for k in range(1, 5)) == int(row["bouts"]) > 0
    for cls in CLASSES:
        per_bin = sum(float(row[f"{cls}_s_bin{k}"]) for k in range(1, 5))
        assert abs(per_bin - float(row[f"{cls}_s"])) < 2e-3
    assert abs(sum(float(row[f"{c}_s_bin2"]) for c in CLASSES) - 1.0) < 2e-3  # each bin is one second of frames


def test_no_recording_time_or_trial_leaves_the_cells_empty() -> None:
    s = summary(recorded=None)
    del s["trial"]
    row = results_row(s)
    assert row["recording_start_utc"] == "" and row["video_start_s"] == "" and row["video_end_s"] == ""


def test_a_version_1_table_gains_the_new_columns_with_empty_cells_for_old_rows(tmp_path) -> None:
    old = {k: "1" for k in V1} | {"trial_id": "old-t001"}
    path = tmp_path / "results.csv"
    path.write_text(",".join(V1) + "\n" + ",".join(old[k] for k in V1) + "\n")
    assert table_columns(read_table(path)) == V1  # read back alone: still a version-1 table
    table = ResultsTable(tmp_path)
    table.on_trial_end(None, summary())
    rows = read_table(path)
    assert list(rows[0])[: len(V1)] == V1 and "bouts_bin4" in rows[0] and "float_s_bin4" in rows[0]
    assert rows[0]["trial_id"] == "old-t001" and rows[0]["video_start_s"] == "" and rows[1]["video_start_s"] == "12.500"
