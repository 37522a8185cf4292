"""TV-L1 optical flow in PyTorch: one implementation for the CPU and CUDA, matched to OpenCV.

The flow stream of the model was trained on OpenCV's ``cv2.optflow.DualTVL1OpticalFlow``
(Zach, Pock, Bischof 2007, "A duality based approach for realtime TV-L1 optical flow", in the
formulation of Sanchez Perez et al. 2013). A model only sees the flow it was trained on, so this
module follows OpenCV's ``tvl1flow.cpp`` step by step rather than the paper: the same pyramid
(bilinear ``resize`` by ``scale_step``, coarsest level at least 16 px), the same warping (bicubic
``remap``, zeros outside the image), the same
finite differences, thresholding step, 5x5 median filter before each outer iteration, early
stopping rule and defaults. ``FlowConfig.to_opencv()`` builds the equivalent OpenCV object for
comparisons (tests and ``stream-bench flow``).

Why PyTorch: OpenCV's CUDA TV-L1 is missing from the PyPI wheels, and a batched tensor
implementation runs N frame pairs (arenas, cameras, a training batch) for the price of one call.
The primal-dual iterations (where the time goes) are the same tensor code on every device. Two
once-per-warp steps have a tensor version (used on CUDA) and, for CPU tensors, call OpenCV's own
``remap`` and ``medianBlur`` instead: same results (tested against each other), but a median
of 25 as 202 whole-image min/max ops would otherwise cost as much as the iterations.

CPU threads: one by default (``TVL1(cpu_threads=1)``), set around each solve and restored. The
ops are small (a 112 px flow is 25k floats), so a second OpenMP thread mostly waits to be woken:
with ``OMP_WAIT_POLICY=PASSIVE`` (which ``stream`` sets, because spinning workers made every op
10-40x slower on a loaded machine) 2 threads were 1.5-3x slower than 1 at 112 and 224 px, batch
1 and 8, on this project's idle 2-core machine; spinning 2 threads were at best 1.3x faster than
1 (224 px, batch 8) and lost badly under load. One thread also leaves the other core to the
model and capture.

Two ways to stop (``FlowConfig.fixed_iterations``):

* ``False`` (OpenCV semantics): each pair stops iterating within a warp once the summed squared
  update of the flow falls below ``epsilon**2 * pixels``. On the CPU converged pairs leave the
  batch (one cheap read-back per iteration). On CUDA a read-back per iteration is a
  synchronisation and keeps every kernel launched from Python, so converged pairs are frozen by
  a mask instead and each outer iteration runs as one CUDA graph (``_MaskedLevel``): same flow,
  2.3-3.9x faster on an H200 (224 px: 61 ms per pair at batch 1, 88 pairs/s at batch 8);
* ``True``: always ``warps * outer_iterations * inner_iterations`` iterations per scale, with no
  host synchronisation (a CUDA test checks it with ``torch.cuda.set_sync_debug_mode``), so on
  CUDA the whole solve is one graph. Meant for a cheaper setting (``FlowConfig.fast()``: 224 px,
  2.9 ms per pair at batch 1, 1600 pairs/s at batch 8 on an H200): at the defaults it runs 7500
  iterations where early stopping runs ~600.

Flow is in pixels, channel 0 = x (columns), channel 1 = y (rows), and maps the first frame onto
the second: ``prev[y, x] ~ nxt[y + flow_y, x + flow_x]``.

The encoding fed to I3D (``encode_flow``) and the compact uint8 cache form (``flow_to_uint8``)
live here too, so that training and live inference cannot disagree on them.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from stream.cuda_graph import CudaGraph
from stream.numerics import flush_denormals

__all__ = [
    "FLOW_CLIP_PX",
    "FLOW_UINT8_STEP_PX",
    "FlowConfig",
    "TVL1",
    "decode_flow",
    "encode_flow",
    "flow_from_uint8",
    "flow_to_uint8",
]

log = logging.getLogger(__name__)
flush_denormals()  # before any parallel op: see stream.numerics

FLOW_CLIP_PX = 20.0  # I3D flow convention (Carreira & Zisserman 2017): clip to +-20 px, scale to [-1, 1]
_UINT8_HALF_RANGE = 127  # uint8 code 128 is exactly zero flow (most pixels of an immobile mouse); codes 1..255 used
FLOW_UINT8_STEP_PX = FLOW_CLIP_PX / _UINT8_HALF_RANGE  # 0.157 px per code: worst rounding error is half of it

_MIN_PYRAMID_SIDE_PX = 16  # OpenCV stops building the pyramid once a side would fall below 16 px
_FLT_EPSILON = float(np.finfo(np.float32).eps)  # OpenCV's guard against a zero image gradient
_INTERPOLATIONS = ("bicubic", "bilinear")
_CV_FLOAT_MEDIAN_SIZES = (3, 5)  # cv2.medianBlur filters float32 images only with these sizes
_CUBIC_A = -0.75  # Keys' cubic convolution parameter used by OpenCV's INTER_CUBIC (and PyTorch)


@dataclass(frozen=True)
class FlowConfig:
    """TV-L1 parameters, named and defaulted as in OpenCV's ``DualTVL1OpticalFlow_create``.

    All fields are plain numbers/strings so that ``FlowConfig(**dataclasses.asdict(c)) == c``
    (model cards store the flow settings the model was trained with).
    """

    tau: float = 0.25  # time step of the primal-dual scheme (stable for <= 0.25)
    lambda_: float = 0.15  # weight of the data term: smaller = smoother flow
    theta: float = 0.3  # coupling between the two sub-problems (flow u and auxiliary v)
    nscales: int = 5  # pyramid levels (fewer if a level would be smaller than 16 px)
    scale_step: float = 0.8  # size ratio between consecutive pyramid levels
    warps: int = 5  # re-warps of the second image per level
    epsilon: float = 0.01  # stop when the RMS flow update per pixel falls below this (px)
    inner_iterations: int = 30  # primal-dual iterations per outer iteration
    outer_iterations: int = 10  # median filter + inner loop, per warp
    median_filtering: int = 5  # side (px) of the median filter applied to the flow; <= 1 disables
    gamma: float = 0.0  # weight of OpenCV's illumination-change term; 0 disables it
    fixed_iterations: bool = False  # True: no early stopping, no host sync (CUDA graphs / compile)
    interpolation: str = "bicubic"  # warping interpolation; OpenCV uses bicubic
    # > 0: TV-L1 sees each frame's texture, the frame minus its Gaussian blur of this sigma (px of
    # the flow input), so lighting that varies slowly across the image or from frame to frame
    # (flicker, rolling bands, drift, vignetting) cancels out of the brightness-constancy term
    # (Wedel et al. 2009's structure-texture split). 0 = the frame as it is (every card before it).
    texture_sigma: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.tau <= 0.25:
            problems.append(f"tau={self.tau} must be in (0, 0.25] for the scheme to be stable")
        for name in ("lambda_", "theta", "epsilon"):
            if getattr(self, name) < 0 or (name != "epsilon" and getattr(self, name) == 0):
                problems.append(f"{name}={getattr(self, name)} must be positive")
        if not 0 < self.scale_step < 1:
            problems.append(f"scale_step={self.scale_step} must be in (0, 1)")
        for name in ("nscales", "warps", "inner_iterations", "outer_iterations"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be an integer >= 1")
        if self.median_filtering > 1 and self.median_filtering % 2 == 0:
            problems.append(f"median_filtering={self.median_filtering} must be odd (or <= 1 to disable)")
        if self.gamma < 0:
            problems.append(f"gamma={self.gamma} must be >= 0")
        if not (self.texture_sigma >= 0 and math.isfinite(self.texture_sigma)):
            problems.append(f"texture_sigma={self.texture_sigma} must be >= 0 (0 = off)")
        if self.interpolation not in _INTERPOLATIONS:
            problems.append(f"interpolation={self.interpolation!r} must be one of {_INTERPOLATIONS}")
        if problems:
            raise ValueError("FlowConfig: " + "; ".join(problems))

    @classmethod
    def fast(cls, **overrides: Any) -> "FlowConfig":
        """A cheap setting for live use: 3 scales, 1 warp, 10 iterations, no early stopping.

        On the real top-view video it differs from the full defaults by 0.06-0.15 px mean endpoint
        error (112-224 px frames; ``stream-bench flow`` measures it) for ~20x less work. Whether
        the model minds is for the model's evaluation to say, not for this module.
        """
        base = dict(nscales=3, warps=1, inner_iterations=10, outer_iterations=1, fixed_iterations=True)
        base.update(overrides)
        return cls(**base)

    def to_opencv(self) -> Any:
        """The equivalent ``cv2.optflow.DualTVL1OpticalFlow`` (for comparisons only).

        ``fixed_iterations`` maps to ``epsilon = 0`` (OpenCV then never stops early). OpenCV has no
        bilinear warping, so a bilinear config has no OpenCV equivalent.
        """
        if self.interpolation != "bicubic":
            raise ValueError(f"OpenCV DualTVL1 only warps bicubically; no equivalent for interpolation={self.interpolation!r}")
        if self.texture_sigma > 0:
            raise ValueError(f"OpenCV DualTVL1 has no texture pre-filter; no equivalent for texture_sigma={self.texture_sigma}")
        return cv2.optflow.DualTVL1OpticalFlow_create(
            tau=self.tau,
            lambda_=self.lambda_,
            theta=self.theta,
            nscales=self.nscales,
            warps=self.warps,
            epsilon=0.0 if self.fixed_iterations else self.epsilon,
            innnerIterations=self.inner_iterations,  # sic: OpenCV's keyword has three n
            outerIterations=self.outer_iterations,
            scaleStep=self.scale_step,
            gamma=self.gamma,
            medianFiltering=self.median_filtering,
            useInitialFlow=False,
        )


# Keys a card's "flow" may lack because they were added after cards were first written; absent, they
# take the value that computes exactly the flow those cards were trained with.
FLOW_KEYS_ADDED_LATER: dict[str, Any] = {"texture_sigma": 0.0}
TEXTURE_MID_GREY = 127.5  # the texture image is centred here (only its differences matter to TV-L1)
TEXTURE_RADIUS_SIGMAS = 3.0  # the Gaussian is cut at 3 sigma (99.7 % of its weight)


def texture(frames: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, H, W) float grey frames minus their Gaussian blur (reflected borders), around mid-grey.

    A gain that varies slowly over the image (a lamp's gradient, vignetting, rolling flicker bands
    wider than ``sigma``) or from frame to frame (mains flicker) changes each pixel's brightness, and
    TV-L1 explains brightness changes as motion: on the simulator's held-out lighting an immobile
    mouse's flow rose 3-4x (0.69 against 0.18-0.22 px at 112 px). The blur holds that slow part, so
    the difference keeps the edges and texture the flow should follow.
    """
    if sigma <= 0:
        return frames
    h, w = frames.shape[-2:]
    radius = max(1, min(int(math.ceil(TEXTURE_RADIUS_SIGMAS * sigma)), h - 1, w - 1))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=frames.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    img = frames[:, None]
    blur = F.conv2d(F.pad(img, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    blur = F.conv2d(F.pad(blur, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return (img - blur)[:, 0] + TEXTURE_MID_GREY


# ---------------------------------------------------------------------------------------------
# flow encodings


def encode_flow(flow_px: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Pixels -> I3D input: clip to +-FLOW_CLIP_PX and scale to [-1, 1] (same type as input)."""
    if isinstance(flow_px, torch.Tensor):
        return flow_px.clamp(-FLOW_CLIP_PX, FLOW_CLIP_PX) / FLOW_CLIP_PX
    return (np.clip(flow_px, -FLOW_CLIP_PX, FLOW_CLIP_PX) / FLOW_CLIP_PX).astype(np.float32)


def decode_flow(encoded: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Inverse of ``encode_flow`` (exact for flows within +-FLOW_CLIP_PX)."""
    if isinstance(encoded, torch.Tensor):
        return encoded * FLOW_CLIP_PX
    return (np.asarray(encoded) * FLOW_CLIP_PX).astype(np.float32)


def flow_to_uint8(flow_px: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Compact cache form: one byte per value, like the JPEG flow of the I3D pipelines.

    Code = 128 + round(flow / FLOW_UINT8_STEP_PX), clipped to +-FLOW_CLIP_PX first. Zero flow is
    stored exactly (code 128). Quantisation error: at most FLOW_UINT8_STEP_PX / 2 = 10/127 =
    0.0787 px for flows within +-20 px (beyond that, the clip error of ``encode_flow``), i.e.
    0.0039 in encoded [-1, 1] units. Code 0 is never produced.
    """
    if isinstance(flow_px, torch.Tensor):
        codes = torch.round(flow_px.clamp(-FLOW_CLIP_PX, FLOW_CLIP_PX) / FLOW_UINT8_STEP_PX) + 128
        return codes.to(torch.uint8)
    codes = np.rint(np.clip(flow_px, -FLOW_CLIP_PX, FLOW_CLIP_PX) / FLOW_UINT8_STEP_PX) + 128
    return codes.astype(np.uint8)


def flow_from_uint8(codes: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Inverse of ``flow_to_uint8``: float32 pixels (error bound in ``flow_to_uint8``)."""
    if isinstance(codes, torch.Tensor):
        return ((codes.to(torch.float32) - 128) * FLOW_UINT8_STEP_PX).clamp(-FLOW_CLIP_PX, FLOW_CLIP_PX)
    flow = (np.asarray(codes, dtype=np.float32) - 128) * np.float32(FLOW_UINT8_STEP_PX)
    return np.clip(flow, -FLOW_CLIP_PX, FLOW_CLIP_PX).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# building blocks, each the tensor form of one function of OpenCV's tvl1flow.cpp


@functools.lru_cache(maxsize=64)
def _resize_matrix(src: int, dst: int, scale: float, device: torch.device) -> torch.Tensor:
    """(dst, src) weights of ``cv2.resize(INTER_LINEAR)`` along one axis (replicated border).

    OpenCV samples source coordinate ``(i + 0.5) * scale - 0.5`` where ``scale`` is ``1 / fx`` when
    a factor is given (pyramid) and ``src / dst`` when a size is given (flow upsampling); matching
    that exactly keeps our pyramid levels bit-close to OpenCV's. One matmul per axis does it.
    """
    x = (torch.arange(dst, dtype=torch.float64) + 0.5) * scale - 0.5
    x0 = torch.floor(x)
    frac = x - x0
    x0 = x0.long()
    lo, hi = x0.clamp(0, src - 1), (x0 + 1).clamp(0, src - 1)
    m = torch.zeros(dst, src, dtype=torch.float64)
    rows = torch.arange(dst)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(device=device, dtype=torch.float32)


def _resize(img: torch.Tensor, size_hw: tuple[int, int], scale_yx: tuple[float, float]) -> torch.Tensor:
    """Bilinear resize of (..., H, W) as ``cv2.resize(INTER_LINEAR)`` with the given sampling scale."""
    h, w = img.shape[-2:]
    ry = _resize_matrix(h, size_hw[0], scale_yx[0], img.device)
    rx = _resize_matrix(w, size_hw[1], scale_yx[1], img.device)
    return ry @ img @ rx.T


def _centered_gradient(img: torch.Tensor) -> torch.Tensor:
    """(N,H,W) -> (N,2,H,W) central differences; at borders half the one-sided one (as OpenCV)."""
    padded = F.pad(img[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    dx = 0.5 * (padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2])
    dy = 0.5 * (padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1])
    return torch.stack((dx, dy), dim=1)


def _batcher_pairs(n: int) -> list[tuple[int, int]]:
    """Comparators of Batcher's odd-even merge sort for n (a power of two) values."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (p * 2) == (i + j + k) // (p * 2):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


@functools.lru_cache(maxsize=8)
def _median_network(count: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """A min/max network leaving the median of ``count`` values at index count // 2.

    Batcher's network for the next power of two (missing values act as +inf, so comparators
    touching them drop out), pruned backwards to the comparators the median depends on; each
    kept comparator says whether its min and/or its max output is used. For 25 values: 113
    comparators, 202 elementwise min/max ops on whole images, ~10x faster than
    ``Tensor.median`` over unfolded windows on the CPU and free of data-dependent control flow.
    """
    size = 1
    while size < count:
        size *= 2
    comparators = [(a, b) for a, b in _batcher_pairs(size) if b < count]
    needed = {count // 2}
    kept = []
    for a, b in reversed(comparators):
        want_min, want_max = a in needed, b in needed
        if want_min or want_max:
            kept.append((a, b, want_min, want_max))
            needed |= {a, b}
    return tuple(reversed(kept))


def _median_filter(u: torch.Tensor, ksize: int) -> torch.Tensor:
    """The median filter of the flow: OpenCV's own ``medianBlur`` for CPU tensors, else the network.

    Both give identical results (tested); on the CPU OpenCV's SIMD kernel is ~20x faster than
    202 separate tensor ops, which would otherwise cost as much as the fast setting's iterations.
    """
    if u.device.type == "cpu" and ksize in _CV_FLOAT_MEDIAN_SIZES:
        u = u.contiguous()
        out = torch.empty_like(u)
        for i in range(u.shape[0]):
            for c in range(u.shape[1]):
                out[i, c] = torch.from_numpy(cv2.medianBlur(u[i, c].numpy(), ksize))
        return out
    return _median_blur(u, ksize)


def _median_blur(u: torch.Tensor, ksize: int) -> torch.Tensor:
    """Exact ksize x ksize median of each (N,C,H,W) channel with replicated borders (``cv2.medianBlur``)."""
    r = ksize // 2
    n, c, h, w = u.shape
    padded = F.pad(u.reshape(n * c, 1, h, w), (r, r, r, r), mode="replicate")[:, 0]
    values = [padded[:, dy : dy + h, dx : dx + w] for dy in range(ksize) for dx in range(ksize)]
    for a, b, want_min, want_max in _median_network(ksize * ksize):
        low = torch.minimum(values[a], values[b]) if want_min else None
        if want_max:
            values[b] = torch.maximum(values[a], values[b])
        if want_min:
            values[a] = low
    return values[(ksize * ksize) // 2].reshape(n, c, h, w)


def _cubic_weights(t: torch.Tensor) -> torch.Tensor:
    """(..., 4) weights of taps -1, 0, 1, 2 at fraction t: Keys' cubic, a = -0.75 (OpenCV, PyTorch)."""
    a = _CUBIC_A
    t1 = t + 1
    w0 = ((a * t1 - 5 * a) * t1 + 8 * a) * t1 - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    s = 1 - t
    w2 = ((a + 2) * s - (a + 3)) * s * s + 1
    return torch.stack((w0, w1, w2, 1 - w0 - w1 - w2), dim=-1)


def _linear_weights(t: torch.Tensor) -> torch.Tensor:
    return torch.stack((1 - t, t), dim=-1)


def _warp_images(images: torch.Tensor, u: torch.Tensor, interpolation: str) -> torch.Tensor:
    """Warping for the solver: OpenCV's own ``remap`` for CPU tensors, else the tensor version.

    Same results (tested); on the CPU 16 whole-image gathers cost ~10x OpenCV's remap.
    """
    if u.device.type != "cpu":
        return _warp(images, u, interpolation)
    n, k, h, w = images.shape
    xs = torch.arange(w, dtype=u.dtype).view(1, 1, w)
    ys = torch.arange(h, dtype=u.dtype).view(1, h, 1)
    mx, my = (xs + u[:, 0]).contiguous(), (ys + u[:, 1]).contiguous()
    flag = cv2.INTER_CUBIC if interpolation == "bicubic" else cv2.INTER_LINEAR
    images = images.contiguous()
    out = torch.empty_like(images)
    for i in range(n):
        for c in range(k):
            out[i, c] = torch.from_numpy(cv2.remap(images[i, c].numpy(), mx[i].numpy(), my[i].numpy(), flag,
                                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0))
    return out


def _warp(images: torch.Tensor, u: torch.Tensor, interpolation: str) -> torch.Tensor:
    """Sample (N,K,H,W) images at x + u like ``cv2.remap`` (taps outside the image count as 0).

    Written as explicit tap gathers rather than ``grid_sample`` because normalising coordinates
    to [-1, 1] and back costs ~1e-5 px of rounding: enough, with identical frames, for early
    stopping to freeze noise into the flow. Here u = 0 samples the pixels exactly. OpenCV 5
    samples at exact float coordinates (OpenCV 4 rounded them to 1/32 px).
    """
    n, k, h, w = images.shape
    ys = torch.arange(h, device=u.device, dtype=u.dtype).view(1, h, 1)
    xs = torch.arange(w, device=u.device, dtype=u.dtype).view(1, 1, w)
    # beyond a few pixels outside the image every tap reads 0 anyway; clamping keeps floor() finite
    x = (xs + u[:, 0]).clamp_(-4.0, w + 3.0)
    y = (ys + u[:, 1]).clamp_(-4.0, h + 3.0)
    x0, y0 = torch.floor(x), torch.floor(y)
    if interpolation == "bicubic":
        wx, wy, first = _cubic_weights(x - x0), _cubic_weights(y - y0), -1
    else:
        wx, wy, first = _linear_weights(x - x0), _linear_weights(y - y0), 0
    taps = wx.shape[-1]
    offsets = torch.arange(first, first + taps, device=u.device)
    ix = x0.long().unsqueeze(-1) + offsets  # (N,H,W,taps)
    iy = y0.long().unsqueeze(-1) + offsets
    wx = wx * ((ix >= 0) & (ix < w))  # zero border (BORDER_CONSTANT 0)
    wy = wy * ((iy >= 0) & (iy < h))
    ix, iy = ix.clamp_(0, w - 1), iy.clamp_(0, h - 1) * w
    flat = images.reshape(n, k, h * w)
    out = torch.zeros_like(images)
    for j in range(taps):
        for i in range(taps):
            index = (iy[..., j] + ix[..., i]).reshape(n, 1, h * w).expand(n, k, h * w)
            weight = (wy[..., j] * wx[..., i]).unsqueeze(1)
            out.addcmul_(flat.gather(2, index).view(n, k, h, w), weight)
    return out


def _warp_terms(i1_stack: torch.Tensor, u: torch.Tensor, i0: torch.Tensor,
                interpolation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Once per warp (OpenCV: remap, then the constant terms of the linearised residual): the
    warped gradient (N,2,H,W), 1 / |grad|^2 clamped as OpenCV guards it, and rho_c (N,H,W)."""
    warped = _warp_images(i1_stack, u, interpolation)
    i1w, igrad = warped[:, 0], warped[:, 1:]
    inv_grad = 1.0 / igrad.square().sum(dim=1).clamp(min=_FLT_EPSILON)
    rho_c = i1w - (igrad * u[:, :2]).sum(dim=1) - i0
    return igrad, inv_grad, rho_c


class _Scale:
    """Warp-invariant state of one pyramid level for the pairs still iterating.

    ``ig`` (N,C,H,W) is the warped image gradient (C = 3 with OpenCV's gamma term, whose
    "gradient" is the constant gamma); ``ig_n`` and ``rho_n`` are it and the constant part of the
    linearised residual already divided by |grad I1w|^2 (clamped as OpenCV guards it), so that
    the thresholding step costs three ops per iteration instead of four.
    """

    def __init__(self, ig: torch.Tensor, ig_n: torch.Tensor, rho_n: torch.Tensor) -> None:
        self.ig, self.ig_n, self.rho_n = ig, ig_n, rho_n
        self.ig_n_ch = ig_n.unbind(1)

    def select(self, keep: torch.Tensor) -> "_Scale":
        return _Scale(self.ig[keep], self.ig_n[keep], self.rho_n[keep])


class _State:
    """Flow ``u`` (N,C,H,W), dual ``p`` (N,C,2,H,W) stored as theta * p, scratch buffers and the
    views one iteration reads and writes.

    At 112 px one iteration is ~16 small ops whose Python dispatch costs about as much as their
    arithmetic, so the views are made once per warp, not once per iteration, and every
    intermediate is written into a preallocated buffer.
    """

    def __init__(self, u: torch.Tensor, p: torch.Tensor) -> None:
        self.u, self.p = u, p
        n, c, h, w = u.shape
        self.g = torch.zeros_like(p)  # forward differences; the last column (x) / row (y) stay zero
        self.d = torch.empty_like(u)  # divergence, then the update
        self.fi = torch.empty((n, h, w), dtype=u.dtype, device=u.device)
        self.s = torch.empty_like(u)  # |grad u|, then the dual step's denominator
        self.ones = torch.ones_like(u)
        self.u_ch = u.unbind(1)
        self.fi4 = self.fi.unsqueeze(1)
        self.s5 = self.s.unsqueeze(2)
        px, py = p[:, :, 0], p[:, :, 1]
        gx, gy = self.g[:, :, 0], self.g[:, :, 1]
        self.px, self.py, self.gx, self.gy = px, py, gx, gy
        self.d_x1, self.px_x0 = self.d[..., 1:], px[..., :-1]
        self.d_y1, self.py_y0 = self.d[..., 1:, :], py[..., :-1, :]
        self.u_x1, self.u_x0, self.gx_x0 = u[..., 1:], u[..., :-1], gx[..., :-1]
        self.u_y1, self.u_y0, self.gy_y0 = u[..., 1:, :], u[..., :-1, :], gy[..., :-1, :]
        self.d_rows = self.d.view(n, -1)


def _iterate(st: _State, sc: _Scale, l_t: float, tau: float, taut: float, want_error: bool,
             mask: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor | None:
    """One primal-dual iteration in place (OpenCV: estimateV, divergence, estimateU, forwardGradient,
    estimateDualVariables). Returns the per-pair norm of the flow update if asked (OpenCV stops on
    its square, the summed squared update). ``mask``: (N,1,1,1) and (N,1,1,1,1) views of 1.0 for
    pairs that iterate, 0.0 for pairs frozen (converged): their u and p stay exactly as they are.
    """
    # thresholding step: v = u - clamp(rho / |grad|^2, -l_t, l_t) * grad  (== OpenCV's 3 cases)
    fi = torch.addcmul(sc.rho_n, sc.ig_n_ch[0], st.u_ch[0], out=st.fi)
    for c in range(1, len(st.u_ch)):
        fi.addcmul_(sc.ig_n_ch[c], st.u_ch[c])
    fi.clamp_(-l_t, l_t)
    # divergence of theta * p by backward differences with p = 0 outside the image
    torch.add(st.px, st.py, out=st.d)
    st.d_x1.sub_(st.px_x0)
    st.d_y1.sub_(st.py_y0)
    # u_new = v + theta * div p, done as one update so that its size is the stopping criterion
    delta = torch.addcmul(st.d, sc.ig, st.fi4, value=-1.0, out=st.d)
    if mask is not None:
        delta.mul_(mask[0])
    st.u.add_(delta)
    error = torch.linalg.vector_norm(st.d_rows, dim=1) if want_error else None
    # forward differences of u, then the dual projection p = (p + taut g) / (1 + taut |g|), for theta * p
    torch.sub(st.u_x1, st.u_x0, out=st.gx_x0)
    torch.sub(st.u_y1, st.u_y0, out=st.gy_y0)
    if mask is not None:  # g = 0 leaves p unchanged: (p + 0) / (1 + 0)
        st.g.mul_(mask[1])
    s = torch.mul(st.gx, st.gx, out=st.s)
    s.addcmul_(st.gy, st.gy).sqrt_()
    torch.add(st.ones, s, alpha=taut, out=s)
    st.p.add_(st.g, alpha=tau).div_(st.s5)
    return error


class _MaskedLevel:
    """Early stopping with OpenCV's semantics for one pyramid level, as CUDA graphs.

    Reading the stopping test back after every iteration costs a synchronisation and keeps every
    kernel launched from Python: at OpenCV's defaults on an H200 that was ~290 us per iteration,
    174 ms per 224 px pair. Here a pair that meets the test is frozen by a 0/1 mask instead of
    being dropped (u and p stay exactly as they were, so results equal OpenCV's loop), a whole
    outer iteration (median filter + inner iterations) runs as one captured graph, and the host
    reads one flag per outer iteration to skip the rest of a warp once every pair has stopped.
    The frozen pairs' wasted work is what it costs: at most one outer iteration per warp.

    All tensors are fixed buffers for one (N, C, H, W): callers copy in, run, copy out. With
    ``graphs=False`` (CPU, tests) the same steps run eagerly.
    """

    def __init__(self, config: FlowConfig, n: int, channels: int, h: int, w: int, device: torch.device,
                 graphs: bool) -> None:
        self.config = config
        self.i0 = torch.zeros(n, h, w, device=device)
        self.i1_stack = torch.zeros(n, 3, h, w, device=device)
        self.state = _State(torch.zeros(n, channels, h, w, device=device),
                            torch.zeros(n, channels, 2, h, w, device=device))
        self.ig = torch.zeros(n, channels, h, w, device=device)
        if channels == 3:
            self.ig[:, 2] = config.gamma
        self.scale = _Scale(self.ig, torch.zeros_like(self.ig), torch.zeros(n, h, w, device=device))
        self.active = torch.ones(n, 1, 1, 1, device=device)
        self.mask = (self.active, self.active.unsqueeze(-1))
        self.warp_iterations = torch.zeros(n, device=device)
        self.iterations = torch.zeros((), device=device)  # summed over warps of the max over pairs
        self.stop_norm = config.epsilon * math.sqrt(h * w)
        self._first: Callable[[], object] = self._warp_and_outer
        self._more: Callable[[], object] = self._outer
        if graphs:
            self._first = CudaGraph(self._warp_and_outer, ())
            self._more = CudaGraph(self._outer, ())

    def _warp_and_outer(self) -> None:
        """Warp I1 by the current flow (the once-per-warp terms), then the first outer iteration."""
        igrad, inv_grad, rho_c = _warp_terms(self.i1_stack, self.state.u, self.i0, self.config.interpolation)
        self.ig[:, :2] = igrad
        torch.mul(self.ig, inv_grad[:, None], out=self.scale.ig_n)
        torch.mul(rho_c, inv_grad, out=self.scale.rho_n)
        self.active.fill_(1.0)
        self.warp_iterations.zero_()
        self._outer()

    def _outer(self) -> None:
        cfg = self.config
        st = self.state
        l_t, taut = cfg.lambda_ * cfg.theta, cfg.tau / cfg.theta
        if cfg.median_filtering > 1:
            flow = st.u[:, :2]
            flow.copy_(torch.where(self.active > 0, _median_filter(flow, cfg.median_filtering), flow))
        n = self.active.shape[0]
        for _ in range(cfg.inner_iterations):
            norm = _iterate(st, self.scale, l_t, cfg.tau, taut, want_error=True, mask=self.mask)
            self.warp_iterations.add_(self.active.view(n))
            self.active.mul_((norm > self.stop_norm).view(n, 1, 1, 1))

    def run(self, i0: torch.Tensor, i1_stack: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Flow after this level's warps, and its iterations (per warp, the most any pair ran)."""
        self.i0.copy_(i0)
        self.i1_stack.copy_(i1_stack)
        self.state.u.copy_(u)
        self.state.p.zero_()
        self.iterations.zero_()
        for _ in range(self.config.warps):
            self._first()
            outer = 1
            while outer < self.config.outer_iterations and bool(self.active.any()):  # one read-back
                self._more()
                outer += 1
            self.iterations.add_(self.warp_iterations.max())
        return self.state.u.clone(), int(self.iterations)


class TVL1:
    """Batched TV-L1 optical flow on one device, OpenCV DualTVL1 semantics.

    ``TVL1(config, device)(prev, nxt)`` with prev/nxt (H,W) or (N,H,W), uint8 (0..255) or float
    (0..1, as OpenCV scales float images by 255), numpy or torch on any device; returns float32
    (N,2,H,W) flow in pixels on ``device``. ``init_flow`` (N,2,H,W) px warm-starts the coarsest
    level (OpenCV's ``useInitialFlow``), e.g. with the previous frame pair's flow.

    On CUDA with ``fixed_iterations`` the whole solve (pyramid, warps, medians, iterations) is
    captured once per input shape as a CUDA graph and replayed (``cuda_graphs=True``, the
    default): thousands of small kernels launched by one call instead of one Python call each.
    If capture fails the instance logs why and stays eager; the results are the same.

    On the CPU each call runs on ``cpu_threads`` torch threads (1 by default, see the module
    docstring; None: whatever torch is set to), restored afterwards.

    ``last_iterations`` holds the primal-dual iterations run by the last call (summed over scales,
    maximum over the batch) so that benchmarks can report the work done.
    """

    MAX_GRAPHS = 8  # captured shapes kept per instance; each holds its own buffers on the GPU

    def __init__(self, config: FlowConfig = FlowConfig(), device: str | torch.device = "cpu",
                 cuda_graphs: bool = True, cpu_threads: int | None = 1) -> None:
        if cpu_threads is not None and cpu_threads < 1:
            raise ValueError(f"cpu_threads {cpu_threads}: must be at least 1 (or None: torch's setting)")
        self.config = config
        self.device = torch.device(device)
        self.cpu_threads = cpu_threads
        self.last_iterations = 0
        cuda = self.device.type == "cuda"
        self._use_graphs = cuda_graphs and config.fixed_iterations and cuda  # the whole solve, one graph
        self._graphs: dict[tuple[int, int, int, bool], CudaGraph] = {}
        # early stopping on CUDA: masked outer iterations, one graph each (see _MaskedLevel)
        self._masked_levels = cuda_graphs and not config.fixed_iterations and cuda
        self._levels: dict[tuple[int, int, int, int], _MaskedLevel] = {}

    def __repr__(self) -> str:
        return f"TVL1({self.config!r}, device={str(self.device)!r})"

    @property
    def uses_cuda_graphs(self) -> bool:
        """Whether calls replay captured CUDA graphs (False on the CPU or after a capture failed)."""
        return (self._use_graphs or self._masked_levels) and self.device.type == "cuda"

    def _captured(self, cache: dict[Any, Any], key: Any, limit: int, build: Callable[[], Any]) -> Any | None:
        """``cache[key]``, built (captured) on first use; the oldest entry goes once ``limit`` are
        kept. None if capture fails: then this instance stops using graphs (same results eagerly)."""
        item = cache.get(key)
        if item is None:
            try:
                item = build()
            except RuntimeError as exc:  # capture refused (driver, memory)
                log.warning("TV-L1: CUDA graph capture failed (%s); running eagerly", exc)
                self._use_graphs = self._masked_levels = False
                self._graphs.clear()
                self._levels.clear()
                return None
            if len(cache) >= limit:
                cache.pop(next(iter(cache)))
            cache[key] = item
        return item

    def _masked_level(self, n: int, channels: int, h: int, w: int) -> _MaskedLevel | None:
        return self._captured(  # five pyramid levels per input shape
            self._levels, (n, channels, h, w), self.MAX_GRAPHS * 5,
            lambda: _MaskedLevel(self.config, n, channels, h, w, self.device, graphs=self.device.type == "cuda"))

    # -- input handling ------------------------------------------------------------------------

    def _as_batch(self, frames: Any, name: str) -> torch.Tensor:
        t = torch.as_tensor(frames)
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3:
            raise ValueError(f"{name}: expected (H, W) or (N, H, W) grey frames, got shape {tuple(t.shape)}")
        if t.dtype == torch.uint8:
            t = t.to(self.device).to(torch.float32)
        elif t.is_floating_point():
            t = t.to(self.device, torch.float32) * 255.0
        else:
            raise ValueError(f"{name}: expected uint8 or float frames, got {t.dtype}")
        if min(t.shape[-2:]) < 3:
            raise ValueError(f"{name}: frames of {tuple(t.shape[-2:])} px are too small for TV-L1")
        return texture(t, self.config.texture_sigma)

    @torch.no_grad()
    def __call__(self, prev: Any, nxt: Any, init_flow: Any | None = None) -> torch.Tensor:
        i0, i1 = self._as_batch(prev, "prev"), self._as_batch(nxt, "nxt")
        if i0.shape != i1.shape:
            raise ValueError(f"prev {tuple(i0.shape)} and nxt {tuple(i1.shape)} must have the same shape")
        n, h, w = i0.shape
        flow = None
        if init_flow is not None:
            flow = torch.as_tensor(init_flow).to(self.device, torch.float32)
            if flow.ndim == 3:
                flow = flow[None]
            if tuple(flow.shape) != (n, 2, h, w):
                raise ValueError(f"init_flow: expected shape {(n, 2, h, w)}, got {tuple(flow.shape)}")
        self.last_iterations = 0  # the eager solve counts; a graph replay is counted below
        if self.device.type == "cpu":
            return self._solve_on_cpu_threads(i0, i1, flow)
        inputs = (i0, i1) if flow is None else (i0, i1, flow)
        graph = None
        if self._use_graphs:
            graph = self._captured(self._graphs, (n, h, w, flow is not None), self.MAX_GRAPHS,
                                   lambda: CudaGraph(self._solve, inputs))
        if graph is None:
            self.last_iterations = 0  # capture's warm-up runs counted too
            return self._solve(i0, i1, flow)
        (out,) = graph(*inputs)
        cfg = self.config
        self.last_iterations = len(self._pyramid_sizes(h, w)) * cfg.warps * cfg.outer_iterations * cfg.inner_iterations
        return out

    # -- the solve ---------------------------------------------------------------------------------

    def _solve_on_cpu_threads(self, i0: torch.Tensor, i1: torch.Tensor, init_flow: torch.Tensor | None) -> torch.Tensor:
        saved = torch.get_num_threads()
        if self.cpu_threads is None or self.cpu_threads == saved:
            return self._solve(i0, i1, init_flow)
        torch.set_num_threads(self.cpu_threads)
        try:
            return self._solve(i0, i1, init_flow)
        finally:
            torch.set_num_threads(saved)

    def _pyramid_sizes(self, h: int, w: int) -> list[tuple[int, int]]:
        """(H, W) of each level, finest first: cv2.resize by scale_step down to >= 16 px."""
        sizes = [(h, w)]
        for _ in range(1, self.config.nscales):
            ph, pw = sizes[-1]
            size = (int(round(ph * self.config.scale_step)), int(round(pw * self.config.scale_step)))
            if min(size) < _MIN_PYRAMID_SIDE_PX:
                break
            sizes.append(size)
        return sizes

    def _solve(self, i0: torch.Tensor, i1: torch.Tensor, init_flow: torch.Tensor | None = None) -> torch.Tensor:
        """Flow (N,2,H,W) for float frames (N,H,W) in 0..255 on the device; no host synchronisation
        with fixed iterations (so that it can be captured)."""
        cfg = self.config
        n = i0.shape[0]
        channels = 3 if cfg.gamma != 0 else 2
        inv_step = 1.0 / cfg.scale_step
        i0s, i1s = [i0], [i1]
        for size in self._pyramid_sizes(*i0.shape[-2:])[1:]:
            both = _resize(torch.stack((i0s[-1], i1s[-1])), size, (inv_step, inv_step))
            i0s.append(both[0])
            i1s.append(both[1])

        # flow at the coarsest level: zero, or the initial flow carried down the same pyramid
        ch, cw = i0s[-1].shape[-2:]
        u = torch.zeros(n, channels, ch, cw, device=i0.device)
        if init_flow is not None:
            flow = init_flow
            for level in i0s[1:]:
                flow = _resize(flow, tuple(level.shape[-2:]), (inv_step, inv_step)) * cfg.scale_step
            u[:, :2] = flow

        for s in range(len(i0s) - 1, -1, -1):
            if u.shape[-2:] != i0s[s].shape[-2:]:
                th, tw = i0s[s].shape[-2:]
                sh, sw = u.shape[-2:]
                u = _resize(u, (th, tw), (sh / th, sw / tw))
                u[:, :2] *= inv_step  # flow in pixels of the finer level (gamma's u3 is unitless)
            u = self._one_scale(i0s[s], i1s[s], u)
        return u[:, :2].contiguous()

    # -- one pyramid level -----------------------------------------------------------------------

    def _one_scale(self, i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        n, channels, h, w = u.shape
        l_t = cfg.lambda_ * cfg.theta
        taut = cfg.tau / cfg.theta
        # OpenCV stops once the summed squared update is <= epsilon^2 * pixels: compare norms
        stop_norm = cfg.epsilon * math.sqrt(h * w)
        median = cfg.median_filtering > 1
        # to warp: I1 and its central-difference gradient, one warp call for the three
        i1_stack = torch.cat((i1[:, None], _centered_gradient(i1)), dim=1)  # (N,3,H,W)
        level = None if cfg.fixed_iterations or not self._masked_levels else self._masked_level(n, channels, h, w)
        if level is not None:
            u, iterations = level.run(i0, i1_stack, u)
            self.last_iterations += iterations
            return u
        state = _State(u, torch.zeros(n, channels, 2, h, w, device=u.device))
        iterations = 0
        for _ in range(cfg.warps):
            igrad, inv_grad, rho_c = _warp_terms(i1_stack, u, i0, cfg.interpolation)
            if channels == 3:
                igrad = torch.cat((igrad, torch.full_like(igrad[:, :1], cfg.gamma)), dim=1)
            sc = _Scale(igrad, igrad * inv_grad[:, None], rho_c * inv_grad)
            if cfg.fixed_iterations:
                for _ in range(cfg.outer_iterations):
                    if median:
                        u[:, :2] = _median_filter(u[:, :2], cfg.median_filtering)
                    for _ in range(cfg.inner_iterations):
                        _iterate(state, sc, l_t, cfg.tau, taut, want_error=False)
                iterations += cfg.outer_iterations * cfg.inner_iterations
            else:
                iterations += self._iterate_until_converged(state, sc, l_t, taut, stop_norm)
        self.last_iterations += iterations
        return u

    def _iterate_until_converged(self, state: _State, sc: _Scale, l_t: float, taut: float, stop_norm: float) -> int:
        """OpenCV's loops for one warp; each pair stops once its update is small enough.

        Converged pairs are written back to ``state.u``/``state.p`` (in place) and dropped from
        the working batch, so a batch costs what its slowest pair costs, not more per pair.
        """
        cfg = self.config
        u, p = state.u, state.p
        active: torch.Tensor | None = None  # indices into the full batch; None = every pair
        work, sca = state, sc
        iterations = 0
        for _ in range(cfg.outer_iterations):
            if cfg.median_filtering > 1:
                work.u[:, :2] = _median_filter(work.u[:, :2], cfg.median_filtering)
            for _ in range(cfg.inner_iterations):
                norm = _iterate(work, sca, l_t, cfg.tau, taut, want_error=True)
                iterations += 1
                if float(norm.min()) > stop_norm:  # the one read-back per iteration
                    continue
                if active is not None:  # write back the working copies before shrinking the set
                    u[active], p[active] = work.u, work.p
                keep = (norm > stop_norm).nonzero().flatten()
                if keep.numel() == 0:
                    return iterations
                active = keep if active is None else active[keep]
                work, sca = _State(u[active], p[active]), sca.select(keep)
        if active is not None:
            u[active], p[active] = work.u, work.p
        return iterations
