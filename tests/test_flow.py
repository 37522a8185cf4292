"""TV-L1 flow: against ground truth and OpenCV's DualTVL1 on small synthetic pairs, encodings.

Images are 64 px so that the whole file runs in a few seconds on 2 CPU cores; the accuracy
tests are parametrised by device (CUDA runs with ``-m gpu`` where a GPU is present).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from stream.flow import (
    FLOW_CLIP_PX,
    FLOW_UINT8_STEP_PX,
    TVL1,
    FlowConfig,
    _median_blur,
    _resize,
    decode_flow,
    encode_flow,
    flow_from_uint8,
    flow_to_uint8,
    texture,
)

SIZE_PX = 64
MARGIN_PX = 5  # EPE is measured away from the border, where flow leaving the image is unobservable
# "within 10 % of OpenCV's EPE", with a floor: on a 1.3 px translation both solve to ~0.007 px, where
# 10 % is 0.0007 px, the size of float rounding differences between devices (measured on the CPU:
# ours/OpenCV EPE ratios 1.064, 1.063, 0.996, 1.007, 1.001 for the five cases)
EPE_FLOOR_PX = 0.003
# OpenCV's flows for the pairs the device-parametrised tests use, for machines whose OpenCV has no
# contrib ``optflow`` module (the GPU image): written and checked against live OpenCV by
# test_stored_opencv_references_are_current (SWIM_STREAM_WRITE_TVL1_REFERENCES=1 rewrites it).
REFERENCE_FILE = Path(__file__).parent / "data" / "tvl1_opencv_64px.npz"
HAS_OPTFLOW = hasattr(cv2, "optflow")
needs_optflow = pytest.mark.skipif(not HAS_OPTFLOW, reason="OpenCV without the contrib optflow module")

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]),
]


# --- synthetic pairs with known flow ------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    """64 px tensors gain nothing from a second thread, and on a loaded shared machine waiting
    for it makes every op ~1000x slower; restored afterwards for the other test modules."""
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(threads)
    cv2.setNumThreads(cv_threads)


def _texture(size: int, seed: int) -> np.ndarray:
    """Smooth random texture with fine detail, float32 in 0..255, larger than the frame."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((size // 6 + 3, size // 6 + 3)).astype(np.float32)
    img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    img += 0.35 * cv2.resize(rng.random((size // 2, size // 2)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    img = cv2.GaussianBlur(img, (0, 0), 0.8)
    return (img - img.min()) / (img.max() - img.min()) * 255.0


def _pair_from_flow(flow: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """prev(x) = nxt(x + flow(x)): sample one texture at x + flow for prev, at x for nxt."""
    pad = 8
    tex = _texture(SIZE_PX + 2 * pad, seed)
    ys, xs = np.mgrid[0:SIZE_PX, 0:SIZE_PX].astype(np.float32)
    prev = cv2.remap(tex, xs + pad + flow[..., 0], ys + pad + flow[..., 1], cv2.INTER_CUBIC)
    nxt = tex[pad : pad + SIZE_PX, pad : pad + SIZE_PX]
    return np.clip(prev, 0, 255).astype(np.uint8), np.clip(nxt, 0, 255).astype(np.uint8)


def _case(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:SIZE_PX, 0:SIZE_PX].astype(np.float32)
    c = (SIZE_PX - 1) / 2
    if name == "translation":
        flow = np.stack([np.full_like(xs, 1.3), np.full_like(xs, -0.7)], -1)
    elif name == "rotation":  # 3 degrees about the centre: up to ~1.7 px at the corners
        a = np.deg2rad(3.0)
        flow = np.stack([np.cos(a) * (xs - c) - np.sin(a) * (ys - c) + c - xs,
                         np.sin(a) * (xs - c) + np.cos(a) * (ys - c) + c - ys], -1)
    elif name == "zoom":  # 4 % zoom about a point off the centre
        flow = np.stack([0.04 * (xs - c + 6), 0.04 * (ys - c - 4)], -1)
    elif name == "smooth_field":
        rng = np.random.default_rng(7)
        field = cv2.GaussianBlur(rng.standard_normal((SIZE_PX, SIZE_PX, 2)).astype(np.float32), (0, 0), 10)
        flow = field / np.abs(field).max() * 1.5
    elif name == "moving_object":  # a disc moves by (2, 1) px over a static background
        background, obj = _texture(SIZE_PX, 11), _texture(SIZE_PX, 12)
        d = (2.0, 1.0)
        inside_prev = (xs - 28) ** 2 + (ys - 30) ** 2 < 11**2
        inside_next = (xs - 28 - d[0]) ** 2 + (ys - 30 - d[1]) ** 2 < 11**2
        shifted = cv2.remap(obj, xs - d[0], ys - d[1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        prev = np.where(inside_prev, obj, background)
        nxt = np.where(inside_next, shifted, background)
        flow = np.zeros((SIZE_PX, SIZE_PX, 2), np.float32)
        flow[inside_prev] = d
        return np.clip(prev, 0, 255).astype(np.uint8), np.clip(nxt, 0, 255).astype(np.uint8), flow
    else:
        raise AssertionError(name)
    prev, nxt = _pair_from_flow(flow.astype(np.float32), seed=3)
    return prev, nxt, flow.astype(np.float32)


SMOOTH_CASES = ["translation", "rotation", "zoom", "smooth_field"]
CASES = SMOOTH_CASES + ["moving_object"]


def _epe(a: np.ndarray, b: np.ndarray) -> float:
    m = slice(MARGIN_PX, -MARGIN_PX)
    return float(np.sqrt(((a - b) ** 2).sum(-1))[m, m].mean())


def _hwc(flow: torch.Tensor) -> np.ndarray:
    return flow[0].permute(1, 2, 0).cpu().numpy()


# OpenCV flows the device-parametrised tests compare with: key -> (case, setting, warm start)
REFERENCE_PAIRS = {
    **{f"default/{case}": (case, "default", False) for case in CASES},
    "fast/rotation": ("rotation", "fast", False),
    "fast-init/translation": ("translation", "fast", True),
}


def _live_opencv(key: str) -> np.ndarray:
    case, setting, warm = REFERENCE_PAIRS[key]
    prev, nxt, truth = _case(case)
    algo = (FlowConfig() if setting == "default" else FlowConfig.fast()).to_opencv()
    if warm:
        algo.setUseInitialFlow(True)
        return algo.calc(prev, nxt, (truth * 0.8).astype(np.float32))
    return algo.calc(prev, nxt, None)


@functools.cache
def _stored_references() -> dict[str, np.ndarray]:
    with np.load(REFERENCE_FILE) as data:
        return {key: data[key] for key in data.files}


def _opencv(key: str) -> np.ndarray:
    """OpenCV DualTVL1's flow for a reference pair: live where OpenCV has optflow, else stored."""
    return _live_opencv(key) if HAS_OPTFLOW else _stored_references()[key]


@needs_optflow
def test_stored_opencv_references_are_current():
    live = {key: _live_opencv(key) for key in REFERENCE_PAIRS}
    if os.environ.get("SWIM_STREAM_WRITE_TVL1_REFERENCES") == "1":
        REFERENCE_FILE.parent.mkdir(exist_ok=True)
        np.savez_compressed(REFERENCE_FILE, **live)
    stored = _stored_references()
    assert set(stored) == set(live), f"rewrite {REFERENCE_FILE.name}: SWIM_STREAM_WRITE_TVL1_REFERENCES=1"
    for key, flow in live.items():
        np.testing.assert_allclose(stored[key], flow, atol=1e-4, rtol=0, err_msg=key)


@pytest.fixture(scope="module")
def results() -> dict:
    """Cache: (case, device) -> (truth, ours, opencv), so each pair is solved once per device."""
    return {}


def _solve(results: dict, case: str, device: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if (case, device) not in results:
        prev, nxt, truth = _case(case)
        ocv = _opencv(f"default/{case}")
        ours = _hwc(TVL1(FlowConfig(), device=device)(prev, nxt))
        results[(case, device)] = truth, ours, ocv
    return results[(case, device)]


# --- accuracy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES)
def test_error_against_truth_within_10_percent_of_opencv(results, case, device):
    truth, ours, ocv = _solve(results, case, device)
    assert _epe(ocv, truth) < 1.0, "the synthetic case itself should be solvable"
    assert _epe(ours, truth) <= max(1.10 * _epe(ocv, truth), _epe(ocv, truth) + EPE_FLOOR_PX)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", SMOOTH_CASES)
def test_matches_opencv_on_smooth_flows(results, case, device):
    _, ours, ocv = _solve(results, case, device)
    assert _epe(ours, ocv) < 0.15


@pytest.mark.parametrize("device", DEVICES)
def test_fixed_iterations_match_opencv_without_early_stopping(device):
    prev, nxt, truth = _case("rotation")
    ocv = _opencv("fast/rotation")
    ours = _hwc(TVL1(FlowConfig.fast(), device=device)(prev, nxt))
    assert _epe(ours, ocv) < 0.15
    assert _epe(ours, truth) <= max(1.10 * _epe(ocv, truth), _epe(ocv, truth) + EPE_FLOOR_PX)


@pytest.mark.parametrize("device", DEVICES)
def test_warm_start_matches_opencv_initial_flow(device):
    prev, nxt, truth = _case("translation")
    init = (truth * 0.8).astype(np.float32)
    config = FlowConfig.fast()
    ocv = _opencv("fast-init/translation")
    ours = _hwc(TVL1(config, device=device)(prev, nxt, init_flow=torch.from_numpy(init).permute(2, 0, 1)[None]))
    assert _epe(ours, ocv) < 0.15
    cold = _hwc(TVL1(config, device=device)(prev, nxt))
    assert _epe(ours, truth) < _epe(cold, truth), "a good initial flow should help a cheap setting"


def test_gamma_term_matches_opencv():
    prev, nxt, _ = _case("zoom")
    config = FlowConfig.fast(gamma=0.2)
    ocv = config.to_opencv().calc(prev, nxt, None)
    ours = _hwc(TVL1(config)(prev, nxt))
    assert _epe(ours, ocv) < 0.15


def test_bilinear_warping_close_to_bicubic():
    prev, nxt, truth = _case("smooth_field")
    bicubic = _hwc(TVL1(FlowConfig.fast())(prev, nxt))
    bilinear = _hwc(TVL1(FlowConfig.fast(interpolation="bilinear"))(prev, nxt))
    assert _epe(bilinear, truth) < 1.5 * _epe(bicubic, truth) + 0.05
    with pytest.raises(ValueError, match="bicubic"):
        FlowConfig(interpolation="bilinear").to_opencv()


def test_matches_opencv_on_real_frames(real_video):
    cap = cv2.VideoCapture(str(real_video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 400)
    frames = []
    for _ in range(2):
        ok, frame = cap.read()
        assert ok
        frames.append(cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[:, 80:560], (48, 48), interpolation=cv2.INTER_AREA))
    ocv = FlowConfig().to_opencv().calc(frames[0], frames[1], None)
    ours = _hwc(TVL1()(frames[0], frames[1]))
    assert float(np.sqrt(((ours - ocv) ** 2).sum(-1)).mean()) < 0.15


# --- batching, inputs, modes ------------------------------------------------------------------------


@pytest.mark.parametrize("fixed", [False, True])
def test_batch_equals_single_pairs(fixed):
    cases = [_case(c) for c in ("translation", "moving_object", "zoom")]
    prev = np.stack([c[0] for c in cases])
    nxt = np.stack([c[1] for c in cases])
    config = FlowConfig(nscales=2, warps=2, outer_iterations=2, inner_iterations=10, fixed_iterations=fixed)
    tvl1 = TVL1(config)
    batched = tvl1(prev, nxt)
    assert batched.shape == (3, 2, SIZE_PX, SIZE_PX) and batched.dtype == torch.float32
    singles = torch.cat([tvl1(p, n) for p, n in zip(prev, nxt)])
    torch.testing.assert_close(batched, singles, atol=1e-4, rtol=0)


@pytest.mark.parametrize("gamma", [0.0, 0.2])
def test_masked_early_stopping_equals_dropping_converged_pairs(gamma):
    """CUDA's early stopping (converged pairs frozen by a mask, whole outer iterations per graph)
    must give OpenCV's loop results: same flow, same iteration count, as the CPU path that drops
    converged pairs from the batch. Run eagerly here, on the CPU."""
    cases = [_case(c) for c in ("translation", "moving_object", "zoom", "smooth_field")]
    prev = np.stack([c[0] for c in cases] + [cases[0][0]])  # the last pair: no motion, stops at once
    nxt = np.stack([c[1] for c in cases] + [cases[0][0]])
    config = FlowConfig(nscales=3, warps=3, outer_iterations=4, gamma=gamma)
    dropping, masked = TVL1(config), TVL1(config)
    masked._masked_levels = True
    want, got = dropping(prev, nxt), masked(prev, nxt)
    assert masked._levels, "the masked path ran"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert masked.last_iterations == dropping.last_iterations < 3 * 3 * 4 * 30


def test_early_stopping_does_less_work_than_fixed():
    prev, nxt, _ = _case("translation")
    config = FlowConfig(nscales=2, warps=2, outer_iterations=3)
    early, fixed = TVL1(config), TVL1(dataclasses.replace(config, fixed_iterations=True))
    a, b = early(prev, nxt), fixed(prev, nxt)
    assert early.last_iterations < fixed.last_iterations == 2 * 2 * 3 * 30
    assert float((a - b).norm(dim=1).mean()) < 0.05


@pytest.mark.parametrize("cpu_threads", [1, 2, None])
def test_cpu_solves_on_their_own_thread_count_and_restore_the_callers(monkeypatch, cpu_threads):
    torch.set_num_threads(3)  # the module fixture restores the session's count afterwards
    tvl1 = TVL1(FlowConfig.fast(), cpu_threads=cpu_threads)
    seen = []
    solve = tvl1._solve
    monkeypatch.setattr(tvl1, "_solve", lambda *a: seen.append(torch.get_num_threads()) or solve(*a))
    prev, nxt, _ = _case("translation")
    tvl1(prev, nxt)
    assert seen == [cpu_threads or 3] and torch.get_num_threads() == 3
    with pytest.raises(ValueError, match="cpu_threads"):
        TVL1(cpu_threads=0)


def test_accepts_numpy_torch_uint8_and_unit_float():
    prev, nxt, _ = _case("translation")
    tvl1 = TVL1(FlowConfig.fast())
    reference = tvl1(prev, nxt)
    torch.testing.assert_close(tvl1(torch.from_numpy(prev), torch.from_numpy(nxt)), reference)
    # float frames are taken as 0..1 (OpenCV's convention), uint8 as 0..255
    as_float = tvl1(prev.astype(np.float32) / 255, torch.from_numpy(nxt).float() / 255)
    torch.testing.assert_close(as_float, reference, atol=1e-3, rtol=0)


def test_rejects_bad_inputs():
    tvl1 = TVL1(FlowConfig.fast())
    with pytest.raises(ValueError, match="same shape"):
        tvl1(np.zeros((32, 32), np.uint8), np.zeros((32, 31), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(N, H, W\)"):
        tvl1(np.zeros((1, 1, 32, 32), np.uint8), np.zeros((1, 1, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="init_flow"):
        tvl1(np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8), init_flow=np.zeros((2, 16, 16), np.float32))


def test_zero_motion_gives_zero_flow():
    prev, _, _ = _case("translation")
    flow = TVL1()(prev, prev)
    assert float(flow.abs().max()) < 1e-3


# --- configuration ---------------------------------------------------------------------------------


def test_config_defaults_are_opencvs():
    ocv = cv2.optflow.DualTVL1OpticalFlow_create()
    c = FlowConfig()
    assert (c.tau, c.lambda_, c.theta, c.gamma, c.epsilon, c.scale_step) == pytest.approx(
        (ocv.getTau(), ocv.getLambda(), ocv.getTheta(), ocv.getGamma(), ocv.getEpsilon(), ocv.getScaleStep()))
    assert (c.nscales, c.warps, c.inner_iterations, c.outer_iterations, c.median_filtering) == (
        ocv.getScalesNumber(), ocv.getWarpingsNumber(), ocv.getInnerIterations(), ocv.getOuterIterations(),
        ocv.getMedianFiltering())
    assert not c.fixed_iterations and c.interpolation == "bicubic"


def test_config_round_trips_and_converts_to_opencv():
    c = FlowConfig.fast(gamma=0.1)
    assert FlowConfig(**dataclasses.asdict(c)) == c
    ocv = c.to_opencv()
    assert (ocv.getScalesNumber(), ocv.getWarpingsNumber(), ocv.getInnerIterations()) == (3, 1, 10)
    assert ocv.getEpsilon() == 0.0, "fixed iterations = OpenCV never stopping early"
    assert ocv.getGamma() == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [dict(tau=0.5), dict(nscales=0), dict(warps=1.5), dict(median_filtering=4),
                                 dict(scale_step=1.0), dict(interpolation="nearest"), dict(lambda_=0)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        FlowConfig(**bad)


# --- building blocks against OpenCV ------------------------------------------------------------------


@pytest.mark.parametrize("ksize", [3, 5])
def test_median_blur_equals_opencv(ksize):
    u = torch.randn(2, 2, 23, 31)
    ours = _median_blur(u, ksize)
    for i in range(2):
        for c in range(2):
            np.testing.assert_array_equal(ours[i, c].numpy(), cv2.medianBlur(u[i, c].numpy(), ksize))


def test_pyramid_resize_equals_opencv():
    img = torch.rand(1, 51, 64) * 255
    ours = _resize(img, (41, 51), (1.25, 1.25))[0].numpy()
    np.testing.assert_allclose(ours, cv2.resize(img[0].numpy(), None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR), atol=1e-3)
    up = _resize(img, (64, 80), (51 / 64, 64 / 80))[0].numpy()
    np.testing.assert_allclose(up, cv2.resize(img[0].numpy(), (80, 64), interpolation=cv2.INTER_LINEAR), atol=1e-3)


# --- encodings ---------------------------------------------------------------------------------------


def test_encode_decode_clip_and_scale():
    flow = torch.tensor([-35.0, -20.0, -5.0, 0.0, 7.5, 20.0, 50.0])
    enc = encode_flow(flow)
    assert float(enc.min()) == -1.0 and float(enc.max()) == 1.0
    torch.testing.assert_close(decode_flow(enc), flow.clamp(-FLOW_CLIP_PX, FLOW_CLIP_PX))
    np.testing.assert_allclose(encode_flow(flow.numpy()), enc.numpy())
    np.testing.assert_allclose(decode_flow(enc.numpy()), decode_flow(enc).numpy())


def test_uint8_quantisation_error_is_as_documented():
    rng = np.random.default_rng(0)
    flow = rng.uniform(-FLOW_CLIP_PX, FLOW_CLIP_PX, size=(2, 2, 64, 64)).astype(np.float32)
    codes = flow_to_uint8(flow)
    assert codes.dtype == np.uint8 and codes.min() >= 1
    error = np.abs(flow_from_uint8(codes) - flow).max()
    assert error <= FLOW_UINT8_STEP_PX / 2 + 1e-5
    assert error > FLOW_UINT8_STEP_PX / 2 * 0.9, "the bound should be tight, not loose"
    assert flow_to_uint8(np.zeros(3, np.float32)).tolist() == [128] * 3
    assert flow_from_uint8(np.array([128], np.uint8))[0] == 0.0
    torch_codes = flow_to_uint8(torch.from_numpy(flow))
    assert torch_codes.dtype == torch.uint8
    np.testing.assert_array_equal(torch_codes.numpy(), codes)
    torch.testing.assert_close(flow_from_uint8(torch_codes), torch.from_numpy(flow_from_uint8(codes)))
    assert flow_from_uint8(flow_to_uint8(np.array([-50.0, 50.0]))).tolist() == [-FLOW_CLIP_PX, FLOW_CLIP_PX]


def test_warp_equals_opencv_remap_bicubic():
    from stream.flow import _warp

    rng = np.random.default_rng(1)
    img = (rng.random((40, 50)) * 255).astype(np.float32)
    u = (rng.standard_normal((2, 40, 50)) * 2).astype(np.float32)  # some samples fall outside the image
    ys, xs = np.mgrid[0:40, 0:50].astype(np.float32)
    expected = cv2.remap(img, xs + u[0], ys + u[1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ours = _warp(torch.from_numpy(img)[None, None], torch.from_numpy(u)[None], "bicubic")[0, 0].numpy()
    np.testing.assert_allclose(ours, expected, atol=0.01)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_tensor_warp_equals_cpu_warp(interpolation):
    """CUDA uses the tensor gathers, the CPU OpenCV's remap: both must agree."""
    from stream.flow import _warp, _warp_images

    rng = np.random.default_rng(2)
    images = torch.from_numpy((rng.random((2, 3, 20, 30)) * 255).astype(np.float32))
    u = torch.from_numpy((rng.standard_normal((2, 2, 20, 30)) * 2).astype(np.float32))
    torch.testing.assert_close(_warp(images, u, interpolation), _warp_images(images, u, interpolation), atol=0.02, rtol=0)


def test_network_median_equals_cpu_median():
    from stream.flow import _median_filter

    u = torch.randn(2, 2, 17, 19)
    torch.testing.assert_close(_median_blur(u, 5), _median_filter(u, 5), atol=0, rtol=0)


def test_tensor_only_path_matches_opencv(monkeypatch):
    """The code CUDA runs (tensor warp and median network), exercised on the CPU."""
    import stream.flow as flow_module

    monkeypatch.setattr(flow_module, "_warp_images", flow_module._warp)
    monkeypatch.setattr(flow_module, "_median_filter", flow_module._median_blur)
    prev, nxt, truth = _case("smooth_field")
    ocv = FlowConfig().to_opencv().calc(prev, nxt, None)
    ours = _hwc(TVL1()(prev, nxt))
    assert _epe(ours, ocv) < 0.15
    assert _epe(ours, truth) <= 1.10 * _epe(ocv, truth)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_fixed_iterations_do_not_synchronise_with_the_host(cuda_graphs):
    prev, nxt, _ = _case("translation")
    prev_t, nxt_t = torch.from_numpy(prev).cuda(), torch.from_numpy(nxt).cuda()
    tvl1 = TVL1(FlowConfig.fast(), device="cuda", cuda_graphs=cuda_graphs)
    tvl1(prev_t, nxt_t)  # warm-up: cached resize matrices are copied to the device once, the graph captured
    assert tvl1.uses_cuda_graphs == cuda_graphs
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        flow = tvl1(prev_t, nxt_t)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert flow.is_cuda and flow.shape == (1, 2, SIZE_PX, SIZE_PX)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_graph_replays_equal_eager_runs_for_new_inputs():
    """The graph must read each call's frames (not the ones it was captured with) and return
    results that later calls do not overwrite."""
    cases = [_case(c) for c in ("translation", "rotation", "zoom", "smooth_field", "moving_object", "translation")]
    frames = [(np.stack([c[0] for c in cases[i:i + 3]]), np.stack([c[1] for c in cases[i:i + 3]])) for i in (0, 3)]
    config = FlowConfig.fast()
    graphed, eager = TVL1(config, device="cuda"), TVL1(config, device="cuda", cuda_graphs=False)
    first = graphed(*frames[0])
    second = graphed(*frames[1])
    assert graphed.uses_cuda_graphs and not eager.uses_cuda_graphs
    torch.testing.assert_close(first, eager(*frames[0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(second, eager(*frames[1]), atol=1e-4, rtol=0)
    assert float((first - second).abs().max()) > 0.1, "different pairs, different flows"
    assert graphed.last_iterations == eager.last_iterations == 30
    # warm start: a separate captured graph with the initial flow as a third input
    init = torch.from_numpy(np.stack([c[2] for c in cases[:3]]) * 0.8).permute(0, 3, 1, 2).cuda()
    torch.testing.assert_close(graphed(*frames[0], init_flow=init), eager(*frames[0], init_flow=init), atol=1e-4, rtol=0)
    # CPU inputs (numpy) and another batch size go through their own graph too
    torch.testing.assert_close(graphed(frames[1][0][:1], frames[1][1][:1]), second[:1], atol=1e-4, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_early_stopping_graphs_equal_the_eager_loop():
    cases = [_case(c) for c in ("translation", "moving_object", "zoom", "smooth_field")]
    prev, nxt = np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases])
    graphed, eager = TVL1(FlowConfig(), device="cuda"), TVL1(FlowConfig(), device="cuda", cuda_graphs=False)
    for _ in range(2):  # the second call replays the graphs captured by the first
        got = graphed(prev, nxt)
        assert graphed.uses_cuda_graphs and graphed._levels
        torch.testing.assert_close(got, eager(prev, nxt), atol=1e-4, rtol=0)
        # exact on the CPU; CUDA reductions over different batch sizes may round a borderline test apart
        assert abs(graphed.last_iterations - eager.last_iterations) <= 0.02 * eager.last_iterations


# --- texture pre-filter (FlowConfig.texture_sigma) ----------------------------------------------------


def _lit(img: np.ndarray, gain: float, bands: float, phase: float) -> np.ndarray:
    """The scene under another light: an overall gain (flicker) and rolling bands across the rows."""
    rows = np.arange(img.shape[0], dtype=np.float32)[:, None]
    light = gain * (1.0 + bands * np.sin(2 * np.pi * (rows / 40.0 + phase)))
    return np.clip(img.astype(np.float32) * light, 0, 255).astype(np.uint8)


def test_texture_removes_flicker_and_rolling_bands_but_keeps_motion():
    """A still scene under flicker and moving bands: TV-L1 reads the light as motion; on texture it reads almost none.
    The same light change on top of a true translation: the texture flow still finds the translation."""
    still = _texture(SIZE_PX, seed=3).astype(np.uint8)
    prev, nxt = _lit(still, 1.0, 0.06, 0.0), _lit(still, 1.04, 0.06, 0.15)
    raw = TVL1(FlowConfig.fast())(prev, nxt)[0].norm(dim=0).mean().item()
    tex = TVL1(FlowConfig.fast(texture_sigma=3.0))(prev, nxt)[0].norm(dim=0).mean().item()
    assert raw > 0.15 and tex < raw / 3, (raw, tex)
    truth = np.zeros((SIZE_PX, SIZE_PX, 2), np.float32)
    truth[..., 0] = 1.5
    a, b = _pair_from_flow(truth, seed=4)
    lit = _lit(a, 1.0, 0.06, 0.0), _lit(b, 1.04, 0.06, 0.15)
    error = {s: float(np.abs(_hwc(TVL1(FlowConfig(texture_sigma=s))(*lit))[8:-8, 8:-8] - truth[8:-8, 8:-8]).mean()) for s in (0.0, 3.0)}
    assert error[3.0] < 0.05 and error[3.0] < error[0.0] / 2, error  # measured: 0.02 against 0.10 px


def test_texture_is_the_frame_minus_its_blur():
    frames = torch.from_numpy(_texture(40, seed=5))[None]
    out = texture(frames, 2.0)[0].numpy()
    want = frames[0].numpy() - cv2.GaussianBlur(frames[0].numpy(), (13, 13), 2.0, borderType=cv2.BORDER_REFLECT_101) + 127.5
    np.testing.assert_allclose(out, want, atol=1e-3)  # 3 sigma each side: OpenCV's 13-tap kernel
    assert texture(frames, 0.0) is frames  # off: the frame as it is, bit for bit
    with pytest.raises(ValueError, match="texture_sigma"):
        FlowConfig(texture_sigma=-1.0)
    with pytest.raises(ValueError, match="no texture pre-filter"):
        FlowConfig(texture_sigma=2.0).to_opencv()
