"""``tools/mouse_locator_check.py``: scores the locator against the simulator's own mouse positions.

A small randomized top-view render, both locators: one row per arena, shares in [0, 1], and the
current locator keeps the mouse in its window on most frames of a plain look (every family nominal
but the rig geometry, whose camera homography here shifts the frame by 18 and 35 px): a truth left
in canvas coordinates would put the mouse outside the window and fail this."""

from __future__ import annotations

from export.synth import SynthConfig, render_video
from tool_script import load_tool


def _tool():
    return load_tool("mouse_locator_check")


def test_the_check_scores_each_arena_against_the_true_positions(tmp_path) -> None:
    from export.synth_families import FAMILY_NAMES

    cfg = SynthConfig(view="top", duration_s=6.0, seed=3, randomize=True, arenas=2, width_px=320, height_px=160, fps=15.0,
                      pinned=("width_px", "height_px", "fps", "arenas"), name="t",
                      fixed=tuple(f for f in FAMILY_NAMES if f != "geometry"))  # fmt: skip
    result = render_video(cfg, tmp_path)
    tool = _tool()
    rows = tool.check_video(result.arenas_json, 64, {"fixed": (None, 1), "k=3": (3.0, 5)})
    assert [r["arena"] for r in rows] == [0, 1]
    assert all(r["frames"] == 90 - tool.START_FRAME for r in rows)
    for r in rows:
        assert 0.0 <= r["fixed_held"] <= 1.0 and 0.0 <= r["fixed_found"] <= 1.0
        assert r["k=3_held"] >= 0.8, r
