"""Pipeline loop: when frames are classified, stride fill, end-of-stream padding, gaps, stop, outputs.

The engine is a recording stand-in (the real engines have their own tests); flow is the real TV-L1
with a cheap setting, decisions the real ``ArenaDecisions``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from stream.arenas import Arena
from stream.capture import EndOfStream, Frame, Gap
from stream.decisions import ArenaDecisions, DecisionConfig
from stream.flow import TVL1, FlowConfig
from stream.outputs.base import Output
from stream.outputs.metrics import Metrics
from stream.outputs.preview import PreviewWriter
from stream.pipeline import Pipeline, PipelineConfig, format_status, look_ahead_s
from stream.preprocess import Roi, crop_resize, rgb_clip

S = 32
FPS = 15.0
CLASSES = ["swim", "struggle", "float"]
CHEAP_FLOW = FlowConfig(nscales=1, warps=1, inner_iterations=5, outer_iterations=1)
ARENAS = [Arena("A1", Roi(0, 0, 40, 40)), Arena("A2", Roi(40, 0, 40, 40))]


class RecordingEngine:
    """Engine stand-in: probabilities from the centre frame's mean brightness; records each call."""

    name = "recording"
    stepwise = False  # fed whole clips (stream.engine.base.Engine.stepwise)
    device = "cpu"
    classes = CLASSES
    input_size_px = S

    def __init__(self, frames_seen: list[int]) -> None:
        self.frames_seen = frames_seen  # shared with on_frame: how many frames had arrived per call
        self.calls: list[dict] = []

    def warmup(self) -> None:
        pass

    def predict(self, rgb: torch.Tensor, flow: torch.Tensor) -> np.ndarray:
        assert rgb.shape[1:] == (3, 16, S, S) and flow.shape[1:] == (2, 16, S, S)
        centre = rgb[:, :, 8].mean(dim=(1, 2, 3)).numpy()  # in [-1, 1]
        p_float = (centre + 1) / 2
        probs = np.stack([(1 - p_float) / 2, (1 - p_float) / 2, p_float], axis=1)
        self.calls.append({"arrived": len(self.frames_seen), "rgb": rgb.clone(), "probs": probs})
        return probs

    def close(self) -> None:
        pass


def image(i: int) -> np.ndarray:
    """80x40 frame; brightness encodes the frame index (arena A2 darker), a square moves."""
    img = np.full((40, 80, 3), (i * 6) % 200 + 20, np.uint8)
    img[:, 40:] //= 2
    img[10:18, (2 * i) % 30: (2 * i) % 30 + 8] = 250
    return img


def items(n: int, start: int = 0) -> list:
    return [Frame(i, i / FPS, i / FPS, 0.0, image(i)) for i in range(start, start + n)]


class Recorder(Output):
    """An output that records frames, decisions and statuses, as the real outputs would receive them."""

    def __init__(self, arrived: list[int], out: list, statuses: list) -> None:
        self.arrived, self.out, self.statuses = arrived, out, statuses

    def on_frame(self, frame) -> None:
        self.arrived.append(frame.index)

    def on_decision(self, arena_id, decision, latency_s) -> None:
        self.out.append((arena_id, decision))

    def on_status(self, status) -> None:
        if not status.final:
            self.statuses.append(status)


def make(stride: int = 1, outputs=(), statuses: list | None = None, **kw):
    arrived: list[int] = []
    engine = RecordingEngine(arrived)
    decisions = {a.id: ArenaDecisions(a.id, CLASSES, DecisionConfig(fps=FPS)) for a in ARENAS}
    out: list[tuple[str, object]] = []
    recorder = Recorder(arrived, out, statuses if statuses is not None else [])
    pipe = Pipeline(engine, TVL1(CHEAP_FLOW), ARENAS, decisions, PipelineConfig(fps=FPS, size_px=S, stride_frames=stride),
                    outputs=[recorder, *outputs], **kw)
    return pipe, engine, decisions, out


def by_arena(out) -> dict[str, list]:
    result: dict[str, list] = {}
    for arena_id, d in out:
        result.setdefault(arena_id, []).append(d)
    return result


def test_each_frame_is_classified_once_when_its_look_ahead_arrived() -> None:
    n = 30
    pipe, engine, _, out = make()
    result = pipe.run(items(n) + [EndOfStream("end of file")])
    assert result.end_reason == "end of file" and result.frames_processed == n
    decided = by_arena(out)
    for arena in ARENAS:
        assert [d.frame_index for d in decided[arena.id]] == list(range(n))
    assert len(engine.calls) == n  # both arenas in one batch per centre frame
    # centre t is classified once frame t+7 has arrived (and not before); the last 7 at the end
    arrived = [c["arrived"] for c in engine.calls]
    assert arrived[: n - 7] == [t + 8 for t in range(n - 7)]
    assert arrived[n - 7:] == [n] * 7
    # the clip's centre frame is frame t's crop, per arena
    for t in (0, 12, n - 1):
        for a, arena in enumerate(ARENAS):
            want = rgb_clip(crop_resize(image(t), arena.roi, S)[None])[:, 0]
            np.testing.assert_allclose(engine.calls[t]["rgb"][a, :, 8].numpy(), want, atol=1e-6)
    # decisions carry the model's probabilities for their frame
    for t in (3, n - 2):
        assert decided["A2"][t].probabilities["float"] == pytest.approx(engine.calls[t]["probs"][1, 2], abs=1e-6)


def test_stride_runs_the_model_every_kth_frame_and_fills_the_rest() -> None:
    n, k = 30, 4
    pipe, engine, _, out = make(stride=k)
    result = pipe.run(items(n) + [EndOfStream("end of file")])
    assert len(engine.calls) == result.model_calls == -(-n // k)
    a1 = by_arena(out)["A1"]
    assert [d.frame_index for d in a1] == list(range(n))
    for t, d in enumerate(a1):
        model_frame = (t // k) * k
        assert d.probabilities["float"] == pytest.approx(engine.calls[t // k]["probs"][0, 2], abs=1e-6), (t, model_frame)


def test_short_stream_is_classified_with_padding_at_the_end() -> None:
    pipe, engine, _, out = make()
    pipe.run(items(5) + [EndOfStream("end of file")])
    assert [d.frame_index for d in by_arena(out)["A1"]] == list(range(5))
    assert [c["arrived"] for c in engine.calls] == [5] * 5


def test_gap_flushes_the_segment_and_restarts_flow() -> None:
    pipe, engine, decisions, out = make()
    stream = items(12) + [Gap(12, 30, 2.0, "no frames")] + items(12, start=42) + [EndOfStream("gave up", True, "lost")]
    result = pipe.run(stream)
    got = [d.frame_index for d in by_arena(out)["A1"]]
    assert got == list(range(12)) + list(range(42, 54))
    assert result.gave_up and result.error == "lost"
    assert result.gaps == [{"frames_missing": 30, "seconds_missing": 2.0, "reason": "no frames"}]
    counters = decisions["A1"].counters().to_json()
    assert counters["gaps"]["count"] == 1 and counters["gaps"]["frames_missing"] == 30
    assert counters["frames_classified"] == 24
    # the first clip after the gap is padded with frame 42 (no frames from before the gap)
    first_after = engine.calls[12]["rgb"]
    for j in range(9):
        assert torch.equal(first_after[:, :, j], first_after[:, :, 8])
    assert pipe.ring.flow_calls == 11 + 11  # never across the gap


def test_index_jump_from_a_full_queue_is_recorded_as_a_gap() -> None:
    pipe, _, decisions, out = make()
    stream = items(10) + items(10, start=13) + [EndOfStream("end of file")]
    result = pipe.run(stream)
    assert result.frames_missing == 3 and "dropped" in result.gaps[0]["reason"]
    assert decisions["A2"].counters().to_json()["gaps"]["frames_missing"] == 3
    assert len(by_arena(out)["A2"]) == 20


def test_stop_event_flushes_what_arrived() -> None:
    stop = threading.Event()
    pipe, _, _, out = make(stop_event=stop)

    def frames_then_stop():
        for f in items(15):
            yield f
        stop.set()
        yield from items(10, start=15)

    result = pipe.run(frames_then_stop())
    assert result.stopped and result.end_reason == "stopped"
    assert [d.frame_index for d in by_arena(out)["A1"]] == list(range(15))


def test_none_items_feed_the_heartbeat_and_status() -> None:
    beats = []
    statuses = []
    pipe, _, _, _ = make(heartbeat=lambda: beats.append(1), statuses=statuses)
    pipe.config = PipelineConfig(fps=FPS, size_px=S, live_counters_interval_s=0.0)
    pipe.run([None, None, *items(9), None, EndOfStream("end of file")])
    assert len(beats) == 13
    assert statuses and set(statuses[-1]["arenas"]) == {"A1", "A2"}
    line = format_status(statuses[-1], {"A1": "swim", "A2": "float"})
    assert "A1 swim" in line and "A2 float" in line and "fps" in line


def test_metrics_and_preview(tmp_path: Path) -> None:
    metrics = Metrics(port=None)
    preview = PreviewWriter(tmp_path / "preview.mp4", FPS, (80, 40), ARENAS)
    metrics.frame_period_s = 1.0 / FPS
    pipe, engine, _, out = make(outputs=[metrics, preview])
    n = 20
    pipe.run(items(n) + [EndOfStream("end of file")])
    preview.close()
    reg = metrics.registry
    assert reg.get_sample_value("swim_stream_frames_processed_total") == n
    assert reg.get_sample_value("swim_stream_capture_to_decision_seconds_count") == 2 * n
    assert reg.get_sample_value("swim_stream_model_seconds_count") == n
    assert reg.get_sample_value("swim_stream_flow_seconds_count") == n
    total = sum(reg.get_sample_value("swim_stream_behaviour_seconds_total", {"arena": "A1", "behaviour": c}) or 0.0
                for c in CLASSES)
    assert total == pytest.approx(n / FPS)
    cap = cv2.VideoCapture(str(tmp_path / "preview.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == n == preview.frames_written
    ok, first = cap.read()
    cap.release()
    # 40 px arenas are upscaled to the legible minimum (issue 13, item 9): 80x40 -> 400x200
    assert ok and first.shape == (preview.size[1], preview.size[0], 3) == (200, 400, 3)
    plain = cv2.resize(image(0), preview.size, interpolation=cv2.INTER_LINEAR)
    assert np.abs(first.astype(int) - plain.astype(int)).max() > 50  # labels were drawn
    import av

    with av.open(str(tmp_path / "preview.mp4")) as container:  # what a browser needs: H.264, yuv420p
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"


def test_look_ahead_is_seven_frames() -> None:
    assert look_ahead_s(15.0) == pytest.approx(7 / 15)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_an_output_that_cannot_write_stops_the_run_with_its_own_error_alone() -> None:
    """Issue 14.2: a full disk mid-run was masked by ``ValueError: frames must arrive in order``
    from the end-of-stream flush in ``Pipeline.run``'s ``finally``."""
    import errno

    from stream.errors import OutputWriteError

    class FullDisk(Output):
        def __init__(self) -> None:
            self.decisions = 0

        def on_decision(self, arena_id, decision, latency_s) -> None:
            self.decisions += 1
            if self.decisions > 9:  # mid-run, and in the middle of a frame's arenas
                raise OutputWriteError("/x/A2.frames.csv", OSError(errno.ENOSPC, "No space left on device"))

    full = FullDisk()
    pipe, engine, _, _ = make(outputs=[full])
    with pytest.raises(OutputWriteError, match="No space left on device") as err:
        pipe.run(items(30) + [EndOfStream("end of file")])
    assert err.value.__context__ is None  # nothing else was raised while it propagated
    assert full.decisions == 10  # nothing was written after the failure
    assert len(engine.calls) == 5  # and nothing classified twice or flushed after it


def test_a_stepwise_engine_is_fed_every_frame_and_restarts_at_a_gap(tiny_model) -> None:
    """--engine streaming: one prediction per frame; after a gap the stream is as fresh as a new run."""
    from stream.engine import build_engine

    engine = build_engine("streaming", tiny_model, device="cpu")

    def clip_wise(*args):
        raise AssertionError("the pipeline ran the streaming engine clip-wise")

    engine._run = clip_wise  # it must be fed frame by frame

    def run(stream_items: list) -> tuple[dict[str, list], object]:
        decisions = {a.id: ArenaDecisions(a.id, CLASSES, DecisionConfig(fps=FPS)) for a in ARENAS}
        out: list = []
        pipe = Pipeline(engine, TVL1(CHEAP_FLOW), ARENAS, decisions, PipelineConfig(fps=FPS, size_px=S),
                        outputs=[Recorder([], out, [])])
        result = pipe.run(stream_items)
        return by_arena(out), result

    with_gap, result = run(items(10) + [Gap(10, 30, 2.0, "no frames")] + items(12, start=40) + [EndOfStream("end")])
    alone, _ = run(items(12, start=40) + [EndOfStream("end")])
    for arena in ARENAS:
        assert [d.frame_index for d in with_gap[arena.id]] == list(range(10)) + list(range(40, 52))
        for a, b in zip(with_gap[arena.id][10:], alone[arena.id], strict=True):
            assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
    assert result.model_calls == 22  # one network step per frame (plus the repeats it adds itself)
    assert with_gap["A1"][3].probabilities != with_gap["A2"][3].probabilities  # each arena its own row


# -- falling behind (issue 24.1) ------------------------------------------------------------------
PACED_S = 45.0  # five 6 s floats, each followed by 3 s of swimming
MODEL_COST_S = 0.25  # per model call: the pipeline can classify only 4 frames a second at stride 1
FLOW_COST_S = 0.01  # per frame (both arenas)


def behaviour_image(i: int) -> np.ndarray:
    """80x40 frame: bright while the mouse floats (6 s of every 9 s), dark while it swims; a moving square."""
    floating = (i / FPS) % 9.0 < 6.0
    img = np.full((40, 80, 3), 235 if floating else 20, np.uint8)
    img[10:18, (2 * i) % 30: (2 * i) % 30 + 8] = 128
    img[10:18, 40 + (3 * i) % 30: 40 + (3 * i) % 30 + 8] = 128
    return img


class FakeClock:
    """``time.monotonic`` of the pipeline, advanced only by the simulated costs and the waits for frames."""

    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    @staticmethod
    def perf_counter() -> float:
        import time

        return time.perf_counter()


def paced_capture(n: int, clock: FakeClock, queue_frames: int):
    """A camera at FPS feeding a queue of ``queue_frames`` that drops the newest frame when full (as
    ``stream.capture.Capture`` does for live and --realtime sources), on the fake clock: deterministic."""
    from collections import deque

    queue: deque[int] = deque()
    captured = 0
    while True:
        while captured < n and captured / FPS <= clock.t + 1e-9:
            if len(queue) < queue_frames:
                queue.append(captured)
            captured += 1  # a frame that found the queue full is dropped: the pipeline sees an index jump
        if queue:
            k = queue.popleft()
            yield Frame(k, k / FPS, k / FPS, k / FPS, behaviour_image(k))
        elif captured < n:
            clock.t = captured / FPS  # idle until the next frame is captured
        else:
            yield EndOfStream("end of file")
            return


def _scored(items_, config: PipelineConfig, clock: FakeClock | None = None):
    arrived: list[int] = []
    engine = RecordingEngine(arrived)
    tvl1 = TVL1(CHEAP_FLOW)
    flow = tvl1
    if clock is not None:
        predict = engine.predict

        def slow_predict(rgb, flow_):
            clock.t += MODEL_COST_S
            return predict(rgb, flow_)

        engine.predict = slow_predict

        def flow(*args, **kwargs):
            clock.t += FLOW_COST_S
            return tvl1(*args, **kwargs)

    decision_config = DecisionConfig(fps=FPS, min_bout_s=1.0, smoothing="average", test_duration_s=PACED_S,
                                     scoring_window_s=PACED_S)
    decisions = {a.id: ArenaDecisions(a.id, CLASSES, decision_config) for a in ARENAS}
    pipe = Pipeline(engine, flow, ARENAS, decisions, config, outputs=[Recorder(arrived, [], [])])
    result = pipe.run(items_)
    return result, {a: d.counters() for a, d in decisions.items()}


def test_a_paced_run_that_falls_behind_keeps_its_immobility(monkeypatch) -> None:
    """Issue 24.1: a run too slow for real time dropped frames every fraction of a second, every gap
    ended the bout in progress, and immobility came out near 0 s (24 s without pacing). Now the
    pipeline raises its stride first, and the gaps it still has are bridged."""
    import stream.pipeline

    n = int(PACED_S * FPS)
    _, unpaced = _scored([Frame(i, i / FPS, i / FPS, i / FPS, behaviour_image(i)) for i in range(n)]
                         + [EndOfStream("end of file")], PipelineConfig(fps=FPS, size_px=S))
    clock = FakeClock()
    monkeypatch.setattr(stream.pipeline, "time", clock)
    config = PipelineConfig(fps=FPS, size_px=S, adaptive_stride=True)
    result, paced = _scored(paced_capture(n, clock, queue_frames=6), config, clock)
    assert result.frames_missing > 0  # it did fall behind: frames were dropped
    assert result.stride_max_frames > 1 and result.stride_mean_frames > 1  # and raised the stride
    info = result.to_dict()["stride"]
    assert info["asked_frames"] == 1 and info["max_frames"] == result.stride_max_frames
    for arena in ("A1", "A2"):
        want, got = unpaced[arena].immobile_s, paced[arena].immobile_s
        assert want > 20.0  # five floats of 6 s
        assert got == pytest.approx(want, rel=0.10), (arena, got, want, result.frames_missing)
        assert paced[arena].immobility_bouts == unpaced[arena].immobility_bouts == 5


def test_adaptive_stride_is_off_for_files_and_the_stride_stays_as_asked(monkeypatch) -> None:
    """Offline (not paced) a file waits for the pipeline: nothing is dropped, the stride is the one asked."""
    n = 60
    result, _ = _scored([Frame(i, i / FPS, i / FPS, 0.0, behaviour_image(i)) for i in range(n)]
                        + [EndOfStream("end of file")], PipelineConfig(fps=FPS, size_px=S, stride_frames=2))
    assert result.stride_max_frames == 2 and result.model_calls == n // 2 and result.stride_changes == 0


def test_after_a_slow_spell_the_stride_comes_back_down_even_when_one_model_call_outlasts_the_caught_up_lag(monkeypatch) -> None:
    """A live run slowed for 10 s (another job on the CPU, a model being adapted beside it) raises the
    stride to its ceiling. Afterwards a model call takes 0.3 s, which the asked stride of 8 affords (0.05 s
    of work per 0.067 s frame), but the frame that arrives during a call waits about 0.23 s, more than
    the 0.15 s "caught up" lag: the stride stayed at 15 for the rest of the run (1 prediction a second
    instead of 2). Waiting behind the call in flight is not falling behind."""
    import stream.pipeline

    clock = FakeClock()
    monkeypatch.setattr(stream.pipeline, "time", clock)
    n = int(40 * FPS)
    arrived: list[int] = []
    engine = RecordingEngine(arrived)
    predict = engine.predict

    def predict_costly(rgb, flow_):
        clock.t += 1.0 if clock.t < 10.0 else 0.3
        return predict(rgb, flow_)

    engine.predict = predict_costly
    tvl1 = TVL1(CHEAP_FLOW)

    def flow(*args, **kwargs):
        clock.t += FLOW_COST_S
        return tvl1(*args, **kwargs)

    decisions = {a.id: ArenaDecisions(a.id, CLASSES, DecisionConfig(fps=FPS)) for a in ARENAS}
    pipe = Pipeline(engine, flow, ARENAS, decisions, PipelineConfig(fps=FPS, size_px=S, stride_frames=8, adaptive_stride=True),
                    outputs=[Recorder(arrived, [], [])])
    result = pipe.run(paced_capture(n, clock, queue_frames=64))
    assert result.stride_max_frames == 15  # it did fall behind during the slow spell
    assert pipe.stride_frames == 8  # and came back to the stride asked for
    last_10_s = [c for c in engine.calls if c["arrived"] > n - 10 * FPS]
    assert len(last_10_s) >= 10 * FPS / 8 - 2
