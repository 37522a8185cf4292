"""Command-line values the benchmarks share: one parser for a comma-separated list of counts or sizes,
so every ``stream-bench`` mode and ``export.streaming_step_bench`` refuse a bad list in the same line."""

from __future__ import annotations

from stream.errors import UserError

__all__ = ["int_list"]


def int_list(text: str, flag: str, *, minimum: int = 1, example: str = "1,4") -> list[int]:
    """``"1,4"`` -> ``[1, 4]``; a value that is not an integer, or is below ``minimum``, is one line (UserError)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated integers, e.g. {example}") from None
    if not values or min(values) < minimum:
        raise UserError(f"{flag} {text!r}: expected integers >= {minimum}")
    return values
