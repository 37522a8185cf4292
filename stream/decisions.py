"""From per-frame class probabilities to behaviour decisions and the forced-swim-test counters.

The model says, for every frame, how probable each class is. A lab wants something else: what the
mouse is doing now, how long it has been immobile, how many immobility bouts it had, and when the
first one started, over the whole test and over the scored window (by convention the last 4 minutes
of a 6-minute test). This module turns the first into the second, one arena at a time::

    probs (K,) per frame --> smoothing --> min-bout rule --> Decision (+ counters snapshot)
                             none|average|   immobile runs shorter than min_bout_s
                             hysteresis      are relabelled mobile

Conventions (the counters are only useful if everyone reads them the same way):

* Every classified frame stands for one frame period, ``1 / fps`` seconds, of the behaviour it is
  labelled with; seconds are computed as ``frames / fps`` so they never drift.
* ``timestamp_s`` is the test clock: seconds since the start of the test (frame 0 at 0 s). It decides
  whether a frame lies inside the scoring window ``[test_duration_s - scoring_window_s,
  test_duration_s)``, by default ``[120 s, 360 s)``. Frames at or after ``test_duration_s`` are still
  classified, emitted and counted in the whole-run counters, but never in the scoring window.
* An immobility bout is a maximal run of consecutive immobile frames lasting at least ``min_bout_s``.
  Shorter runs are not bouts and their frames are counted as mobile: they are relabelled with the
  most probable mobile class. To decide, the frames of a young run are held back until the run is
  long enough or ends, so ``update`` may return no decision now and several later.
* Latency to the first bout is the test time at which the first bout began. In the scoring window a
  bout counts when any of its frames lies in the window; the window latency is measured from the
  window start to the first window frame of a bout (0 when a bout is in progress as the window opens),
  and the window's immobile seconds are only the bout frames inside the window.
* A camera outage or frames dropped under load (``gap``) pause the counters: missing frames count
  for no behaviour, neither mobile nor immobile. A gap shorter than ``gap_bridge_s`` (1 s) is
  bridged: the run in progress goes on across it (an overloaded machine dropping a few frames every
  second must not end every bout before it reaches the minimum, issue 24), the minimum-bout rule
  measures a run from its first to its last seen frame (the bridged frames included), and only the
  seen frames are counted as seconds. A longer gap ends any run in progress (nobody saw what the
  mouse did), so a bout never spans it. Missing frames are counted when the next frame arrives:
  frames missing after a trial's last decided frame belong to no trial (as in a re-scoring, which
  sees a gap only as a jump between two rows of the CSV).
* A trial whose missing share (missing / (classified + missing) frames) is above
  ``max_missing_share`` (5 %) is not ``test_complete``; ``Counters.quality`` says why.
* ``Decision.probabilities`` are the model's raw probabilities for that frame, so a CSV of decisions
  can be re-scored later with other settings; ``behaviour`` is the label after smoothing and the
  min-bout rule.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from stream.counters import BinCounts, Counters, GapCounts, WindowCounts
from stream.errors import UserError
from stream.trial_summary import TrialSummary

__all__ = [
    "BIN_S_DEFAULT",
    "GAP_BRIDGE_S_DEFAULT",
    "MAX_MISSING_SHARE_DEFAULT",
    "QUALITY_OK",
    "IMMOBILE_CLASSES_DEFAULT",
    "SMOOTHING_MODES",
    "ArenaDecisions",
    "checked_bin_count",
    "Decision",
    "DecisionConfig",
]

log = logging.getLogger(__name__)

IMMOBILE_CLASSES_DEFAULT = ("float", "immobile")  # side-view "float", top-view "immobile" (CONTRACTS)
SMOOTHING_MODES = ("none", "average", "hysteresis")
BIN_S_DEFAULT = 60.0  # labs read immobility per minute (bins 0-1 ... 5-6 min of a 6-minute test)
# No bin shorter than 1 s: a bin holds whole frames (15 at 15 fps) and a bout (>= the 1 s minimum) is
# counted in the bin where it begins, so shorter bins say nothing more; 0.0001 s bins once took
# minutes and gigabytes (3.6 million bins per 6-minute trial).
MIN_BIN_S = 1.0
# One results.csv column and one summary entry per bin: 1000 stays inside every spreadsheet's column
# limit (LibreOffice before 7.4: 1024) and keeps a summary small; a 6-minute test at 1 s needs 360.
MAX_BINS = 1000
# Hysteresis on P(immobile) = sum of the immobile classes' probabilities: enter the immobile state only
# when clearly immobile, leave it only when clearly mobile; the 0.2 dead band absorbs the frame-to-frame
# jitter of a model hovering around 0.5, which is what makes raw argmax labels flicker.
HYSTERESIS_ENTER_DEFAULT = 0.6
HYSTERESIS_EXIT_DEFAULT = 0.4
HYSTERESIS_START = 0.5  # first frame (or first after a gap): whichever of immobile/mobile is likelier
# Tolerance when converting min_bout_s to frames: 0.2 s at 15 fps is 3 frames, not 4 because
# 0.2 * 15 = 3.0000000000000004 in floating point.
_FRAME_ROUNDING_EPS = 1e-9
# Test clocks are logged (and, in trials, decided on) to 1e-6 s, so the frame before the end of a
# 4 s test at 15 fps sits at 3.933333 s, and 3.933333 + 1/15 falls 3e-7 s short of 4 s.
_CLOCK_TOLERANCE_S = 1e-6
# Issue 24: a gap shorter than this does not end a bout. 1 s is the default minimum bout, so a gap
# bridged can never hide a whole bout-length of behaviour; an overloaded machine drops a few frames at
# a time, well under it, while a camera outage (capture.GAP_THRESHOLD_S, also 1 s) is not bridged.
GAP_BRIDGE_S_DEFAULT = 1.0
# Issue 24: above this share of missing frames a trial is not a complete test. 5 % of a 6-minute test
# is 18 s that nobody scored: a complete trial's figures cover (nearly) all of its time, and a row that
# does not must not look like one (the threshold issue 24 proposed; DecisionConfig.max_missing_share).
MAX_MISSING_SHARE_DEFAULT = 0.05
QUALITY_OK = "ok"


def checked_bin_count(bin_s: float, test_duration_s: float) -> int:
    """Bins of ``bin_s`` covering the test (the last one may be shorter); a one-line UserError for a
    bin under ``MIN_BIN_S`` or more than ``MAX_BINS`` bins. Every tool that bins a test (stream-run,
    stream-report, export-validate) goes through this, so none can be asked for millions of bins."""
    if not (math.isfinite(bin_s) and bin_s >= MIN_BIN_S):
        raise UserError(f"time bin (--bin-s) must be at least {MIN_BIN_S:g} s, got {bin_s:g}")
    count = max(1, math.ceil(test_duration_s / bin_s - _FRAME_ROUNDING_EPS))
    if count > MAX_BINS:
        raise UserError(f"--bin-s {bin_s:g} over a {test_duration_s:g} s test makes {count} bins; "
                        f"at most {MAX_BINS}: choose a longer bin")
    return count


@dataclass(frozen=True)
class DecisionConfig:
    """How probabilities become decisions and counters. Validated once, here."""

    fps: float  # model/frame rate: one decision stands for 1/fps seconds
    smoothing: str = "none"  # "none" | "average" (centred moving average of probs) | "hysteresis"
    smoothing_window_frames: int = 5  # frames in the moving average (centred: holds back (n-1)//2 frames)
    min_bout_s: float = 0.0  # immobility shorter than this is not a bout and is counted mobile
    immobile_classes: tuple[str, ...] = IMMOBILE_CLASSES_DEFAULT  # classes that mean "immobile"
    test_duration_s: float = 360.0  # a standard FST lasts 6 minutes
    scoring_window_s: float = 240.0  # scored over the LAST scoring_window_s of the test (Porsolt: last 4 min)
    hysteresis_enter: float = HYSTERESIS_ENTER_DEFAULT  # P(immobile) at or above which immobility starts
    hysteresis_exit: float = HYSTERESIS_EXIT_DEFAULT  # P(immobile) below which immobility ends
    bin_s: float = BIN_S_DEFAULT  # time bins of the test: bin k covers (k-1)*bin_s to k*bin_s
    gap_bridge_s: float = GAP_BRIDGE_S_DEFAULT  # a gap shorter than this does not end a bout (0: every gap does)
    max_missing_share: float = MAX_MISSING_SHARE_DEFAULT  # above it (0..1) a trial is not test_complete

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise UserError(f"fps must be a positive number, got {self.fps}")
        if self.smoothing not in SMOOTHING_MODES:
            raise UserError(f"smoothing must be one of {', '.join(SMOOTHING_MODES)}, got {self.smoothing!r}")
        if int(self.smoothing_window_frames) != self.smoothing_window_frames or self.smoothing_window_frames < 1:
            raise UserError(f"smoothing window must be a whole number of frames >= 1, got {self.smoothing_window_frames}")
        if not (math.isfinite(self.min_bout_s) and self.min_bout_s >= 0):
            raise UserError(f"minimum bout duration must be >= 0 s, got {self.min_bout_s}")
        if isinstance(self.immobile_classes, str) or not self.immobile_classes:
            raise UserError("immobile classes must be a non-empty list of class names, e.g. float,immobile")
        object.__setattr__(self, "immobile_classes", tuple(self.immobile_classes))
        if not (math.isfinite(self.test_duration_s) and self.test_duration_s > 0):
            raise UserError(f"test duration must be > 0 s, got {self.test_duration_s}")
        if not (0 < self.scoring_window_s <= self.test_duration_s):
            raise UserError(
                f"scoring window must be > 0 s and at most the test duration ({self.test_duration_s} s), "
                f"got {self.scoring_window_s}"
            )
        checked_bin_count(self.bin_s, self.test_duration_s)
        if not (math.isfinite(self.gap_bridge_s) and self.gap_bridge_s >= 0):
            raise UserError(f"gap bridge must be >= 0 s, got {self.gap_bridge_s}")
        if not (0.0 <= self.max_missing_share <= 1.0):
            raise UserError(f"maximum missing share must be in [0, 1], got {self.max_missing_share}")
        if not (0.0 <= self.hysteresis_exit <= self.hysteresis_enter <= 1.0):
            raise UserError(
                f"hysteresis thresholds need 0 <= exit <= enter <= 1, got exit={self.hysteresis_exit} "
                f"enter={self.hysteresis_enter}"
            )

    @property
    def frame_period_s(self) -> float:
        return 1.0 / self.fps

    @property
    def scoring_window_start_s(self) -> float:
        return self.test_duration_s - self.scoring_window_s

    @property
    def bin_count(self) -> int:
        """Bins covering the test duration (the last one may be shorter)."""
        return checked_bin_count(self.bin_s, self.test_duration_s)

    @property
    def min_bout_frames(self) -> int:
        """Shortest immobile run, in frames, that is a bout (at least 1)."""
        return max(1, math.ceil(self.min_bout_s * self.fps - _FRAME_ROUNDING_EPS))

    def bridges(self, frames_missing: int) -> bool:
        """Whether a gap of ``frames_missing`` frames is bridged (decided on frames, not on the source's
        seconds, so that a re-scoring from the CSV's frame indices decides exactly as the live run)."""
        return frames_missing / self.fps < self.gap_bridge_s - _FRAME_ROUNDING_EPS


@dataclass(frozen=True)
class Decision:
    """What one frame of one arena was judged to be, with the arena's counters right after it."""

    frame_index: int
    timestamp_s: float  # test clock, seconds since the start of the test
    behaviour: str  # label after smoothing and the min-bout rule
    immobile: bool
    probabilities: dict[str, float]  # the model's raw per-class probabilities for this frame
    counters: Counters | None = None  # ArenaDecisions.counters() right after this frame


@dataclass
class _Labelled:
    """A frame after smoothing, before the min-bout rule."""

    frame_index: int
    timestamp_s: float
    probabilities: dict[str, float]
    behaviour: str
    immobile: bool
    mobile_behaviour: str  # the label to use if this frame turns out to be part of a too-short run


@dataclass
class _Tally:
    """Frame counts for one scope (whole run or scoring window)."""

    frames: np.ndarray  # (K,) int64 frames per class
    bouts: int = 0
    first_bout_s: float | None = None  # whole run: test time the first bout began


class ArenaDecisions:
    """Decisions and counters for one arena (one mouse). Feed frames in order; see the module doc."""

    def __init__(self, arena_id: str, classes: list[str], config: DecisionConfig) -> None:
        if not classes or len(set(classes)) != len(classes):
            raise UserError(f"arena {arena_id}: class names must be non-empty and unique, got {classes}")
        immobile = [c for c in classes if c in config.immobile_classes]
        if not immobile:
            raise UserError(
                f"arena {arena_id}: none of the immobile classes {list(config.immobile_classes)} is a model "
                f"class {list(classes)}; pass immobile classes that the model has"
            )
        self.arena_id = arena_id
        self.classes = list(classes)
        self.config = config
        self._immobile_mask = np.array([c in config.immobile_classes for c in self.classes])
        self._immobile_idx = np.flatnonzero(self._immobile_mask)
        self._mobile_idx = np.flatnonzero(~self._immobile_mask)
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        k = len(self.classes)
        # smoothing state
        self._avg_ahead = (config.smoothing_window_frames - 1) // 2
        self._avg_behind = config.smoothing_window_frames - 1 - self._avg_ahead
        self._avg_buffer: deque[tuple[int, float, np.ndarray]] = deque()  # frames seen, for the average
        self._avg_next = 0  # position in _avg_buffer of the next frame to label
        self._hyst_immobile: bool | None = None
        # min-bout state
        self._pending: list[_Labelled] = []  # a young immobile run, held back
        self._run_confirmed = False  # the current immobile run is already a bout
        # counting state
        self._ready: list[Decision] = []  # decided during gap(), returned by the next update/flush
        self._whole = _Tally(frames=np.zeros(k, dtype=np.int64))
        self._window = _Tally(frames=np.zeros(k, dtype=np.int64))
        self._window_latency_s: float | None = None
        self._bin_frames = np.zeros((config.bin_count, k), dtype=np.int64)
        self._bin_bouts = np.zeros(config.bin_count, dtype=np.int64)
        self._in_bout = False  # the last emitted frame was part of a bout (and no gap since)
        self._bout_counted_in_window = False
        self._frames_classified = 0
        self._last_index: int | None = None
        self._last_timestamp_s: float | None = None
        self._gap_since_last = False
        self._gaps = 0
        self._gap_frames = 0
        self._gap_seconds = 0.0
        self._gap_uncounted: tuple[int, int, float] = (0, 0, 0.0)  # (gaps, frames, seconds) until the next frame

    # ------------------------------------------------------------------ public API
    def update(self, frame_index: int, timestamp_s: float, probs: np.ndarray) -> list[Decision]:
        """Take the model's probabilities for the next frame; return the decisions now final (0..n)."""
        if hasattr(probs, "detach"):  # a torch tensor, possibly on the GPU: without importing torch here
            probs = probs.detach().cpu().numpy()
        p = np.asarray(probs, dtype=np.float64).reshape(-1)
        if p.shape[0] != len(self.classes):
            raise ValueError(f"arena {self.arena_id}: expected {len(self.classes)} probabilities, got {p.shape[0]}")
        if not np.all(np.isfinite(p)):
            raise ValueError(f"arena {self.arena_id}: non-finite probabilities at frame {frame_index}: {p}")
        frame_index = int(frame_index)
        if self._last_index is not None and frame_index <= self._last_index:
            raise ValueError(
                f"arena {self.arena_id}: frames must arrive in order, got {frame_index} after {self._last_index}"
            )
        if self._last_index is not None and frame_index > self._last_index + 1 and not self._gap_since_last:
            missing = frame_index - self._last_index - 1
            log.debug("arena %s: frames %d..%d missing without gap(); recording a gap", self.arena_id,
                      self._last_index + 1, frame_index - 1)
            self.gap(missing, missing / self.config.fps)
        self._last_index = frame_index
        self._gap_since_last = False
        count, frames, seconds = self._gap_uncounted
        self._gaps, self._gap_frames, self._gap_seconds = self._gaps + count, self._gap_frames + frames, \
            self._gap_seconds + seconds
        self._gap_uncounted = (0, 0, 0.0)
        out, self._ready = self._ready, []
        for labelled in self._smooth(frame_index, float(timestamp_s), p):
            out.extend(self._min_bout(labelled))
        return out

    def gap(self, frames_missing: int, seconds_missing: float) -> None:
        """Record missing frames. A long gap (an outage) decides what is held back and ends the run in
        progress; one shorter than ``gap_bridge_s`` is bridged: smoothing and the run go on across it."""
        if not self.config.bridges(int(frames_missing)):
            self._ready.extend(self._drain())
            self._in_bout = False
            self._bout_counted_in_window = False
        # counted when the next frame arrives: missing frames after a trial's last frame (it ended at the
        # next one) belong to no trial, and a re-scoring, which sees gaps as jumps between rows, agrees
        self._gap_uncounted = (self._gap_uncounted[0] + 1, self._gap_uncounted[1] + max(0, int(frames_missing)),
                               self._gap_uncounted[2] + max(0.0, float(seconds_missing)))
        self._gap_since_last = True
        log.debug("arena %s: gap of %d frames (%.2f s) recorded", self.arena_id, frames_missing, seconds_missing)

    def flush(self) -> list[Decision]:
        """End of stream: decide every frame still held back (a young immobile run counts as mobile)."""
        out, self._ready = self._ready, []
        out.extend(self._drain())
        return out

    def counters(self) -> Counters:
        """Live counters. Seconds are frames / fps; see the module doc for the definitions."""
        period = self.config.frame_period_s
        whole, window = self._whole, self._window
        imm = self._immobile_mask

        def per_class(frames: np.ndarray) -> dict[str, float]:
            return {c: float(n) * period for c, n in zip(self.classes, frames.tolist())}

        cfg = self.config
        seen_and_missing = self._frames_classified + self._gap_frames
        missing_share = self._gap_frames / seen_and_missing if seen_and_missing else 0.0
        quality = QUALITY_OK if missing_share <= cfg.max_missing_share + _FRAME_ROUNDING_EPS \
            else f"frames_missing>{cfg.max_missing_share * 100:g}%"
        bins = tuple(
            BinCounts(start_s=b * cfg.bin_s, end_s=min((b + 1) * cfg.bin_s, cfg.test_duration_s),
                      behaviour_s=per_class(self._bin_frames[b]),
                      immobile_s=float(self._bin_frames[b][imm].sum()) * period,
                      immobility_bouts=int(self._bin_bouts[b]))
            for b in range(cfg.bin_count)
        )
        return Counters(
            frames_classified=self._frames_classified,
            behaviour_s=per_class(whole.frames),
            immobile_s=float(whole.frames[imm].sum()) * period,
            mobile_s=float(whole.frames[~imm].sum()) * period,
            immobility_bouts=whole.bouts,
            latency_to_first_bout_s=whole.first_bout_s,
            last_timestamp_s=self._last_timestamp_s,
            test_complete=self._last_timestamp_s is not None and quality == QUALITY_OK
            and self._last_timestamp_s + period >= cfg.test_duration_s - _CLOCK_TOLERANCE_S,
            quality=quality,
            scoring_window=WindowCounts(
                start_s=cfg.scoring_window_start_s,
                end_s=cfg.test_duration_s,
                frames=int(window.frames.sum()),
                behaviour_s=per_class(window.frames),
                immobile_s=float(window.frames[imm].sum()) * period,
                mobile_s=float(window.frames[~imm].sum()) * period,
                immobility_bouts=window.bouts,
                latency_to_first_bout_s=self._window_latency_s,
            ),
            gaps=GapCounts(count=self._gaps, frames_missing=self._gap_frames, seconds_missing=self._gap_seconds),
            bins=bins,
        )

    @property
    def last_index(self) -> int | None:
        """Index of the last frame given to ``update`` (None before the first)."""
        return self._last_index

    def summary(self) -> dict:
        """End-of-test summary as JSON: what was counted, with what settings, for which classes and arena."""
        return self.trial_summary().to_json()

    def trial_summary(self, *, trial: dict | None = None, provenance: dict | None = None) -> TrialSummary:
        """The typed end-of-test result (``summary()`` is its JSON without trial and provenance)."""
        config = asdict(self.config)
        config["immobile_classes"] = list(self.config.immobile_classes)
        return TrialSummary(arena_id=self.arena_id, classes=tuple(self.classes),
                            immobile_classes=tuple(self.classes[i] for i in self._immobile_idx), config=config,
                            frames_held_back=len(self._pending) + len(self._avg_buffer) - self._avg_next,
                            counters=self.counters(), trial=trial, provenance=provenance)

    # ------------------------------------------------------------------ smoothing
    def _label(self, frame_index: int, timestamp_s: float, raw: np.ndarray, scores: np.ndarray,
               immobile: bool | None = None) -> _Labelled:
        """Label a frame from ``scores`` (smoothed probs); ``immobile`` forces the state (hysteresis)."""
        if immobile is None:
            best = int(np.argmax(scores))
            immobile = bool(self._immobile_mask[best])
        else:
            pool = self._immobile_idx if immobile else self._mobile_idx
            best = int(pool[np.argmax(scores[pool])]) if pool.size else int(np.argmax(scores))
        if self._mobile_idx.size:
            mobile = self.classes[int(self._mobile_idx[np.argmax(scores[self._mobile_idx])])]
        else:  # a model with only immobile classes: nothing to relabel to
            mobile = self.classes[best]
        return _Labelled(
            frame_index=frame_index,
            timestamp_s=timestamp_s,
            probabilities={c: float(v) for c, v in zip(self.classes, raw.tolist())},
            behaviour=self.classes[best],
            immobile=immobile,
            mobile_behaviour=mobile,
        )

    def _smooth(self, frame_index: int, timestamp_s: float, p: np.ndarray) -> list[_Labelled]:
        mode = self.config.smoothing
        if mode == "none":
            return [self._label(frame_index, timestamp_s, p, p)]
        if mode == "hysteresis":
            p_imm = float(p[self._immobile_mask].sum())
            if self._hyst_immobile is None:
                self._hyst_immobile = p_imm >= HYSTERESIS_START  # no history yet: the likelier state
            elif self._hyst_immobile and p_imm < self.config.hysteresis_exit:
                self._hyst_immobile = False
            elif not self._hyst_immobile and p_imm >= self.config.hysteresis_enter:
                self._hyst_immobile = True
            return [self._label(frame_index, timestamp_s, p, p, immobile=self._hyst_immobile)]
        # centred moving average: frame t is labelled once t + ahead has arrived
        self._avg_buffer.append((frame_index, timestamp_s, p))
        out = []
        while self._avg_next + self._avg_ahead < len(self._avg_buffer):
            out.append(self._average_label(self._avg_next))
            self._advance_average()
        return out

    def _average_label(self, pos: int) -> _Labelled:
        lo = max(0, pos - self._avg_behind)
        hi = min(len(self._avg_buffer), pos + self._avg_ahead + 1)
        mean = np.mean([self._avg_buffer[i][2] for i in range(lo, hi)], axis=0)
        index, ts, raw = self._avg_buffer[pos]
        return self._label(index, ts, raw, mean)

    def _advance_average(self) -> None:
        self._avg_next += 1
        while self._avg_next > self._avg_behind:  # keep only what later frames' windows still need
            self._avg_buffer.popleft()
            self._avg_next -= 1

    def _drain(self) -> list[Decision]:
        """Decide everything held back (smoothing look-ahead, young run) and reset the run and smoothing."""
        out: list[Decision] = []
        while self._avg_next < len(self._avg_buffer):
            out.extend(self._min_bout(self._average_label(self._avg_next)))
            self._avg_next += 1
        self._avg_buffer.clear()
        self._avg_next = 0
        self._hyst_immobile = None
        out.extend(self._emit(f, as_immobile=False) for f in self._pending)
        self._pending = []
        self._run_confirmed = False
        return out

    # ------------------------------------------------------------------ min-bout rule and counting
    def _min_bout(self, f: _Labelled) -> list[Decision]:
        if not f.immobile:
            out = [self._emit(g, as_immobile=False) for g in self._pending]
            self._pending = []
            self._run_confirmed = False
            out.append(self._emit(f, as_immobile=False))
            return out
        if self._run_confirmed:
            return [self._emit(f, as_immobile=True)]
        self._pending.append(f)
        # the run's span in frames: bridged gaps inside it count (nobody saw the mouse move), so an
        # overloaded machine that drops frames still confirms a bout once it has lasted min_bout_s
        if f.frame_index - self._pending[0].frame_index + 1 < self.config.min_bout_frames:
            return []
        self._run_confirmed = True
        out = [self._emit(g, as_immobile=True) for g in self._pending]
        self._pending = []
        return out

    def _emit(self, f: _Labelled, *, as_immobile: bool) -> Decision:
        behaviour = f.behaviour if (as_immobile or not f.immobile) else f.mobile_behaviour
        immobile = as_immobile and f.immobile
        k = self._class_index[behaviour]
        self._whole.frames[k] += 1
        in_window = self.config.scoring_window_start_s <= f.timestamp_s < self.config.test_duration_s
        if in_window:
            self._window.frames[k] += 1
        b = int(f.timestamp_s // self.config.bin_s) if 0.0 <= f.timestamp_s < self.config.test_duration_s else -1
        if 0 <= b < self.config.bin_count:
            self._bin_frames[b, k] += 1
        if immobile:
            if not self._in_bout:
                self._in_bout = True
                self._bout_counted_in_window = False
                self._whole.bouts += 1
                if 0 <= b < self.config.bin_count:
                    self._bin_bouts[b] += 1
                if self._whole.first_bout_s is None:
                    self._whole.first_bout_s = f.timestamp_s
            if in_window and not self._bout_counted_in_window:
                self._bout_counted_in_window = True
                self._window.bouts += 1
                if self._window_latency_s is None:
                    self._window_latency_s = f.timestamp_s - self.config.scoring_window_start_s
        else:
            self._in_bout = False
            self._bout_counted_in_window = False
        self._frames_classified += 1
        self._last_timestamp_s = f.timestamp_s
        return Decision(
            frame_index=f.frame_index,
            timestamp_s=f.timestamp_s,
            behaviour=behaviour,
            immobile=immobile,
            probabilities=f.probabilities,
            counters=self.counters(),
        )
