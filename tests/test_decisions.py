"""Counters of ``stream.decisions`` on hand-made probability sequences, and against a reference."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from stream.decisions import ArenaDecisions, Decision, DecisionConfig
from stream.errors import UserError

SIDE = ["swim", "struggle", "float"]
LETTER = {"S": "swim", "T": "struggle", "F": "float"}


def probs_for(label: str, confidence: float = 0.8) -> np.ndarray:
    """Probabilities with ``label`` most probable; of the other two, the later class gets more."""
    k = SIDE.index(label)
    others = [i for i in range(3) if i != k]
    p = np.zeros(3)
    p[k] = confidence
    p[others[0]], p[others[1]] = (1 - confidence) * 0.4, (1 - confidence) * 0.6
    return p


def run(pattern: str, config: DecisionConfig, *, start: int = 0) -> tuple[ArenaDecisions, list[Decision]]:
    arena = ArenaDecisions("A", SIDE, config)
    out: list[Decision] = []
    for i, ch in enumerate(pattern, start=start):
        out += arena.update(i, i / config.fps, probs_for(LETTER[ch]))
    out += arena.flush()
    return arena, out


def test_plain_counts_bouts_latency_and_seconds() -> None:
    arena, out = run("SSFFFTFFS", DecisionConfig(fps=2.0))
    c = arena.counters().to_json()
    assert [d.frame_index for d in out] == list(range(9))
    assert [d.behaviour for d in out] == [LETTER[ch] for ch in "SSFFFTFFS"]
    assert c["frames_classified"] == 9
    assert c["behaviour_s"] == {"swim": 1.5, "struggle": 0.5, "float": 2.5}
    assert c["immobile_s"] == 2.5 and c["mobile_s"] == 2.0
    assert c["immobility_bouts"] == 2
    assert c["latency_to_first_bout_s"] == 1.0  # frame 2 at 2 fps
    # every decision carries the counters right after its own frame
    assert [d.counters.to_json()["immobility_bouts"] for d in out] == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert out[0].counters.to_json()["latency_to_first_bout_s"] is None
    json.dumps(arena.summary())  # JSON-able


def test_latency_is_none_without_a_bout() -> None:
    arena, _ = run("SSTT", DecisionConfig(fps=1.0))
    assert arena.counters().to_json()["latency_to_first_bout_s"] is None
    assert arena.counters().to_json()["immobility_bouts"] == 0


def test_min_bout_holds_back_then_relabels_short_runs_mobile() -> None:
    config = DecisionConfig(fps=10.0, min_bout_s=0.3)  # 3 frames
    arena = ArenaDecisions("A", SIDE, config)
    pattern = "FFSFFFFSFF"
    emitted_per_update = []
    out: list[Decision] = []
    for i, ch in enumerate(pattern):
        got = arena.update(i, i / 10.0, probs_for(LETTER[ch]))
        emitted_per_update.append(len(got))
        out += got
    out += arena.flush()
    # frames 0,1 held until the swim at 2 shows the run is too short; 3,4 held until 5 confirms the bout
    assert emitted_per_update == [0, 0, 3, 0, 0, 3, 1, 1, 0, 0]
    assert [d.frame_index for d in out] == list(range(10))
    assert [d.immobile for d in out] == [False, False, False, True, True, True, True, False, False, False]
    # a too-short float run is relabelled with the most probable mobile class (struggle here)
    assert [d.behaviour for d in out][:2] == ["struggle", "struggle"]
    assert [d.behaviour for d in out][8:] == ["struggle", "struggle"]
    # raw probabilities are kept, so a CSV can be re-scored
    assert out[0].probabilities["float"] == pytest.approx(0.8)
    c = arena.counters().to_json()
    assert c["immobility_bouts"] == 1
    assert c["immobile_s"] == pytest.approx(0.4)
    assert c["latency_to_first_bout_s"] == pytest.approx(0.3)
    assert c["behaviour_s"]["float"] == pytest.approx(0.4)
    assert c["behaviour_s"]["struggle"] == pytest.approx(0.4)
    assert c["behaviour_s"]["swim"] == pytest.approx(0.2)


def test_min_bout_rounds_frames_without_float_error() -> None:
    config = DecisionConfig(fps=15.0, min_bout_s=0.2)  # 0.2 * 15 = 3.0000000000000004
    assert config.min_bout_frames == 3
    arena, _ = run("SFFFS", config)
    assert arena.counters().to_json()["immobility_bouts"] == 1


def test_scoring_window_clips_seconds_and_counts_overlapping_bouts() -> None:
    # window [6, 10) at 1 fps; frames 10, 11 lie after the test
    config = DecisionConfig(fps=1.0, test_duration_s=10.0, scoring_window_s=4.0)
    arena, out = run("FFSSSFFFSFFF", config)
    c = arena.counters().to_json()
    assert c["immobility_bouts"] == 3
    assert c["immobile_s"] == 8.0  # 0,1,5,6,7,9,10,11: frames after the test still count in the whole run
    assert c["latency_to_first_bout_s"] == 0.0
    w = c["scoring_window"]
    assert (w["start_s"], w["end_s"]) == (6.0, 10.0)
    assert w["frames"] == 4
    assert w["immobile_s"] == 3.0  # 6, 7, 9
    assert w["behaviour_s"]["swim"] == 1.0
    assert w["immobility_bouts"] == 2  # the 5-7 bout (in progress when the window opens) and the 9-11 one
    assert w["latency_to_first_bout_s"] == 0.0
    assert c["test_complete"] is True
    assert out[8].counters.to_json()["test_complete"] is False


def test_scoring_window_latency_from_window_start() -> None:
    config = DecisionConfig(fps=1.0, test_duration_s=10.0, scoring_window_s=4.0)
    arena, _ = run("FSSSSSSSFF", config)
    w = arena.counters().to_json()["scoring_window"]
    assert w["latency_to_first_bout_s"] == 2.0  # bout at 8 s, window from 6 s
    assert w["immobility_bouts"] == 1 and w["immobile_s"] == 2.0


def test_default_window_is_last_four_minutes_of_six() -> None:
    config = DecisionConfig(fps=15.0)
    assert (config.scoring_window_start_s, config.test_duration_s) == (120.0, 360.0)
    arena = ArenaDecisions("A", SIDE, config)
    p = probs_for("float")
    for i in range(0, 15 * 370):  # 370 s of immobility
        arena.update(i, i / 15.0, p)
    c = arena.counters().to_json()
    assert c["scoring_window"]["frames"] == 15 * 240
    assert c["scoring_window"]["immobile_s"] == pytest.approx(240.0)
    assert c["immobile_s"] == pytest.approx(370.0)


def test_gap_pauses_counters_and_ends_the_run() -> None:
    config = DecisionConfig(fps=1.0, min_bout_s=3.0)
    arena = ArenaDecisions("A", SIDE, config)
    out = []
    out += arena.update(0, 0.0, probs_for("float"))
    out += arena.update(1, 1.0, probs_for("float"))
    assert out == []  # a young run is held back
    arena.gap(5, 5.0)
    for i in range(7, 10):
        out += arena.update(i, float(i), probs_for("float"))
    out += arena.flush()
    assert [d.frame_index for d in out] == [0, 1, 7, 8, 9]
    assert [d.immobile for d in out] == [False, False, True, True, True]
    c = arena.counters().to_json()
    assert c["gaps"] == {"count": 1, "frames_missing": 5, "seconds_missing": 5.0}
    assert c["immobility_bouts"] == 1 and c["immobile_s"] == 3.0
    assert c["latency_to_first_bout_s"] == 7.0
    assert c["frames_classified"] == 5  # the missing frames count for nothing


def test_gap_splits_a_bout_in_two() -> None:
    arena = ArenaDecisions("A", SIDE, DecisionConfig(fps=1.0))
    for i in (0, 1):
        arena.update(i, float(i), probs_for("float"))
    arena.gap(2, 2.0)
    for i in (4, 5):
        arena.update(i, float(i), probs_for("float"))
    assert arena.counters().to_json()["immobility_bouts"] == 2


def test_skipped_frames_without_gap_call_are_recorded_as_a_gap() -> None:
    arena = ArenaDecisions("A", SIDE, DecisionConfig(fps=10.0, gap_bridge_s=0.0))
    arena.update(0, 0.0, probs_for("float"))
    arena.update(4, 0.4, probs_for("float"))
    gaps = arena.counters().to_json()["gaps"]
    assert gaps["count"] == 1 and gaps["frames_missing"] == 3
    assert gaps["seconds_missing"] == pytest.approx(0.3)
    assert arena.counters().to_json()["immobility_bouts"] == 2  # no bridge: the gap ends the bout


def _dropping(pattern: str, config: DecisionConfig, drop_every: int, *, drop: int = 1,
              explicit_gaps: bool = False) -> tuple[ArenaDecisions, list[Decision]]:
    """``pattern`` with ``drop`` frames missing after every ``drop_every`` seen: an overloaded machine."""
    arena = ArenaDecisions("A", SIDE, config)
    out: list[Decision] = []
    seen = 0
    i = 0
    while i < len(pattern):
        out += arena.update(i, i / config.fps, probs_for(LETTER[pattern[i]]))
        seen += 1
        i += 1
        if seen % drop_every == 0 and i + drop < len(pattern):
            if explicit_gaps:
                arena.gap(drop, drop / config.fps)
            i += drop
    out += arena.flush()
    return arena, out


@pytest.mark.parametrize("explicit_gaps", [False, True])
@pytest.mark.parametrize("smoothing", ["none", "average", "hysteresis"])
def test_short_gaps_are_bridged_so_bouts_survive_dropped_frames(explicit_gaps: bool, smoothing: str) -> None:
    """Issue 24: frames dropped every few frames erased every bout (each gap ended the run)."""
    fps = 15.0
    pattern = "S" * 30 + "F" * 90 + "S" * 30 + "F" * 60  # two 6 s / 4 s floats, 14 s at 15 fps
    config = DecisionConfig(fps=fps, min_bout_s=1.0, smoothing=smoothing, test_duration_s=len(pattern) / fps,
                            scoring_window_s=len(pattern) / fps)
    full, _ = run(pattern, config)
    dropped, out = _dropping(pattern, config, drop_every=4, drop=2, explicit_gaps=explicit_gaps)  # a third missing
    c, ref = dropped.counters(), full.counters()
    assert ref.immobility_bouts == 2 and ref.immobile_s == pytest.approx(10.0)
    assert c.immobility_bouts == 2  # each bout survives its gaps, and is counted once
    # missing frames are neither mobile nor immobile: seconds are the seen frames'
    seen_float = sum(1 for d in out if d.behaviour == "float")
    assert c.immobile_s == pytest.approx(seen_float / fps)
    assert c.immobile_s / ref.immobile_s == pytest.approx(2 / 3, abs=0.05)  # the seen share of the float frames
    assert c.immobile_s + c.mobile_s == pytest.approx(c.frames_classified / fps)
    assert c.gaps.frames_missing == out[-1].frame_index + 1 - c.frames_classified  # up to the last seen frame
    assert sum(b.immobile_s for b in c.bins) == pytest.approx(c.immobile_s)  # bins still add up
    assert c.quality == "frames_missing>5%" and c.test_complete is False
    assert ref.quality == "ok" and ref.test_complete is True


def test_bridged_run_counts_its_span_for_the_minimum_bout() -> None:
    """Seen 3 + 2 bridged + 3 frames of float at 8 fps span 1 s: a bout, of 6 seen frames (0.75 s)."""
    config = DecisionConfig(fps=8.0, min_bout_s=1.0)
    arena = ArenaDecisions("A", SIDE, config)
    out = []
    for i in (0, 1, 2, 5, 6, 7):
        out += arena.update(i, i / 8.0, probs_for("float"))
    out += arena.update(8, 1.0, probs_for("swim"))
    out += arena.flush()
    c = arena.counters()
    assert c.immobility_bouts == 1 and c.immobile_s == pytest.approx(0.75)
    assert [d.immobile for d in out] == [True] * 6 + [False]
    assert c.gaps.count == 1 and c.gaps.frames_missing == 2


def test_a_gap_as_long_as_the_bridge_ends_the_run() -> None:
    config = DecisionConfig(fps=10.0, min_bout_s=0.5, gap_bridge_s=1.0)
    arena = ArenaDecisions("A", SIDE, config)
    for i in range(3):
        arena.update(i, i / 10, probs_for("float"))
    arena.gap(10, 1.0)  # 1 s: not shorter than the bridge
    for i in range(13, 16):
        arena.update(i, i / 10, probs_for("float"))
    arena.flush()
    c = arena.counters()
    assert c.immobility_bouts == 0 and c.immobile_s == 0.0  # two 0.3 s runs, neither a bout


def test_missing_share_threshold_decides_test_complete() -> None:
    config = DecisionConfig(fps=10.0, test_duration_s=10.0, scoring_window_s=5.0)
    for missing, complete in ((5, True), (6, False)):  # 5 of 100 frames is 5 %: allowed; 6 is not
        arena = ArenaDecisions("A", SIDE, config)
        for i in range(100):
            if 50 <= i < 50 + missing:
                continue
            arena.update(i, i / 10, probs_for("swim"))
        arena.flush()
        c = arena.counters()
        assert c.test_complete is complete, missing
        assert c.quality == ("ok" if complete else "frames_missing>5%")
        assert c.missing_share == pytest.approx(missing / 100)


def test_average_smoothing_removes_a_one_frame_spike() -> None:
    raw_arena, _ = run("SSFSS", DecisionConfig(fps=1.0))
    assert raw_arena.counters().to_json()["immobility_bouts"] == 1
    config = DecisionConfig(fps=1.0, smoothing="average", smoothing_window_frames=3)
    arena = ArenaDecisions("A", SIDE, config)
    lag = [len(arena.update(i, float(i), probs_for(LETTER[ch]))) for i, ch in enumerate("SSFSS")]
    assert lag == [0, 1, 1, 1, 1]  # centred window of 3: one frame of look-ahead
    rest = arena.flush()
    assert [d.frame_index for d in rest] == [4]
    c = arena.counters().to_json()
    assert c["immobility_bouts"] == 0 and c["frames_classified"] == 5
    assert c["behaviour_s"]["swim"] == 5.0


def test_average_smoothing_keeps_a_long_run() -> None:
    config = DecisionConfig(fps=1.0, smoothing="average", smoothing_window_frames=5)
    arena, out = run("SSSFFFFFFSSS", config)
    assert [d.frame_index for d in out] == list(range(12))
    assert [d.immobile for d in out] == [c == "F" for c in "SSSFFFFFFSSS"]


def test_hysteresis_needs_clear_evidence_to_switch() -> None:
    config = DecisionConfig(fps=1.0, smoothing="hysteresis")  # enter at 0.6, leave below 0.4
    arena = ArenaDecisions("A", SIDE, config)
    out = []
    for i, p_float in enumerate([0.3, 0.55, 0.65, 0.45, 0.35, 0.5]):
        rest = 1.0 - p_float
        out += arena.update(i, float(i), np.array([rest * 0.7, rest * 0.3, p_float]))
    assert [d.immobile for d in out] == [False, False, True, True, False, False]
    assert [d.behaviour for d in out] == ["swim", "swim", "float", "float", "swim", "swim"]
    assert arena.counters().to_json()["immobility_bouts"] == 1


def test_top_view_classes() -> None:
    arena = ArenaDecisions("cam0-1", ["mobile", "immobile"], DecisionConfig(fps=1.0))
    for i, p in enumerate([0.9, 0.2, 0.1, 0.8]):
        arena.update(i, float(i), np.array([p, 1 - p]))
    c = arena.counters().to_json()
    assert c["immobile_s"] == 2.0 and c["immobility_bouts"] == 1 and c["latency_to_first_bout_s"] == 1.0
    s = arena.summary()
    assert s["arena_id"] == "cam0-1" and s["immobile_classes"] == ["immobile"]
    assert s["config"]["fps"] == 1.0 and s["classes"] == ["mobile", "immobile"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fps": 0.0},
        {"fps": 15.0, "smoothing": "median"},
        {"fps": 15.0, "smoothing_window_frames": 0},
        {"fps": 15.0, "min_bout_s": -1.0},
        {"fps": 15.0, "scoring_window_s": 400.0},
        {"fps": 15.0, "immobile_classes": ()},
        {"fps": 15.0, "hysteresis_enter": 0.3, "hysteresis_exit": 0.5},
    ],
)
def test_bad_config_is_a_user_error(kwargs: dict) -> None:
    with pytest.raises(UserError):
        DecisionConfig(**kwargs)


def test_classes_without_an_immobile_class_are_refused() -> None:
    with pytest.raises(UserError, match="immobile"):
        ArenaDecisions("A", ["run", "walk"], DecisionConfig(fps=15.0))


def test_out_of_order_and_wrong_length_are_bugs() -> None:
    arena = ArenaDecisions("A", SIDE, DecisionConfig(fps=1.0))
    arena.update(3, 3.0, probs_for("swim"))
    with pytest.raises(ValueError):
        arena.update(3, 3.0, probs_for("swim"))
    with pytest.raises(ValueError):
        arena.update(4, 4.0, np.array([0.5, 0.5]))


def _reference(labels: list[str], fps: float, min_frames: int, start_s: float, end_s: float) -> dict:
    """Bouts by run-length grouping: a different algorithm from the streaming one."""
    immobile = [lab == "float" for lab in labels]
    final = [False] * len(labels)
    pos = 0
    for is_imm, group in itertools.groupby(immobile):
        n = len(list(group))
        if is_imm and n >= min_frames:
            final[pos:pos + n] = [True] * n
        pos += n
    bouts, first, win_bouts, win_first, counted = 0, None, 0, None, False
    for i, imm in enumerate(final):
        t = i / fps
        new = imm and (i == 0 or not final[i - 1])
        if new:
            bouts += 1
            first = t if first is None else first
            counted = False
        if imm and start_s <= t < end_s and not counted:
            counted = True
            win_bouts += 1
            win_first = t - start_s if win_first is None else win_first
    in_win = [start_s <= i / fps < end_s for i in range(len(labels))]
    return {
        "bouts": bouts,
        "latency": first,
        "immobile_s": sum(final) / fps,
        "win_bouts": win_bouts,
        "win_latency": win_first,
        "win_immobile_s": sum(f and w for f, w in zip(final, in_win)) / fps,
    }


@pytest.mark.parametrize("seed", range(5))
def test_random_sequences_match_run_length_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # sticky random labels, so runs of every length appear
    labels, current = [], "swim"
    for _ in range(400):
        if rng.random() < 0.25:
            current = SIDE[int(rng.integers(3))]
        labels.append(current)
    fps, min_bout_s = 4.0, 1.0
    config = DecisionConfig(fps=fps, min_bout_s=min_bout_s, test_duration_s=80.0, scoring_window_s=50.0)
    arena = ArenaDecisions("A", SIDE, config)
    out = []
    for i, lab in enumerate(labels):
        p = rng.dirichlet(np.ones(3)) * 0.3
        p[SIDE.index(lab)] += 0.7
        out += arena.update(i, i / fps, p)
    out += arena.flush()
    ref = _reference(labels, fps, 4, 30.0, 80.0)
    c = arena.counters().to_json()
    assert [d.frame_index for d in out] == list(range(400))
    assert c["immobility_bouts"] == ref["bouts"]
    assert c["latency_to_first_bout_s"] == ref["latency"]
    assert c["immobile_s"] == pytest.approx(ref["immobile_s"])
    w = c["scoring_window"]
    assert w["immobility_bouts"] == ref["win_bouts"]
    assert w["latency_to_first_bout_s"] == ref["win_latency"]
    assert w["immobile_s"] == pytest.approx(ref["win_immobile_s"])
    assert sum(c["behaviour_s"].values()) == pytest.approx(400 / fps)
