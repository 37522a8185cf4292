"""The parallel form (stream/causal_i3d.py) against the streaming engine it describes, frame by frame."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stream.causal_i3d import causal_fused, causal_logits, receptive_frames, segment_outputs, streaming_state_dict
from stream.engine.base import EngineConfig
from stream.engine.streaming import StreamingEngine
from stream.flow import FlowConfig
from stream.model import FusedI3D
from stream.modelfile import ModelCard, save_model

from test_streaming import _random_model as _streaming_random_model

S = 32  # the smallest input the I3D takes: fast
LOGITS_SCALE = 50.0  # a fresh logits layer gives probabilities within 1e-3 of uniform
SEGMENT_FRAMES = 40  # longer than the stream's receptive field's first half: every layer's ring wraps


def _random_model(seed: int = 0) -> FusedI3D:
    """test_streaming's random model (batch-norm statistics far from the identity, so that they
    matter), with logits far from uniform, so that probabilities tell the frames apart."""
    model = _streaming_random_model(seed)
    with torch.no_grad():
        for stream in (model.rgb, model.flow):
            stream.logits.conv3d.weight.mul_(LOGITS_SCALE)
    return model


def _save(model: FusedI3D, directory, engine: type[StreamingEngine] = StreamingEngine, **card_fields) -> StreamingEngine:
    card = ModelCard(name="causal-test", view="side", classes=["swim", "struggle", "float"], immobile_classes=["float"],
                     input_size_px=S, fps=15.0, flow=dataclasses.asdict(FlowConfig()), flow_weight=model.flow_weight, **card_fields)
    save_model(model, card, directory)  # float32: the comparison is exact to rounding
    return engine(directory, EngineConfig(kind="streaming", device="cpu"))


def _segment(frames: int, arenas: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(arenas, C, frames, S, S) RGB in [-1, 1] and flow; the segment's first frame has no flow."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(arenas, 3, frames, S, S, generator=g) * 2 - 1
    flow = torch.randn(arenas, 2, frames, S, S, generator=g) * 0.3
    flow[:, :, 0] = 0.0
    return rgb, flow


def _stream(engine: StreamingEngine, rgb: torch.Tensor, flow: torch.Tensor) -> tuple[np.ndarray, ...]:
    """FrameStream's predictions of every frame, (arenas, frames, K) fused / rgb / flow probabilities."""
    stream = engine.open_stream(rgb.shape[0])
    preds = [stream.push(rgb[:, :, n], flow[:, :, n]) for n in range(rgb.shape[2])]
    preds = [p for p in preds if p is not None] + stream.flush()
    assert len(preds) == rgb.shape[2]
    return tuple(np.stack([getattr(p, f) for p in preds], axis=1) for f in ("fused", "rgb", "flow"))


def test_parallel_form_equals_the_frame_by_frame_stream(tmp_path) -> None:
    model = _random_model()
    engine = _save(model, tmp_path / "m")
    rgb, flow = _segment(SEGMENT_FRAMES, arenas=2)
    fused, rgb_p, flow_p = _stream(engine, rgb, flow)
    with torch.no_grad():
        p_fused, rgb_logits, flow_logits = segment_outputs(model, rgb, flow)
    np.testing.assert_allclose(p_fused.numpy(), fused, atol=1e-5)
    np.testing.assert_allclose(rgb_logits.softmax(-1).numpy(), rgb_p, atol=1e-5)
    np.testing.assert_allclose(flow_logits.softmax(-1).numpy(), flow_p, atol=1e-5)
    assert float(np.ptp(fused, axis=1).max()) > 1e-3  # the frames' outputs differ: a lag would fail it


def test_dropping_the_future_taps_is_another_function(tmp_path) -> None:
    """The fold matters: the same comparison fails with the clip's zero padding instead."""
    model = _random_model()
    engine = _save(model, tmp_path / "m")
    rgb, flow = _segment(24, arenas=1)
    fused, _, _ = _stream(engine, rgb, flow)
    with torch.no_grad():
        zeros = segment_outputs(model, rgb, flow, future="zeros")[0].numpy()
    assert np.abs(zeros - fused).max() > 1e-4


def test_the_parallel_form_is_differentiable() -> None:
    model = _random_model().train()
    rgb, flow = _segment(20, arenas=2)
    _, rgb_logits, flow_logits = causal_fused(model, rgb, flow)
    target = torch.tensor([0, 2]).repeat_interleave(20).view(2, 20)
    loss = torch.nn.functional.cross_entropy(rgb_logits.flatten(0, 1), target.flatten()) \
        + torch.nn.functional.cross_entropy(flow_logits.flatten(0, 1), target.flatten())
    loss.backward()
    for stream in (model.rgb, model.flow):
        for unit in (stream.Conv3d_1a_7x7, stream.Mixed_4b.b1b, stream.Mixed_5c.b2b, stream.logits):
            grad = unit.conv3d.weight.grad
            assert grad is not None and float(grad.abs().sum()) > 0
    # the taps after "now" of Conv3d_1a get the newest tap's gradient (they are folded into it)
    grad = model.rgb.Conv3d_1a_7x7.conv3d.weight.grad
    torch.testing.assert_close(grad[:, :, 4], grad[:, :, 3])


def test_a_causal_output_depends_only_on_the_past() -> None:
    model = _random_model()
    rgb, _ = _segment(30, arenas=1)
    later = rgb.clone()
    later[:, :, 20:] = 0.5
    with torch.no_grad():
        a, b = causal_logits(model.rgb, rgb), causal_logits(model.rgb, later)
    torch.testing.assert_close(a[:, :20], b[:, :20], atol=1e-6, rtol=0.0)


@pytest.mark.parametrize("onnx", [False, True], ids=["torch-step", "onnx-step"])
def test_streaming_state_dict_is_run_exactly_by_the_streaming_engine(tmp_path, onnx) -> None:
    """Both steps (PyTorch, and onnxruntime's graph with the rings as state) run a card trained for streaming exactly."""
    from stream.engine.streaming_onnx import StreamingOnnxEngine

    model = _random_model()
    stored = FusedI3D(num_classes=3, flow_weight=0.4).eval()
    stored.load_state_dict(streaming_state_dict(model))
    w = stored.rgb.Conv3d_1a_7x7.conv3d.weight
    assert float(w[:, :, 4:].detach().abs().max()) == 0.0  # taps after "now" hold nothing: the stream never reads them
    engine = _save(stored, tmp_path / "m", StreamingOnnxEngine if onnx else StreamingEngine, trained_for="streaming")
    assert engine.name == ("streaming-onnxruntime-cpu" if onnx else "streaming-torch-cpu")
    rgb, flow = _segment(SEGMENT_FRAMES, arenas=2, seed=3)
    fused, _, _ = _stream(engine, rgb, flow)
    with torch.no_grad():
        expected = segment_outputs(model, rgb, flow)[0].numpy()
    np.testing.assert_allclose(fused, expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 2, 10, S, S), (1, 3, 10)])
def test_wrong_input_shape_is_refused(shape) -> None:
    with pytest.raises(ValueError, match="expected input"):
        causal_logits(_random_model().rgb, torch.zeros(shape))


def test_an_output_reads_exactly_the_receptive_field_the_engines_quote() -> None:
    """STREAM_RECEPTIVE_FRAMES (the clip-wise engines' refusal quotes it): step n reads frames n - 59 .. n."""
    from stream.engine.base import STREAM_RECEPTIVE_FRAMES

    model = _random_model()
    n = STREAM_RECEPTIVE_FRAMES + 4
    rgb, _ = _segment(n + 1, arenas=1)
    rgb.requires_grad_(True)
    causal_logits(model.rgb, rgb)[:, n].sum().backward()
    reads = rgb.grad.abs().amax(dim=(0, 1, 3, 4)) > 0  # (frames,): which frames step n depends on
    assert reads[n - STREAM_RECEPTIVE_FRAMES :].all() and not reads[: n - STREAM_RECEPTIVE_FRAMES].any(), reads
    assert receptive_frames(model.rgb) == STREAM_RECEPTIVE_FRAMES


def test_a_frozen_stem_computed_once_gives_the_same_logits() -> None:
    """causal_features up to a layer, then causal_logits from it: the whole network's logits."""
    from stream.causal_i3d import causal_features
    from stream.model import FEATURE_LAYERS

    model = _random_model()
    rgb, _ = _segment(24, arenas=1)
    k = FEATURE_LAYERS.index("Mixed_4b")
    with torch.no_grad():
        whole = causal_logits(model.rgb, rgb)
        split = causal_logits(model.rgb, causal_features(model.rgb, rgb, stop=k), start=k)
    torch.testing.assert_close(split, whole, atol=1e-6, rtol=0.0)
