"""The streaming engine (stream/engine/streaming.py) against the clip model it comes from.

Exactness is checked against an independent reference built from the clip model itself: at every
frame the clip model runs on the 16 frames ending there, with forward hooks that replace each
layer's older output columns by the newest column that layer produced at the earlier frame (the
stream's definition: a column is computed once, as the newest column of its clip, then reused).
The reference uses the clip model's own padding, strides and batch norm, none of the stream's code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stream.engine.base import FusedProbs
from stream.engine.streaming import StreamingEngine, StreamingI3D, _FusedStreaming, _Rings, newest_taps, step_flops_ratio
from stream.model import FusedI3D, I3D, MaxPool3dSame, Unit3D
from stream.preprocess import CLIP_FRAMES, FUTURE_FRAMES, PAST_FRAMES

S = 32


def _random_model(seed: int = 0) -> FusedI3D:
    """Random weights and random batch-norm statistics (so that folding them is tested too)."""
    torch.manual_seed(seed)
    model = FusedI3D(num_classes=3, flow_weight=0.4)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _frames(n: int, arenas: int = 1, seed: int = 1, size_px: int = S) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = size_px
    return torch.rand(n, arenas, 3, s, s, generator=g) * 2 - 1, torch.randn(n, arenas, 2, s, s, generator=g) * 0.3


def _reference(model: FusedI3D, rgb: torch.Tensor, flow: torch.Tensor) -> list[torch.Tensor]:
    """Fused probabilities at every frame: the clip model with its older columns frozen (see the docstring)."""
    stored: dict[tuple[int, int], torch.Tensor] = {}
    frame = [0]

    def hook(module: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        t, n = out.shape[2], frame[0]
        spacing = CLIP_FRAMES // t  # 16 frames -> 8/4/2 columns: 2/4/8 frames apart
        stored[(id(module), n)] = out[:, :, -1].clone()
        for j in range(t - 1):
            old = stored.get((id(module), n - (t - 1 - j) * spacing))
            out[:, :, j] = 0.0 if old is None else old  # never computed: the clip's zero padding
        return out

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (Unit3D, MaxPool3dSame))]
    graph = FusedProbs(model).eval()
    outs = []
    try:
        for n in range(rgb.shape[0]):
            frame[0] = n
            idx = range(n - CLIP_FRAMES + 1, n + 1)
            clip_rgb = torch.stack([rgb[i] if i >= 0 else torch.zeros_like(rgb[0]) for i in idx], dim=2)
            clip_flow = torch.stack([flow[i] if i >= 0 else torch.zeros_like(flow[0]) for i in idx], dim=2)
            with torch.no_grad():
                outs.append(graph(clip_rgb, clip_flow)[0])
    finally:
        for h in handles:
            h.remove()
    return outs


def test_newest_taps_follow_the_clip_padding() -> None:
    # Conv3d_1a: 16 frames, kernel 7, stride 2, SAME pad (2, 3): the newest column reads frames
    # 12..15 of the clip (3, 2, 1, 0 frames back); its last 3 taps are the clip's right padding.
    taps, t_out, spacing = newest_taps(16, 7, 2, 1)
    assert taps == [(0, 3), (1, 2), (2, 1), (3, 0)] and (t_out, spacing) == (8, 2)
    # MaxPool3d_4a on 8 columns 2 frames apart: kernel 3, stride 2, pad (0, 1)
    assert newest_taps(8, 3, 2, 2) == ([(0, 2), (1, 0)], 4, 4)
    # MaxPool3d_5a on 4 columns 4 apart: kernel 2, stride 2, no padding
    assert newest_taps(4, 2, 2, 4) == ([(0, 4), (1, 0)], 2, 8)
    # a 3x3x3 conv in Mixed_4 (4 columns 4 apart): reads this column and the one 4 frames back
    assert newest_taps(4, 3, 1, 4) == ([(0, 4), (1, 0)], 4, 4)


@pytest.mark.parametrize(("future", "size_px"), [("zeros", S), ("replicate", S), ("replicate", 40)])
def test_stream_equals_the_clip_model_with_its_older_columns_frozen(future: str, size_px: int) -> None:
    """``future`` is the clip model's own temporal padding: zeros (the original) or replicate.

    At 40 px a 5 px map meets a stride-2 pool: its SAME padding is symmetric, so the pool pads itself.
    """
    model = _random_model()
    padded = FusedI3D(num_classes=3, flow_weight=0.4, temporal_padding=future).eval()
    padded.load_state_dict(model.state_dict())
    rgb, flow = _frames(22, size_px=size_px)
    ref = _reference(padded, rgb, flow)
    stream, rings = _FusedStreaming(model, CLIP_FRAMES, future=future).eval(), _Rings()
    with torch.inference_mode():
        got = [stream(rgb[n], flow[n], rings)[0] for n in range(rgb.shape[0])]
    diff = max(float((a - b).abs().max()) for a, b in zip(got, ref))
    assert diff < 1e-5, diff


def test_newest_conv1_column_is_exactly_the_clips() -> None:
    """With zero future, Conv3d_1a's newest column is computed from exactly what the clip's sees."""
    torch.manual_seed(0)
    i3d = I3D(num_classes=3).eval()
    stream, rings = StreamingI3D(i3d, future="zeros"), _Rings()
    rgb, _ = _frames(CLIP_FRAMES)
    first = stream.layers[0]
    with torch.inference_mode():
        for n in range(CLIP_FRAMES):
            column = first(rgb[n], rings)
            rings.frame += 1
        clip = i3d.Conv3d_1a_7x7(rgb.permute(1, 2, 0, 3, 4))
    torch.testing.assert_close(column, clip[:, :, -1], atol=1e-5, rtol=1e-5)


def test_a_stream_is_not_the_clip_model() -> None:
    """Not equal (see the module docstring): the older columns never see the frames after them."""
    model = _random_model()
    rgb, flow = _frames(24)
    stream, rings = _FusedStreaming(model, CLIP_FRAMES).eval(), _Rings()
    graph = FusedProbs(model).eval()
    with torch.inference_mode():
        got = [stream(rgb[n], flow[n], rings)[0] for n in range(rgb.shape[0])]
        n = rgb.shape[0] - 1
        clip = graph(rgb[n - 15 : n + 1].permute(1, 2, 0, 3, 4), flow[n - 15 : n + 1].permute(1, 2, 0, 3, 4))[0]
    assert float((got[-1] - clip).abs().max()) > 1e-4  # the stream is not the clip model: the check can fail


@pytest.mark.parametrize("kind", ["streaming", "streaming-torch"])  # the ONNX step's dynamic batch and the torch step
def test_several_arenas_batched_equal_one_by_one(tiny_model, kind) -> None:
    from stream.engine import build_engine

    engine = build_engine(kind, tiny_model, device="cpu")
    rgb, flow = _frames(12, arenas=3)
    batched = engine.open_stream(3)
    singles = [engine.open_stream(1) for _ in range(3)]
    for n in range(rgb.shape[0]):
        b = batched.push(rgb[n], flow[n])
        s = [st.push(rgb[n, a : a + 1], flow[n, a : a + 1]) for a, st in enumerate(singles)]
        if b is None:
            assert all(x is None for x in s)
            continue
        np.testing.assert_allclose(b.fused, np.concatenate([x.fused for x in s]), atol=1e-5)
    tails = [st.flush() for st in singles]
    for i, p in enumerate(batched.flush()):
        np.testing.assert_allclose(p.fused, np.concatenate([t[i].fused for t in tails]), atol=1e-5)


def test_segment_start_and_end_repeat_the_edge_frame_like_the_clip_pipeline(tiny_model) -> None:
    """push/flush = the network stepped on the first frame 8 more times before and the last 7 more after (flow 0)."""
    engine = StreamingEngine(tiny_model, _config())
    rgb, flow = _frames(10)
    flow[0] = 0.0  # a segment's first frame has no flow (stream.ring)
    stream = engine.open_stream(1)
    got = [p.fused for p in (stream.push(rgb[n], flow[n]) for n in range(10)) if p is not None]
    got += [p.fused for p in stream.flush()]
    assert len(got) == 10  # one prediction per frame, the look-ahead frames from the flush
    still = torch.zeros_like(flow[0])
    steps = [(rgb[0], still)] * PAST_FRAMES + [(rgb[n], flow[n]) for n in range(10)] + [(rgb[9], still)] * FUTURE_FRAMES
    rings = _Rings()
    with torch.inference_mode():
        outs = [engine.module(r, f, rings)[0].numpy() for r, f in steps]
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(outs[PAST_FRAMES + FUTURE_FRAMES :]), atol=1e-6)


def test_a_short_segment_gets_one_prediction_per_frame(tiny_model) -> None:
    stream = StreamingEngine(tiny_model, _config()).open_stream(2)
    rgb, flow = _frames(3, arenas=2)
    assert all(stream.push(rgb[n], flow[n]) is None for n in range(3))
    tail = stream.flush()
    assert len(tail) == 3 and tail[0].fused.shape == (2, 3)
    assert stream.flush() == []


@pytest.mark.parametrize("kind", ["streaming", "streaming-torch"])  # the ONNX step's state and the torch rings
def test_reset_at_a_gap_forgets_the_past(tiny_model, kind) -> None:
    from stream.engine import build_engine

    engine = build_engine(kind, tiny_model, device="cpu")
    rgb, flow = _frames(20)
    used = engine.open_stream(1)
    for n in range(12):  # a first segment, then a gap
        used.push(rgb[n], flow[n])
    used.flush()
    fresh = engine.open_stream(1)
    for n in range(12, 20):
        a, b = used.push(rgb[n], flow[n]), fresh.push(rgb[n], flow[n])
        if a is not None:
            np.testing.assert_array_equal(a.fused, b.fused)
    assert a is not None  # the comparison above ran


def test_flops_per_step_are_a_fraction_of_a_clip() -> None:
    torch.manual_seed(0)
    ratio = step_flops_ratio(I3D(num_classes=3, in_channels=3).eval(), 64)
    assert 0.05 < ratio < 0.2, ratio  # one column per layer of 8/8/4/2, minus the padding taps


def _config(kind: str = "streaming"):
    from stream.engine.base import EngineConfig

    return EngineConfig(kind=kind, device="cpu")


@pytest.mark.parametrize(("kind", "name"), [("streaming", "streaming-onnxruntime-cpu"), ("streaming-torch", "streaming-torch-cpu")])
def test_factory_builds_the_streaming_engine(tiny_model, kind, name) -> None:
    from stream.engine import build_engine

    with build_engine(kind, tiny_model, device="cpu") as engine:
        assert engine.name == name and engine.stepwise
        engine.warmup(2)
        rgb = np.zeros((1, 3, 16, 32, 32), np.float32)
        assert engine.predict(rgb, np.zeros((1, 2, 16, 32, 32), np.float32)).shape == (1, 3)


def test_streaming_only_the_first_layers_runs_the_rest_clip_wise() -> None:
    """``streamed_layers=0`` is the clip model itself, through the stream's rings (the split's plumbing)."""
    model = _random_model()
    rgb, flow = _frames(CLIP_FRAMES + 2)
    stream, rings = _FusedStreaming(model, CLIP_FRAMES, streamed_layers=0).eval(), _Rings()
    graph = FusedProbs(model).eval()
    with torch.inference_mode():
        got = [stream(rgb[n], flow[n], rings)[0] for n in range(rgb.shape[0])]
        n = rgb.shape[0] - 1
        clip = graph(rgb[n - 15 : n + 1].permute(1, 2, 0, 3, 4), flow[n - 15 : n + 1].permute(1, 2, 0, 3, 4))[0]
    torch.testing.assert_close(got[-1], clip, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["torch", "onnxruntime"])
def test_clip_wise_engines_refuse_a_card_trained_for_streaming(tiny_model, tmp_path, kind) -> None:
    """Issue 22: their 16-frame clip cannot compute the causal function such weights were trained for."""
    import json
    import shutil

    from stream.engine import build_engine
    from stream.errors import UserError

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    card = json.loads((model / "card.json").read_text())
    (model / "card.json").write_text(json.dumps({**card, "trained_for": "streaming"}))
    with pytest.raises(UserError, match=f"trained for the streaming engine .* the {kind} engine's 16-frame clip"):
        build_engine(kind, model, device="cpu")
    with build_engine("auto", model, device="cpu") as engine:
        assert engine.name == "streaming-onnxruntime-cpu"  # the ONNX step runs such a card too
        with pytest.raises(UserError, match="feed it frame by frame"):
            engine.predict(np.zeros((1, 3, 16, 32, 32), np.float32), np.zeros((1, 2, 16, 32, 32), np.float32))
        assert engine.open_stream(1).push(np.zeros((1, 3, 32, 32), np.float32), np.zeros((1, 2, 32, 32), np.float32)) is None


# ------------------------------------------------------------ the step as one ONNX graph (streaming_onnx)

LOGITS_SCALE = 50.0  # a fresh logits layer gives probabilities within 1e-3 of uniform: labels would say little


def _save_random(directory, seed: int = 0):
    """A folder of _random_model's weights (float32, logits far from uniform) at S px."""
    import dataclasses

    from stream.flow import FlowConfig
    from stream.modelfile import ModelCard, save_model

    model = _random_model(seed)
    with torch.no_grad():
        for stream in (model.rgb, model.flow):
            stream.logits.conv3d.weight.mul_(LOGITS_SCALE)
    card = ModelCard(name="streaming-onnx-test", view="side", classes=["swim", "struggle", "float"], immobile_classes=["float"],
                     input_size_px=S, fps=15.0, flow=dataclasses.asdict(FlowConfig()), flow_weight=model.flow_weight)
    return save_model(model, card, directory)


def _run(engine, rgb: torch.Tensor, flow: torch.Tensor, gap: int) -> list:
    """Every prediction of a stream of 2 arenas over two segments split at frame ``gap``."""
    stream, preds = engine.open_stream(rgb.shape[1]), []
    for n in range(rgb.shape[0]):
        if n == gap:
            preds += stream.flush()  # a gap: the rest of the segment, then the state is reset
        pred = stream.push(rgb[n], flow[n])
        preds += [pred] if pred is not None else []
    return preds + stream.flush()


def test_onnx_step_equals_the_torch_step_across_a_gap(tmp_path) -> None:
    """Issue 22: the same labels and probabilities within 1e-4 as the torch step, 2 arenas, ~40 frames, a reset."""
    from stream.engine import build_engine

    model = _save_random(tmp_path / "m")
    rgb, flow = _frames(42, arenas=2, seed=3)
    with build_engine("streaming", model, device="cpu") as onnx, build_engine("streaming-torch", model, device="cpu") as eager:
        assert (onnx.name, eager.name) == ("streaming-onnxruntime-cpu", "streaming-torch-cpu")
        got, want = _run(onnx, rgb, flow, gap=21), _run(eager, rgb, flow, gap=21)
    assert len(got) == len(want) == 42
    for g, w in zip(got, want):
        for field in ("fused", "rgb", "flow"):
            np.testing.assert_allclose(getattr(g, field), getattr(w, field), atol=1e-4, rtol=0)
    labels = np.stack([p.fused.argmax(1) for p in got])
    np.testing.assert_array_equal(labels, np.stack([p.fused.argmax(1) for p in want]))
    fused = np.stack([p.fused for p in want])
    assert np.ptp(fused, axis=0).max() > 1e-3  # the probabilities move from frame to frame: the check can fail


def test_onnx_step_graph_is_cached_and_checked(tmp_path, monkeypatch) -> None:
    """Exported once per weights and size into the ONNX cache (signed manifest), reused by the next start."""
    import stream.engine.streaming_onnx as streaming_onnx
    from stream.engine.streaming_onnx import StreamingOnnxEngine
    from stream.engine.cache import manifest_problem, with_weights_digest
    from stream.engine.onnx_cache import GRAPH_STREAM, cached_onnx_facts, cached_onnx_path
    from stream.modelfile import load_card

    model = _save_random(tmp_path / "m")
    StreamingOnnxEngine(model, _config()).close()
    card = with_weights_digest(model, load_card(model))
    path = cached_onnx_path(card, S, graph=GRAPH_STREAM)
    assert path.is_file() and path != cached_onnx_path(card, S)  # not the clip graph's file
    assert manifest_problem(path, {**cached_onnx_facts(card, S, graph=GRAPH_STREAM), "step_format": streaming_onnx.STEP_FORMAT}) is None

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(streaming_onnx, "write_streaming_onnx", no_export)
    engine = StreamingOnnxEngine(model, _config())
    assert engine.name == "streaming-onnxruntime-cpu"
    assert engine.open_stream(1).push(np.zeros((1, 3, S, S), np.float32), np.zeros((1, 2, S, S), np.float32)) is None


def test_onnx_step_check_refuses_a_graph_of_other_weights(tmp_path) -> None:
    from stream.engine.cache import with_weights_digest
    from stream.engine.streaming_onnx import check_streaming_onnx, write_streaming_onnx
    from stream.errors import UserError
    from stream.modelfile import load_card

    model = _save_random(tmp_path / "m")
    card = with_weights_digest(model, load_card(model))
    path = write_streaming_onnx(_FusedStreaming(_random_model(0), CLIP_FRAMES).eval(), tmp_path / "step.onnx", card=card, input_size_px=S)
    assert check_streaming_onnx(path, _FusedStreaming(_random_model(0), CLIP_FRAMES).eval(), S) <= 1e-4
    with pytest.raises(UserError, match="differs from PyTorch"):
        check_streaming_onnx(path, _FusedStreaming(_random_model(1), CLIP_FRAMES).eval(), S)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_streaming_step_on_cuda_equals_the_cpu_step(tmp_path) -> None:
    """Issue 22's GPU line: the PyTorch step on CUDA, true FP32 (TF32 off), against the CPU step across a gap."""
    from stream.engine import build_engine

    model = _save_random(tmp_path / "m")
    rgb, flow = _frames(42, arenas=2, seed=3)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with build_engine("streaming-torch", model, device="cuda") as gpu, build_engine("streaming-torch", model, device="cpu") as cpu:
            assert gpu.name == "streaming-torch-cuda"
            got, want = _run(gpu, rgb, flow, gap=21), _run(cpu, rgb, flow, gap=21)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert len(got) == len(want) == 42
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.fused, w.fused, atol=1e-4, rtol=0)
