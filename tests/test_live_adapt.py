"""A live source's own BatchNorm statistics (stream/live_adapt.py): which clips are kept, the build on
its own thread, the one hand-over, a failed build that leaves the source model scoring, and the
pipeline's swap between two model calls (stand-in engines; the end-to-end camera run is in
tests/test_run_adapt.py)."""

from __future__ import annotations

import logging
import threading

import numpy as np
import torch

from stream.capture import EndOfStream
from stream.live_adapt import STORE_DTYPE, LiveAdaptation
from tests.test_pipeline import RecordingEngine, items, make

S = 8


def _clips(n_arenas: int, centre: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips whose values say which arena and centre they are."""
    rgb = torch.stack([torch.full((3, 16, S, S), float(a * 1000 + centre)) for a in range(n_arenas)])
    return rgb, rgb[:, :2].clone()


class _Engine:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_one_clip_per_running_arena_every_frame_step_and_the_build_gets_them_all():
    got: list = []
    engine = _Engine()
    adaptation = LiveAdaptation(5, 2, lambda clips: got.extend(clips) or engine, frame_step=15)
    for centre in range(0, 200, 4):  # a model call every 4th frame (--stride 4); arena 2 has no trial until frame 40
        adaptation.offer(centre, *_clips(2, centre), active=[True, centre >= 40])
    adaptation.wait(10)
    assert adaptation.centres == [(0, 0), (0, 16), (0, 32), (1, 40), (0, 48)]  # the 5th fills it: nothing after
    assert len(got) == 5 and all(r.dtype == torch.float32 and r.shape == (3, 16, S, S) and f.shape == (2, 16, S, S) for r, f in got)
    assert [int(r[0, 0, 0, 0]) for r, _ in got] == [0, 16, 32, 1040, 48]  # each arena's own slice of the batch
    assert adaptation.state == "ready" and adaptation.clips == []  # the kept float16 copies are let go


def test_clips_are_kept_in_float16_until_the_build():
    adaptation = LiveAdaptation(3, 1, lambda clips: _Engine())
    adaptation.offer(0, *_clips(1, 0), active=[True])
    assert adaptation.clips[0][0].dtype == STORE_DTYPE and adaptation.clips[0][0].device.type == "cpu"


def test_the_engine_is_handed_over_once_and_the_swap_is_reported_with_its_frame():
    engine = _Engine()
    swaps: list = []
    adaptation = LiveAdaptation(1, 1, lambda clips: engine, lambda e, centre, ts: swaps.append((e, centre, ts)))
    assert adaptation.take(3, 0.2) is None  # nothing collected yet
    adaptation.offer(5, *_clips(1, 5), active=[True])
    adaptation.wait(10)
    assert adaptation.take(9, 0.6) is engine
    assert adaptation.take(10, 0.67) is None and swaps == [(engine, 9, 0.6)]
    adaptation.offer(30, *_clips(1, 30), active=[True])  # after the swap nothing is kept
    assert adaptation.centres == [(0, 5)] and adaptation.state == "swapped"


def test_a_failed_build_is_logged_and_the_source_model_goes_on(caplog):
    def build(clips):
        raise RuntimeError("out of memory")

    adaptation = LiveAdaptation(1, 1, build)
    with caplog.at_level(logging.WARNING):
        adaptation.offer(0, *_clips(1, 0), active=[True])
        adaptation.wait(10)
    assert adaptation.state == "failed" and adaptation.error == "out of memory"
    assert adaptation.take(1, 0.1) is None
    assert any("adapting to this source failed (out of memory)" in r.message for r in caplog.records)


def test_an_engine_built_after_the_source_ended_is_closed_not_leaked():
    release = threading.Event()
    engine = _Engine()

    def build(clips):
        release.wait(10)
        return engine

    adaptation = LiveAdaptation(1, 1, build)
    adaptation.offer(0, *_clips(1, 0), active=[True])
    adaptation.close()  # the stream ended while the statistics were being estimated
    release.set()
    adaptation.wait(10)
    assert engine.closed and adaptation.take(1, 0.1) is None
    ready = _Engine()  # built, never taken: close() closes it
    other = LiveAdaptation(1, 1, lambda clips: ready)
    other.offer(0, *_clips(1, 0), active=[True])
    other.wait(10)
    other.close()
    assert ready.closed


class _AdaptedEngine(RecordingEngine):
    """The adapted model: says `struggle` everywhere, so its frames are told apart from the source's."""

    name = "adapted"

    def predict(self, rgb, flow):
        probs = np.tile([0.1, 0.8, 0.1], (rgb.shape[0], 1))
        self.calls.append({"arrived": len(self.frames_seen), "rgb": rgb.clone(), "probs": probs})
        return probs


def test_the_pipeline_offers_its_clips_and_scores_with_the_adapted_engine_from_the_swap_on():
    """The source engine scores until the adapted one is built; from the swap's centre frame every
    model call goes to the adapted engine, the source engine is closed, and the clips offered are the
    ones the source engine was given."""
    adapted = _AdaptedEngine([])
    offered: list = []
    swaps: list = []

    def build(clips):
        offered.extend(clips)
        return adapted

    adaptation = LiveAdaptation(4, 2, build, lambda e, centre, ts: swaps.append((centre, ts)), frame_step=5)
    pipe, source_engine, _, out = make(adaptation=adaptation)
    closed = []
    source_engine.close = lambda: closed.append(True)
    scored = source_engine.predict

    def predict(rgb, flow):  # the build runs on its own thread: here it is done before the next call
        adaptation.wait(10)
        return scored(rgb, flow)

    source_engine.predict = predict
    pipe.run(items(30) + [EndOfStream("end")])
    # clips at centres 0 and 5 (both arenas) fill it; the build is ready by the call for centre 6
    assert swaps == [(6, 6 / 15)] and closed == [True] and pipe.engine is adapted
    assert len(source_engine.calls) == 6 and len(adapted.calls) == 24
    assert len(offered) == 4
    for k, (call, arena) in enumerate([(0, 0), (0, 1), (5, 0), (5, 1)]):
        assert torch.allclose(offered[k][0], source_engine.calls[call]["rgb"][arena], atol=1e-3)  # what it scored (float16)
    labels = {d.frame_index: d.behaviour for arena, d in out if arena == "A1"}
    assert [labels[i] for i in range(12, 30)] == ["struggle"] * 18  # the adapted engine's, after smoothing
    assert "struggle" not in [labels[i] for i in range(0, 3)]


def test_a_source_that_ends_before_the_adapted_model_scores_says_why():
    adaptation = LiveAdaptation(4, 1, lambda clips: _Engine())
    adaptation.offer(0, *_clips(1, 0), active=[True])
    assert "1 of the 4 clips kept" in adaptation.unfinished()
    failed = LiveAdaptation(1, 1, lambda clips: (_ for _ in ()).throw(RuntimeError("disk full")))
    failed.offer(0, *_clips(1, 0), active=[True])
    failed.wait(10)
    assert "adapting failed (disk full)" in failed.unfinished()
    done = LiveAdaptation(1, 1, lambda clips: _Engine())
    done.offer(0, *_clips(1, 0), active=[True])
    done.wait(10)
    assert "being built" in done.unfinished()  # built but never scored with
    done.take(1, 0.1)
    assert done.unfinished() is None
