"""Domain-randomization families of the simulator: every range ``export-synth --randomize`` draws from.

Why families: a model trained on one look of the simulator learns that look (issue 15: the first
bundled model called nearly every frame of another renderer ``float``). Randomizing every aspect of
the picture that a real lab varies (camera, rig, mouse strain, water, room, light, capture) and
keeping the behaviour in the MOTION forces a model to learn the motion. Grouping the parameters
into named families lets an evaluation hold a whole family out ("does it transfer to an unseen
background / mouse colour / geometry?") and lets a user pin one family to its nominal look.

Every parameter is a :class:`Split`: a TRAIN part, a disjoint HELD-OUT part, and the nominal
value used when the family is fixed (``--fix``). A few parameters carry no appearance that could
leak between the parts (a gradient's direction, the number of cylinders); they are ``shared``
(same range in both parts) and marked so in ``--list-families``. Every family has at least one
split parameter.

All ranges live in this module, one frozen dataclass per family. Drawn values are plain
JSON-serialisable dicts; they go verbatim into ``<name>.arenas.json`` under ``"families"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

__all__ = [
    "Choice",
    "FAMILIES",
    "FAMILY_NAMES",
    "FLOAT_DRIFT_MAX_OF_SWIM",
    "MOUSE_COLOURS_BGR",
    "PARTS",
    "Range",
    "Split",
    "WATER_COLOURS_BGR",
    "BACKGROUND_TEXTURES",
    "describe_families",
    "draw_families",
    "draw_family",
    "parse_family_list",
]

PARTS = ("train", "held_out", "nominal")

# Coat colours as BGR (OpenCV order). Agouti is the wild-type brown-grey of C57-background
# mixed strains; held out together with brown so "an unseen strain" is a test.
MOUSE_COLOURS_BGR: dict[str, tuple[int, int, int]] = {
    "black": (38, 34, 32),  # C57BL/6
    "white": (222, 228, 232),  # albino BALB/c, CD-1, Swiss
    "grey": (128, 126, 124),
    "agouti": (72, 96, 118),
    "brown": (42, 70, 112),
}
# Water tints as BGR, seen against a light cylinder floor.
WATER_COLOURS_BGR: dict[str, tuple[int, int, int]] = {
    "clear": (196, 190, 180),
    "blue": (190, 160, 120),
    "grey": (160, 160, 158),
    "green": (140, 170, 130),
    "brown": (110, 140, 160),
    "milky": (215, 215, 212),
}
BACKGROUND_TEXTURES = ("flat", "gradient", "noise", "tiles", "stripes", "checker", "wood")


@dataclass(frozen=True)
class Range:
    """A closed interval; ``integer`` draws whole numbers; ``signed`` draws a magnitude in the
    interval and a random sign (a tilt of 3 degrees either way)."""

    lo: float
    hi: float
    integer: bool = False
    signed: bool = False

    def draw(self, rng: np.random.Generator) -> float | int:
        if self.integer:
            v: float | int = int(rng.integers(int(self.lo), int(self.hi) + 1))
        else:
            v = float(rng.uniform(self.lo, self.hi))
        if self.signed and rng.random() < 0.5:
            v = -v
        return v

    def contains(self, value: Any) -> bool:
        v = abs(value) if self.signed else value
        return isinstance(v, (int, float)) and self.lo <= v <= self.hi

    def overlaps(self, other: Range | Choice) -> bool:
        return isinstance(other, Range) and not (self.hi < other.lo or other.hi < self.lo)

    def describe(self) -> str:
        fmt = (lambda x: f"{int(x)}") if self.integer else (lambda x: f"{x:g}")
        return ("+-" if self.signed else "") + f"{fmt(self.lo)}..{fmt(self.hi)}"


@dataclass(frozen=True)
class Choice:
    """One of a few named or numeric options, drawn uniformly."""

    options: tuple[Any, ...]

    def draw(self, rng: np.random.Generator) -> Any:
        v = self.options[int(rng.integers(len(self.options)))]
        return v.item() if isinstance(v, np.generic) else v

    def contains(self, value: Any) -> bool:
        return any(value == o or (isinstance(o, float) and isinstance(value, float) and math.isclose(o, value))
                   for o in self.options)  # fmt: skip

    def overlaps(self, other: Range | Choice) -> bool:
        return isinstance(other, Choice) and any(other.contains(o) for o in self.options)

    def describe(self) -> str:
        return "{" + ", ".join(f"{o:g}" if isinstance(o, float) else str(o) for o in self.options) + "}"


@dataclass(frozen=True)
class Split:
    """One parameter: what training may see, what is held out (``None``: shared, the train range
    in both parts), and the nominal value of a fixed family."""

    train: Range | Choice
    held_out: Range | Choice | None
    nominal: Any

    def part(self, name: str) -> Range | Choice | None:
        if name == "train" or (name == "held_out" and self.held_out is None):
            return self.train
        if name == "held_out":
            return self.held_out
        return None  # nominal: a constant

    def draw(self, rng: np.random.Generator, part: str) -> Any:
        space = self.part(part)
        return self.nominal if space is None else space.draw(rng)

    @property
    def is_split(self) -> bool:
        return self.held_out is not None


# ----------------------------------------------------------------------------------------------
# the families: one frozen dataclass each, its fields are its parameters


@dataclass(frozen=True)
class Geometry:
    """Frame and rig geometry: resolution, aspect, how many cylinders, how big, where, and the
    camera's tilt (pitch/yaw: perspective keystone; roll: in-plane rotation)."""

    width_px: Split = Split(Range(320, 900, integer=True), Range(901, 1280, integer=True), 640)
    aspect: Split = Split(Choice((4 / 3, 16 / 9)), Choice((1.0, 3 / 2)), 4 / 3)  # width / height
    cylinders: Split = Split(Range(1, 4, integer=True), None, 2)  # shared: a count has no look
    fill: Split = Split(Range(0.62, 0.82), Range(0.83, 0.95), 0.75)  # cylinder width / its slot
    cylinder_aspect: Split = Split(Range(1.15, 1.6), Range(1.61, 2.0), 1.4)  # side view: height / width
    margin: Split = Split(Range(0.03, 0.1), Range(0.11, 0.18), 0.05)  # frame border, fraction of size
    jitter: Split = Split(Range(0.0, 1.0), None, 0.5)  # where in its slot a cylinder sits (shared)
    pitch_deg: Split = Split(Range(0.0, 6.0, signed=True), Range(6.5, 11.0, signed=True), 0.0)
    yaw_deg: Split = Split(Range(0.0, 5.0, signed=True), Range(5.5, 9.0, signed=True), 0.0)
    roll_deg: Split = Split(Range(0.0, 2.0, signed=True), Range(2.5, 4.0, signed=True), 0.0)


@dataclass(frozen=True)
class Mouse:
    """Coat colour, size (body length as a fraction of the cylinder's width or radius) and tail."""

    colour: Split = Split(Choice(("black", "white", "grey")), Choice(("agouti", "brown")), "black")
    length: Split = Split(Range(0.26, 0.34), Range(0.35, 0.41), 0.3)
    tail_length: Split = Split(Range(0.75, 1.0), Range(1.05, 1.25), 0.9)  # of the body length
    tint: Split = Split(Range(-8.0, 8.0), Range(9.0, 16.0, signed=True), 0.0)  # grey-level offset of the coat


@dataclass(frozen=True)
class Water:
    """Water tint, level (surface as a fraction of the cylinder's height from its rim),
    turbidity (how much the water hides what is under the surface) and how fast it hides what
    lies deeper."""

    colour: Split = Split(Choice(("clear", "blue", "grey")), Choice(("green", "brown", "milky")), "clear")
    level: Split = Split(Range(0.3, 0.44), Range(0.46, 0.56), 0.38)
    turbidity: Split = Split(Range(0.15, 0.45), Range(0.5, 0.7), 0.3)
    # side view: extra opacity per body length below the surface (deeper parts of a floating
    # mouse fade into the water); 0 = the turbidity's tint at every depth
    depth_fade: Split = Split(Range(0.0, 0.8), Range(1.0, 1.6), 0.0)


@dataclass(frozen=True)
class Cylinder:
    """The clear plastic cylinder: wall darkness and thickness, specular reflections of the room."""

    wall_grey: Split = Split(Range(40.0, 110.0), Range(115.0, 170.0), 70.0)
    wall_width: Split = Split(Range(0.008, 0.02), Range(0.022, 0.035), 0.012)  # of the cylinder width
    reflections: Split = Split(Range(1, 3, integer=True), Range(4, 5, integer=True), 2)
    reflection_strength: Split = Split(Range(0.12, 0.3), Range(0.32, 0.45), 0.25)
    brighten: Split = Split(Range(1.0, 1.08), Range(0.9, 0.98), 1.05)  # what is seen through the plastic


@dataclass(frozen=True)
class Background:
    """The room behind (side) or the table under (top) the cylinders: texture, brightness, clutter."""

    texture: Split = Split(Choice(("flat", "gradient", "noise", "tiles")), Choice(("stripes", "checker", "wood")), "flat")
    grey: Split = Split(Range(80.0, 165.0), Range(170.0, 215.0), 140.0)
    tint: Split = Split(Range(0.0, 10.0, signed=True), Range(12.0, 25.0, signed=True), 0.0)  # blue-red shift
    clutter: Split = Split(Range(0, 2, integer=True), Range(3, 6, integer=True), 0)  # objects in the room
    texture_scale: Split = Split(Range(0.03, 0.1), Range(0.11, 0.2), 0.05)  # of the frame width


@dataclass(frozen=True)
class Lighting:
    """Overall level, a spatial gradient (a lamp to one side), slow drift and mains flicker;
    coloured light, vignetting, a lamp's hot spot and rolling-shutter flicker bands. The held-out
    part is the dim, uneven, strongly coloured and flickering end (the weakest held-out family of
    the first randomized side model); the train part reaches over-exposure on the other side."""

    level: Split = Split(Range(0.82, 1.3), Range(0.55, 0.78), 1.0)  # gain; above ~1.15 light coats clip
    gradient: Split = Split(Range(0.0, 0.25), Range(0.28, 0.45), 0.0)  # gain difference across the frame
    gradient_angle_deg: Split = Split(Range(0.0, 360.0), None, 0.0)  # shared: a direction has no look
    drift: Split = Split(Range(0.0, 0.08), Range(0.09, 0.15), 0.05)  # slow gain change (~20 s period)
    flicker: Split = Split(Range(0.0, 0.015), Range(0.02, 0.04), 0.004)  # frame-to-frame gain jitter
    colour_cast: Split = Split(Range(0.0, 0.1, signed=True), Range(0.12, 0.22, signed=True), 0.0)  # red vs blue gain: tungsten / LED
    vignette: Split = Split(Range(0.0, 0.3), Range(0.35, 0.6), 0.0)  # gain lost in the frame's corners
    hotspot: Split = Split(Range(0.0, 0.3), Range(0.35, 0.6), 0.0)  # extra gain at the centre of a lamp's spot
    banding: Split = Split(Range(0.0, 0.03), Range(0.04, 0.08), 0.0)  # mains flicker read out row by row: rolling bands


@dataclass(frozen=True)
class Dynamics:
    """How the mouse moves inside the paper's behaviour definitions: stroke rate and amplitude,
    swim speed, struggle amplitude at the wall, float balancing, splashes, ripple decay, and how
    a floating mouse lies in the water (pitch, depth) and drifts."""

    stroke_hz: Split = Split(Range(2.4, 3.8), Range(3.9, 4.8), 3.0)  # limb beat (< fps/2 at 15 fps)
    stroke_amp: Split = Split(Range(0.8, 1.05), Range(1.08, 1.25), 0.9)  # limb swing, rad
    swim_speed: Split = Split(Range(0.8, 1.4), Range(1.45, 1.9), 1.2)  # body lengths per second
    struggle_amp: Split = Split(Range(1.0, 1.3), Range(1.32, 1.55), 1.15)  # forepaw stroke, rad
    float_amp: Split = Split(Range(0.1, 0.18), Range(0.19, 0.26), 0.14)  # balancing paddle, rad
    float_hz: Split = Split(Range(0.4, 0.9), Range(0.95, 1.3), 0.6)  # balancing paddle rate
    ripple_decay_s: Split = Split(Range(2.0, 3.8), Range(4.0, 6.0), 3.0)  # water moves on after a bout
    splash_rate_hz: Split = Split(Range(2.0, 5.0), Range(5.5, 8.0), 3.0)  # droplets while struggling
    # side view, float posture: real floating mice lie anywhere from nearly flat to upright, most
    # of the body under water, and drift passively. Held out: upright, deep floaters
    float_pitch: Split = Split(Range(0.05, 0.8), Range(0.85, 1.2), 0.15)  # body axis above horizontal, rad
    float_depth: Split = Split(Range(0.1, 0.3), Range(0.32, 0.5), 0.1)  # body centre below the surface, body lengths
    float_drift: Split = Split(Range(0.01, 0.08), Range(0.09, 0.13), 0.035)  # passive drift, body lengths per second


@dataclass(frozen=True)
class Capture:
    """The camera and encoder: frame rate, sensor noise, motion blur, shake, H.264 quality; the
    camera's gain in a dim room (its noise grows with it), signal-dependent noise, defocus, a
    sensor of lower resolution than the video, interlacing and an MJPEG stage before H.264."""

    fps: Split = Split(Choice((12.0, 15.0, 20.0, 30.0)), Choice((24.0, 25.0)), 15.0)
    noise_std: Split = Split(Range(0.5, 3.5), Range(4.0, 7.0), 2.0)  # grey levels
    motion_blur: Split = Split(Range(0.0, 0.35), Range(0.4, 0.6), 0.0)  # share of the previous frame
    shake_px: Split = Split(Range(0.0, 0.8), Range(0.9, 1.5), 0.5)
    crf: Split = Split(Range(18, 27, integer=True), Range(28, 32, integer=True), 23)
    auto_gain: Split = Split(Range(0.0, 0.5), Range(0.6, 1.0), 0.0)  # share of a dim scene's loss the gain makes up
    shot_noise: Split = Split(Range(0.0, 0.2), Range(0.25, 0.4), 0.0)  # noise std per sqrt(grey level)
    defocus_px: Split = Split(Range(0.0, 0.9), Range(1.0, 1.5), 0.0)  # lens blur sigma, px of a 640 px wide frame
    downscale: Split = Split(Range(1.0, 1.6), Range(1.7, 2.2), 1.0)  # video pixels per sensor pixel (upscaled)
    interlace: Split = Split(Range(0.0, 0.5), Range(0.6, 1.0), 0.0)  # weight of the earlier field in odd rows
    jpeg_quality: Split = Split(Range(60, 100, integer=True), Range(30, 55, integer=True), 100)  # MJPEG stage; 100: none


FAMILIES: dict[str, Any] = {
    "geometry": Geometry(),
    "mouse": Mouse(),
    "water": Water(),
    "cylinder": Cylinder(),
    "background": Background(),
    "lighting": Lighting(),
    "dynamics": Dynamics(),
    "capture": Capture(),
}
FAMILY_NAMES = tuple(FAMILIES)
# The paper's float is passive: only the movements that keep the head above water. A floating
# mouse's drift (the fastest bout of the fastest float_drift) stays under this share of the
# slowest swim, so that no float bout travels like a swim bout.
FLOAT_DRIFT_MAX_OF_SWIM = 0.25
FAMILY_SEED_STREAM = 20_000  # rng stream of the draws; apart from the label / arena streams


def splits(family: str) -> dict[str, Split]:
    spec = FAMILIES[family]
    return {f.name: getattr(spec, f.name) for f in fields(spec)}


def draw_family(family: str, rng: np.random.Generator, part: str) -> dict[str, Any]:
    """One family's values from ``part`` ("train", "held_out" or "nominal")."""
    if part not in PARTS:
        raise ValueError(f"part {part!r}: expected one of {PARTS}")
    return {name: split.draw(rng, part) for name, split in splits(family).items()}


def draw_families(seed: int, held_out: Iterable[str] = (), fixed: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Every family's values for one render: ``fixed`` ones nominal, ``held_out`` ones from their
    held-out part, the rest from their train part. Each family has its own rng stream, so holding
    one family out does not change what the others draw."""
    held_out, fixed = set(held_out), set(fixed)
    out = {}
    for i, name in enumerate(FAMILY_NAMES):
        part = "nominal" if name in fixed else ("held_out" if name in held_out else "train")
        out[name] = draw_family(name, np.random.default_rng([seed, FAMILY_SEED_STREAM, i]), part)
    return out


def parse_family_list(text: str | None, option: str) -> tuple[str, ...]:
    """``"mouse,geometry"`` -> sorted names; unknown names raise ValueError with the valid ones."""
    if not text:
        return ()
    names = sorted({t.strip() for t in text.split(",") if t.strip()})
    bad = [n for n in names if n not in FAMILIES]
    if bad:
        raise ValueError(f"{option} {','.join(bad)}: unknown famil{'y' if len(bad) == 1 else 'ies'}; "
                         f"expected some of {','.join(FAMILY_NAMES)}")  # fmt: skip
    return tuple(names)


def describe_families() -> str:
    """The table ``--list-families`` prints: family, parameter, train part, held-out part, nominal."""
    rows = [("family", "parameter", "train", "held-out", "nominal")]
    for family in FAMILY_NAMES:
        for name, s in splits(family).items():
            nominal = f"{s.nominal:.4g}" if isinstance(s.nominal, float) else str(s.nominal)
            rows.append((family, name, s.train.describe(), s.held_out.describe() if s.held_out else "(shared)", nominal))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
