"""The benchmarks' shared list parser: values, and one line for a bad list."""

from __future__ import annotations

import pytest

from stream.bench.arguments import int_list
from stream.errors import UserError


def test_a_comma_separated_list_gives_its_integers() -> None:
    assert int_list("1, 4,", "--arenas") == [1, 4]


@pytest.mark.parametrize(("text", "message"), [("1,x", "--sizes '1,x': expected comma-separated integers, e.g. 112,224"),
                                               ("8,24", "--sizes '8,24': expected integers >= 16"),
                                               ("", "--sizes '': expected integers >= 16")])
def test_a_bad_list_is_one_line_naming_the_flag(text: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        int_list(text, "--sizes", minimum=16, example="112,224")
    assert str(err.value) == message
