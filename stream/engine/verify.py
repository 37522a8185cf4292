"""Checking a derived graph (ONNX, TensorRT) against PyTorch on clips that exercise both streams.

Uniform random clips are a weak probe: for the trained bundled model they push the flow stream to
exactly [1, 0, 0] on every clip (random flow of +-8 px everywhere is "as mobile as it gets"), so a
graph with a broken flow branch would still "agree". The probe clips here are what the model sees
in use: a bright blob on a darker background that moves by 0 to ~1.5 px per frame, with a stroke
like oscillation, and the flow that motion produces (zero outside the blob). Each clip has its
own speed, direction, size and brightness, so that both streams give each clip different,
unsaturated probabilities; ``degenerate_streams`` says when they do not, so that a check that
compares nothing is reported instead of passing silently.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from stream.engine.base import FusedProbs
from stream.flow import encode_flow
from stream.model import FusedI3D

__all__ = ["PROBE_CLIPS", "STREAMS", "degenerate_streams", "max_diffs", "probe_clips", "reference_probs"]

PROBE_CLIPS = 4  # > 1 also exercises the dynamic batch axis; 4 speeds from still to fast
# per-clip drift in px/frame: still, slow, medium, fast (typical of float, swim, swim, struggle
# at 64-112 px crops; flows beyond ~3 px saturate the trained flow stream)
PROBE_SPEEDS_PX = (0.0, 0.3, 0.7, 1.4)
PROBE_STROKE_PX = 0.6  # amplitude of the oscillation on top of the drift
# a stream whose probabilities are all within this of one-hot, or all equal across clips, tells
# a correct graph from a broken one by nothing
DEGENERATE_TOL = 1e-4
STREAMS = ("fused", "rgb", "flow")


def probe_clips(clip_frames: int, size_px: int, n: int = PROBE_CLIPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (rgb (n, 3, T, S, S), flow (n, 2, T, S, S)) clips in [-1, 1]; see the module doc."""
    yy, xx = torch.meshgrid(torch.arange(size_px, dtype=torch.float32), torch.arange(size_px, dtype=torch.float32), indexing="ij")
    rgb = torch.empty(n, 3, clip_frames, size_px, size_px)
    flow = torch.zeros(n, 2, clip_frames, size_px, size_px)
    for i in range(n):
        speed = PROBE_SPEEDS_PX[i % len(PROBE_SPEEDS_PX)] * (1 + i // len(PROBE_SPEEDS_PX))
        angle = 2 * math.pi * (i + 0.5) / max(n, 1)
        dx, dy = speed * math.cos(angle), speed * math.sin(angle)
        radius = size_px * (0.14 + 0.03 * (i % 4))
        background = -0.7 + 0.15 * (i % 5)
        stroke_hz = 0.5 + 0.2 * i  # radians per frame
        x, y = size_px / 2 - dx * clip_frames / 2, size_px / 2 - dy * clip_frames / 2
        for f in range(clip_frames):
            stroke = PROBE_STROKE_PX * (1.0 if speed > 0 else 0.2) * math.sin(stroke_hz * f)
            step_x, step_y = dx + stroke * math.cos(angle + math.pi / 2), dy + stroke * math.sin(angle + math.pi / 2)
            blob = (((xx - x) ** 2 + (yy - y) ** 2) < radius * radius).float()
            texture = 0.15 * torch.sin(0.6 * (xx - x)) * blob  # moves with the blob
            for c in range(3):
                rgb[i, c, f] = (background + (1.4 - 0.2 * c) * blob + texture).clamp(-1, 1)
            flow[i, 0, f] = encode_flow(blob * step_x)
            flow[i, 1, f] = encode_flow(blob * step_y)
            x, y = x + step_x, y + step_y
    return rgb, flow


def reference_probs(model: FusedI3D, rgb: torch.Tensor, flow: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fused, rgb, flow) probabilities from eager FP32 PyTorch on the CPU: what a graph must match."""
    with torch.inference_mode():
        return tuple(o.numpy() for o in FusedProbs(model.float().cpu().eval())(rgb, flow))  # type: ignore[return-value]


def degenerate_streams(probs: tuple[np.ndarray, ...], tol: float = DEGENERATE_TOL) -> list[str]:
    """Names of the streams (of ``STREAMS``) whose outputs cannot tell one graph from another."""
    bad = []
    for name, p in zip(STREAMS, probs):
        p = np.asarray(p, np.float64)
        saturated = bool(np.all(1.0 - p.max(axis=1) < tol))
        constant = bool(np.all(np.abs(p - p[0]).max(axis=0) < tol))
        if saturated or constant:
            bad.append(name)
    return bad


def max_diffs(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> tuple[float, ...]:
    """Max abs difference per output; NaN propagates (so ``not diff <= atol`` catches it)."""
    return tuple(float(np.abs(np.asarray(g, np.float64) - np.asarray(w, np.float64)).max()) for g, w in zip(got, want))
