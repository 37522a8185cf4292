"""The frames of ``export-synth``: its configuration, the labels, and the fixed look's renderer.

What ``export-synth`` writes, and its command line, are :mod:`export.synth`; the contact sheet
(:mod:`export.synth_sheet`) renders through this module too, which is why it is one of its own.

Tests, the demo and CI need labelled FST video that exists on a fresh machine with no download.
This module draws it with OpenCV primitives: one or more transparent cylinders side by side,
each with its own mouse and its own labels, filmed from the side (classes swim / struggle /
float) or from above (mobile / immobile).

What makes the classes learnable, and hard in the right places:

* side view: ``swim`` = the body travels across the cylinder and all four limbs paddle widely;
  ``struggle`` = the body stays almost still, upright against the water, and ONE hind foot moves
  a little; ``float`` = no limb motion, only a slow drift and the bob of the water;
* top view: ``mobile`` = body travels, paws paddle; ``immobile`` = still body, but the ripples
  a mobile bout left on the water keep moving for seconds after it ends (the confusion reported
  for top-view FST), so "anything moves" is not a sufficient rule.

Bout durations are drawn from log-normal distributions with immobility (float / immobile)
becoming more frequent and longer over the video, as in a 6-minute test; the trend is scaled
to the video's length so that short videos still contain every class. Camera noise, slow
lighting changes and a slight shake are applied on top (H.264 compression too, when
:mod:`export.synth` writes the video). Everything is drawn from ``numpy.random.default_rng``
streams derived from the seed, so the labels are exactly reproducible and the frames are
identical (and so is the H.264 file :mod:`export.synth` writes from them, on the same software).

Domain randomization (``--randomize``, ``--held-out FAMILY,...``, ``--fix FAMILY,...``): the look,
the camera and the motion style are drawn from the named families of :mod:`export.synth_families`
and rendered by :mod:`export.synth_scene`; the labels come from the same semi-Markov bouts. The
arenas JSON of such a render also holds ``"randomized": true``, ``"held_out": [...]`` and
``"families": {family: {drawn values}}``; its ROIs are the bounding boxes of the cylinders as the
tilted camera sees them. Without ``--randomize`` the output is exactly what it always was.

Trials (``--trials SPEC``, :mod:`export.synth_trials`): empty cylinders, a hand inserting and
removing mice, several animals per arena; frames without a mouse in the water are unlabelled and
``<name>.trials.json`` holds each trial's arena, animal, start and end.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from export.annotations import SIDE_CLASSES, TOP_CLASSES, Annotation
from export.synth_draw import (
    POSE_TAU_S,
    RIPPLE_RISE_S,
    SHIFT,
    MouseColours,
    draw_ellipse,
    draw_line,
    draw_side_mouse,
    draw_top_mouse,
    pt,
)
from export.synth_families import FAMILIES, draw_families
from stream.errors import UserError
from stream.preprocess import DEFAULT_MODEL_FPS, Roi

__all__ = ["SynthConfig", "SynthResult", "arena_rois", "generate_labels", "render_frames", "resolve", "trial_plan"]

log = logging.getLogger(__name__)

VIEWS = ("side", "top")
CLASSES = {"side": SIDE_CLASSES, "top": TOP_CLASSES}
IMMOBILE = {"side": ["float"], "top": ["immobile"]}
DEFAULT_FPS = DEFAULT_MODEL_FPS  # the bundled model's frame rate
DEFAULT_ARENA_SIZE_PX = 160  # one cylinder; the 112 px model crop keeps limbs a few px wide
MIN_ARENA_SIDE_PX = 32
# Probability that the next bout is immobile, at the start and at the end of the video. The
# trend is stretched over the video's length so a 1-minute clip contains all classes.
IMMOBILE_P_START, IMMOBILE_P_END = 0.2, 0.6
MIN_BOUT_S = 1.0  # shorter bouts are rarely scored by hand and leave no clean 16-frame clip
# log-normal bout durations (median seconds at the start, median at the end, sigma of log)
BOUT_MEDIAN_S = {
    "swim": (3.5, 2.0, 0.45), "struggle": (2.2, 1.5, 0.4), "float": (2.0, 6.0, 0.5),
    "mobile": (4.0, 2.0, 0.45), "immobile": (2.0, 6.0, 0.5),
}  # fmt: skip
BOUT_MAX_S = 30.0
SWIM_VS_STRUGGLE = 0.6  # share of swim among the active side-view bouts
PADDLE_HZ = 3.0  # limb beat; well under the 7.5 Hz Nyquist limit of 15 fps video
RIPPLE_DECAY_S = 3.0  # water keeps moving ~3 s after a mobile bout (it rises in RIPPLE_RISE_S)
NOISE_BANK = 16  # pre-drawn camera-noise frames (drawing fresh Gaussian noise dominates the cost)
DEFAULT_CRF = 23  # x264 quality: limbs stay sharp at ~100 kB per minute and arena
# config fields that, named in ``SynthConfig.pinned``, override what a randomized render draws
PINNABLE = ("fps", "arenas", "width_px", "height_px", "crf")
MAX_RANDOMIZED_ARENAS = 8  # a pinned --arenas beyond the drawn 1-4; more leaves cylinders too small


@dataclass(frozen=True)
class SynthConfig:
    """What to render. Frame size: ``width_px`` x ``height_px`` if given, else arenas of
    ``arena_size_px`` squared side by side."""

    view: str = "side"
    duration_s: float = 60.0
    fps: float = DEFAULT_FPS
    arenas: int = 1
    arena_size_px: int = DEFAULT_ARENA_SIZE_PX
    width_px: int | None = None
    height_px: int | None = None
    seed: int = 0
    name: str = ""  # output file stem; "" = synth_<view>
    crf: int = DEFAULT_CRF
    noise_std: float = 2.5  # camera noise, grey levels
    shake_px: float = 0.7  # camera shake amplitude
    light_change: float = 0.08  # relative amplitude of slow lighting changes
    randomize: bool = False  # draw every family of export.synth_families (else: the legacy look)
    held_out: tuple[str, ...] = ()  # families drawn from their held-out part (randomized only)
    fixed: tuple[str, ...] = ()  # families pinned to their nominal values (randomized only)
    pinned: tuple[str, ...] = ()  # PINNABLE fields whose value here overrides the drawn one
    trials: str = ""  # export.synth_trials SPEC: empty cylinders, insertions, removals, several animals

    def __post_init__(self) -> None:
        for option, names in (("--held-out", self.held_out), ("--fix", self.fixed)):
            bad = [n for n in names if n not in FAMILIES]
            if bad:
                raise UserError(f"{option} {','.join(bad)}: unknown family; expected some of {','.join(FAMILIES)}")
        if (self.held_out or self.fixed) and not self.randomize:
            raise UserError("--held-out and --fix need --randomize")
        if set(self.held_out) & set(self.fixed):
            raise UserError(f"{','.join(sorted(set(self.held_out) & set(self.fixed)))}: both held out and fixed")
        if set(self.pinned) - set(PINNABLE):
            raise ValueError(f"pinned {self.pinned}: only {PINNABLE} can be pinned")
        if self.randomize and self.arenas > MAX_RANDOMIZED_ARENAS:
            raise UserError(f"--arenas {self.arenas}: at most {MAX_RANDOMIZED_ARENAS} with --randomize")
        if self.view not in VIEWS:
            raise UserError(f"--view {self.view!r}: expected one of {', '.join(VIEWS)}")
        if self.trials:
            from export.synth_trials import parse_trials

            try:
                parse_trials(self.trials, len(self.trials.split(";")))
            except ValueError as exc:
                raise UserError(str(exc)) from None
        if not (self.fps > 0 and self.duration_s > 0):
            raise UserError("--fps and the duration must be positive")
        if self.arenas < 1:
            raise UserError("--arenas must be >= 1")
        w, h = self.frame_size
        if w // self.arenas < MIN_ARENA_SIDE_PX or h < MIN_ARENA_SIDE_PX:
            raise UserError(f"arenas of {w // self.arenas}x{h} px are too small; each needs >= {MIN_ARENA_SIDE_PX} px")
        if not 0 <= self.crf <= 51:
            raise UserError("--crf must be in 0..51")

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height), both even (yuv420p halves the chroma planes)."""
        w = self.width_px if self.width_px else self.arena_size_px * self.arenas
        h = self.height_px if self.height_px else self.arena_size_px
        return int(w) // 2 * 2, int(h) // 2 * 2

    @property
    def num_frames(self) -> int:
        return max(1, int(round(self.duration_s * self.fps)))

    @property
    def stem(self) -> str:
        return self.name or f"synth_{self.view}"

    @property
    def classes(self) -> list[str]:
        return list(CLASSES[self.view])

    def rois(self) -> list[Roi]:
        w, h = self.frame_size
        aw = w // self.arenas
        return [Roi(i * aw, 0, aw, h) for i in range(self.arenas)]

    def arena_names(self) -> list[str]:
        return [f"arena{i}" for i in range(self.arenas)]  # stream.arenas names --roi arenas so


@dataclass
class SynthResult:
    video_path: Path
    labels_csv: Path
    boris_csv: Path
    arenas_json: Path
    labels: list[np.ndarray]  # per arena, (num_frames,) int64 into classes
    classes: list[str]
    rois: list[Roi]
    fps: float
    num_frames: int
    render_s: float = 0.0
    extra: dict = field(default_factory=dict)
    trials_json: Path | None = None  # the trials' truth of a --trials render

    def annotations(self) -> list[Annotation]:
        names = [f"arena{i}" for i in range(len(self.labels))] if len(self.labels) > 1 else [None]
        return [Annotation(list(self.classes), lab, self.labels_csv, n, self.fps, self.video_path.name)
                for lab, n in zip(self.labels, names)]  # fmt: skip


# ----------------------------------------------------------------------------------------------
# labels


def _rng(cfg: SynthConfig, *stream: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, *stream])


def _arena_labels(cfg: SynthConfig, arena: int) -> np.ndarray:
    """Semi-Markov bout sequence; depends only on seed, view, arena, duration and fps."""
    return _bout_labels(cfg, cfg.num_frames, _rng(cfg, arena, 0))


def _bout_labels(cfg: SynthConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` frames of bouts (one test, or one trial), immobility growing over them."""
    classes = cfg.classes
    labels = np.empty(n, dtype=np.int64)
    t = 0
    current = classes[0]  # mice start the test swimming
    while t < n:
        progress = t / n
        lo, hi, sigma = BOUT_MEDIAN_S[current]
        median = lo + (hi - lo) * progress
        dur_s = float(np.clip(median * math.exp(sigma * rng.standard_normal()), MIN_BOUT_S, BOUT_MAX_S))
        length = max(1, int(round(dur_s * cfg.fps)))
        labels[t : t + length] = classes.index(current)
        t += length
        p_imm = IMMOBILE_P_START + (IMMOBILE_P_END - IMMOBILE_P_START) * min(t / n, 1.0)
        if cfg.view == "side":
            weights = {"swim": (1 - p_imm) * SWIM_VS_STRUGGLE, "struggle": (1 - p_imm) * (1 - SWIM_VS_STRUGGLE), "float": p_imm}
        else:
            weights = {"mobile": 1 - p_imm, "immobile": p_imm}
        weights.pop(current)
        names = list(weights)
        w = np.array([weights[k] for k in names])
        current = names[int(rng.choice(len(names), p=w / w.sum()))]
    return labels


def generate_labels(cfg: SynthConfig) -> list[np.ndarray]:
    """Per-arena label arrays, exactly what ``render_video`` writes. The config is resolved
    first: a randomized render draws its fps and number of arenas, a ``--trials`` one its length."""
    cfg, _ = resolve(cfg)  # idempotent: a resolved config resolves to itself
    if cfg.trials:
        from export.synth_trials import trial_labels

        plan = trial_plan(cfg)
        return [trial_labels(plan, a, lambda trial, n: _bout_labels(cfg, n, _rng(cfg, a, 0, 1 + trial.trial_index)))
                for a in range(cfg.arenas)]  # fmt: skip
    return [_arena_labels(cfg, a) for a in range(cfg.arenas)]


def trial_plan(cfg: SynthConfig):
    from export.synth_trials import parse_trials, plan_trials

    return plan_trials(parse_trials(cfg.trials, cfg.arenas), cfg.fps, cfg.num_frames, cfg.arena_names())


# ----------------------------------------------------------------------------------------------
# drawing


class _Arena:
    """State and drawing of one cylinder and its mouse."""

    def __init__(self, cfg: SynthConfig, index: int, roi: Roi, labels: np.ndarray) -> None:
        self.cfg = cfg
        self.view = cfg.view
        self.labels = labels
        self.w, self.h = roi.w, roi.h
        self.dt = 1.0 / cfg.fps
        rng = _rng(cfg, index, 1)
        self.rng = rng
        dark = rng.random() < 0.5
        base = rng.uniform(30, 60) if dark else rng.uniform(200, 232)
        tint = rng.uniform(-8, 8, 3)
        self.body_color = tuple(float(np.clip(base + t, 0, 255)) for t in tint)
        self.limb_color = tuple(float(np.clip(c * (0.85 if not dark else 1.25), 0, 255)) for c in self.body_color)
        self.tail_color = (150.0, 160.0, 200.0) if not dark else (55.0, 60.0, 75.0)
        self.eye_color = (20.0, 20.0, 30.0) if not dark else (120.0, 120.0, 140.0)
        self.colours = MouseColours(self.body_color, self.limb_color, self.tail_color, self.eye_color,
                                    nose=(140, 140, 190))
        self.water_color = np.array([rng.uniform(150, 185), rng.uniform(135, 160), rng.uniform(100, 130)], np.float32)
        unit = min(self.w, self.h)
        self.paddle_hz = PADDLE_HZ * rng.uniform(0.9, 1.1)
        self.energy = 0.0  # water agitation, 0..1
        self.t = 0.0
        self.phase = 0.0
        if self.view == "side":
            self.x_left, self.x_right = 0.1 * self.w, 0.9 * self.w
            self.water_y = 0.42 * self.h
            self.length = rng.uniform(0.30, 0.38) * (self.x_right - self.x_left)
            self.x = rng.uniform(self.x_left + self.length, self.x_right - self.length)
            self.dir = 1.0 if rng.random() < 0.5 else -1.0
            self.angle = 0.25
            self.y_off = 0.08
            self.drift = 0.0
            self.wave_phase = rng.uniform(0, 2 * math.pi)
        else:
            self.cx, self.cy = self.w / 2, self.h / 2
            self.radius = 0.46 * unit
            self.length = rng.uniform(0.30, 0.38) * self.radius
            a = rng.uniform(0, 2 * math.pi)
            self.x = self.cx + 0.3 * self.radius * math.cos(a)
            self.y = self.cy + 0.3 * self.radius * math.sin(a)
            self.heading = rng.uniform(-math.pi, math.pi)
            yy, xx = np.mgrid[0 : self.h, 0 : self.w].astype(np.float32)
            self.grid = (xx, yy)
            self.water_mask = (xx - self.cx) ** 2 + (yy - self.cy) ** 2 <= (self.radius - 2) ** 2
        self.leg_angles = np.zeros(4)
        self.background = self._background(rng)

    # -- static scenery ------------------------------------------------------------------------

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        h, w = self.h, self.w
        grey = rng.uniform(110, 170)
        ramp = np.linspace(-15, 15, h, dtype=np.float32)[:, None, None]
        bg = np.clip(np.full((h, w, 3), grey, np.float32) + ramp, 0, 255)
        if self.view == "side":
            xl, xr = self.x_left, self.x_right
            bg[:, int(xl) : int(xr)] *= 1.06  # the clear plastic brightens what is behind it
            bg = bg.astype(np.uint8)
            top, bottom = int(0.05 * h), int(0.96 * h)
            for x in (xl, xr):
                draw_line(bg, (x, top), (x, bottom), (70, 70, 75), max(1.5, 0.012 * w))
            # specular reflections of the room on the curved wall: bright vertical stripes
            for x in (xl + 0.04 * w, xr - 0.06 * w, xl + 0.12 * w):
                overlay = bg.copy()
                draw_line(overlay, (x, top + 2), (x, bottom - 2), (245, 245, 245), max(1.0, 0.02 * w))
                bg = cv2.addWeighted(overlay, 0.35, bg, 0.65, 0)
            draw_ellipse(bg, ((xl + xr) / 2, bottom), ((xr - xl) / 2, 0.03 * h), 0, (80, 80, 85), 1)
            draw_ellipse(bg, ((xl + xr) / 2, top), ((xr - xl) / 2, 0.03 * h), 0, (90, 90, 95), 1)
        else:
            bg = bg.astype(np.uint8)
            draw_ellipse(bg, (self.cx, self.cy), (self.radius, self.radius), 0, tuple(float(c) for c in self.water_color))
            draw_ellipse(bg, (self.cx, self.cy), (self.radius, self.radius), 0, (215, 215, 220), max(2, int(0.03 * w)))
            # a window's reflection on the water and the rim
            cv2.ellipse(bg, pt(self.cx, self.cy), pt(0.8 * self.radius, 0.8 * self.radius), 0, 200, 245,
                        (235, 235, 235), max(1, int(0.02 * w)), cv2.LINE_AA, SHIFT)  # fmt: skip
        return bg

    # -- motion --------------------------------------------------------------------------------

    def _follow(self, current: float, target: float) -> float:
        return current + (target - current) * (1 - math.exp(-self.dt / POSE_TAU_S))

    def step(self, frame_index: int) -> None:
        label = self.cfg.classes[int(self.labels[frame_index])]
        mobile = label in ("swim", "mobile")
        rate = RIPPLE_RISE_S if mobile else RIPPLE_DECAY_S
        self.energy += ((1.0 if mobile else 0.0) - self.energy) * (1 - math.exp(-self.dt / rate))
        self.t += self.dt
        self.phase += 2 * math.pi * self.paddle_hz * self.dt
        self.label = label
        if self.view == "side":
            self._step_side(label)
        else:
            self._step_top(label)

    def _step_side(self, label: str) -> None:
        rng, L = self.rng, self.length
        lo, hi = self.x_left + 0.75 * L, self.x_right - 0.75 * L
        if label == "swim":
            self.x += self.dir * 1.3 * L * self.dt
            if not lo <= self.x <= hi:
                self.x = float(np.clip(self.x, lo, hi))
                self.dir = -self.dir
            target_angle, target_off = 0.25, 0.06
            self.drift = 0.0
        elif label == "struggle":
            target_angle, target_off = 1.0, 0.12
            self.x += rng.normal(0, 0.004 * L)
        else:
            if self.drift == 0.0:
                self.drift = rng.choice([-1.0, 1.0]) * rng.uniform(0.02, 0.05) * L
            self.x = float(np.clip(self.x + self.drift * self.dt, lo, hi))
            target_angle, target_off = 0.12, 0.1
        self.angle = self._follow(self.angle, target_angle)
        self.y_off = self._follow(self.y_off, target_off)

    def _step_top(self, label: str) -> None:
        rng, L, R = self.rng, self.length, self.radius
        dx, dy = self.x - self.cx, self.y - self.cy
        dist = math.hypot(dx, dy)
        if label == "mobile":
            self.heading += rng.normal(0, 0.15)
            if dist > R - 1.0 * L:  # steer along the wall, away from it
                tangent = math.atan2(dy, dx) + math.pi / 2 * (1 if math.sin(self.heading - math.atan2(dy, dx)) > 0 else -1)
                self.heading += 0.35 * math.atan2(math.sin(tangent - self.heading), math.cos(tangent - self.heading))
            speed = 1.2 * L
        else:
            self.heading += rng.normal(0, 0.005)
            speed = 0.03 * L
        self.x += speed * math.cos(self.heading) * self.dt
        self.y += speed * math.sin(self.heading) * self.dt
        dx, dy = self.x - self.cx, self.y - self.cy
        dist = math.hypot(dx, dy)
        limit = R - 0.75 * L
        if dist > limit:
            self.x, self.y = self.cx + dx * limit / dist, self.cy + dy * limit / dist

    # -- rendering -----------------------------------------------------------------------------

    def render(self) -> np.ndarray:
        img = self.background.copy()
        if self.view == "side":
            self._render_side(img)
        else:
            self._render_top(img)
        return img

    def _leg_swings(self) -> list[float]:
        """Angle offsets of the 4 legs (fore near, fore far, hind near, hind far)."""
        p = self.phase
        if self.label in ("swim", "mobile"):
            return [0.9 * math.sin(p), 0.9 * math.sin(p + math.pi), 0.9 * math.sin(p + math.pi), 0.9 * math.sin(p)]
        if self.label == "struggle":
            return [0.0, 0.0, 0.3 * math.sin(0.7 * p), 0.0]  # one hind foot moves slightly
        return [0.0, 0.0, 0.0, 0.0]

    def _render_side(self, img: np.ndarray) -> None:
        L, d, th = self.length, self.dir, self.angle
        wave_amp = 0.004 * self.h + 0.02 * self.h * self.energy
        cy = self.water_y + self.y_off * L + 0.3 * wave_amp * math.sin(2 * math.pi * 0.8 * self.t)
        if self.label == "swim":
            cy += 0.03 * L * math.sin(self.phase)
        c = np.array([self.x, cy])
        f = np.array([d * math.cos(th), -math.sin(th)])  # nose direction
        n = np.array([d * math.sin(th), math.cos(th)])  # belly direction
        ang = math.degrees(math.atan2(f[1], f[0]))
        rest = {"swim": (0.0, 0.0), "struggle": (-1.3, 0.4), "float": (0.5, 0.7)}[self.label]
        legs = [(0.25, rest[0]), (0.2, rest[0]), (-0.3, rest[1]), (-0.35, rest[1])]
        sway = (0.5 if self.label == "swim" else 0.1) * math.sin(0.5 * self.phase)
        draw_side_mouse(img, c, f, n, L, d, self._leg_swings(), legs, self.colours, sway)
        # reflection of the mouse on the nearest wall
        wall = self.x_left if self.x - self.x_left < self.x_right - self.x else self.x_right
        if abs(self.x - wall) < 1.2 * L:
            overlay = img.copy()
            mirrored = np.array([2 * wall - c[0], c[1]])
            draw_ellipse(overlay, mirrored, (0.5 * L, 0.2 * L), 180 - ang, self.body_color)
            x0, x1 = (0, int(wall)) if wall == self.x_left else (int(wall) + 1, self.w)
            img[:, x0:x1] = cv2.addWeighted(overlay[:, x0:x1], 0.25, img[:, x0:x1], 0.75, 0)
        # water: everything below the (rippling) surface between the walls is tinted
        xs = np.arange(self.w, dtype=np.float32)
        k = 2 * math.pi / (0.35 * self.w)
        surface = (self.water_y + wave_amp * np.sin(k * xs - 2 * math.pi * 1.2 * self.t + self.wave_phase)
                   + 0.4 * wave_amp * np.sin(2.3 * k * xs + 2 * math.pi * 0.7 * self.t))  # fmt: skip
        xl, xr = int(self.x_left) + 1, int(self.x_right)
        rows = np.arange(self.h, dtype=np.float32)[:, None]
        under = (rows > surface[None, xl:xr]) & (rows < 0.96 * self.h)
        region = img[:, xl:xr].astype(np.float32)
        region[under] = region[under] * 0.62 + self.water_color * 0.38
        surface_line = (np.abs(rows - surface[None, xl:xr]) < 0.9)
        region[surface_line] = region[surface_line] * 0.4 + 235 * 0.6
        img[:, xl:xr] = region.astype(np.uint8)

    def _render_top(self, img: np.ndarray) -> None:
        L = self.length
        if self.energy > 0.01:  # ripples spreading from the mouse, fading after a mobile bout
            xx, yy = self.grid
            r = np.hypot(xx - self.x, yy - self.y)
            ripple = (14.0 * self.energy) * np.sin(2 * math.pi * (r / (0.45 * L) - 1.5 * self.t)) * np.exp(-r / (0.9 * self.radius))
            m = self.water_mask
            img[m] = np.clip(img[m].astype(np.float32) + ripple[m][:, None], 0, 255).astype(np.uint8)
        sway = (0.45 if self.label == "mobile" else 0.08) * math.sin(0.5 * self.phase)
        draw_top_mouse(img, np.array([self.x, self.y]), self.heading, L, self._leg_swings(), self.colours, sway)


class _Camera:
    """Whole-frame effects: slow lighting changes, slight shake, sensor noise."""

    def __init__(self, cfg: SynthConfig) -> None:
        rng = _rng(cfg, 10_000)
        self.cfg = cfg
        self.rng = rng
        w, h = cfg.frame_size
        self.noise = [np.clip(rng.normal(0, cfg.noise_std, (h, w, 1)), -127, 127).astype(np.int16)
                      for _ in range(NOISE_BANK)]  # fmt: skip
        self.light_phases = rng.uniform(0, 2 * math.pi, 2)
        self.shake = np.zeros(2)

    def apply(self, frame: np.ndarray, index: int) -> np.ndarray:
        cfg, rng = self.cfg, self.rng
        t = index / cfg.fps
        gain = 1.0 + cfg.light_change * (0.7 * math.sin(2 * math.pi * t / 23.0 + self.light_phases[0])
                                         + 0.3 * math.sin(2 * math.pi * t / 7.0 + self.light_phases[1]))  # fmt: skip
        gain += rng.normal(0, 0.004)  # mains flicker
        self.shake = 0.8 * self.shake + rng.normal(0, 0.35 * cfg.shake_px, 2)
        dx, dy = np.clip(self.shake, -cfg.shake_px, cfg.shake_px)
        if cfg.shake_px > 0:
            m = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
            frame = cv2.warpAffine(frame, m, (frame.shape[1], frame.shape[0]), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT)  # fmt: skip
        out = frame.astype(np.int16) * np.float32(gain)
        if cfg.noise_std > 0:
            out += self.noise[int(rng.integers(NOISE_BANK))]
        return np.clip(out, 0, 255).astype(np.uint8)


def resolve(cfg: SynthConfig) -> tuple[SynthConfig, dict[str, dict] | None]:
    """The config actually rendered and, for a randomized one, every family's drawn values.

    A randomized render draws its frame size, cylinder count, fps and crf; the returned config
    carries them (so labels, frame counts and outputs follow), except where ``cfg.pinned`` keeps
    the caller's value, in which case the families record the pinned value instead."""
    if not cfg.randomize and not cfg.trials:
        return cfg, None
    from export.synth_families import FAMILY_NAMES
    from export.synth_scene import frame_size_of

    # trials without --randomize: the scene renderer with every family at its nominal look
    fam = draw_families(cfg.seed, cfg.held_out, cfg.fixed if cfg.randomize else FAMILY_NAMES)
    geo, cap = fam["geometry"], fam["capture"]
    pinned = set(cfg.pinned) | (set() if cfg.randomize else {"fps", "arenas", "crf"})
    if cfg.trials and ";" in cfg.trials:  # one pattern per arena sets the number of arenas
        patterns = cfg.trials.count(";") + 1
        if "arenas" in cfg.pinned and cfg.arenas != patterns:
            raise UserError(f"--trials has {patterns} patterns but --arenas is {cfg.arenas}")
        cfg = replace(cfg, arenas=patterns)
        pinned.add("arenas")
    if "fps" in pinned:
        cap["fps"] = float(cfg.fps)
    if "crf" in pinned:
        cap["crf"] = int(cfg.crf)
    if "arenas" in pinned:
        geo["cylinders"] = int(cfg.arenas)
    if "width_px" in pinned and cfg.width_px:
        geo["width_px"] = int(cfg.width_px)
    if "height_px" in pinned and cfg.height_px:
        geo["aspect"] = geo["width_px"] / int(cfg.height_px)
    w, h = frame_size_of(geo)
    eff = replace(cfg, fps=float(cap["fps"]), crf=int(cap["crf"]), arenas=int(geo["cylinders"]), width_px=w, height_px=h)
    if cfg.trials:
        from export.synth_trials import parse_trials, total_s

        eff = replace(eff, duration_s=total_s(parse_trials(cfg.trials, eff.arenas)))
    small = [r for r in arena_rois(eff, fam) if min(r.w, r.h) < MIN_ARENA_SIDE_PX]
    if small:
        raise UserError(f"{eff.arenas} cylinders in {w}x{h} px leave arenas of {small[0].w}x{small[0].h} px; "
                        f"each needs >= {MIN_ARENA_SIDE_PX} px (fewer --arenas or a larger --width)")  # fmt: skip
    return eff, fam


def arena_rois(cfg: SynthConfig, fam: dict[str, dict] | None = None) -> list[Roi]:
    """Each arena's ROI, as written to the arenas JSON (the drawn layout of a randomized render)."""
    if fam is None and (cfg.randomize or cfg.trials):
        cfg, fam = resolve(cfg)
    if fam is None:
        return cfg.rois()
    from export.synth_scene import layout

    return list(layout(cfg.view, fam["geometry"]).rois)


def render_frames(cfg: SynthConfig, labels: list[np.ndarray] | None = None,
                  positions: list[list[tuple[float, float]]] | None = None) -> Iterator[np.ndarray]:
    """The BGR (H, W, 3) uint8 frames before compression, deterministic for ``cfg``.

    ``positions`` (randomized scenes only) receives each frame's mouse centres, one (x, y) per arena."""
    if cfg.randomize or cfg.trials:
        from export.synth_scene import render_scene

        eff, fam = resolve(cfg)
        labels = labels if labels is not None else generate_labels(eff)
        plan = trial_plan(eff) if eff.trials else None
        yield from render_scene(eff.view, eff.classes, fam, labels, eff.fps, eff.num_frames, eff.seed, plan, positions)
        return
    if positions is not None:
        raise ValueError("mouse positions are recorded for randomized scenes only (--randomize)")
    labels = labels if labels is not None else generate_labels(cfg)
    rois = cfg.rois()
    arenas = [_Arena(cfg, i, roi, labels[i]) for i, roi in enumerate(rois)]
    camera = _Camera(cfg)
    w, h = cfg.frame_size
    for t in range(cfg.num_frames):
        frame = np.zeros((h, w, 3), np.uint8)
        frame[:] = 90  # separators between cylinders (wider frames than arenas*size)
        for arena, roi in zip(arenas, rois):
            arena.step(t)
            frame[roi.y : roi.y + roi.h, roi.x : roi.x + roi.w] = arena.render()
        yield camera.apply(frame, t)
