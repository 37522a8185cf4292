"""The recognition loop: capture -> per-arena crops -> ring + flow -> engine -> decisions -> outputs.

::

    Capture thread ──queue──> Pipeline.run (this thread)
                               │ crop_resize per arena (N, S, S, 3)                stream.clip_source
                               │ ClipRing.push: RGB + TV-L1 flow prev->current, batched over arenas
                               │ frame t+7 arrived -> clip(t) -> engine.predict (N arenas in one batch)
                               │ ArenaDecisions.update per arena
                               v
                             outputs (stream.outputs.base.Output): CSV, results, ZeroMQ, metrics, preview

The card's input crop (``crop``) decides what the clips show: the whole arena ("roi"), or the window
around the mouse cut from the arena at twice the input size ("mouse", ``stream.clip_source``).

A step-wise engine (``stepwise = True``: ``--engine streaming``, stream.engine.streaming) is fed each
frame's RGB and flow from the ring as it arrives, through one ``open_stream(arenas)`` state per
pipeline, and returns the prediction of the frame 7 before; at the end of a segment its ``flush``
gives the last 7 and forgets the segment. Decisions, stride fill and gaps are the same for both.

Latency: frame ``t`` is classified when frame ``t + 7`` arrives (its clip needs 7 future frames), so
every decision comes at least ``FUTURE_FRAMES / fps`` seconds (0.47 s at 15 fps) after its frame was
captured, plus processing time. ``--stride k`` runs the model on every k-th centre only and gives the
frames in between the last prediction; flow still runs on every frame (each clip needs all 16).

Falling behind (issue 24): on a live source or a paced (``--realtime``) video, frames the pipeline
cannot take are dropped by the capture queue, and dropped frames are unseen behaviour. So before it
comes to that, the pipeline raises the stride itself: when a frame reaches it more than
``BEHIND_LAG_S`` after its capture, or frames were dropped, the stride doubles (up to
``max_stride_frames``, one model call a second); every frame
still goes through flow and decisions, only the model runs less often. Once frames arrive fresh
again (under ``CAUGHT_UP_LAG_S`` plus the last model call's duration, which a frame arriving during
the call waits out, for ``STRIDE_RELAX_S``) it halves back towards ``--stride``. The
strides used (maximum, mean effective = frames classified per model call) go into the run block
of every summary.

At the end of the stream, and at every gap (camera outage, frames dropped on a full queue), the
last 7 frames are classified with clips padded by repeating the edge frame
(``stream.preprocess.clip_indices``) and the ring restarts, so flow never spans a discontinuity.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stream.arenas import Arena
from stream.capture import EndOfStream, Frame, Gap
from stream.decisions import ArenaDecisions, Decision
from stream.engine.base import Engine  # the one engine type (warmup / predict / close), every backend
from stream.input_check import ArenaInputCheck, InputReference, clip_input_stats, warn
from stream.outputs.base import FrameEvent, GapEvent, Output, Status, broadcast
from stream.clip_source import ClipSource
from stream.modelfile import CROP_ROI
from stream.preprocess import FUTURE_FRAMES
from stream.trials import ArenaTrial, TrialBook, TrialEnded, TrialStarted

if TYPE_CHECKING:
    from stream.live_adapt import LiveAdaptation

__all__ = ["PipelineConfig", "RunResult", "Pipeline", "format_status", "look_ahead_s"]

log = logging.getLogger(__name__)

LIVE_COUNTERS_INTERVAL_S = 1.0  # one status line a second: readable, and cheap
FPS_WINDOW_FRAMES = 30  # frames in the moving fps estimate (2 s at 15 fps)
LATENCY_SAMPLES_KEPT = 10_000  # for the end-of-run percentiles; bounded memory on a 6-minute test
META_FRAMES_KEPT = 64  # capture times kept per frame index (> clip + smoothing look-ahead)
DROPPED_REASON = "frames dropped"  # a gap we caused (full queue), as opposed to one the source had
GAP_LOG_INTERVAL_S = 10.0  # an overloaded live run drops often: one warning per interval, all counted
# Adaptive stride (issue 24). A frame that waited this long in the capture queue means the pipeline
# is behind: 0.5 s is 7-8 frames at 15 fps, an eighth of the default 64-frame queue, so the stride
# can double a few times before the queue fills and frames are dropped.
BEHIND_LAG_S = 0.5
CAUGHT_UP_LAG_S = 0.15  # about two frame periods at 15 fps: the queue is (nearly) empty again
STRIDE_RAISE_INTERVAL_S = 1.0  # let a raised stride drain the queue before raising it again
STRIDE_RELAX_S = 5.0  # caught up for this long before the stride is lowered: no flapping every second
STRIDE_RELAX_MAX_S = 60.0  # the wait before lowering doubles each time lowering made it fall behind again
# The adaptive stride goes up to one model call per second (15 frames at 15 fps): still one prediction
# per default minimum bout. Beyond it a machine is too slow for real time at all; what it drops then is
# counted, and a trial with over 5 % missing says so (stream.decisions)
MAX_ADAPTIVE_STRIDE_S = 1.0


def max_adaptive_stride(fps: float) -> int:
    """The most the adaptive stride goes to at ``fps``: one model call per ``MAX_ADAPTIVE_STRIDE_S``."""
    return max(1, round(MAX_ADAPTIVE_STRIDE_S * fps))


def look_ahead_s(fps: float) -> float:
    """The unavoidable delay of a centred clip: 7 future frames."""
    return FUTURE_FRAMES / fps


@dataclass(frozen=True)
class PipelineConfig:
    fps: float  # model frame rate (the capture delivers frames at this rate)
    size_px: int  # model input side
    stride_frames: int = 1  # run the model on every k-th centre frame, repeat its prediction between
    flow_warm_start: bool = True  # seed TV-L1 with the previous pair's flow (False: exactly as in training)
    live_counters_interval_s: float = LIVE_COUNTERS_INTERVAL_S
    adaptive_stride: bool = False  # raise the stride when behind (live or paced sources, where frames drop)
    max_stride_frames: int | None = None  # the most the adaptive stride goes to (None: max_adaptive_stride(fps))
    crop: str = CROP_ROI  # the card's input crop: "roi" (whole arena) or "mouse" (stream.clip_source)

    def __post_init__(self) -> None:
        from stream.errors import UserError

        if self.stride_frames < 1:
            raise UserError(f"--stride must be >= 1, got {self.stride_frames}")
        if self.max_stride_frames is not None and self.max_stride_frames < 1:
            raise UserError(f"the maximum stride must be >= 1, got {self.max_stride_frames}")


@dataclass
class RunResult:
    """What happened in one run (one video or one camera session)."""

    end_reason: str = ""
    gave_up: bool = False
    error: str | None = None
    stopped: bool = False  # stopped by a signal / stop event
    frames_processed: int = 0
    frames_classified: int = 0  # centre frames given a prediction (model or stride fill)
    model_calls: int = 0
    decisions: int = 0
    gaps: list[dict] = field(default_factory=list)
    frames_missing: int = 0
    wall_s: float = 0.0
    flow_s: float = 0.0
    model_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)  # capture of the centre frame -> its decision
    stride_frames: int = 1  # the stride asked for (--stride)
    stride_max_frames: int = 1  # the largest stride the pipeline used (adaptive: raised when behind)
    stride_changes: int = 0  # times the adaptive stride was raised or lowered

    @property
    def stride_mean_frames(self) -> float:
        """Frames classified per model call: the mean effective stride."""
        return self.frames_classified / self.model_calls if self.model_calls else float(self.stride_frames)

    @property
    def fps(self) -> float:
        return self.frames_processed / self.wall_s if self.wall_s > 0 else 0.0

    def latency_percentiles_s(self) -> dict[str, float | None]:
        if not self.latencies_s:
            return {"p50": None, "p95": None, "max": None}
        arr = np.asarray(self.latencies_s)
        return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)), "max": float(arr.max())}

    def to_dict(self) -> dict:
        return {
            "end_reason": self.end_reason,
            "gave_up": self.gave_up,
            "error": self.error,
            "stopped": self.stopped,
            "frames_processed": self.frames_processed,
            "frames_classified": self.frames_classified,
            "model_calls": self.model_calls,
            "gaps": self.gaps,
            "frames_missing": self.frames_missing,
            "stride": {"asked_frames": self.stride_frames, "max_frames": self.stride_max_frames,
                       "mean_frames": round(self.stride_mean_frames, 3), "changes": self.stride_changes},
            "wall_s": round(self.wall_s, 3),
            "fps": round(self.fps, 2),
            "flow_s": round(self.flow_s, 3),
            "model_s": round(self.model_s, 3),
            "capture_to_decision_s": self.latency_percentiles_s(),
        }


class Pipeline:
    """Runs one stream through the ring, the engine and the decisions of every arena.

    What happens to frames and decisions is up to ``outputs`` (``stream.outputs.base.Output``): the
    CLI passes CSV, ZeroMQ, metrics and preview; tests and benchmarks pass what they check.
    ``heartbeat`` (systemd's watchdog) is called for every item, even an empty one.
    """

    def __init__(
        self,
        engine: Engine,
        flow: Callable[..., torch.Tensor],
        arenas: Sequence[Arena],
        decisions: Mapping[str, ArenaDecisions | ArenaTrial],
        config: PipelineConfig,
        *,
        outputs: Sequence[Output] = (),
        trials: TrialBook | None = None,
        heartbeat: Callable[[], None] | None = None,
        stop_event: threading.Event | None = None,
        capture_stats: Any | None = None,
        input_reference: InputReference | None = None,
        adaptation: LiveAdaptation | None = None,
    ) -> None:
        self.engine = engine
        self.adaptation = adaptation  # a live source's own statistics: clips offered, engine swapped (stream.live_adapt)
        self.arenas = list(arenas)
        self.decisions = decisions
        self.config = config
        self.clips = ClipSource(len(self.arenas), config.size_px, flow, crop=config.crop, fps=config.fps,
                                device=engine.device, warm_start=config.flow_warm_start)
        self.ring = self.clips.ring  # segment bookkeeping (start, last index, flow calls)
        self._rois = [a.roi for a in self.arenas]
        self.outputs = list(outputs)
        self.trials = trials
        self.heartbeat = heartbeat
        self.stop_event = stop_event or threading.Event()
        self.capture_stats = capture_stats
        # issue 24.12: per arena, the trial's input statistics and labels (None: not checked)
        self.input_checks = {a.id: ArenaInputCheck(input_reference) for a in self.arenas} \
            if input_reference is not None else {}
        self.result = RunResult(stride_frames=config.stride_frames, stride_max_frames=config.stride_frames)
        self.stride_frames = config.stride_frames  # the stride in use now (adaptive: may be raised)
        self._stride_changed_at = time.monotonic()
        self._last_call_s = 0.0  # the last model call's duration (adaptive stride: frames wait behind it)
        self._caught_up_since: float | None = None
        self._lowered_at: float | None = None
        self._relax_s = STRIDE_RELAX_S
        self._meta: dict[int, tuple[float, float]] = {}  # frame index -> (timestamp_s, captured_monotonic_s)
        self._next_center: int | None = None  # next centre frame to classify in this segment
        self._last_probs: np.ndarray | None = None
        self._last_model_center: int | None = None
        self._expected: int | None = None  # index the next frame should have
        self._fps_times: deque[float] = deque(maxlen=FPS_WINDOW_FRAMES)
        self._last_status = time.monotonic()
        self._last_gap_log = -GAP_LOG_INTERVAL_S
        # step-wise engine: its state for this stream, and its predictions by centre frame until used
        self._stream = engine.open_stream(len(self.arenas)) if engine.stepwise else None
        self._stream_probs: dict[int, np.ndarray] = {}

    # -- the loop -------------------------------------------------------------------------------
    def run(self, items: Iterable[Frame | Gap | EndOfStream | None]) -> RunResult:
        """Consume capture items until the end of the stream or the stop event; always flushes."""
        start = time.monotonic()
        result = self.result
        failed = True  # an exception (an output that cannot write, a failed engine) is not an end of stream
        try:
            for item in items:
                if self.heartbeat is not None:
                    self.heartbeat()
                if self.stop_event.is_set():
                    result.stopped = True
                    result.end_reason = "stopped"
                    break
                if item is None:  # nothing arrived yet (reconnecting, slow source)
                    self._maybe_status()
                    continue
                if isinstance(item, EndOfStream):
                    result.end_reason = item.reason
                    result.gave_up = item.gave_up
                    result.error = item.error
                    break
                if isinstance(item, Gap):
                    self._gap(item.frames_missing, item.seconds_missing, item.reason)
                    self._expected = item.first_index + item.frames_missing
                    continue
                self._frame(item)
                self._maybe_status()
            else:
                result.end_reason = result.end_reason or "end of stream"
            failed = False
        finally:
            result.wall_s = time.monotonic() - start
            if not failed:  # after a failure the outputs or the engine are broken: let its error through alone
                self._end_segment()
                for arena in self.arenas:
                    for d in self.decisions[arena.id].flush():
                        self._emit(arena.id, d, None)
                result.wall_s = time.monotonic() - start
                broadcast(self.outputs, "on_status", self.status(final=True))
        return result

    def _frame(self, frame: Frame) -> None:
        if self._expected is not None and frame.index != self._expected:
            missing = frame.index - self._expected
            if missing > 0:
                if self.config.adaptive_stride:  # the queue was full: behind, whatever the wait says
                    self._adapt_stride(time.monotonic() - frame.captured_monotonic_s, dropped=True)
                self._gap(missing, missing / self.config.fps, f"{DROPPED_REASON} (pipeline too slow; try --stride)")
            else:
                log.warning("frame %d arrived after %d; ignored", frame.index, self._expected - 1)
                return
        self._expected = frame.index + 1
        if self.config.adaptive_stride and self.result.frames_processed:  # a file's first frame was read
            self._adapt_stride(time.monotonic() - frame.captured_monotonic_s)  # at the checks, before the model load
        crops = self.clips.crops(frame.image, self._rois)
        t0 = time.perf_counter()
        self.clips.push(crops, frame.index)
        dt = time.perf_counter() - t0
        self.result.flow_s += dt
        self._meta[frame.index] = (frame.timestamp_s, frame.captured_monotonic_s)
        if len(self._meta) > META_FRAMES_KEPT:
            self._meta.pop(min(self._meta))
        if self._next_center is None:
            self._next_center = frame.index
        if self._stream is not None:
            self._step(frame.index)
        if self.trials is not None:
            self.trials.on_frame(frame.index, frame.timestamp_s, self.clips.model_view(crops), self._next_center)
        self.result.frames_processed += 1
        self._fps_times.append(time.monotonic())
        windows = self.clips.frame_windows(frame.index, self._rois, (frame.image.shape[1], frame.image.shape[0]))
        broadcast(self.outputs, "on_frame", FrameEvent(frame.index, frame.timestamp_s, frame.image, dt, windows))
        center = frame.index - FUTURE_FRAMES
        while self._next_center is not None and self._next_center <= center:
            self._next_center += 1  # first: a failure inside must not have this frame classified twice
            self._classify(self._next_center - 1, frame.index)

    def _step(self, index: int) -> None:
        """Feed frame ``index`` to the step-wise engine; keep the prediction it returns (frame ``index - 7``)."""
        assert self._stream is not None
        t0, m0 = time.perf_counter(), time.monotonic()
        pred = self._stream.push(*self.clips.frame(index))
        dt = time.perf_counter() - t0
        self._last_call_s = time.monotonic() - m0
        self.result.model_s += dt
        self.result.model_calls += 1
        broadcast(self.outputs, "on_model", dt)
        if pred is not None:
            self._stream_probs[index - FUTURE_FRAMES] = np.asarray(pred.fused, dtype=np.float64)

    def _classify(self, center: int, last: int) -> None:
        assert self.ring.segment_start is not None
        use_model = (self._last_probs is None or self._last_model_center is None
                     or not 0 < center - self._last_model_center < self.stride_frames)
        clip_stats = None  # issue 24.12: the clip's input statistics, per arena
        if self._stream is not None:  # the stream predicted every frame already; stride only picks which to use
            stepped = self._stream_probs.pop(center)
            if use_model:
                self._last_probs = stepped
                self._last_model_center = center
        timestamp_s, captured_s = self._meta.get(center, (center / self.config.fps, time.monotonic()))
        if use_model and self._stream is None:
            if self.adaptation is not None:
                self._swap_engine(center, timestamp_s)
            rgb, flow = self.clips.clip(center, last)
            t0, m0 = time.perf_counter(), time.monotonic()
            probs = np.asarray(self.engine.predict(rgb, flow), dtype=np.float64)
            dt = time.perf_counter() - t0
            self._last_call_s = time.monotonic() - m0  # on the clock the frames' lag is measured on
            self.result.model_s += dt
            self.result.model_calls += 1
            broadcast(self.outputs, "on_model", dt)
            clip_stats = clip_input_stats(rgb, flow) if self.input_checks else None
            if self.adaptation is not None:  # only arenas with a running trial: an empty cylinder is not the rig's mouse
                self.adaptation.offer(center, rgb, flow, [getattr(self.decisions[a.id], "running", True) for a in self.arenas])
            self._last_probs = probs
            self._last_model_center = center
        probs = self._last_probs
        assert probs is not None
        self.result.frames_classified += 1
        for a, arena in enumerate(self.arenas):
            for d in self.decisions[arena.id].update(center, timestamp_s, probs[a]):
                self._emit(arena.id, d, captured_s)
            if self.input_checks:  # after the update: a trial that starts at this frame counts it
                check = self.input_checks[arena.id]
                if clip_stats is not None:
                    check.add_clip(clip_stats[a])
                check.add_prediction(probs[a])

    def _swap_engine(self, center: int, timestamp_s: float) -> None:
        """Between two model calls: the adapted engine, once it is built, scores from ``center`` on."""
        assert self.adaptation is not None
        engine = self.adaptation.take(center, timestamp_s)
        if engine is None:
            return
        old, self.engine = self.engine, engine
        try:
            old.close()
        except Exception:  # noqa: BLE001 - the new engine scores on
            log.debug("closing the source model's engine failed", exc_info=True)

    def _emit(self, arena_id: str, decision: Decision | TrialStarted | TrialEnded, captured_s: float | None) -> None:
        if isinstance(decision, TrialStarted):
            if arena_id in self.input_checks:
                self.input_checks[arena_id].reset()
            broadcast(self.outputs, "on_trial_start", decision.trial)
            return
        if isinstance(decision, TrialEnded):
            summary = decision.summary if decision.summary.run is not None \
                else decision.summary.with_run(self.result.to_dict())
            if arena_id in self.input_checks and summary.input_check is None:
                check = self.input_checks[arena_id].result()
                summary = dataclasses.replace(summary, input_check=check)
                warn(arena_id, decision.trial.trial_id, check["warnings"])
            broadcast(self.outputs, "on_trial_end", decision.trial, summary)
            if self.trials is not None:
                self.trials.on_trial_ended(arena_id)
            return
        self.result.decisions += 1
        if captured_s is None:
            meta = self._meta.get(decision.frame_index)
            captured_s = meta[1] if meta else None
        latency = None
        if captured_s is not None:
            latency = time.monotonic() - captured_s
            if len(self.result.latencies_s) < LATENCY_SAMPLES_KEPT:
                self.result.latencies_s.append(latency)
        broadcast(self.outputs, "on_decision", arena_id, decision, latency)

    def end_trials(self, reason: str, run_info: dict) -> None:
        """End every running trial (the input ended, or a stop): summaries carry ``run_info``."""
        if self.trials is None:
            return
        for arena_id, item in self.trials.end_all(reason):
            if isinstance(item, TrialEnded):
                item = TrialEnded(item.trial, item.summary.with_run(run_info))
            self._emit(arena_id, item, None)

    def _end_segment(self) -> None:
        """Classify the segment's last (up to 7) frames with edge-padded clips, then restart the ring."""
        last = self.ring.last_index
        if self._stream is not None and last is not None:
            t0 = time.perf_counter()
            tail = self._stream.flush()  # the last frames, their look-ahead padded as the clips are
            self.result.model_s += time.perf_counter() - t0
            for i, pred in enumerate(tail):
                self._stream_probs[last - len(tail) + 1 + i] = np.asarray(pred.fused, dtype=np.float64)
        if last is not None and self._next_center is not None:
            while self._next_center <= last:
                self._next_center += 1
                self._classify(self._next_center - 1, last)
        self.clips.reset()
        self._stream_probs.clear()
        self._next_center = None
        # the last prediction stays: a centre less than a stride after it (a few frames dropped) is
        # filled with it, as stride fill does; after a longer gap the model runs on the first centre.
        # Restarting the model at every drop cost a model call per gap, which made the next drop
        # (issue 24: a run behind at stride 8 still called the model every 1.7 frames)

    def _adapt_stride(self, lag_s: float, *, dropped: bool = False) -> None:
        """Raise the stride when frames wait too long in the queue or were dropped from it; lower it
        once they arrive fresh again. A stride that had to be raised again soon after it was lowered
        waits twice as long before the next lowering (up to ``STRIDE_RELAX_MAX_S``): no flapping."""
        now = time.monotonic()
        stride, base, result = self.stride_frames, self.config.stride_frames, self.result
        if dropped or lag_s > BEHIND_LAG_S:
            self._caught_up_since = None
            cap = max(base, self.config.max_stride_frames or max_adaptive_stride(self.config.fps))
            if stride < cap and now - self._stride_changed_at >= STRIDE_RAISE_INTERVAL_S:
                if self._lowered_at is not None and now - self._lowered_at < self._relax_s * 2:
                    self._relax_s = min(STRIDE_RELAX_MAX_S, self._relax_s * 2)
                self.stride_frames = min(cap, stride * 2)
                self._stride_changed_at = now
                result.stride_changes += 1
                result.stride_max_frames = max(result.stride_max_frames, self.stride_frames)
                log.warning("falling behind (%s): model on every %d%s frame", "frames dropped" if dropped else
                            f"frames wait {lag_s:.2f} s", self.stride_frames, _ordinal_suffix(self.stride_frames))
            return
        # a frame that arrived while a model call ran waits for it: that wait is the call's, not a backlog
        # (a 0.3 s call kept a run that had been slowed for a while at the ceiling stride for good)
        if lag_s >= CAUGHT_UP_LAG_S + self._last_call_s or stride <= base:
            self._caught_up_since = None
            return
        if self._caught_up_since is None:
            self._caught_up_since = now
        elif now - self._caught_up_since >= self._relax_s:
            self.stride_frames = max(base, stride // 2)
            self._stride_changed_at = self._lowered_at = now
            self._caught_up_since = None
            result.stride_changes += 1
            log.info("caught up: model on every %d%s frame again", self.stride_frames,
                     _ordinal_suffix(self.stride_frames))

    def _gap(self, frames_missing: int, seconds_missing: float, reason: str) -> None:
        self._end_segment()
        self.result.gaps.append({"frames_missing": int(frames_missing), "seconds_missing": round(float(seconds_missing), 3),
                                 "reason": reason})
        self.result.frames_missing += int(frames_missing)
        now = time.monotonic()
        if now - self._last_gap_log >= GAP_LOG_INTERVAL_S:
            self._last_gap_log = now
            log.warning("gap: %d frames (%.2f s) missing: %s (%d gaps so far)", frames_missing, seconds_missing,
                        reason, len(self.result.gaps))
        for arena in self.arenas:
            # no flush: a short gap is bridged (the run goes on, stream.decisions); what a long one
            # decides comes out with the arena's next update, in order, as in a re-scoring
            self.decisions[arena.id].gap(frames_missing, seconds_missing)
        broadcast(self.outputs, "on_gap", GapEvent(int(frames_missing), float(seconds_missing), reason,
                                                   dropped=reason.startswith(DROPPED_REASON)))

    # -- live status ----------------------------------------------------------------------------
    def current_fps(self) -> float:
        if len(self._fps_times) < 2:
            return 0.0
        span = self._fps_times[-1] - self._fps_times[0]
        return (len(self._fps_times) - 1) / span if span > 0 else 0.0

    def _maybe_status(self) -> None:
        now = time.monotonic()
        if now - self._last_status < self.config.live_counters_interval_s:
            return
        self._last_status = now
        broadcast(self.outputs, "on_status", self.status())

    def status(self, *, final: bool = False) -> Status:
        """A snapshot for the live counters line and the sampled metrics."""
        stats = self.capture_stats
        return Status(
            frames_processed=self.result.frames_processed,
            frames_captured=int(getattr(stats, "source_frames", 0)) if stats is not None else 0,
            fps=self.current_fps(),
            frames_dropped=int(getattr(stats, "dropped_queue_full", 0)) if stats is not None else 0,
            gaps=len(self.result.gaps),
            arenas={arena.id: self.decisions[arena.id].counters() for arena in self.arenas},
            trials=self.trials.snapshot() if self.trials is not None else {},
            latency_p50_s=_median_recent(self.result.latencies_s),
            final=final,
            stride_frames=self.stride_frames,
        )


def _ordinal_suffix(n: int) -> str:
    return "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _median_recent(values: list[float], n: int = 100) -> float | None:
    if not values:
        return None
    return float(np.median(values[-n:]))


def format_status(status: Status, last_behaviour: dict[str, str] | None = None) -> str:
    """One line of live counters, e.g. ``t=12.3s 14.9 fps | A1 float imm 3.2s bouts 1 | ...``."""
    parts = []
    ts = [c.last_timestamp_s for c in status.arenas.values() if c is not None and c.last_timestamp_s is not None]
    head = f"t={max(ts):.1f}s" if ts else "t=-"
    head += f" {status.fps:.1f} fps"
    if status.frames_dropped:
        head += f" dropped {status.frames_dropped}"
    if status.gaps:
        head += f" gaps {status.gaps}"
    if getattr(status, "stride_frames", 1) > 1:
        head += f" stride {status.stride_frames}"
    parts.append(head)
    for arena_id, c in status.arenas.items():
        if c is None:
            parts.append(f"{arena_id} waiting")
            continue
        label = (last_behaviour or {}).get(arena_id, "-")
        parts.append(f"{arena_id} {label} immobile {c.immobile_s:.1f}s bouts {c.immobility_bouts}")
    return " | ".join(parts)
