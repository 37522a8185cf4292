"""The results table as an Excel workbook: the table itself, then one sheet per treatment group.

Why a workbook beside ``results.csv``: a lab's next step is a group comparison (saline vs drug,
mean +- SEM immobility), which people otherwise build by hand from the CSV. Each group's sheet
lists its trials and, under them, the mean, SEM and n of the immobile seconds over the whole test,
the scoring window and each bin. Only complete trials (``test_complete`` 1) enter the statistics:
a partial trial's window is not a result (it is listed, marked, and left out).

Written with openpyxl (no hand-made XML). Text cells are the table's text, unescaped and stored as
text with Excel's quote prefix, so an ID typed as ``=1+2`` is shown as typed and never run as a
formula; number columns are stored as numbers.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

from stream.atomic import atomic_write
from stream.outputs.results import COLUMNS_VERSION, TEXT_COLUMNS, table_columns
from stream.spreadsheet import unescape_cell

__all__ = ["NO_GROUP", "group_stats", "workbook_bytes", "write_workbook"]

NO_GROUP = "(no group)"  # the sheet of trials without a group
TABLE_SHEET = "results"
MAX_SHEET_CHARS = 31  # Excel's limit on a sheet name
_SHEET_FORBIDDEN = re.compile(r"[\[\]:*?/\\]")  # characters Excel refuses in a sheet name
STAT_COLUMNS_HEAD = ("immobile_s", "window_immobile_s")  # then immobile_s_bin1..N


def _number(text: str) -> float | int | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return int(value) if value.is_integer() and "." not in text else value


def mean_sem(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean (sample SD / sqrt(n)); SEM is None below two values."""
    if not values:
        return None, None
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def group_stats(rows: list[dict[str, str]], columns: list[str]) -> dict[str, tuple[float | None, float | None, int]]:
    """Column -> (mean, SEM, n) over the complete trials of ``rows``."""
    complete = [r for r in rows if r.get("test_complete") == "1"]
    out = {}
    for col in columns:
        values = [v for r in complete if (v := _number(r.get(col, ""))) is not None]
        out[col] = (*mean_sem([float(v) for v in values]), len(values))
    return out


def _sheet_title(name: str, taken: set[str]) -> str:
    base = _SHEET_FORBIDDEN.sub("_", name).strip("'") or "_"
    base = base[:MAX_SHEET_CHARS]
    title, n = base, 2
    while title.casefold() in taken:
        suffix = f"~{n}"
        title = base[: MAX_SHEET_CHARS - len(suffix)] + suffix
        n += 1
    taken.add(title.casefold())
    return title


def _put(ws, row: int, col: int, value: object, *, text: bool = False) -> None:
    cell = ws.cell(row=row, column=col)
    if text:
        cell.value = unescape_cell(str(value))
        cell.data_type = "s"  # never a formula, whatever the text starts with
        cell.quotePrefix = True
    else:
        cell.value = value


def _write_rows(ws, columns: list[str], rows: list[dict[str, str]]) -> None:
    from openpyxl.styles import Font

    for j, col in enumerate(columns, start=1):
        _put(ws, 1, j, col, text=True)
        ws.cell(row=1, column=j).font = Font(bold=True)
    for i, r in enumerate(rows, start=2):
        for j, col in enumerate(columns, start=1):
            value = r.get(col, "")
            if col in TEXT_COLUMNS or value == "":
                _put(ws, i, j, value, text=True)
            else:
                number = _number(value)
                _put(ws, i, j, value if number is None else number, text=number is None)
    ws.freeze_panes = "B2"


def build_workbook(rows: list[dict[str, str]]):
    """An openpyxl Workbook: the table, then a sheet per group with mean +- SEM immobile."""
    from openpyxl import Workbook
    from openpyxl.styles import Font

    columns = table_columns(rows)
    wb = Workbook()
    ws = wb.active
    ws.title = TABLE_SHEET
    _write_rows(ws, columns, rows)
    wb.properties.keywords = f"swim-stream results columns version {COLUMNS_VERSION}"
    stat_cols = [*STAT_COLUMNS_HEAD, *(c for c in columns if c.startswith("immobile_s_bin"))]
    groups: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault(unescape_cell(r.get("group", "")) or NO_GROUP, []).append(r)
    taken = {TABLE_SHEET}
    for group in sorted(groups):
        members = groups[group]
        gs = wb.create_sheet(_sheet_title(group, taken))
        head = ["trial_id", "animal", "test_complete", *stat_cols]
        _write_rows(gs, head, members)
        stats = group_stats(members, stat_cols)
        base = len(members) + 3
        bold = Font(bold=True)
        for k, label in enumerate(("mean", "SEM", "n")):
            _put(gs, base + k, 1, label, text=True)
            gs.cell(row=base + k, column=1).font = bold
            for j, col in enumerate(stat_cols, start=len(head) - len(stat_cols) + 1):
                value = stats[col][k]
                if value is not None:
                    _put(gs, base + k, j, round(value, 3) if k < 2 else value)
        _put(gs, base + 4, 1, f"group {group}: statistics over complete trials only (test_complete 1); "
                              "SEM = sample SD / sqrt(n)", text=True)
    return wb


def workbook_bytes(rows: list[dict[str, str]]) -> bytes:
    """The workbook as .xlsx bytes (a download, or a file)."""
    buf = io.BytesIO()
    build_workbook(rows).save(buf)
    return buf.getvalue()


def write_workbook(path: Path, rows: list[dict[str, str]]) -> Path:
    """Write the workbook to ``path`` atomically."""
    return atomic_write(path, workbook_bytes(rows))
