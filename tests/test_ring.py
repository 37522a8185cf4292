"""Ring buffer: clips equal the offline convention (preprocess + flow per frame), flow computed once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stream.flow import TVL1, FlowConfig, encode_flow
from stream.preprocess import CLIP_FRAMES, clip_indices, rgb_clip, to_grey
from stream.ring import ClipRing

S = 32
CHEAP_FLOW = FlowConfig(nscales=1, warps=1, inner_iterations=5, outer_iterations=1)


class RecordingFlow:
    """A stand-in for TVL1: flow = (mean(next) - mean(prev)) per arena, records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray, torch.Tensor | None]] = []
        self.outputs: list[torch.Tensor] = []

    def __call__(self, prev, nxt, init_flow=None) -> torch.Tensor:
        self.calls.append((np.asarray(prev).copy(), np.asarray(nxt).copy(), init_flow))
        diff = np.asarray(nxt, np.float32).mean(axis=(1, 2)) - np.asarray(prev, np.float32).mean(axis=(1, 2))
        n = diff.shape[0]
        out = torch.from_numpy(np.broadcast_to(diff[:, None, None, None], (n, 2, S, S)).copy())
        self.outputs.append(out)
        return out


def frames(n: int, arenas: int, seed: int = 0) -> np.ndarray:
    """(n, arenas, S, S, 3) uint8 with a different brightness per frame and arena."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 40, (n, arenas, S, S, 3), dtype=np.uint8)
    out += (np.arange(n)[:, None] * 5 + np.arange(arenas)[None] * 3).astype(np.uint8)[:, :, None, None, None]
    return out


def offline_flow_px(video: np.ndarray, flow) -> np.ndarray:
    """Per-frame flow of one arena's video the way training does it: frame i-1 -> i, zero for 0."""
    n = video.shape[0]
    out = np.zeros((n, 2, S, S), np.float32)
    for i in range(1, n):
        out[i] = flow(to_grey(video[i - 1])[None], to_grey(video[i])[None]).numpy()[0]
    return out


def expected_clip(video: np.ndarray, flows: np.ndarray, center: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = clip_indices(center, n)
    rgb = rgb_clip(video[idx])
    flow = flows[idx].copy()
    repeated = np.concatenate([[False], idx[1:] == idx[:-1]])
    flow[repeated] = 0.0
    return rgb, np.ascontiguousarray(np.asarray(encode_flow(flow)).transpose(1, 0, 2, 3))


@pytest.mark.parametrize("arenas", [1, 3])
def test_clips_match_the_offline_convention_everywhere(arenas: int) -> None:
    n = 24
    video = frames(n, arenas)
    flow = RecordingFlow()
    ring = ClipRing(arenas, S, flow, warm_start=False)
    offline = [offline_flow_px(video[:, a], RecordingFlow()) for a in range(arenas)]
    checked = set()

    def check(center: int) -> None:
        rgb, fl = ring.clip(center)
        for a in range(arenas):
            want_rgb, want_flow = expected_clip(video[:, a], offline[a], center, n)
            np.testing.assert_allclose(rgb[a].numpy(), want_rgb, atol=1e-6)
            np.testing.assert_allclose(fl[a].numpy(), want_flow, atol=1e-6)
        checked.add(center)

    for t in range(n):
        ring.push(video[t], t)
        if t - 7 >= 0:  # live: classify when t + 7 arrives
            check(t - 7)
    for center in range(n - 7, n):  # end of stream: edge padding by repetition
        check(center)
    assert checked == set(range(n))


def test_flow_runs_once_per_frame_batched_and_warm_started() -> None:
    flow = RecordingFlow()
    ring = ClipRing(2, S, flow)
    video = frames(20, 2)
    for t in range(20):
        ring.push(video[t], t)
        if t >= 7:
            ring.clip(t - 7)
            ring.clip(t - 7)  # re-reading a clip never recomputes flow
    assert len(flow.calls) == ring.flow_calls == 19  # every frame but the first
    prev, nxt, init = flow.calls[0]
    assert prev.shape == nxt.shape == (2, S, S)  # both arenas in one call
    assert init is None  # nothing to warm-start from on the second frame
    for k in range(1, 19):
        assert torch.equal(flow.calls[k][2], flow.outputs[k - 1])  # seeded with the previous pair's flow


def test_rings_are_preallocated_on_the_device() -> None:
    ring = ClipRing(4, S, RecordingFlow(), device="cpu")
    assert ring.rgb.shape == (4, 3, CLIP_FRAMES, S, S) and ring.flow.shape == (4, 2, CLIP_FRAMES, S, S)
    rgb_ptr, flow_ptr = ring.rgb.data_ptr(), ring.flow.data_ptr()
    video = frames(40, 4)
    for t in range(40):
        ring.push(video[t], t)
    assert ring.rgb.data_ptr() == rgb_ptr and ring.flow.data_ptr() == flow_ptr


def test_reset_starts_a_new_segment_with_zero_flow_and_start_padding() -> None:
    flow = RecordingFlow()
    ring = ClipRing(1, S, flow)
    video = frames(30, 1)
    for t in range(10):
        ring.push(video[t], t)
    with pytest.raises(ValueError, match="reset"):
        ring.push(video[12], 12)
    ring.reset()
    calls = len(flow.calls)
    for t in range(12, 20):
        ring.push(video[t], t)
    assert len(flow.calls) == calls + 7  # no flow across the gap (10..11 missing)
    assert ring.clip_frame_indices(12).tolist() == [12] * 9 + list(range(13, 20))
    rgb, fl = ring.clip(12)
    assert float(fl[:, :, 9:].abs().sum()) > 0.0
    assert float(fl[:, :, :9].abs().sum()) == 0.0  # frame 12 and its repeats: zero flow


def test_frames_that_left_the_ring_are_refused() -> None:
    ring = ClipRing(1, S, RecordingFlow())
    video = frames(30, 1)
    for t in range(30):
        ring.push(video[t], t)
    ring.clip(22)
    with pytest.raises(ValueError):
        ring.clip(20)  # needs frame 12, overwritten by frame 28
    with pytest.raises(ValueError):
        ring.push(video[0][:, :16], 30)


def test_with_real_tvl1_warm_start_stays_close_to_training_flow() -> None:
    """Moving square: warm-started live flow vs from-scratch (training) flow, same pairs."""
    n = 10
    video = np.full((n, 1, S, S, 3), 30, np.uint8)
    for t in range(n):
        video[t, 0, 10:18, 4 + t:12 + t] = 220
    tvl1 = TVL1(CHEAP_FLOW)
    warm = ClipRing(1, S, tvl1, warm_start=True)
    cold = ClipRing(1, S, tvl1, warm_start=False)
    for t in range(n):
        warm.push(video[t], t)
        cold.push(video[t], t)
    _, fw = warm.clip(n - 1)
    _, fc = cold.clip(n - 1)
    offline = offline_flow_px(video[:, 0], tvl1)
    _, want = expected_clip(video[:, 0], offline, n - 1, n)
    np.testing.assert_allclose(fc[0].numpy(), want, atol=1e-5)  # cold = training exactly
    # warm start changes the numbers a little, not the motion: mean horizontal flow on the square
    assert float(fw[0, 0, 8:, 10:18, 4:20].mean()) > 0.0
    assert float((fw - fc).abs().mean()) < 0.05  # encoded units (1.0 = 20 px)


pytestmark = pytest.mark.usefixtures("one_torch_thread")
