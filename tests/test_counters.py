"""Counters: typed, frozen, and to_json()/from_json() round-trip the wire format."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from stream.counters import Counters
from stream.decisions import ArenaDecisions, DecisionConfig

CLASSES = ["swim", "struggle", "float"]


def _arena(pattern: str, **kw) -> ArenaDecisions:
    arena = ArenaDecisions("A", CLASSES, DecisionConfig(fps=1.0, **kw))
    probs = {"S": [0.8, 0.1, 0.1], "F": [0.1, 0.1, 0.8]}
    for i, ch in enumerate(pattern):
        arena.update(i, float(i), np.array(probs[ch]))
    arena.flush()
    return arena


def test_counters_are_frozen_and_round_trip_through_json() -> None:
    c = _arena("SSFFFSFF", test_duration_s=8.0, scoring_window_s=4.0, bin_s=3.0).counters()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.immobile_s = 0.0  # type: ignore[misc]
    wire = json.loads(json.dumps(c.to_json()))
    assert Counters.from_json(wire) == c
    assert c.immobile_s == 5.0 and c.immobility_bouts == 2 and c.scoring_window.immobility_bouts == 2


def test_bins_add_up_to_the_totals_and_count_bouts_where_they_begin() -> None:
    # 1 fps, bins of 3 s over an 8 s test: [0,3) [3,6) [6,8)
    c = _arena("SSFFFSFF", test_duration_s=8.0, scoring_window_s=4.0, bin_s=3.0).counters()
    assert [(b.start_s, b.end_s) for b in c.bins] == [(0.0, 3.0), (3.0, 6.0), (6.0, 8.0)]
    assert [b.immobile_s for b in c.bins] == [1.0, 2.0, 2.0]
    assert [b.immobility_bouts for b in c.bins] == [1, 0, 1]
    assert sum(b.immobile_s for b in c.bins) == c.immobile_s
    assert sum(b.immobility_bouts for b in c.bins) == c.immobility_bouts
    for k in CLASSES:
        assert sum(b.behaviour_s[k] for b in c.bins) == c.behaviour_s[k]
    assert c.current_bin() == c.bins[2]


def test_frames_after_the_test_duration_are_in_no_bin() -> None:
    c = _arena("FFFFFF", test_duration_s=4.0, scoring_window_s=4.0, bin_s=2.0).counters()
    assert c.immobile_s == 6.0 and sum(b.immobile_s for b in c.bins) == 4.0
    assert c.current_bin() is None
