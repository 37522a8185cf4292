"""Trials in the simulator (``export-synth --trials SPEC``): empty cylinders, a hand putting a mouse
in and taking it out, the next mouse.

Why: a lab runs trials, one mouse after another in each cylinder. Automatic trial detection
(issue 13) must find when an animal appears in an empty arena and when it is taken out, robust to
lighting changes and water ripples; it needs video with empty lead-ins, insertions, removals and
the exact truth.

SPEC: segments ``kind:seconds`` separated by commas, ``kind`` = ``empty`` or ``mouse``; one
pattern for every arena, or one per arena separated by ``;``::

    empty:20,mouse:60,empty:10,mouse:60            every arena
    empty:5,mouse:30;empty:12,mouse:30,empty:5     arena0; arena1

The video lasts as long as the longest arena's pattern; shorter ones end empty. Each ``mouse``
segment is one trial of a new animal (animals are numbered ``M1``, ``M2`` ... in order of start
time, then arena). A trial starts when the mouse touches the water and ends when it is lifted
out. A gloved hand lowers the mouse, held by the tail, during the last ``HAND_IN_S`` of the empty
time before (when there is that much), lets go, and withdraws; at the end it comes back and lifts
the mouse out during the first ``HAND_IN_S`` after. Frames without a mouse in the water are
``UNLABELLED`` (-1) in the labels; the behaviour inside a trial follows the usual bouts, mice
starting to swim. ``<name>.trials.json`` holds every trial's arena, animal, start and end.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from export.annotations import UNLABELLED

__all__ = ["ABSENT", "HELD", "IN_WATER", "Segment", "Trial", "TrialPlan", "parse_trials", "plan_trials"]

KINDS = ("empty", "mouse")
HAND_IN_S = 0.8  # the hand lowers the mouse to the water / lifts it out in this long
HAND_OUT_S = 0.5  # the empty hand withdraws / comes down to grab in this long
MIN_TRIAL_S = 2.0  # shorter trials hold no clean 16-frame clip after the insertion
# mouse state per frame
ABSENT, IN_WATER, HELD = 0, 1, 2


@dataclass(frozen=True)
class Segment:
    kind: str  # "empty" or "mouse"
    duration_s: float


@dataclass(frozen=True)
class Trial:
    """The truth of one trial; frames are [start_frame, end_frame)."""

    trial_id: str
    arena: str
    arena_index: int
    trial_index: int  # within its arena, from 0
    animal: str
    animal_index: int  # over the whole video, from 0, in order of start time
    start_s: float
    end_s: float
    start_frame: int
    end_frame: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrialPlan:
    """Per arena and frame: the mouse's state (ABSENT / IN_WATER / HELD) and the hand's depth
    (-1: no hand, 0: out of the picture above, 1: down at the water), and the trials' truth."""

    state: list[np.ndarray]  # per arena, (num_frames,) int8
    hand: list[np.ndarray]  # per arena, (num_frames,) float32
    trials: list[Trial]
    num_frames: int


def parse_trials(spec: str, arenas: int) -> list[list[Segment]]:
    """One segment list per arena; ValueError with the offending part on a bad spec."""
    patterns = [p.strip() for p in spec.split(";")]
    if len(patterns) not in (1, arenas):
        raise ValueError(f"--trials: {len(patterns)} patterns for {arenas} arenas; give one for all or one per arena")
    out = []
    for pattern in patterns:
        segments = []
        for part in pattern.split(","):
            kind, sep, seconds = part.strip().partition(":")
            try:
                duration = float(seconds)
            except ValueError:
                duration = float("nan")
            if not sep or kind not in KINDS or not math.isfinite(duration) or duration <= 0:
                raise ValueError(f"--trials {part.strip()!r}: expected empty:SECONDS or mouse:SECONDS, e.g. empty:20,mouse:60")
            if kind == "mouse" and duration < MIN_TRIAL_S:
                raise ValueError(f"--trials {part.strip()!r}: a trial lasts at least {MIN_TRIAL_S:g} s")
            if segments and segments[-1].kind == kind:  # two empties in a row are one
                segments[-1] = Segment(kind, segments[-1].duration_s + duration)
                if kind == "mouse":
                    raise ValueError(f"--trials {pattern!r}: two mouse segments in a row; put empty:SECONDS between trials")
            else:
                segments.append(Segment(kind, duration))
        out.append(segments)
    return out * arenas if len(out) == 1 else out


def total_s(segments: list[list[Segment]]) -> float:
    return max(sum(s.duration_s for s in arena) for arena in segments)


def plan_trials(segments: list[list[Segment]], fps: float, num_frames: int, arena_names: list[str]) -> TrialPlan:
    """Frame ranges, mouse states and hand depths for every arena; numbering of animals.

    An empty gap between two trials is shared: the removal takes its first half at most, the
    next insertion its second half at most (each at most ``HAND_IN_S``)."""
    n_in, n_out = max(1, round(HAND_IN_S * fps)), max(1, round(HAND_OUT_S * fps))
    states, hands, raw = [], [], []
    for a, arena in enumerate(segments):
        state = np.full(num_frames, ABSENT, np.int8)
        hand = np.full(num_frames, -1.0, np.float32)
        bounds, t = [], 0.0
        for seg in arena:
            s, e = min(num_frames, round(t * fps)), min(num_frames, round((t + seg.duration_s) * fps))
            t += seg.duration_s
            if e > s:
                bounds.append((seg.kind, s, e))
        if bounds and bounds[-1][2] < num_frames:  # a shorter pattern ends empty
            kind, s, e = bounds[-1]
            bounds[-1:] = [(kind, s, num_frames)] if kind == "empty" else [bounds[-1], ("empty", e, num_frames)]
        for i, (kind, s, e) in enumerate(bounds):
            after_mouse = i > 0 and bounds[i - 1][0] == "mouse"
            before_mouse = i + 1 < len(bounds) and bounds[i + 1][0] == "mouse"
            if kind == "empty":
                gap = e - s
                lift = min(n_in, gap // 2 if before_mouse else gap) if after_mouse else 0
                lower = min(n_in, gap - lift) if before_mouse else 0
                if lift:  # the hand lifts the last mouse out
                    state[s : s + lift] = HELD
                    hand[s : s + lift] = np.linspace(1, 0, lift, endpoint=False, dtype=np.float32)
                if lower:  # the hand lowers the next mouse to the water
                    state[e - lower : e] = HELD
                    hand[e - lower : e] = np.linspace(0, 1, lower + 1, dtype=np.float32)[1:]
                continue
            state[s:e] = IN_WATER
            out = min(n_out, (e - s) // 2)
            hand[s : s + out] = np.linspace(1, 0, out + 1, dtype=np.float32)[1:]  # the empty hand withdraws
            removed = i + 1 < len(bounds)
            if removed:  # and comes back down to grab the mouse at the end
                hand[e - out : e] = np.linspace(0, 1, out + 1, dtype=np.float32)[1:]
            raw.append((s, a, sum(1 for b in bounds[:i] if b[0] == "mouse"), e))
        states.append(state)
        hands.append(hand)
    trials = []
    for i, (s, a, k, e) in enumerate(sorted(raw)):
        trials.append(Trial(f"{arena_names[a]}-t{k + 1}", arena_names[a], a, k, f"M{i + 1}", i,
                            round(s / fps, 6), round(e / fps, 6), s, e))  # fmt: skip
    return TrialPlan(states, hands, trials, num_frames)


def trial_labels(plan: TrialPlan, arena: int, bout_labels) -> np.ndarray:
    """The arena's labels: UNLABELLED outside its trials, ``bout_labels(trial, n)`` inside."""
    labels = np.full(plan.num_frames, UNLABELLED, np.int64)
    for trial in plan.trials:
        if trial.arena_index == arena:
            labels[trial.start_frame : trial.end_frame] = bout_labels(trial, trial.end_frame - trial.start_frame)
    return labels
