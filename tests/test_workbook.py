"""``stream.workbook``: the results table as .xlsx, read back with openpyxl; a sheet per group with mean +- SEM."""

from __future__ import annotations

import math

import pytest

openpyxl = pytest.importorskip("openpyxl", reason="openpyxl not installed (pip install -e .)")

from stream.outputs.results import results_row  # noqa: E402
from stream.spreadsheet import spreadsheet_cell  # noqa: E402
from stream.workbook import NO_GROUP, mean_sem, write_workbook  # noqa: E402
from test_results import summary  # noqa: E402


def _rows():
    rows = []
    for k, (animal, group, complete) in enumerate([("M1", "saline", True), ("M2", "saline", True),
                                                  ("M3", "saline", False), ("=1+2", "10 mg/kg", True), ("M5", "", True)]):
        s = summary(seed=k)
        s["trial"].update(trial_id=f"A1-t00{k + 1}", animal=animal, group=group)
        s["counters"]["test_complete"] = complete
        rows.append(results_row(s))
    return rows


def test_table_sheet_is_the_csv_table_with_numbers_as_numbers_and_text_never_a_formula(tmp_path) -> None:
    rows = _rows()
    wb = openpyxl.load_workbook(write_workbook(tmp_path / "day.xlsx", rows))
    ws = wb["results"]
    header = [c.value for c in ws[1]]
    assert header[:3] == ["trial_id", "animal", "group"] and "bouts_bin1" in header
    got = {c: ws.cell(row=5, column=header.index(c) + 1) for c in ("animal", "immobile_s", "bouts", "video_start_s")}
    assert got["animal"].value == "=1+2" and got["animal"].data_type == "s"  # text, shown as typed, not run
    assert rows[3]["animal"] == spreadsheet_cell("=1+2")  # the CSV cell is escaped; the workbook cell is text
    assert got["immobile_s"].value == pytest.approx(float(rows[3]["immobile_s"]))
    assert got["bouts"].value == int(rows[3]["bouts"]) and got["video_start_s"].value == 12.5


def test_group_sheets_hold_mean_sem_and_n_of_complete_trials(tmp_path) -> None:
    rows = _rows()
    wb = openpyxl.load_workbook(write_workbook(tmp_path / "day.xlsx", rows))
    assert wb.sheetnames == ["results", NO_GROUP, "10 mg_kg", "saline"]  # "/" is not allowed in a sheet name
    ws = wb["saline"]
    header = [c.value for c in ws[1]]
    labels = {ws.cell(row=r, column=1).value: r for r in range(1, ws.max_row + 1)}
    col = header.index("immobile_s") + 1
    values = [float(rows[i]["immobile_s"]) for i in (0, 1)]  # M3 is incomplete: listed, not counted
    mean = sum(values) / 2
    sem = math.sqrt(sum((v - mean) ** 2 for v in values)) / math.sqrt(2)
    assert ws.cell(row=labels["mean"], column=col).value == pytest.approx(mean, abs=1e-3)
    assert ws.cell(row=labels["SEM"], column=col).value == pytest.approx(sem, abs=1e-3)
    assert ws.cell(row=labels["n"], column=col).value == 2
    bin_col = header.index("immobile_s_bin4") + 1
    assert ws.cell(row=labels["mean"], column=bin_col).value == pytest.approx(
        sum(float(rows[i]["immobile_s_bin4"]) for i in (0, 1)) / 2, abs=1e-3)
    assert ws.cell(row=labels["SEM"], column=header.index("window_immobile_s") + 1).value is not None
    one = wb[NO_GROUP]
    one_labels = {one.cell(row=r, column=1).value: r for r in range(1, one.max_row + 1)}
    assert one.cell(row=one_labels["SEM"], column=col).value is None  # one trial: no SEM


def test_mean_sem() -> None:
    assert mean_sem([]) == (None, None) and mean_sem([2.0]) == (2.0, None)
    mean, sem = mean_sem([1.0, 2.0, 3.0])
    assert mean == 2.0 and sem == pytest.approx(1 / math.sqrt(3))
