"""``stream.assign``: animal IDs and groups for trials scored without them (``stream-report --assign``)."""

from __future__ import annotations

import pytest

from stream.assign import apply_assignments, read_assignments
from stream.errors import UserError


def _trials():
    return [{"trial": {"trial_id": f"{a}-t00{n}", "arena_id": a, "source": "/data/Day1.mp4", "start_s": s,
                       "animal": "", "group": ""}}
            for a, n, s in (("A1", 1, 5.0), ("A1", 2, 400.0), ("A2", 1, 7.0))]


def test_by_trial_id_and_by_video_arena_order(tmp_path) -> None:
    by_id = tmp_path / "ids.csv"
    by_id.write_text("trial_id,animal,group\nA1-t002,M18,drug\n")
    by_order = tmp_path / "order.csv"
    by_order.write_text("video,arena,order,animal\nday1.MP4,A1,1,M17\nday1.mp4,A2,1,=cmd\n")
    summaries = _trials()
    assert apply_assignments(summaries, read_assignments(by_id)) == 1
    assert apply_assignments(summaries, read_assignments(by_order)) == 2
    got = {s["trial"]["trial_id"]: (s["trial"]["animal"], s["trial"]["group"]) for s in summaries}
    assert got == {"A1-t001": ("M17", ""), "A1-t002": ("M18", "drug"), "A2-t001": ("=cmd", "")}


@pytest.mark.parametrize("text, words", [
    ("trial_id,animal\nA9-t001,M1\n", "line 2: trial A9-t001 is not among"),
    ("trial_id,animal\nA1-t001,M1\nA1-t001,M2\n", "line 3: A1-t001 was already assigned on line 2"),
    ("video,arena,order,animal\nday1.mp4,A1,3,M1\n", "trial 3 of arena A1"),
    ("video,arena,order,animal\nday1.mp4,A1,first,M1\n", "not a whole number"),
    ("trial_id,animal\nA1-t001,M1;rm\n", "line 2: animal ID 'M1;rm' has characters"),
    ("trial_id,animal\nA1-t001," + "M" * 65 + "\n", "at most 64"),
    ("animal,group\nM1,x\n", "needs the columns"),
    ("trial_id,animal\n", "no lines"),
])
def test_mistakes_are_one_line_errors_naming_the_line(tmp_path, text, words) -> None:
    path = tmp_path / "a.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=words.replace("(", r"\(")) as exc:
        apply_assignments(_trials(), read_assignments(path), f"--assign {path}")
    assert "\n" not in str(exc.value)
