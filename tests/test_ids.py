"""Animal, group and trial IDs: bounded length, allowed characters; schedules use the same check."""

from __future__ import annotations

import pytest

from stream.errors import UserError
from stream.ids import MAX_ID_CHARS, MAX_TRIAL_ID_CHARS, check_arena_id_length, check_id, check_trial_id
from stream.trials import read_schedule


@pytest.mark.parametrize("value", ["", "M17", "C57BL6-cage12-m3", "KO+/-", "saline 10 mg/kg", "=1+2", "@home",
                                   "-5", "Maus-ä", "#3 (left)", "x" * MAX_ID_CHARS])
def test_ids_a_lab_types_are_accepted(value: str) -> None:
    assert check_id("animal", value) == value


@pytest.mark.parametrize(("value", "words"), [
    ("x" * (MAX_ID_CHARS + 1), "at most"), ("M" * 300, "300 characters"), ("M17\tx", "not allowed"),
    ("M\r17", "not allowed"), ("M17\n", "not allowed"), ("a\x00b", "not allowed"), ('M"17', "not allowed"),
    ("M\\17", "not allowed"), ("M;rm", "not allowed"), (" M17", "space"), ("M17 ", "space"), (17, "string"),
    (None, "string"),
])
def test_ids_that_break_files_or_cells_are_refused_in_one_line(value: object, words: str) -> None:
    with pytest.raises(UserError, match=words) as info:
        check_id("animal", value)
    assert "\n" not in str(info.value) and "animal" in str(info.value)


def test_trial_and_arena_ids_are_bounded() -> None:
    check_trial_id("A1-t001-M17")
    for bad in ("", "A1 t001", "_A1", "A1/t001", "x" * (MAX_TRIAL_ID_CHARS + 1)):
        with pytest.raises(UserError):
            check_trial_id(bad)
    check_arena_id_length("A" * 64)
    with pytest.raises(UserError, match="at most"):
        check_arena_id_length("A" * 65)


def test_a_schedule_row_with_a_bad_id_is_refused_naming_its_line(tmp_path) -> None:
    path = tmp_path / "schedule.csv"
    path.write_text("video,arena,animal,group,start_s\nv.mp4,A1,M1,saline,0\nv.mp4,A2," + "M" * 300 + ",x,0\n")
    with pytest.raises(UserError, match=r"line 3: animal ID is 300 characters"):
        read_schedule(path)
    path.write_text('video,arena,animal,group,start_s\nv.mp4,A1,M1,"sal\tine",0\n')
    with pytest.raises(UserError, match=r"line 2: group ID"):
        read_schedule(path)
    path.write_text("video,arena,animal,group,start_s\nv.mp4,A1,=1+2,@grp,0\n")
    assert read_schedule(path)[0].animal == "=1+2"  # allowed; the CSV writers escape it
