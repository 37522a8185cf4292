"""Text cells a spreadsheet will not run: the CSV-injection rule, for every CSV a lab opens.

A lab opens ``results.csv`` (and the other tables) in Excel or LibreOffice, which treat a cell that
starts with ``=``, ``+``, ``-`` or ``@`` as a formula, and strip a leading tab or carriage return
and look again. An animal ID typed as ``=HYPERLINK(...)`` at the bench (``stream-ctl``) or in a
schedule would run in the lab's spreadsheet. OWASP's rule (CSV Injection): prefix such a cell
with a single quote, which makes it text. It is applied to text cells only (IDs, names, paths);
numbers this program formats itself (a negative frame index, say) are left as numbers.

The prefix is idempotent (an escaped cell starts with ``'``), so a table read back and rewritten
(``results.csv`` after a restart) is not escaped twice; ``unescape_cell`` undoes it for a reader
that needs the value itself (the per-frame CSV's ``behaviour`` column is a class name).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["FORMULA_PREFIXES", "spreadsheet_cell", "spreadsheet_cells", "unescape_cell"]

# OWASP "CSV Injection": the characters a spreadsheet starts a formula with (tab and CR because
# spreadsheets skip them before looking at the next character).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
ESCAPE = "'"  # a leading quote makes the cell text in every common spreadsheet


def spreadsheet_cell(text: str) -> str:
    """``text`` as a safe CSV cell: a leading formula character gets a ``'`` before it."""
    return ESCAPE + text if text.startswith(FORMULA_PREFIXES) else text


def spreadsheet_cells(values: Iterable[object]) -> list[object]:
    """A row with its text cells escaped (``spreadsheet_cell``); numbers and other values unchanged."""
    return [spreadsheet_cell(v) if isinstance(v, str) else v for v in values]


def unescape_cell(text: str) -> str:
    """The value ``spreadsheet_cell`` escaped (anything else unchanged)."""
    if text.startswith(ESCAPE) and text[1:].startswith(FORMULA_PREFIXES):
        return text[1:]
    return text
