"""The randomized scene of ``export-synth --randomize``: rigs, mice, water, room, light and camera
drawn from the values of :mod:`export.synth_families`.

The legacy (non-randomized) renderer in :mod:`export.synth_render` is left byte-for-byte as it was: the
bundled demo video and model depend on it. This module renders the randomized look, and its
behaviours follow the paper's definitions so that classes differ in MOTION, not in appearance:

* ``swim``: the body travels horizontally, all four limbs paddle (fore and hind in antiphase);
* ``struggle``: the mouse is upright against the wall, its forepaws make high-amplitude strokes
  that break the surface (droplets fly), its hind legs kick;
* ``float``: nearly still, only the small slow balancing paddle of one hind leg and a slight
  rocking needed to keep the head above water (never perfectly still);
* top view ``mobile``: swimming around, or scrabbling at the wall; ``immobile``: drifting with
  balancing paddles while the ripples of the last mobile bout decay over seconds.

The picture is composed on a canvas in the rig's own (un-tilted) coordinates: a static layer
(room texture, clutter, cylinders, walls) drawn once, then per frame the mice, the water and the
reflections in front; one perspective warp per frame (camera tilt, roll and shake in one
homography), defocus, lighting gain (gradient, vignette, hot spot, colour, rolling bands), motion
blur, interlacing, sensor noise, sensor resolution and an MJPEG stage. A floating side-view mouse
lies at its drawn pitch and depth (the head always out) and drifts; the water in front of it
hides deeper parts more. Arena ROIs are the bounding boxes of each
cylinder's outline after the warp: side view the cylinder from rim to base between its walls,
top view the water circle.

With a trial plan (:mod:`export.synth_trials`) each arena's mouse is absent, held by a gloved
hand (lowered in / lifted out by its tail, paddling in the air) or in the water; an empty
cylinder's water is bumped now and then and the room light steps up or down, from rng streams of
their own so that renders without trials draw exactly what they drew before trials existed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from export.synth_draw import (
    HEAD_AT,
    HEAD_AXES,
    POSE_TAU_S,
    RIPPLE_RISE_S,
    MouseColours,
    draw_ellipse,
    draw_line,
    draw_side_mouse,
    draw_top_mouse,
)
from export.synth_families import MOUSE_COLOURS_BGR, WATER_COLOURS_BGR
from export.synth_trials import ABSENT, HELD, IN_WATER, TrialPlan
from stream.preprocess import Roi

__all__ = ["Layout", "layout", "render_scene"]

FOCAL_PER_WIDTH = 1.2  # focal length in frame widths: a normal lens; tilt then looks like a keystone
FIT_MARGIN_PX = 2  # the warped cylinders stay this far inside the frame
CIRCLE_POINTS = 72  # points on a top-view rim whose warped bounding box is the ROI
RIM_PER_WIDTH = 0.06  # side view: half-height of the rim ellipses, in cylinder widths
FLOOR_GREY = 205.0  # the cylinder's floor, seen through the water from above
SURFACE_GLINT = 235.0  # grey level of the bright water line
DROPLET_LIFE_S = 0.35  # a droplet flies for about this long
DRIFT_PERIOD_S = 23.0  # period of the slow lighting drift
TOP_WALL_SHARE = 0.35  # share of top-view mobile bouts spent scrabbling at the wall
# trials (export.synth_trials): what happens in an empty cylinder and around an insertion
EMPTY_BUMP_HZ = 1 / 12  # the table is bumped / a neighbour splashes: ripples with no mouse
LIGHT_STEP_HZ = 1 / 20  # someone moves in front of a lamp or opens a door
LIGHT_STEP = (0.85, 1.15)  # gain after a lighting step
LIGHT_STEP_TAU_S = 0.3  # a lamp or a door changes the light over a few frames, not in one
# glove colours: blue nitrile, white latex, purple nitrile
GLOVES_BGR = ((200, 140, 60), (235, 235, 235), (170, 90, 120))
NOISE_FRAMES = 8  # pre-drawn sensor-noise frames (fresh Gaussian noise per frame dominates the cost)
# side-view head, in body lengths along the body axis / its half-axes (as _draw_side draws it)
NOSE_CLEAR = 0.04  # a floating mouse's head rises at least this far (body lengths) above the surface: it breathes
# a float bout drifts at a speed drawn in this range, scaled so that its middle is the drawn float_drift
FLOAT_DRIFT_RANGE = (0.02, 0.05)
FLOAT_DRIFT_MID = 0.035
# capture widening (export.synth_families Lighting / Capture)
JPEG_NONE = 100  # jpeg_quality at which no MJPEG stage runs
MIN_DEFOCUS_PX = 0.3  # a thinner blur leaves the 8-bit frame as it was
DEFOCUS_WIDTH_PX = 640  # defocus_px is for a frame this wide (the nominal one): a lens blurs the same share of any frame
HOTSPOT_SIGMA = (0.15, 0.35)  # a lamp's spot, in frame sizes
BANDS_PER_FRAME = (1.5, 4.0)  # rolling-shutter flicker bands visible at once
BAND_BEAT_HZ = (0.3, 2.0)  # how fast they roll: mains 100/120 Hz beating against the frame rate

# rng streams, apart from the label streams of export.synth_render and the family draws
STATIC_STREAM, ARENA_STREAM, CAMERA_STREAM, TRIAL_STREAM = 30_000, 31_000, 32_000, 33_000
LOOK_STREAM = 34_000  # the widened lighting / capture draws (hot spot, bands, shot noise)


@dataclass(frozen=True)
class Cylinder:
    """One cylinder on the canvas: side view a rectangle (x, y, w, h), top view a circle (cx, cy, r)."""

    x: float
    y: float
    w: float
    h: float

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2

    @property
    def radius(self) -> float:
        return min(self.w, self.h) / 2


@dataclass(frozen=True)
class Layout:
    """Frame size, cylinders on the canvas, the camera homography and the exact ROIs after it."""

    view: str
    width: int
    height: int
    cylinders: tuple[Cylinder, ...]
    homography: np.ndarray  # (3, 3) canvas -> frame
    rois: tuple[Roi, ...]


def frame_size_of(geo: dict[str, Any]) -> tuple[int, int]:
    w = int(geo["width_px"]) // 2 * 2
    return w, int(round(w / float(geo["aspect"]))) // 2 * 2


def _outline(view: str, c: Cylinder) -> np.ndarray:
    """(N, 2) points whose bounding box after any homography is the cylinder's ROI."""
    if view == "side":
        return np.array([[c.x, c.y], [c.x + c.w, c.y], [c.x + c.w, c.y + c.h], [c.x, c.y + c.h]], np.float64)
    a = np.linspace(0, 2 * math.pi, CIRCLE_POINTS, endpoint=False)
    cx, cy = c.centre
    return np.stack([cx + c.radius * np.cos(a), cy + c.radius * np.sin(a)], 1)


def _apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ h.T
    return p[:, :2] / p[:, 2:3]


def _grid(n: int, w: float, h: float) -> tuple[int, int]:
    """(rows, cols) for n top-view circles in a w x h area: a row when it is wide enough."""
    if n <= 2 or w / h >= 0.9 * n:
        return 1, n
    return 2, math.ceil(n / 2)


def layout(view: str, geo: dict[str, Any]) -> Layout:
    """Place the cylinders and the camera; pure function of the geometry family's values."""
    W, H = frame_size_of(geo)
    n = int(geo["cylinders"])
    mx, my = geo["margin"] * W, geo["margin"] * H
    uw, uh = W - 2 * mx, H - 2 * my
    jit = float(geo["jitter"])
    cyls = []
    if view == "side":
        slot = uw / n
        cw = geo["fill"] * slot
        ch = cw * geo["cylinder_aspect"]
        if ch > 0.96 * uh:  # too tall for the frame: a narrower cylinder of the same shape
            ch = 0.96 * uh
            cw = ch / geo["cylinder_aspect"]
        for i in range(n):
            cyls.append(Cylinder(mx + i * slot + jit * (slot - cw), my + (1 - jit) * (uh - ch), cw, ch))
    else:
        rows, cols = _grid(n, uw, uh)
        sw, sh = uw / cols, uh / rows
        d = geo["fill"] * min(sw, sh)
        for i in range(n):
            r, c = divmod(i, cols)
            cyls.append(Cylinder(mx + c * sw + jit * (sw - d), my + r * sh + (1 - jit) * (sh - d), d, d))
    # camera: K R K^-1 turns the rig by pitch (keystone), yaw and roll about the frame centre
    f = FOCAL_PER_WIDTH * W
    k = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], np.float64)
    p, y, r = (math.radians(float(geo[key])) for key in ("pitch_deg", "yaw_deg", "roll_deg"))
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    hom = k @ rz @ ry @ rx @ np.linalg.inv(k)
    # shrink about the centre until every warped cylinder is inside the frame
    pts = np.concatenate([_apply(hom, _outline(view, c)) for c in cyls])
    lo, hi = FIT_MARGIN_PX, np.array([W - 1 - FIT_MARGIN_PX, H - 1 - FIT_MARGIN_PX])
    centre = np.array([W / 2, H / 2])
    rel = pts - centre
    limit = np.where(rel > 0, hi - centre, centre - lo)
    s = float(min(1.0, np.min(limit / np.maximum(np.abs(rel), 1e-9))))
    if s < 1.0:
        t = np.array([[s, 0, (1 - s) * W / 2], [0, s, (1 - s) * H / 2], [0, 0, 1]])
        hom = t @ hom
    rois = []
    for c in cyls:
        q = _apply(hom, _outline(view, c))
        x0, y0 = np.floor(q.min(0)).astype(int)
        x1, y1 = np.ceil(q.max(0)).astype(int)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
        rois.append(Roi(int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
    return Layout(view, W, H, tuple(cyls), hom, tuple(rois))


# ----------------------------------------------------------------------------------------------
# static layer


def _texture(rng: np.random.Generator, bg: dict[str, Any], w: int, h: int) -> np.ndarray:
    """(h, w, 3) float32 room / table texture."""
    g = float(bg["grey"])
    kind = bg["texture"]
    period = max(4.0, float(bg["texture_scale"]) * w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "flat":
        v = np.full((h, w), g, np.float32)
    elif kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        ramp = (xx * math.cos(a) + yy * math.sin(a)) / max(w, h)
        v = g + 40.0 * (ramp - ramp.mean())
    elif kind == "noise":
        small = rng.normal(0, 1, (max(2, int(h / period)), max(2, int(w / period)))).astype(np.float32)
        v = g + 18.0 * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    elif kind == "tiles":
        grout = (np.mod(xx, period) < max(1.0, 0.08 * period)) | (np.mod(yy, period) < max(1.0, 0.08 * period))
        v = np.where(grout, g - 45.0, g).astype(np.float32)
    elif kind == "stripes":
        a = rng.uniform(0, math.pi)
        v = g + 28.0 * np.sign(np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period))
    elif kind == "checker":
        v = g + 30.0 * (((xx // period) + (yy // period)) % 2 * 2 - 1)
    else:  # wood: grain lines bent by low-frequency noise
        small = rng.normal(0, 1, (4, 4)).astype(np.float32)
        bend = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * period
        v = g + 22.0 * np.sin(2 * math.pi * (yy + bend) / (0.5 * period)) ** 3
    img = np.repeat(v[..., None], 3, axis=2)
    img[..., 0] -= float(bg["tint"])  # blue
    img[..., 2] += float(bg["tint"])  # red
    img += rng.normal(0, 3.0, (1, 1, 3)).astype(np.float32)  # a colour cast of the room
    return img


def _clutter(rng: np.random.Generator, img: np.ndarray, count: int) -> None:
    h, w = img.shape[:2]
    for _ in range(count):
        colour = tuple(float(c) for c in rng.uniform(30, 230, 3))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        sx, sy = rng.uniform(0.04, 0.18) * w, rng.uniform(0.04, 0.25) * h
        if rng.random() < 0.5:
            cv2.rectangle(img, (int(x), int(y)), (int(x + sx), int(y + sy)), colour, -1, cv2.LINE_AA)
        else:
            draw_ellipse(img, (x, y), (sx / 2, sy / 2), rng.uniform(0, 180), colour)


def _static_layer(rng: np.random.Generator, lay: Layout, fam: dict[str, dict[str, Any]]) -> np.ndarray:
    """Everything that does not move: room, clutter, cylinders; uint8 (H, W, 3)."""
    W, H = lay.width, lay.height
    img = _texture(rng, fam["background"], W, H)
    _clutter(rng, img, int(fam["background"]["clutter"]))
    cyl, water = fam["cylinder"], fam["water"]
    wall = (float(cyl["wall_grey"]),) * 3
    for c in lay.cylinders:
        if lay.view == "side":
            x0, x1 = int(c.x), int(c.x + c.w)
            img[int(c.y) : int(c.y + c.h), x0:x1] *= float(cyl["brighten"])
        else:
            cx, cy = c.centre
            wc = np.array(WATER_COLOURS_BGR[water["colour"]], np.float32)
            mix = 0.35 + 0.6 * float(water["turbidity"])
            disc = tuple(float(v) for v in (1 - mix) * FLOOR_GREY + mix * wc)
            draw_ellipse(img, (cx, cy), (c.radius, c.radius), 0, disc)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for c in lay.cylinders:
        lw = max(1.0, float(cyl["wall_width"]) * c.w)
        # everything is drawn inside the cylinder's box, so that the box is the ROI
        if lay.view == "side":
            rim = RIM_PER_WIDTH * c.w
            top, bottom = c.y + rim, c.y + c.h - rim
            for x in (c.x + lw / 2, c.x + c.w - lw / 2):
                draw_line(img, (x, top), (x, bottom), wall, lw)
            for y in (top, bottom):
                draw_ellipse(img, (c.x + c.w / 2, y), (c.w / 2 - lw / 2, rim - lw / 2), 0, wall, max(1, int(lw)))
        else:
            cx, cy = c.centre
            rim_grey = tuple(min(255.0, v + 90) for v in wall)
            t = max(2, int(2 * lw))
            draw_ellipse(img, (cx, cy), (c.radius - t / 2, c.radius - t / 2), 0, rim_grey, t)
    return img


def _reflections(rng: np.random.Generator, lay: Layout, c: Cylinder, cyl: dict[str, Any]) -> tuple[Any, np.ndarray]:
    """Specular highlights of the room on the plastic / water, applied in front of the mouse:
    (index into the canvas, alpha per indexed pixel)."""
    strength = float(cyl["reflection_strength"])
    if lay.view == "side":
        x0, x1 = int(c.x) + 1, int(c.x + c.w)
        xs = np.arange(x0, x1, dtype=np.float32)
        alpha = np.zeros_like(xs)
        for _ in range(int(cyl["reflections"])):
            centre = c.x + c.w * (rng.uniform(0.05, 0.25) if rng.random() < 0.5 else rng.uniform(0.75, 0.95))
            width = rng.uniform(0.01, 0.04) * c.w + 0.5
            alpha += strength * rng.uniform(0.6, 1.0) * np.exp(-0.5 * ((xs - centre) / width) ** 2)
        cols = np.flatnonzero(alpha > 0.01)
        return (slice(int(c.y) + 2, int(c.y + c.h) - 2), x0 + cols), np.minimum(alpha[cols], 0.9)[None, :, None]
    cx, cy = c.centre
    r = c.radius
    ys, xs = np.mgrid[int(cy - r) : int(cy + r) + 1, int(cx - r) : int(cx + r) + 1].astype(np.float32)
    rad, ang = np.hypot(xs - cx, ys - cy), np.arctan2(ys - cy, xs - cx)
    alpha = np.zeros_like(xs)
    for _ in range(int(cyl["reflections"])):
        a0, span = rng.uniform(-math.pi, math.pi), rng.uniform(0.3, 0.9)
        at = rng.uniform(0.55, 0.9) * r
        d_ang = np.angle(np.exp(1j * (ang - a0)))
        alpha += strength * np.exp(-0.5 * ((rad - at) / (0.02 * r + 0.5)) ** 2) * (np.abs(d_ang) < span / 2)
    alpha *= rad < r - 1
    keep = alpha > 0.01
    idx = (ys[keep].astype(np.intp), xs[keep].astype(np.intp))
    return idx, np.minimum(alpha[keep], 0.9)[:, None]


# ----------------------------------------------------------------------------------------------
# the mice


def head_top(pitch: float) -> float:
    """Height of the top of the head above the body centre, in body lengths, for a side-view
    body pitched ``pitch`` rad above horizontal (the head ellipse of ``_draw_side``, turned)."""
    a, b = HEAD_AXES
    return HEAD_AT * math.sin(pitch) + math.sqrt((a * math.sin(pitch)) ** 2 + (b * math.cos(pitch)) ** 2)


def float_depth(pitch: float, depth: float) -> float:
    """Depth of a floating mouse's body centre below the surface (body lengths): the drawn
    ``depth``, but never so deep that the head goes under (a floating mouse keeps its head out,
    so a flat one cannot sink as far as an upright one)."""
    return min(depth, head_top(pitch) - NOSE_CLEAR)


def _depth_fade(water: dict[str, Any], c: Cylinder, water_y: float, length: float, cols: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-row blend weights (image, water) of the side-view water from the cylinder's top down:
    opacity grows from the turbidity's at the surface by ``depth_fade`` per body length of
    depth. None when the water tints every depth alike (the look before depth fading)."""
    fade = float(water["depth_fade"])
    if fade <= 0:
        return None
    alpha = 0.3 + 0.55 * float(water["turbidity"])
    rows = np.arange(int(c.y), int(c.y + c.h), dtype=np.float32) + 0.5
    depth = np.maximum(rows - water_y, 0.0) / length
    w_water = 1 - (1 - alpha) * np.exp(-fade * depth)
    w_water = np.ascontiguousarray(np.repeat(w_water[:, None], cols, 1), np.float32)
    return np.ascontiguousarray(1 - w_water, np.float32), w_water


class _Mouse:
    """One arena: its mouse's motion (from the labels and the dynamics family) and its drawing."""

    def __init__(self, view: str, classes: Sequence[str], c: Cylinder, fam: dict[str, dict[str, Any]],
                 labels: np.ndarray, fps: float, rng: np.random.Generator, refl: tuple[Any, np.ndarray],
                 trial: tuple[np.ndarray, np.ndarray, np.random.Generator] | None = None) -> None:  # fmt: skip
        self.view, self.classes, self.c, self.labels, self.rng = view, list(classes), c, labels, rng
        # trials: per-frame mouse state and hand depth, and an rng of their own (so that a render
        # without trials draws exactly what it always drew)
        self.states, self.hands, self.trial_rng = trial if trial is not None else (None, None, None)
        self.presence, self.hand_depth = (IN_WATER if trial is None else ABSENT), -1.0
        if self.trial_rng is not None:
            self.glove = tuple(float(v) for v in GLOVES_BGR[int(self.trial_rng.integers(len(GLOVES_BGR)))])
        self.dyn, self.water, self.refl = fam["dynamics"], fam["water"], refl
        mouse = fam["mouse"]
        base = np.array(MOUSE_COLOURS_BGR[mouse["colour"]], np.float32) + float(mouse["tint"])
        self.body = tuple(float(v) for v in np.clip(base, 0, 255))
        light = base.mean() > 128
        self.limb = tuple(float(v) for v in np.clip(base * (0.85 if light else 1.3), 0, 255))
        self.tail = (150.0, 160.0, 205.0) if mouse["colour"] == "white" else tuple(float(v) for v in np.clip(base * 1.15 + 20, 0, 255))
        self.eye = (30.0, 30.0, 160.0) if mouse["colour"] == "white" else (15.0, 15.0, 20.0)
        self.tail_len = float(mouse["tail_length"])
        self.water_bgr = np.array(WATER_COLOURS_BGR[self.water["colour"]], np.float32)
        self.dt = 1.0 / fps
        self.t, self.phase, self.bal_phase, self.energy = 0.0, rng.uniform(0, 6.3), rng.uniform(0, 6.3), 0.0
        self.label = ""
        self.drops: list[list[float]] = []  # x, y, vx, vy, age
        self.wave_phase = rng.uniform(0, 2 * math.pi)
        if view == "side":
            self.L = float(mouse["length"]) * c.w
            self.water_y = c.y + float(self.water["level"]) * c.h
            self.lo, self.hi = c.x + 0.55 * self.L, c.x + c.w - 0.55 * self.L
            self.x = rng.uniform(self.lo, self.hi) if self.hi > self.lo else c.x + c.w / 2
            self.dir = 1.0 if rng.random() < 0.5 else -1.0
            self.angle, self.y_off, self.drift = 0.3, 0.06, 0.0
            self.cols = np.arange(int(c.x) + 1, int(c.x + c.w), dtype=np.float32)
            shape = (int(c.y + c.h) - int(c.y), self.cols.size, 3)
            self.water_img = np.empty(shape, np.uint8)
            self.water_img[:] = np.clip(self.water_bgr, 0, 255).astype(np.uint8)
            self.fade = _depth_fade(self.water, c, self.water_y, self.L, self.cols.size)
        else:
            cx, cy = c.centre
            self.R = c.radius
            self.L = float(mouse["length"]) * 2 * self.R
            a = rng.uniform(0, 2 * math.pi)
            self.x, self.y = cx + 0.3 * self.R * math.cos(a), cy + 0.3 * self.R * math.sin(a)
            self.heading = rng.uniform(-math.pi, math.pi)
            self.at_wall = False
            y0, x0 = int(cy - self.R), int(cx - self.R)
            yy, xx = np.mgrid[y0 : int(cy + self.R) + 1, x0 : int(cx + self.R) + 1].astype(np.float32)
            self.box = (slice(y0, y0 + yy.shape[0]), slice(x0, x0 + yy.shape[1]))
            self.grid = (xx, yy)
            self.water_mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= (self.R - 2) ** 2

    @property
    def centre(self) -> tuple[float, float]:
        """The body's centre on the canvas (side view: on the water line, where the body floats)."""
        if self.view == "side":
            return float(self.x), float(self.water_y + self.y_off * self.L)
        return float(self.x), float(self.y)

    def _follow(self, current: float, target: float, tau_s: float = POSE_TAU_S) -> float:
        return current + (target - current) * (1 - math.exp(-self.dt / tau_s))

    # -- motion --------------------------------------------------------------------------------

    def step(self, frame_index: int) -> None:
        if self.states is not None and self._step_trial(frame_index):
            return
        label = self.classes[int(self.labels[frame_index])]
        new_bout = label != self.label
        self.label = label
        active = label in ("swim", "struggle", "mobile")
        tau = RIPPLE_RISE_S if active else float(self.dyn["ripple_decay_s"])
        self.energy += ((1.0 if active else 0.0) - self.energy) * (1 - math.exp(-self.dt / tau))
        self.t += self.dt
        hz = float(self.dyn["stroke_hz"]) * (1.15 if label == "struggle" else 1.0)
        self.phase += 2 * math.pi * hz * self.dt
        self.bal_phase += 2 * math.pi * float(self.dyn["float_hz"]) * self.dt
        if self.view == "side":
            self._step_side(label)
        else:
            self._step_top(label, new_bout)
        self._step_drops()

    def _step_trial(self, t: int) -> bool:
        """Presence and hand of a ``--trials`` render; True when the mouse is not in the water
        (absent or held), which this method then handles entirely."""
        rng, state = self.trial_rng, int(self.states[t])
        before, self.presence, self.hand_depth = self.presence, state, float(self.hands[t])
        if state != IN_WATER and before == IN_WATER:  # lifted out: water streams off
            self._burst()
        if state != ABSENT and before == ABSENT:
            self._new_animal()
        if state == IN_WATER:
            if before != IN_WATER and t > 0:  # dropped in
                self._burst()
            return False
        self.label = self.classes[0]  # a held mouse paddles in the air
        self.t += self.dt
        self.phase += 2 * math.pi * float(self.dyn["stroke_hz"]) * self.dt
        self.energy *= math.exp(-self.dt / float(self.dyn["ripple_decay_s"]))
        if state == ABSENT and rng.random() < EMPTY_BUMP_HZ * self.dt:  # ripples with no mouse
            self.energy = max(self.energy, float(rng.uniform(0.3, 0.6)))
            if self.view == "side":
                self.x = float(rng.uniform(self.c.x, self.c.x + self.c.w))
            else:
                a, r = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.7 * self.R)
                cx, cy = self.c.centre
                self.x, self.y = cx + r * math.cos(a), cy + r * math.sin(a)
        self._step_drops()
        return True

    def _new_animal(self) -> None:
        rng = self.trial_rng
        if self.view == "side":
            self.x = float(rng.uniform(self.lo, self.hi)) if self.hi > self.lo else self.c.x + self.c.w / 2
            self.dir = 1.0 if rng.random() < 0.5 else -1.0
            self.angle, self.y_off, self.drift = 0.3, 0.06, 0.0
        else:
            cx, cy = self.c.centre
            a = rng.uniform(0, 2 * math.pi)
            self.x, self.y = cx + 0.3 * self.R * math.cos(a), cy + 0.3 * self.R * math.sin(a)
            self.heading = float(rng.uniform(-math.pi, math.pi))
        self.label = ""

    def _burst(self) -> None:
        """A splash where the mouse enters or leaves the water."""
        self.energy = 1.0
        y = self.water_y if self.view == "side" else self.y
        for _ in range(int(self.trial_rng.integers(4, 9))):
            vx = self.trial_rng.normal(0, 1.2) * self.L
            vy = -self.trial_rng.uniform(1.0, 3.0) * self.L if self.view == "side" else self.trial_rng.normal(0, 1.2) * self.L
            self.drops.append([self.x, y, vx, vy, 0.0])

    def _hand_at(self) -> tuple[float, float]:
        """Where the hand is: above the frame at depth 0, at the water / the mouse at depth 1."""
        depth, L = self.hand_depth, self.L
        if self.view == "side":
            low = self.water_y - 1.25 * L * (0.9 + 0.3 * self.tail_len)
            return self.x, (-2.0 * L) + (low + 2.0 * L) * depth
        start_y = -2.0 * L
        tail = np.array([math.cos(self.heading), math.sin(self.heading)]) * -0.8 * L
        return self.x + tail[0] * depth, start_y + (self.y + tail[1] - start_y) * depth

    def _draw_hand(self, img: np.ndarray) -> None:
        L = self.L
        hx, hy = self._hand_at()
        sleeve = tuple(0.8 * v for v in self.glove)
        draw_line(img, (hx, hy), (hx + 0.4 * L, hy - 6.0 * L), sleeve, max(2.0, 0.45 * L))
        draw_ellipse(img, (hx, hy), (0.32 * L, 0.24 * L), 80, self.glove)
        for k in range(3):  # fingers pinching the tail
            draw_ellipse(img, (hx - 0.12 * L + 0.12 * L * k, hy + 0.2 * L), (0.05 * L, 0.12 * L), 90, self.glove)

    def _draw_held(self, img: np.ndarray) -> None:
        """The mouse hanging by its tail from the hand, paddling in the air."""
        hx, hy = self._hand_at()
        L = self.L
        if self.view == "side":
            self.angle, self.y_off = -math.pi / 2 + 0.15 * math.sin(0.5 * self.phase), 0.0
            self._draw_side(img, centre=(hx, hy + (0.3 * self.tail_len + 0.6) * L))
            return
        scale = 1.0 + 0.3 * (1.0 - max(self.hand_depth, 0.0))  # nearer the camera while lifted
        self._draw_top(img, centre=(hx + 0.8 * L * math.cos(self.heading), hy + 0.8 * L * math.sin(self.heading)), scale=scale)

    def _step_side(self, label: str) -> None:
        rng, L, c = self.rng, self.L, self.c
        if label == "swim":
            self.x += self.dir * float(self.dyn["swim_speed"]) * L * self.dt
            if not self.lo <= self.x <= self.hi:
                self.x = float(np.clip(self.x, self.lo, self.hi))
                self.dir = -self.dir
            target_angle, target_off = 0.3, 0.05
            self.drift = 0.0
        elif label == "struggle":  # upright at the nearest wall, facing it
            left = self.x - c.x < c.x + c.w - self.x
            self.dir = -1.0 if left else 1.0
            wall_x = c.x + 0.45 * L if left else c.x + c.w - 0.45 * L  # the nose touches the wall
            self.x = self._follow(self.x, wall_x, 0.3) + rng.normal(0, 0.01 * L)
            target_angle, target_off = 1.15, 0.12
        else:
            if self.drift == 0.0:
                scale = float(self.dyn["float_drift"]) / FLOAT_DRIFT_MID
                self.drift = rng.choice([-1.0, 1.0]) * rng.uniform(*FLOAT_DRIFT_RANGE) * L * scale
            self.x = float(np.clip(self.x + self.drift * self.dt, min(self.lo, self.x), max(self.hi, self.x)))
            rock = 0.04 * math.sin(self.bal_phase)  # balancing: a slight rocking of the body
            pitch = float(self.dyn["float_pitch"])
            target_angle, target_off = pitch + rock, float_depth(pitch, float(self.dyn["float_depth"]))
        self.angle = self._follow(self.angle, target_angle)
        self.y_off = self._follow(self.y_off, target_off)

    def _step_top(self, label: str, new_bout: bool) -> None:
        rng, L, R = self.rng, self.L, self.R
        cx, cy = self.c.centre
        dx, dy = self.x - cx, self.y - cy
        dist = math.hypot(dx, dy)
        outward = math.atan2(dy, dx)
        if label == "mobile":
            if new_bout:
                self.at_wall = rng.random() < TOP_WALL_SHARE
            if self.at_wall:  # scrabbling at the wall: nose into it, little travel
                self.heading += 0.3 * math.atan2(math.sin(outward - self.heading), math.cos(outward - self.heading))
                self.heading += rng.normal(0, 0.08)
                speed = 0.5 * L if dist < R - 0.8 * L else 0.05 * L
            else:
                self.heading += rng.normal(0, 0.15)
                if dist > R - 1.0 * L:  # steer along the wall, away from it
                    tangent = outward + math.pi / 2 * (1 if math.sin(self.heading - outward) > 0 else -1)
                    self.heading += 0.35 * math.atan2(math.sin(tangent - self.heading), math.cos(tangent - self.heading))
                speed = float(self.dyn["swim_speed"]) * L
        else:
            self.heading += rng.normal(0, 0.005)
            speed = 0.03 * L
        self.x += speed * math.cos(self.heading) * self.dt
        self.y += speed * math.sin(self.heading) * self.dt
        dx, dy = self.x - cx, self.y - cy
        dist = math.hypot(dx, dy)
        limit = R - 0.62 * L
        if dist > limit:
            self.x, self.y = cx + dx * limit / dist, cy + dy * limit / dist

    def _step_drops(self) -> None:
        g = 9.0 * self.L  # gravity in px/s^2 at the mouse's scale
        for d in self.drops:
            d[0] += d[2] * self.dt
            d[1] += d[3] * self.dt
            d[3] += g * self.dt
            d[4] += self.dt
        self.drops = [d for d in self.drops if d[4] < DROPLET_LIFE_S]

    def _splash(self, x: float, y: float, up: bool) -> None:
        """Droplets from a paw breaking the surface, at ``splash_rate_hz`` while it does."""
        if self.rng.random() < float(self.dyn["splash_rate_hz"]) * self.dt:
            for _ in range(int(self.rng.integers(1, 4))):
                vx = self.rng.normal(0, 1.0) * self.L
                vy = -self.rng.uniform(1.0, 3.0) * self.L if up else self.rng.normal(0, 1.0) * self.L
                self.drops.append([x, y, vx, vy, 0.0])

    # -- drawing -------------------------------------------------------------------------------

    @property
    def colours(self) -> MouseColours:
        return MouseColours(self.body, self.limb, self.tail, self.eye)

    def _swings(self) -> list[float]:
        """Angle offsets of the 4 legs (fore near, fore far, hind near, hind far), rad."""
        p, amp = self.phase, float(self.dyn["stroke_amp"])
        if self.label in ("swim",) or (self.label == "mobile" and not self.at_wall):
            return [amp * math.sin(p), amp * math.sin(p + math.pi), amp * math.sin(p + math.pi), amp * math.sin(p)]
        if self.label in ("struggle", "mobile"):
            s = float(self.dyn["struggle_amp"])
            return [s * math.sin(p), s * math.sin(p + 0.8 * math.pi), 0.5 * amp * math.sin(p + 2.0), 0.5 * amp * math.sin(p)]
        bal = float(self.dyn["float_amp"]) * math.sin(self.bal_phase)
        return [0.0, 0.0, bal, 0.3 * bal]

    def draw(self, img: np.ndarray) -> None:
        if self.presence == ABSENT:
            if self.view == "side":
                self._draw_water(img)
            else:
                self._draw_ripples(img)
        elif self.presence == HELD:
            if self.view == "top":
                self._draw_ripples(img)
            self._draw_held(img)
            if self.view == "side":
                self._draw_water(img)
        elif self.view == "side":
            self._draw_side(img)
        else:
            self._draw_top(img)
        if self.hand_depth >= 0:
            self._draw_hand(img)
        for x, y, _, _, age in self.drops:
            grey = SURFACE_GLINT * (1 - 0.5 * age / DROPLET_LIFE_S)
            draw_ellipse(img, (x, y), (0.035 * self.L + 0.4, 0.035 * self.L + 0.4), 0, (grey, grey, grey))
        idx, alpha = self.refl
        if alpha.size:
            img[idx] = (img[idx] * (1 - alpha) + 245.0 * alpha).astype(np.uint8)

    def _draw_side(self, img: np.ndarray, centre: tuple[float, float] | None = None) -> None:
        L, d, th, c = self.L, self.dir, self.angle, self.c
        wave = 0.004 * c.h + 0.02 * c.h * self.energy
        cy = self.water_y + self.y_off * L + 0.3 * wave * math.sin(2 * math.pi * 0.8 * self.t)
        if centre is not None:  # held by the hand: no water under it
            cy = centre[1]
        if self.label == "swim":
            cy += 0.03 * L * math.sin(self.phase)
        elif self.label == "struggle":  # each forepaw stroke heaves the upright body against the wall
            cy += 0.07 * L * math.sin(self.phase)
            th += 0.08 * math.sin(self.phase + 1.0)
        ctr = np.array([self.x if centre is None else centre[0], cy])
        f = np.array([d * math.cos(th), -math.sin(th)])  # nose direction
        n = np.array([d * math.sin(th), math.cos(th)])  # belly direction
        rest = {"swim": (0.0, 0.0), "struggle": (-1.2, 0.2), "float": (0.5, 0.7)}[self.label]
        legs = [(0.28, rest[0]), (0.23, rest[0]), (-0.3, rest[1]), (-0.35, rest[1])]
        sway = (0.5 if self.label == "swim" else 0.1) * math.sin(0.5 * self.phase)
        tips = draw_side_mouse(img, ctr, f, n, L, d, self._swings(), legs, self.colours, sway, self.tail_len)
        if centre is not None:
            return
        self._draw_water(img)
        if self.label == "struggle":  # forepaws breaking the surface throw droplets up
            for tip in (tips[0], tips[2]):  # the far and the near fore leg (drawn in that order)
                if tip[1] < self.water_y + 0.05 * L:
                    self._splash(float(tip[0]), float(self.water_y), up=True)

    def _draw_water(self, img: np.ndarray) -> None:
        """The water in front of the mouse, tinted below the rippling surface (ripples strongest
        near the mouse). Only the band the surface moves in needs a per-pixel test; below it
        one weighted sum tints everything, which keeps this cheap at 1280 px."""
        c, L, xs = self.c, self.L, self.cols
        k = 2 * math.pi / (0.35 * c.w)
        near = np.exp(-np.abs(xs - self.x) / (0.8 * L))
        surface = (self.water_y + 0.004 * c.h * np.sin(k * xs + self.wave_phase + 2 * math.pi * 0.5 * self.t)
                   + 0.02 * c.h * self.energy * (0.4 + 0.6 * near) * np.sin(2.3 * k * xs - 2 * math.pi * 1.2 * self.t))  # fmt: skip
        x0, x1 = int(xs[0]), int(xs[0]) + xs.size
        bottom = int(c.y + c.h)
        top = max(int(c.y), int(math.floor(surface.min())) - 1)
        band_end = min(bottom, int(math.ceil(surface.max())) + 2)
        alpha = 0.3 + 0.55 * float(self.water["turbidity"])
        if band_end < bottom:
            below = img[band_end:bottom, x0:x1]
            if self.fade is None:
                img[band_end:bottom, x0:x1] = cv2.addWeighted(below, 1 - alpha, self.water_img[: bottom - band_end], alpha, 0)
            else:  # deeper rows fade further into the water
                w_img, w_water = (w[band_end - int(c.y) : bottom - int(c.y)] for w in self.fade)
                img[band_end:bottom, x0:x1] = cv2.blendLinear(below, self.water_img[: bottom - band_end], w_img, w_water)
        rows = np.arange(top, band_end, dtype=np.float32)[:, None]
        band = img[top:band_end, x0:x1].astype(np.float32)
        under = (rows > surface[None, :])[..., None]
        band = np.where(under, band * np.float32(1 - alpha) + self.water_bgr * np.float32(alpha), band)
        glint = (np.abs(rows - surface[None, :]) < 0.9)[..., None]
        band = np.where(glint, band * np.float32(0.4) + np.float32(0.6 * SURFACE_GLINT), band)
        img[top:band_end, x0:x1] = band.astype(np.uint8)

    def _draw_ripples(self, img: np.ndarray) -> None:
        if self.energy > 0.01:  # rings spreading from the mouse, fading after a mobile bout
            box = img[self.box]
            xx, yy = self.grid
            r = np.hypot(xx - self.x, yy - self.y)
            ripple = (14.0 * self.energy) * np.sin(2 * math.pi * (r / (0.45 * self.L) - 1.5 * self.t)) * np.exp(-r / (0.9 * self.R))
            m = self.water_mask
            box[m] = np.clip(box[m].astype(np.float32) + ripple[m][:, None], 0, 255).astype(np.uint8)

    def _draw_top(self, img: np.ndarray, centre: tuple[float, float] | None = None, scale: float = 1.0) -> None:
        L = self.L * scale
        if centre is None:
            self._draw_ripples(img)
        ctr = np.array([self.x, self.y] if centre is None else centre)
        sway = (0.45 if self.label == "mobile" else 0.08) * math.sin(0.5 * self.phase)
        tips = draw_top_mouse(img, ctr, self.heading, L, self._swings(), self.colours, sway, self.tail_len)
        if self.label == "mobile" and self.at_wall:  # fore paws scrabbling at the wall splash
            for tip in tips[:2]:
                self._splash(float(tip[0]), float(tip[1]), up=False)


# ----------------------------------------------------------------------------------------------
# the camera


class _Camera:
    """Lighting (level, gradient, drift, flicker, colour, vignette, hot spot, rolling bands),
    shake, defocus, motion blur, interlacing, sensor noise (with the gain of a dim scene and
    signal-dependent shot noise), sensor resolution and an MJPEG stage.

    The widened effects draw from ``look`` (an rng stream of their own) and are skipped at their
    nominal values, so a render with every family nominal is what it was before they existed."""

    def __init__(self, rng: np.random.Generator, lay: Layout, fam: dict[str, dict[str, Any]], fps: float,
                 look: np.random.Generator, static: np.ndarray) -> None:  # fmt: skip
        self.rng, self.lay, self.fps = rng, lay, fps
        light, cap = fam["lighting"], fam["capture"]
        self.light, self.cap = light, cap
        W, H = lay.width, lay.height
        # the widened looks' own draws, all of them whether used or not: one effect's value does
        # not change another's
        spot = look.uniform(0, 1, 2) * (W, H)
        spot_sigma = look.uniform(*HOTSPOT_SIGMA) * max(W, H)
        self.bands = (look.uniform(*BANDS_PER_FRAME), look.uniform(*BAND_BEAT_HZ), look.uniform(0, 2 * math.pi))
        a = math.radians(float(light["gradient_angle_deg"]))
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        ramp = ((xx - W / 2) * math.cos(a) + (yy - H / 2) * math.sin(a)) / max(W, H)
        gain = (float(light["level"]) * (1 + float(light["gradient"]) * ramp)).astype(np.float32)
        if float(light["vignette"]) > 0:  # cos^4-like fall-off, strongest in the corners
            r2 = ((xx - W / 2) ** 2 + (yy - H / 2) ** 2) / ((W / 2) ** 2 + (H / 2) ** 2)
            gain *= (1 - float(light["vignette"]) * r2).astype(np.float32)
        if float(light["hotspot"]) > 0:
            d2 = ((xx - spot[0]) ** 2 + (yy - spot[1]) ** 2) / (2 * spot_sigma**2)
            gain *= (1 + float(light["hotspot"]) * np.exp(-d2)).astype(np.float32)
        # a dim room: the camera's gain makes up part of the loss, and amplifies the noise with it
        boost = (1.0 / min(float(light["level"]), 1.0)) ** float(cap["auto_gain"])
        if boost != 1.0:
            gain *= np.float32(boost)
        cast = float(light["colour_cast"])
        self.gain = cv2.merge([gain * np.float32(1 - cast), gain, gain * np.float32(1 + cast)]) if cast else cv2.merge([gain, gain, gain])
        std = float(cap["noise_std"]) * boost
        shot = None
        if float(cap["shot_noise"]) > 0:  # photon noise: std grows with the light a pixel gets (the static scene's)
            lit = cv2.warpPerspective(static, lay.homography, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            shot = float(cap["shot_noise"]) * boost * np.sqrt(np.maximum(lit.astype(np.float32) * self.gain, 0))
        self.noise = []  # (positive, negative) parts as uint8: saturating adds are the cheapest noise
        for _ in range(NOISE_FRAMES if std > 0 or shot is not None else 0):
            n = rng.normal(0, std, (H, W, 3)) if std > 0 else np.zeros((H, W, 3))
            if shot is not None:
                n += shot * look.standard_normal((H, W, 3), np.float32)
            n = np.clip(np.rint(n), -255, 255).astype(np.int16)
            self.noise.append((np.maximum(n, 0).astype(np.uint8), np.maximum(-n, 0).astype(np.uint8)))
        self.rows = (np.arange(H, dtype=np.float32) / H)[:, None, None]
        self.drift_phase = rng.uniform(0, 2 * math.pi)
        self.shake = np.zeros(2)
        self.prev: np.ndarray | None = None
        self.light_steps: np.random.Generator | None = None  # trials: sudden lighting changes
        self.step_gain, self.step_target = 1.0, 1.0

    def apply(self, canvas: np.ndarray, index: int) -> np.ndarray:
        rng, lay, shake_px = self.rng, self.lay, float(self.cap["shake_px"])
        self.shake = 0.8 * self.shake + rng.normal(0, 0.35 * shake_px, 2)
        dx, dy = np.clip(self.shake, -shake_px, shake_px) if shake_px > 0 else (0.0, 0.0)
        hom = np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]]) @ lay.homography
        frame = cv2.warpPerspective(canvas, hom, (lay.width, lay.height), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        defocus = float(self.cap["defocus_px"]) * lay.width / DEFOCUS_WIDTH_PX
        if defocus >= MIN_DEFOCUS_PX:
            frame = cv2.GaussianBlur(frame, (0, 0), defocus)
        t = index / self.fps
        g = 1.0 + float(self.light["drift"]) * math.sin(2 * math.pi * t / DRIFT_PERIOD_S + self.drift_phase)
        g += float(self.light["flicker"]) * rng.normal()
        if self.light_steps is not None:
            if self.light_steps.random() < LIGHT_STEP_HZ / self.fps:
                self.step_target = float(self.light_steps.uniform(*LIGHT_STEP))
            self.step_gain += (self.step_target - self.step_gain) * (1 - math.exp(-1 / (self.fps * LIGHT_STEP_TAU_S)))
            g *= self.step_gain
        out = cv2.multiply(frame, self.gain, scale=g, dtype=cv2.CV_32F)
        banding = float(self.light["banding"])
        if banding > 0:  # each row is exposed at its own moment of the mains cycle
            per_frame, beat_hz, phase = self.bands
            out *= 1 + banding * np.sin(2 * math.pi * (per_frame * self.rows + beat_hz * t) + phase)
        blur = float(self.cap["motion_blur"])
        if blur > 0 and self.prev is not None:  # the exposure still integrates the last frame's light
            out = cv2.addWeighted(out, 1 - blur, self.prev, blur, 0)
        previous, self.prev = self.prev, out
        weave = float(self.cap["interlace"])
        if weave > 0 and previous is not None:  # odd rows: the field taken half a frame earlier
            out = out.copy()
            out[1::2] = cv2.addWeighted(out[1::2], 1 - weave, previous[1::2], weave, 0)
        out = cv2.convertScaleAbs(out)  # saturating float -> uint8 (values are >= 0)
        if self.noise:
            pos, neg = self.noise[int(rng.integers(len(self.noise)))]
            out = cv2.subtract(cv2.add(out, pos), neg)
        return self._sensor_and_codec(out)

    def _sensor_and_codec(self, out: np.ndarray) -> np.ndarray:
        """A sensor of fewer pixels than the video (upscaled: soft, blotchy noise), then an
        MJPEG stage of a webcam (8x8 blocks) before the H.264 encoder."""
        scale = float(self.cap["downscale"])
        if scale > 1.0:
            h, w = out.shape[:2]
            # bilinear, not area: below 2x it averages the same 2x2 neighbourhood, at a fifth of the cost
            small = cv2.resize(out, (max(2, round(w / scale)), max(2, round(h / scale))), interpolation=cv2.INTER_LINEAR)
            out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        quality = int(self.cap["jpeg_quality"])
        if quality < JPEG_NONE:
            ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok:
                out = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        return out


def render_scene(view: str, classes: Sequence[str], fam: dict[str, dict[str, Any]], labels: Sequence[np.ndarray],
                 fps: float, num_frames: int, seed: int, plan: TrialPlan | None = None,
                 positions: list[list[tuple[float, float]]] | None = None) -> Iterator[np.ndarray]:  # fmt: skip
    """BGR (H, W, 3) uint8 frames before compression, deterministic for the arguments. With a
    trial plan, mice come and go and the empty water and the light have events of their own.

    ``positions``, when given, receives per frame each arena's mouse body centre (x, y) in frame
    pixels, through the camera's homography but without its shake (a pixel or two): the truth a locator is scored on
    (``tools/mouse_locator_check.py``); the simulator itself never reads it."""
    lay = layout(view, fam["geometry"])
    if len(labels) != len(lay.cylinders):
        raise ValueError(f"{len(labels)} label tracks for {len(lay.cylinders)} cylinders")
    static_rng = np.random.default_rng([seed, STATIC_STREAM])
    static = _static_layer(static_rng, lay, fam)
    trials = [None] * len(labels) if plan is None else [
        (plan.state[i], plan.hand[i], np.random.default_rng([seed, TRIAL_STREAM, i])) for i in range(len(labels))]
    mice = [_Mouse(view, classes, c, fam, lab, fps, np.random.default_rng([seed, ARENA_STREAM, i]),
                   _reflections(static_rng, lay, c, fam["cylinder"]), trial)
            for i, (c, lab, trial) in enumerate(zip(lay.cylinders, labels, trials))]  # fmt: skip
    camera = _Camera(np.random.default_rng([seed, CAMERA_STREAM]), lay, fam, fps,
                     np.random.default_rng([seed, LOOK_STREAM]), static)  # fmt: skip
    if plan is not None:
        camera.light_steps = np.random.default_rng([seed, TRIAL_STREAM, 1000])
    for t in range(num_frames):
        canvas = static.copy()
        for m in mice:
            m.step(t)
            m.draw(canvas)
        if positions is not None:
            frame_xy = _apply(lay.homography, np.array([m.centre for m in mice], np.float64))
            positions.append([(float(x), float(y)) for x, y in frame_xy])
        yield camera.apply(canvas, t)
