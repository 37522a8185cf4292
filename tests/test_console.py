"""The end-of-run table printed to the terminal."""

from __future__ import annotations

from pathlib import Path

from stream.outputs.console import summary_table


def _summary(behaviour: dict[str, float], immobile_s: float) -> dict:
    return {"counters": {"frames_classified": 30, "behaviour_s": behaviour, "immobile_s": immobile_s,
                         "immobility_bouts": 1, "latency_to_first_bout_s": 1.5,
                         "scoring_window": {"immobile_s": immobile_s, "immobility_bouts": 1}, "gaps": {"count": 0}}}


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
