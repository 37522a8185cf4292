"""The end-of-run table printed to the terminal."""

from __future__ import annotations

from pathlib import Path

from stream.counters import Counters, WindowCounts
from stream.outputs.console import summary_table
from stream.trial_summary import TrialSummary


def _summary(behaviour: dict[str, float], immobile_s: float) -> TrialSummary:
    window = WindowCounts(start_s=120.0, end_s=360.0, immobile_s=immobile_s, immobility_bouts=1)
    counters = Counters(frames_classified=30, behaviour_s=behaviour, immobile_s=immobile_s, mobile_s=0.0,
                        immobility_bouts=1, latency_to_first_bout_s=1.5, last_timestamp_s=2.9, test_complete=False,
                        scoring_window=window)
    return TrialSummary(arena_id="arena0", classes=tuple(behaviour), immobile_classes=(), config={"fps": 10.0},
                        frames_held_back=0, counters=counters)


def test_top_view_table_has_one_immobile_column_and_side_view_keeps_every_class() -> None:
    top = summary_table({"arena0": _summary({"mobile": 1.0, "immobile": 2.0}, 2.0)}, ["mobile", "immobile"], "v", Path("."), run={})
    header = next(line for line in top.splitlines() if line.startswith("arena "))
    assert header.count("immobile s") == 2 and "mobile" in header.split()  # the trial's and the window's
    row = next(line for line in top.splitlines() if line.startswith("arena0"))
    assert row.split()[:4] == ["arena0", "30", "1.0", "2.0"]  # frames, mobile s, immobile s
    side = summary_table({"arena0": _summary({"swim": 1.0, "struggle": 0.5, "float": 2.0}, 2.0)}, ["swim", "struggle", "float"],
                         "v", Path("."), run={})
    header = next(line for line in side.splitlines() if line.startswith("arena "))
    assert {"swim", "struggle", "float", "immobile"} <= set(header.split())
