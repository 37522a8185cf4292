"""The streaming engine's function in parallel form: every frame of a segment in one pass, differentiable.

``stream.engine.streaming`` computes, one frame at a time, a function of the frames up to now that
is *not* the clip model's (its module docstring says why). To train a model for that function
(``export.streaming_finetune``) it must run on whole windows of frames with gradients, as ordinary
3D convolutions. The same I3D weights, layer by layer (``FEATURE_LAYERS``):

* every temporal kernel is a causal convolution with no temporal stride, dilated by the layer's
  cumulative temporal stride (1, 2, 4 or 8 frames: the stream's "a trous" taps, from
  ``newest_taps``); its taps after "now" (the clip's right padding) are folded into the newest tap
  (``future="replicate"``, the engine's default) or dropped (``"zeros"``);
* zero left padding per layer, on that layer's input: the stream's rings start as zeros;
* max pools likewise (their inputs follow a ReLU, so the zeros change nothing);
* Mixed_5c's columns are averaged over space, the logits 1x1x1 convolution runs on every frame,
  and the output at frame n is the mean of the logits at n, n - 8 (the clip's 2 final columns:
  ``StreamingI3D.final_back``), the older one zero before the segment began;
* a segment as ``FrameStream`` feeds it (``segment_inputs``): its first frame repeated
  ``PAST_FRAMES`` times before it (flow zero), its last frame ``FUTURE_FRAMES`` times after it.

So ``causal_logits(i3d, x)[:, n]`` is what ``StreamingI3D`` returns at step n of a fresh stream fed
``x[:, :, 0..n]`` (``tests/test_causal_i3d.py`` checks it against ``FrameStream``, 1e-5). Batch norm
and dropout are the I3D's own modules, so ``i3d.train()`` / ``.eval()`` set them as in clip training.
The cost per frame is the stream's (a tenth of a clip at 64 px), for every frame of the window.

``streaming_state_dict`` turns trained weights into the I3D that the streaming engine runs exactly:
the folded taps go to the newest tap, the taps after it become zero (they are never read as such).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stream.engine.streaming import FUTURE_DEFAULT, FUTURE_MODES, newest_taps
from stream.model import FEATURE_LAYERS, I3D, FusedI3D, InceptionModule, MaxPool3dSame, Unit3D, fuse, same_padding
from stream.preprocess import CLIP_FRAMES, FUTURE_FRAMES, PAST_FRAMES

__all__ = ["receptive_frames", "causal_features", "causal_fused", "causal_logits", "segment_inputs", "segment_outputs", "streaming_state_dict", "SEGMENT_LEAD_FRAMES"]

# a segment's frame j is emitted at step j + PAST_FRAMES (the first frame's repeats) + FUTURE_FRAMES (the look-ahead)
SEGMENT_LEAD_FRAMES = PAST_FRAMES + FUTURE_FRAMES


def _taps(module: Unit3D | MaxPool3dSame, t_in: int, spacing_in: int) -> tuple[list[int], int, int, int]:
    """(kernel taps read, oldest first; their spacing in frames; t_out; spacing_out) of one layer in the stream."""
    kt, st = module.kernel[0], module.stride[0]
    taps, t_out, spacing_out = newest_taps(t_in, kt, st, spacing_in)
    backs = [b for _, b in taps]
    if any(a - b != spacing_in for a, b in zip(backs, backs[1:])) or backs[-1] != 0:
        raise ValueError(f"taps {taps}: not evenly spaced {spacing_in} frames apart up to now")  # cannot happen with SAME padding
    return [t for t, _ in taps], spacing_in, t_out, spacing_out


def _causal_weight(weight: torch.Tensor, kept: list[int], future: str) -> torch.Tensor:
    """The kept temporal taps of a (out, in, kt, kh, kw) kernel; those after the newest folded into it (replicate)."""
    newest = kept[-1]
    columns = [weight[:, :, t] for t in kept[:-1]]
    last = weight[:, :, newest]
    if future == "replicate" and newest + 1 < weight.shape[2]:
        last = last + weight[:, :, newest + 1 :].sum(2)
    return torch.stack([*columns, last], dim=2)


def _spatial_pad(x: torch.Tensor, kernel_hw: tuple[int, int], stride_hw: tuple[int, int]) -> torch.Tensor:
    h, w = x.shape[-2:]
    (ph0, ph1), (pw0, pw1) = same_padding(h, kernel_hw[0], stride_hw[0]), same_padding(w, kernel_hw[1], stride_hw[1])
    return F.pad(x, (pw0, pw1, ph0, ph1)) if ph0 + ph1 + pw0 + pw1 else x


def _causal_layer(module: Unit3D | MaxPool3dSame, x: torch.Tensor, t_in: int, spacing_in: int, future: str) -> tuple[torch.Tensor, int, int]:
    """One Unit3D / MaxPool3dSame on every frame: (B, C, T, H, W) -> (B, C', T, H', W'), with t_out, spacing_out."""
    kept, spacing, t_out, spacing_out = _taps(module, t_in, spacing_in)
    (_, kh, kw), (_, sh, sw) = module.kernel, module.stride
    x = _spatial_pad(x, (kh, kw), (sh, sw))
    if len(kept) > 1:
        x = F.pad(x, (0, 0, 0, 0, (len(kept) - 1) * spacing, 0))  # the rings' zeros before the segment
    if isinstance(module, MaxPool3dSame):
        return F.max_pool3d(x, (len(kept), kh, kw), (1, sh, sw), dilation=(spacing, 1, 1)), t_out, spacing_out
    conv = module.conv3d
    x = F.conv3d(x, _causal_weight(conv.weight, kept, future), conv.bias, (1, sh, sw), dilation=(spacing, 1, 1))
    if module.bn is not None:
        x = module.bn(x)
    return (F.relu(x) if module.activation else x), t_out, spacing_out


def _causal_inception(module: InceptionModule, x: torch.Tensor, t_in: int, spacing: int, future: str) -> torch.Tensor:
    def run(name: str, y: torch.Tensor) -> torch.Tensor:
        return _causal_layer(getattr(module, name), y, t_in, spacing, future)[0]

    return torch.cat([run("b0", x), run("b1b", run("b1a", x)), run("b2b", run("b2a", x)), run("b3b", run("b3a", x))], dim=1)


def _grid(i3d: I3D, clip_frames: int) -> list[tuple[int, int]]:
    """(clip columns, frames between them) at the input of each of FEATURE_LAYERS, then at the logits."""
    t, spacing = clip_frames, 1
    grid = []
    for name in FEATURE_LAYERS:
        grid.append((t, spacing))
        module = getattr(i3d, name)
        if not isinstance(module, InceptionModule):  # stride 1 in time inside an inception module
            _, _, t, spacing = _taps(module, t, spacing)
    return grid + [(t, spacing)]


def receptive_frames(i3d: I3D, *, start: int = 0, clip_frames: int = CLIP_FRAMES) -> int:
    """How many frames before now an output reads, from the input of FEATURE_LAYERS[start] on."""
    grid = _grid(i3d, clip_frames)

    def back(module: Unit3D | MaxPool3dSame, k: int) -> int:
        kept, spacing, _, _ = _taps(module, *grid[k])
        return (len(kept) - 1) * spacing

    frames = 0
    for k in range(start, len(FEATURE_LAYERS)):
        module = getattr(i3d, FEATURE_LAYERS[k])
        if isinstance(module, InceptionModule):
            frames += max(back(module.b1a, k) + back(module.b1b, k), back(module.b2a, k) + back(module.b2b, k),
                          back(module.b3a, k) + back(module.b3b, k), back(module.b0, k))
        else:
            frames += back(module, k)
    t, spacing = grid[-1]
    return frames + (t - 1) * spacing  # the final mean of the clip's t columns


def causal_features(i3d: I3D, x: torch.Tensor, *, start: int = 0, stop: int = len(FEATURE_LAYERS),
                    clip_frames: int = CLIP_FRAMES, future: str = FUTURE_DEFAULT) -> torch.Tensor:
    """FEATURE_LAYERS[start:stop] on every frame: the input of layer ``start`` -> the output of layer
    ``stop - 1``, (B, C, T, H, W) -> (B, C', T, H', W'). A frozen stem's output can be computed once
    and the rest trained on it (``causal_logits(start=...)``)."""
    if future not in FUTURE_MODES:
        raise ValueError(f"future must be one of {FUTURE_MODES}, got {future!r}")
    grid = _grid(i3d, clip_frames)
    for k in range(start, stop):
        module = getattr(i3d, FEATURE_LAYERS[k])
        t, spacing = grid[k]
        if isinstance(module, InceptionModule):
            x = _causal_inception(module, x, t, spacing, future)
        else:
            x = _causal_layer(module, x, t, spacing, future)[0]
    return x


def causal_logits(i3d: I3D, x: torch.Tensor, *, start: int = 0, clip_frames: int = CLIP_FRAMES,
                  future: str = FUTURE_DEFAULT) -> torch.Tensor:
    """(B, C, T, H, W) frames of a fresh stream -> (B, T, K): the logits ``StreamingI3D`` gives at each
    step. With ``start`` > 0, ``x`` is the input of FEATURE_LAYERS[start] (``causal_features``' output)."""
    if start == 0 and (x.ndim != 5 or x.shape[1] != i3d.in_channels):
        raise ValueError(f"expected input (B, {i3d.in_channels}, T, H, W), got {tuple(x.shape)}")
    x = causal_features(i3d, x, start=start, clip_frames=clip_frames, future=future)
    t, spacing = _grid(i3d, clip_frames)[-1]
    x = i3d.dropout(x.mean(dim=(3, 4), keepdim=True))  # (B, 1024, T, 1, 1); dropout as in clip training
    logits = _causal_layer(i3d.logits, x, t, spacing, future)[0].flatten(2)  # (B, K, T)
    # the clip averages its t final columns: now, spacing, 2 spacing ... back (zeros before the segment)
    padded = F.pad(logits, ((t - 1) * spacing, 0))
    steps = logits.shape[-1]
    columns = [padded[..., (t - 1 - m) * spacing : (t - 1 - m) * spacing + steps] for m in range(t)]
    return torch.stack(columns).mean(0).transpose(1, 2)


def causal_fused(model: FusedI3D, rgb: torch.Tensor, flow: torch.Tensor, *, clip_frames: int = CLIP_FRAMES,
                 future: str = FUTURE_DEFAULT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both streams: (fused probabilities, rgb logits, flow logits), each (B, T, K), at every step."""
    rgb_logits = causal_logits(model.rgb, rgb, clip_frames=clip_frames, future=future)
    flow_logits = causal_logits(model.flow, flow, clip_frames=clip_frames, future=future)
    return fuse(rgb_logits, flow_logits, model.flow_weight), rgb_logits, flow_logits


def segment_inputs(rgb: torch.Tensor, flow: torch.Tensor, *, end: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``FrameStream`` steps a segment's frames (B, C, N, H, W) through: the first frame
    ``PAST_FRAMES`` times before (flow zero, a repeat does not move) and, with ``end``, the last one
    ``FUTURE_FRAMES`` times after (``flush``). Step ``j + SEGMENT_LEAD_FRAMES`` then emits frame j."""
    def repeat(x: torch.Tensor, index: int, times: int, still: bool) -> torch.Tensor:
        one = x[:, :, index : index + 1 if index >= 0 else None]
        return (torch.zeros_like(one) if still else one).expand(-1, -1, times, -1, -1)

    rgb_parts = [repeat(rgb, 0, PAST_FRAMES, False), rgb] + ([repeat(rgb, -1, FUTURE_FRAMES, False)] if end else [])
    flow_parts = [repeat(flow, 0, PAST_FRAMES, True), flow] + ([repeat(flow, -1, FUTURE_FRAMES, True)] if end else [])
    return torch.cat(rgb_parts, dim=2), torch.cat(flow_parts, dim=2)


def segment_outputs(model: FusedI3D, rgb: torch.Tensor, flow: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A whole segment (B, C, N, H, W) -> what ``FrameStream`` emits for its N frames, (B, N, K) each:
    fused probabilities, rgb logits, flow logits."""
    outs = causal_fused(model, *segment_inputs(rgb, flow), **kwargs)
    return tuple(o[:, SEGMENT_LEAD_FRAMES:] for o in outs)  # type: ignore[return-value]


def streaming_state_dict(model: FusedI3D, *, clip_frames: int = CLIP_FRAMES) -> dict[str, torch.Tensor]:
    """The state dict of an I3D whose streaming engine (``future="replicate"``) computes exactly
    ``causal_fused(model)``: per temporal convolution, the taps after the newest hold zero and the
    newest holds their sum; taps the stream never reads (before the clip) are zero too. The clip
    model of these weights is another function: a card says so (``trained_for="streaming"``)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for prefix, i3d in (("rgb.", model.rgb), ("flow.", model.flow)):
        t, spacing = clip_frames, 1
        for name in FEATURE_LAYERS:
            module = getattr(i3d, name)
            units = [(f"{name}.{n}", getattr(module, n)) for n in ("b0", "b1a", "b1b", "b2a", "b2b", "b3a", "b3b")] \
                if isinstance(module, InceptionModule) else [(name, module)]
            for unit_name, unit in units:
                kept, _, t_out, spacing_out = _taps(unit, t, spacing)
                if isinstance(unit, Unit3D):
                    key = f"{prefix}{unit_name}.conv3d.weight"
                    weight = torch.zeros_like(state[key])
                    weight[:, :, kept] = _causal_weight(state[key], kept, "replicate")
                    state[key] = weight
            if not isinstance(module, InceptionModule):
                t, spacing = t_out, spacing_out
    return state
