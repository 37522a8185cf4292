"""``tools/first_simulator_render.py``: the demo's renderer, read from git history, renders the
demo's own labels from the demo's seed, and says in one line when the history is not there."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.errors import UserError
from tool_script import load_tool

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    return load_tool("first_simulator_render")


def test_seed_0_for_a_minute_renders_the_demos_labels(tmp_path) -> None:
    tool = _tool()
    try:
        tool.first_simulator_source()
    except UserError as exc:  # an archive or a shallow clone: no history to read it from
        pytest.skip(str(exc))
    videos = tool.render(tmp_path, [0], 60.0, 1)
    assert videos == [tmp_path / "first_s0.mp4"] and videos[0].stat().st_size > 0
    assert (tmp_path / "first_s0.labels.csv").read_bytes() == (ROOT / "demo" / "synth_side.labels.csv").read_bytes()
    assert (tmp_path / "first_s0.boris.csv").is_file() and (tmp_path / "first_s0.arenas.json").is_file()


def test_a_commit_that_is_not_there_is_one_line(tmp_path, capsys) -> None:
    tool = _tool()
    with pytest.raises(UserError, match="commit 0000000 .* not found"):
        tool.first_simulator_source(commit="0000000")
    assert tool.main(["--out", str(tmp_path), "--seconds", "0"]) != 0
    assert "--seconds must be > 0" in capsys.readouterr().err
