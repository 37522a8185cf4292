"""The CSV-injection rule (OWASP): text cells starting with = + - @ tab CR get a leading quote."""

from __future__ import annotations

import csv
import io

import pytest

from stream.spreadsheet import FORMULA_PREFIXES, spreadsheet_cell, spreadsheet_cells, unescape_cell


@pytest.mark.parametrize("text", ["=HYPERLINK(1)", "+M2", "-3", "@SUM(1)", "\t=1", "\r=1"])
def test_formula_starts_are_escaped_and_read_back(text: str) -> None:
    assert text.startswith(FORMULA_PREFIXES)
    escaped = spreadsheet_cell(text)
    assert escaped == "'" + text
    assert spreadsheet_cell(escaped) == escaped  # idempotent: a table read back is not escaped twice
    assert unescape_cell(escaped) == text


@pytest.mark.parametrize("text", ["", "M17", "A1-t001-M17", "saline", "'quoted", " =1", "1-2", "2026-12-06T05:00"])
def test_other_text_is_left_alone(text: str) -> None:
    assert spreadsheet_cell(text) == text
    assert unescape_cell(text) == text


def test_rows_escape_text_and_keep_numbers() -> None:
    assert spreadsheet_cells(["=1", -3, -0.5, None, "M1"]) == ["'=1", -3, -0.5, None, "M1"]
    buf = io.StringIO()
    csv.writer(buf).writerow(spreadsheet_cells(["\t=cmd", "x"]))
    assert next(csv.reader([buf.getvalue()])) == ["'\t=cmd", "x"]
