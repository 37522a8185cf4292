"""The ``streaming`` engine: the clip-wise I3D turned into one column per layer per new frame.

Continual 3D CNNs (Hedegaard & Iosifidis 2022): consecutive 16-frame clips share 15 frames, so a
layer's output column can be computed once and kept in a small ring for the clips that follow.
I3D strides in time (Conv3d_1a by 2, MaxPool3d_4a by 2, MaxPool3d_5a by 2: 8/8/4/2 columns at
conv1/Mixed_3/Mixed_4/Mixed_5), so the stream drops the stride and reads the earlier columns of a
layer at the cumulative stride (2, 4, 8 frames back: "a trous"): each frame computes exactly one new
column per layer, and the clip ending at that frame reads its columns of the right phase::

    frame n (RGB + flow, N arenas) ─> Conv3d_1a column n ─> ... ─> Mixed_5c column n ─> logits(n)
                                      reads frames n-3..n       reads Mixed_5b n-8, n
    decision for centre n-7 = mean(logits(n), logits(n-8))      (the clip's 2 final columns)

Which column is computed, and how (the one definition the tests check against the clip model):
the column of layer L at frame n is the *newest* (right-edge) column of the clip that ends at
frame n, with that clip's SAME padding after frame n (``future``: "replicate", the default, reads
the newest column again, the I3D's ``temporal_padding="replicate"``; "zeros" is the original
padding, and drops those taps), and the taps before it read the ring. Then it is frozen and
reused by the next clips. So the same weights and the same 7-frame look-ahead, but not the same
numbers: in the clip model an older column also sees the frames to its right (this stream only
guessed them when it computed it), and a column at the clip's left edge sees zero padding (this
stream sees the real past). Every Mixed_3c column of a 16-frame clip reaches the padding, so no
deep column can be shared exactly. The measured effect on the bundled model is in the README:
far from the clip model's labels, so ``auto`` never picks this engine for a clip card; a card trained
for streaming (``trained_for``: ``stream/causal_i3d.py``, ``export.streaming_finetune``) is run by
this engine alone, and ``auto`` picks it. ``tests/test_streaming.py``
checks the stream exactly against the clip model with its older columns replaced by the frozen ones.

``streamed_layers=k`` streams only the first k body layers and runs the rest clip-wise on the
last columns of layer k (an experiment: closer to the clip model, less saved).

Segments: a gap (or the end of the input) ends a segment as in ``stream.pipeline``. The clip-wise
pipeline pads a segment's first clips by repeating its first frame (flow zero) and its last clips
by repeating its last frame; the stream does the same: the first frame is fed ``PAST_FRAMES``
extra times before it, ``flush`` feeds the last frame ``FUTURE_FRAMES`` more times, then the state
is reset. Everything older than the repeats is zero, which is the clip's zero padding.

Several arenas are the batch dimension of every column (one camera: the same frames and gaps).
Batch norm is folded into the convolutions once, at build time; each column is a 2D convolution
over the taps stacked on channels, so the work runs on any device PyTorch has (CUDA untested here).
This class runs the step in PyTorch (kind ``streaming-torch``); kind ``streaming`` is its subclass
``stream.engine.streaming_onnx.StreamingOnnxEngine``, which on the CPU with onnxruntime installed
runs the same step as one ONNX graph with the rings as state (equal within ``FP32_ATOL``; 1.5-2.6x
the PyTorch step on the 2-core CPU at one thread, README).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stream.engine.base import CPU_HALF_REFUSAL, KIND_STREAMING, Engine, EngineConfig, FusedProbs, Prediction, to_numpy, torch_device
from stream.errors import UserError
from stream.model import FEATURE_LAYERS, I3D, FusedI3D, InceptionModule, MaxPool3dSame, Unit3D, fuse, same_padding
from stream.modelfile import TRAINED_FOR_STREAMING, load_model
from stream.preprocess import CLIP_FRAMES, FUTURE_FRAMES, PAST_FRAMES

__all__ = ["FrameStream", "StreamingEngine", "StreamingI3D", "newest_taps", "step_flops_ratio"]

log = logging.getLogger("stream.engine")

# What a column reads for the frames after it (the clip's right padding), when it is computed:
# "zeros" is the clip's own padding, exact for the newest column but every older column then keeps
# zeros where the clip sees real frames (measured on the demo, fst-side-64: labels agreed with the
# clip model on 0 of the first 60 frames); "replicate" reads the newest column again (the I3D's
# temporal_padding="replicate"), a better guess for the frames to come (73 % of the first 150).
FUTURE_MODES = ("replicate", "zeros")
FUTURE_DEFAULT = "replicate"
WARMUP_FRAMES = CLIP_FRAMES + 2  # fills every ring once: allocation and oneDNN set-up paid before the first frame


def newest_taps(t_in: int, kernel: int, stride: int, spacing_in: int) -> tuple[list[tuple[int, int]], int, int]:
    """Where the newest output column of a temporal layer reads its input, in the stream.

    For a clip layer with ``t_in`` input columns ``spacing_in`` frames apart, TensorFlow SAME padding,
    ``kernel`` and ``stride`` in time: returns ``([(kernel tap, frames back from now), ...], t_out,
    spacing_out)``, leaving out the taps that fall on the clip's zero padding.
    """
    t_out = -(-t_in // stride)
    pad_before, _ = same_padding(t_in, kernel, stride)
    taps = []
    for tap in range(kernel):
        index = stride * (t_out - 1) - pad_before + tap  # input column the newest output reads
        if 0 <= index < t_in:
            taps.append((tap, (t_in - 1 - index) * spacing_in))
    return taps, t_out, spacing_in * stride


class _Rings:
    """The state of one stream: a ring of past input columns for each layer that looks back.

    Slot ``frame % length``; a ring starts as zeros, which is what the clip's zero padding feeds.
    """

    def __init__(self) -> None:
        self.frame = 0  # frames stepped since the reset
        self.rings: dict[int, torch.Tensor] = {}

    def reset(self) -> None:
        self.frame = 0
        with torch.inference_mode():  # the rings are inference tensors
            for ring in self.rings.values():
                ring.zero_()

    def taps(self, key: int, column: torch.Tensor, back: Sequence[int]) -> list[torch.Tensor]:
        """Store ``column`` as this frame's input of layer ``key``; return the columns ``back`` frames ago."""
        if back == (0,):
            return [column]
        length = max(back) + 1
        ring = self.rings.get(key)
        if ring is None or ring.shape[1:] != column.shape:
            ring = self.rings[key] = column.new_zeros((length, *column.shape))
        ring[self.frame % length] = column
        return [ring[(self.frame - b) % length] for b in back]


class _Layer(nn.Module):
    """One Unit3D or MaxPool3dSame as a per-frame column op (``forward(column, rings)``)."""

    def __init__(self, key: int, module: Unit3D | MaxPool3dSame, t_in: int, spacing_in: int, future: str) -> None:
        super().__init__()
        if future not in FUTURE_MODES:
            raise ValueError(f"future must be one of {FUTURE_MODES}, got {future!r}")
        self.key = key
        (kt, kh, kw), (st, sh, sw) = module.kernel, module.stride
        taps, self.t_out, self.spacing_out = newest_taps(t_in, kt, st, spacing_in)
        self.back = tuple(b for _, b in taps)
        self.kernel_hw, self.stride_hw = (kh, kw), (sh, sw)
        self.pool = isinstance(module, MaxPool3dSame)
        if self.pool:
            return
        conv = module.conv3d
        weight = conv.weight.detach().float()  # (out, in, kt, kh, kw)
        bias = conv.bias.detach().float() if conv.bias is not None else weight.new_zeros(weight.shape[0])
        if module.bn is not None:  # fold eval-mode batch norm into the convolution
            bn = module.bn
            scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.detach().float() + bn.eps)
            weight = weight * scale[:, None, None, None, None]
            bias = (bias - bn.running_mean.detach().float()) * scale + bn.bias.detach().float()
        if future == "replicate":  # the taps after now read the newest column: their weights join its tap
            newest = max(t for t, b in taps if b == 0)
            weight = weight.clone()
            weight[:, :, newest] += weight[:, :, newest + 1 :].sum(2)
        weight = weight[:, :, [t for t, _ in taps]]  # taps on the padding: zeros dropped, or folded in above
        # taps stacked on channels, tap-major: (out, taps * in, kh, kw) for one conv2d per column
        weight = weight.permute(0, 2, 1, 3, 4).reshape(weight.shape[0], -1, kh, kw)
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("bias", bias.contiguous())
        self.relu = module.activation

    def forward(self, column: torch.Tensor, rings: _Rings) -> torch.Tensor:  # (B, C, H, W) -> (B, C', H', W')
        taps = rings.taps(self.key, column, self.back)
        h, w = column.shape[-2:]
        (ph0, ph1), (pw0, pw1) = (same_padding(h, self.kernel_hw[0], self.stride_hw[0]),
                                  same_padding(w, self.kernel_hw[1], self.stride_hw[1]))
        if self.pool:  # inputs follow a ReLU (>= 0): a max with zero time padding, or a repeat, changes nothing
            x = taps[0]
            for t in taps[1:]:
                x = torch.maximum(x, t)
            if (ph0, pw0) == (ph1, pw1):  # the pool's own padding: its -inf never wins over inputs >= 0 either
                return F.max_pool2d(x, self.kernel_hw, self.stride_hw, (ph0, pw0))
            return F.max_pool2d(F.pad(x, (pw0, pw1, ph0, ph1)), self.kernel_hw, self.stride_hw)
        x = taps[0] if len(taps) == 1 else torch.cat(taps, dim=1)
        padding = (0, 0)
        if (ph0, pw0) == (ph1, pw1):  # symmetric (every stride-1 kernel): the convolution pads, one op less
            padding = (ph0, pw0)
        else:
            x = F.pad(x, (pw0, pw1, ph0, ph1))
        x = F.conv2d(x, self.weight, self.bias, self.stride_hw, padding)
        return F.relu(x) if self.relu else x


class _Inception(nn.Module):
    def __init__(self, key: int, module: InceptionModule, t_in: int, spacing_in: int, future: str) -> None:
        super().__init__()
        names = ("b0", "b1a", "b1b", "b2a", "b2b", "b3a", "b3b")
        self.branches = nn.ModuleDict({n: _Layer(key + i, getattr(module, n), t_in, spacing_in, future)
                                       for i, n in enumerate(names)})
        self.t_out, self.spacing_out = t_in, spacing_in  # stride 1 in time everywhere inside

        # b0, b1a and b2a are 1x1x1 convolutions of the same column: one conv2d instead of three
        # (each op costs ~70 us of dispatch on the loaded 2-core machine, ~40 % of a 64 px step)
        first = [self.branches[n] for n in ("b0", "b1a", "b2a")]
        self.register_buffer("weight_1x1", torch.cat([b.weight for b in first]))
        self.register_buffer("bias_1x1", torch.cat([b.bias for b in first]))
        self.split_1x1 = [b.weight.shape[0] for b in first]

    def forward(self, column: torch.Tensor, rings: _Rings) -> torch.Tensor:
        b = self.branches
        b0, b1a, b2a = F.relu(F.conv2d(column, self.weight_1x1, self.bias_1x1)).split(self.split_1x1, dim=1)
        return torch.cat([b0, b["b1b"](b1a, rings), b["b2b"](b2a, rings), b["b3b"](b["b3a"](column, rings), rings)], dim=1)


class StreamingI3D(nn.Module):
    """One I3D stream, one frame at a time: ``forward(frame (B, C, H, W), rings) -> logits (B, K)``.

    The logits are those of the clip that ends at this frame (see the module docstring): the mean
    of the logits columns of its final layer's phase. Build once per model; the state lives in a
    ``_Rings`` per stream, so one engine serves any number of streams.
    """

    LAYER_KEYS = 10  # ring keys reserved per layer (an inception module uses 7)

    def __init__(self, i3d: I3D, clip_frames: int = CLIP_FRAMES, key_base: int = 0, *,
                 future: str = FUTURE_DEFAULT, streamed_layers: int | None = None) -> None:
        super().__init__()
        t, spacing = clip_frames, 1
        layers = []
        self.streamed_layers = len(FEATURE_LAYERS) if streamed_layers is None else streamed_layers
        if not 0 <= self.streamed_layers <= len(FEATURE_LAYERS):
            raise ValueError(f"streamed_layers must be 0..{len(FEATURE_LAYERS)}, got {streamed_layers}")
        self.in_channels = i3d.in_channels
        for i, name in enumerate(FEATURE_LAYERS[: self.streamed_layers]):
            module = getattr(i3d, name)
            key = key_base + self.LAYER_KEYS * i
            kind = _Inception if isinstance(module, InceptionModule) else _Layer
            layer = kind(key, module, t, spacing, future)
            layers.append(layer)
            t, spacing = layer.t_out, layer.spacing_out
        self.layers = nn.ModuleList(layers)
        # layers after the streamed ones run clip-wise on the streamed layer's last t columns
        self.clip_layers = nn.ModuleList(getattr(i3d, name) for name in FEATURE_LAYERS[self.streamed_layers :])
        self.clip_logits = i3d.logits
        self.split_back = tuple(m * spacing for m in range(t - 1, -1, -1))  # oldest first
        self.split_key = key_base + self.LAYER_KEYS * (len(FEATURE_LAYERS) + 2)
        if self.clip_layers:
            return
        self.logits = _Layer(key_base + self.LAYER_KEYS * len(FEATURE_LAYERS), i3d.logits, t, spacing, future)
        # the clip averages the logits of its t final columns: this frame's and those spacing, 2 spacing ... back
        self.final_back = tuple(m * spacing for m in range(t))
        self.final_key = key_base + self.LAYER_KEYS * (len(FEATURE_LAYERS) + 1)

    def forward(self, frame: torch.Tensor, rings: _Rings) -> torch.Tensor:
        x = frame
        for layer in self.layers:
            x = layer(x, rings)
        if self.clip_layers:
            x = torch.stack(rings.taps(self.split_key, x, self.split_back), dim=2)  # (B, C, T, H, W)
            for layer in self.clip_layers:
                x = layer(x)
            return self.clip_logits(x.mean(dim=(3, 4), keepdim=True)).mean(dim=(2, 3, 4))
        x = self.logits(x.mean(dim=(2, 3), keepdim=True), rings)  # (B, K, 1, 1), dropout is off in eval
        columns = rings.taps(self.final_key, x.flatten(1), self.final_back)
        return torch.stack(columns).mean(0)


class _FusedStreaming(nn.Module):
    def __init__(self, model: FusedI3D, clip_frames: int, *, future: str = FUTURE_DEFAULT,
                 streamed_layers: int | None = None) -> None:
        super().__init__()
        common = {"future": future, "streamed_layers": streamed_layers}
        self.rgb = StreamingI3D(model.rgb, clip_frames, key_base=0, **common)
        # the flow stream's ring keys start past the RGB stream's (it uses fewer than 200)
        self.flow = StreamingI3D(model.flow, clip_frames, key_base=1_000, **common)
        self.flow_weight = float(model.flow_weight)

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor, rings: _Rings) -> tuple[torch.Tensor, ...]:
        rgb_logits, flow_logits = self.rgb(rgb, rings), self.flow(flow, rings)
        rings.frame += 1
        return fuse(rgb_logits, flow_logits, self.flow_weight), rgb_logits.softmax(-1), flow_logits.softmax(-1)


class FrameStream:
    """The state of one live stream of ``num_arenas`` arenas on a ``StreamingEngine``.

    ``push`` one frame (its RGB and its flow, model input, every arena) and get the prediction for
    the frame ``FUTURE_FRAMES`` before it, as the clip-wise pipeline does; ``flush`` at the end of a
    segment gives the last frames' predictions and resets.
    """

    def __init__(self, engine: StreamingEngine, num_arenas: int) -> None:
        self.engine = engine
        self.num_arenas = num_arenas
        self._state = engine.new_state(num_arenas)
        self._frames = 0  # real frames pushed in this segment
        self._last_rgb: torch.Tensor | None = None
        self.steps = 0  # network steps run, repeats included (for the benchmark)

    def reset(self) -> None:
        """Forget the segment (a gap): the next frame starts a new one, as a fresh clip would."""
        self._state.reset()
        self._frames = 0
        self._last_rgb = None

    def push(self, rgb: torch.Tensor | np.ndarray, flow: torch.Tensor | np.ndarray) -> Prediction | None:
        """rgb (N, 3, S, S), flow (N, 2, S, S) of the next frame -> prediction of frame ``-FUTURE_FRAMES`` or None."""
        rgb_t, flow_t = self.engine.to_device(rgb), self.engine.to_device(flow)
        n, s = self.num_arenas, self.engine.input_size_px
        if tuple(rgb_t.shape) != (n, 3, s, s) or tuple(flow_t.shape) != (n, 2, s, s):
            raise ValueError(f"streaming: expected rgb ({n},3,{s},{s}) and flow ({n},2,{s},{s}), got {tuple(rgb_t.shape)} and {tuple(flow_t.shape)}")
        if self._frames == 0:  # the clip-wise pipeline repeats a segment's first frame, not moving, before it
            still = torch.zeros_like(flow_t)
            for _ in range(PAST_FRAMES):
                self._step(rgb_t, still)
        out = self._step(rgb_t, flow_t)
        self._frames += 1
        self._last_rgb = rgb_t
        return out if self._frames > FUTURE_FRAMES else None

    def flush(self) -> list[Prediction]:
        """Predictions for the segment's last (up to 7) frames, whose look-ahead repeats the last frame; then reset."""
        if self._last_rgb is None:
            return []
        still = torch.zeros((self.num_arenas, 2, *self._last_rgb.shape[-2:]), dtype=self._last_rgb.dtype,
                            device=self._last_rgb.device)
        outs = [self._step(self._last_rgb, still) for _ in range(FUTURE_FRAMES)]
        left = min(FUTURE_FRAMES, self._frames)  # frames of this segment not yet predicted
        self.reset()
        return outs[FUTURE_FRAMES - left :]

    def _step(self, rgb: torch.Tensor, flow: torch.Tensor) -> Prediction:
        self.steps += 1
        return self.engine.step(rgb, flow, self._state)


class StreamingEngine(Engine):
    """The fused I3D one frame at a time (``open_stream``); ``predict`` still runs whole clips (eager).

    The step runs in PyTorch here; ``stream.engine.streaming_onnx.StreamingOnnxEngine`` (kind
    ``streaming``) overrides ``new_state``/``step`` to run it on onnxruntime.
    """

    backend = KIND_STREAMING
    stepwise = True  # the pipeline feeds it frame by frame (stream.pipeline)

    def __init__(self, model_dir: Path, config: EngineConfig) -> None:
        model, card = load_model(model_dir, device="cpu")
        super().__init__(card, config, model_dir)
        self._device = torch_device(config)
        if config.half:
            raise UserError(CPU_HALF_REFUSAL if self._device.type == "cpu" else "streaming engine: FP32 only (half precision is not measured for it)")
        model = model.eval()
        self.module = _FusedStreaming(model, card.clip_frames).eval().to(self._device)
        self.trained_for_streaming = card.trained_for == TRAINED_FOR_STREAMING
        if self.trained_for_streaming:
            log.info("engine streaming: %s was trained for streaming (export.streaming_finetune)", model_dir)
        else:
            log.warning("engine streaming: an approximation of the clip model, not its labels (README, 'Streaming "
                        "engine'); use it where speed matters more than agreement with the clip-wise engines")
        self._clip = FusedProbs(model).eval().to(self._device)

    @property
    def name(self) -> str:
        return f"{self.backend}-torch-{self._device.type}"  # the PyTorch step (kind streaming-torch, or streaming's fallback)

    @property
    def device(self) -> str:
        return str(self._device)

    def to_device(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x).to(self._device, torch.float32)

    def new_state(self, num_arenas: int) -> _Rings:
        """The empty state (every ring zeros) of one stream of ``num_arenas`` arenas; it has ``reset()``."""
        return _Rings()

    def step(self, rgb: torch.Tensor, flow: torch.Tensor, state: _Rings) -> Prediction:
        """One frame of every arena through the step; ``state`` (``new_state``) moves on by one frame."""
        with torch.inference_mode():
            fused, rgb_p, flow_p = self.module(rgb, flow, state)
        return Prediction(fused=to_numpy(fused), rgb=to_numpy(rgb_p), flow=to_numpy(flow_p))

    def open_stream(self, num_arenas: int) -> FrameStream:
        """A new stream (its own state) for ``num_arenas`` arenas batched together."""
        if num_arenas < 1:
            raise ValueError(f"need >= 1 arena, got {num_arenas}")
        return FrameStream(self, num_arenas)

    def warmup(self, batch_size: int | None = None) -> None:
        n, s = batch_size or 1, self.input_size_px
        stream = self.open_stream(n)
        zeros_rgb, zeros_flow = torch.zeros(n, 3, s, s), torch.zeros(n, 2, s, s)
        for _ in range(WARMUP_FRAMES - PAST_FRAMES):
            stream.push(zeros_rgb, zeros_flow)

    @torch.inference_mode()
    def _run(self, rgb: np.ndarray | torch.Tensor, flow: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.trained_for_streaming:  # its clip model is not what it was trained for
            raise UserError(f"{self.model_dir}: trained for streaming; feed it frame by frame (open_stream), not clips")
        return self._clip(self.to_device(rgb), self.to_device(flow))

    def close(self) -> None:
        self.module = self._clip = None  # type: ignore[assignment]
        super().close()


def step_flops_ratio(model: I3D, size_px: int, clip_frames: int = CLIP_FRAMES, streamed_layers: int | None = None) -> float:
    """Multiply-adds of one stream step over those of one clip (both for one arena), counted from shapes."""
    clip_macs = _clip_macs(model, size_px, clip_frames)
    stream = StreamingI3D(model, clip_frames, streamed_layers=streamed_layers)
    macs = 0

    def hook(layer: _Layer | _Inception | Unit3D, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(layer, Unit3D):
            macs += out.numel() * layer.conv3d.weight[0].numel()
        elif isinstance(layer, _Inception):  # its merged 1x1 convolutions (the branches are hooked themselves)
            macs += inputs[0].shape[-2] * inputs[0].shape[-1] * layer.weight_1x1.numel()
        elif not layer.pool:
            macs += out.numel() * layer.weight[0].numel()

    handles = [m.register_forward_hook(hook) for m in stream.modules() if isinstance(m, (_Layer, _Inception, Unit3D))]
    with torch.inference_mode():
        stream(torch.zeros(1, model.in_channels, size_px, size_px), _Rings())
    for h in handles:
        h.remove()
    return macs / clip_macs


def _clip_macs(model: I3D, size_px: int, clip_frames: int) -> float:
    macs = 0

    def hook(unit: Unit3D, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal macs
        macs += out.numel() * unit.conv3d.weight[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Unit3D)]
    with torch.inference_mode():
        model.eval()(torch.zeros(1, model.in_channels, clip_frames, size_px, size_px))
    for h in handles:
        h.remove()
    return float(macs)

