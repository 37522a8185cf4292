"""``TrialSummary``: made by the decisions, JSON only at the edges, and back without a change."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream.decisions import ArenaDecisions, DecisionConfig
from stream.errors import UserError
from stream.trial_files import summary_text
from stream.trial_summary import SUMMARY_VERSION, TrialSummary, as_summary

CLASSES = ["swim", "struggle", "float"]


def _ended(frames: int = 40) -> TrialSummary:
    arena = ArenaDecisions("A1", CLASSES, DecisionConfig(fps=10.0, smoothing="average", test_duration_s=3.0,
                                                         scoring_window_s=2.0, bin_s=1.0, min_bout_s=0.3))
    rng = np.random.default_rng(3)
    for i in range(frames):
        if i == 20:
            arena.gap(5, 0.5)  # frames 20-24 never came (counted when frame 25 arrives)
        if 20 <= i < 25:
            continue
        p = rng.dirichlet([1, 1, 3 if (i // 7) % 2 else 0.3])
        arena.update(i, i / 10.0, p)
    arena.flush()
    trial = {"trial_id": "A1-t001-M1", "arena_id": "A1", "animal": "M1", "end_reason": "test complete"}
    return arena.trial_summary(trial=trial, provenance={"model": "m", "roi": "0,0,10,10"}) \
        .with_run({"engine": "torch", "frames_processed": frames})


def test_json_round_trip_is_exact_in_value_and_bytes() -> None:
    s = _ended()
    text = summary_text(s.to_json())
    back = TrialSummary.from_json(json.loads(text))
    assert back == s
    assert summary_text(back.to_json()) == text  # a file read and written again is the same bytes
    assert list(json.loads(text)) == ["arena_id", "classes", "immobile_classes", "config", "frames_held_back",
                                      "counters", "trial", "provenance", "run"]  # the file's key order
    assert back.counters.gaps.frames_missing == 5 and back.trial_id == "A1-t001-M1" and back.fps == 10.0


def test_other_writers_keys_survive_and_a_newer_version_is_refused() -> None:
    d = {**_ended().to_json(), "rescored": {"from": "x.frames.csv"}}
    assert TrialSummary.from_json(d).to_json() == d
    assert as_summary(d).extra == {"rescored": {"from": "x.frames.csv"}}
    with pytest.raises(UserError, match="newer swim-stream"):
        TrialSummary.from_json({**d, "summary_version": SUMMARY_VERSION + 1})


def test_summary_json_is_the_typed_value_without_trial_and_provenance() -> None:
    arena = ArenaDecisions("A", CLASSES, DecisionConfig(fps=10.0))
    arena.update(0, 0.0, np.array([0.1, 0.1, 0.8]))
    assert arena.summary() == arena.trial_summary().to_json()
    assert "trial" not in arena.summary() and "run" not in arena.summary()
