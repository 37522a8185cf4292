"""Drawing for both simulator renderers: sub-pixel OpenCV primitives and the mouse's strokes.

Why a module of its own: the fixed look (:mod:`export.synth_render`) and the randomized scene
(:mod:`export.synth_scene`) draw the same mouse (body, head, cheek, eye, four legs with paws, a
three-segment tail) and the same rig (walls, rims, water discs) with the same primitives. They
used to share them by the scene importing the fixed renderer's private helpers while the fixed
renderer imported the scene, and each drew the mouse with its own copy of the strokes. Here is
the one copy; each renderer decides where the mouse is, how its limbs swing and what colours it
has, and calls :func:`draw_side_mouse` / :func:`draw_top_mouse`.

The fixed look is pinned byte for byte (the bundled demo video and model depend on it; frame
hashes in ``tests/test_synth.py``), so the arithmetic here is the fixed renderer's, operand order
included: a product evaluated in another order can round one coordinate differently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "HEAD_AT",
    "HEAD_AXES",
    "POSE_TAU_S",
    "RIPPLE_RISE_S",
    "SHIFT",
    "Color",
    "MouseColours",
    "draw_ellipse",
    "draw_line",
    "draw_side_mouse",
    "draw_top_mouse",
    "pt",
    "rot",
]

SHIFT = 4  # cv2 fixed-point shift: coordinates in 1/16 px, so slow limbs move smoothly
POSE_TAU_S = 0.15  # posture follows the label with this time constant (no teleporting)
RIPPLE_RISE_S = 0.4  # the water is agitated this fast when a mobile bout starts
# side view: the head's centre along the body and its half-axes, in body lengths
HEAD_AT, HEAD_AXES = 0.5, (0.2, 0.13)

Color = tuple[float, float, float]


@dataclass(frozen=True)
class MouseColours:
    """BGR colours of one mouse. ``nose`` is drawn only when set (the fixed look has one)."""

    body: Color
    limb: Color
    tail: Color
    eye: Color
    nose: Color | None = None


def pt(x: float, y: float) -> tuple[int, int]:
    """A point in cv2's fixed-point coordinates (``SHIFT``)."""
    return int(round(x * 16)), int(round(y * 16))  # cv2 shift=4: 1/16 px sub-pixel positions


def draw_line(img: np.ndarray, a: Sequence[float], b: Sequence[float], color: Color, thickness: float) -> None:
    cv2.line(img, pt(*a), pt(*b), color, max(1, int(round(thickness))), cv2.LINE_AA, SHIFT)


def draw_ellipse(img: np.ndarray, c: Sequence[float], axes: Sequence[float], angle_deg: float, color: Color,
                 thickness: int = -1) -> None:
    cv2.ellipse(img, pt(*c), pt(max(axes[0], 0.5), max(axes[1], 0.5)), angle_deg, 0, 360, color, thickness,
                cv2.LINE_AA, SHIFT)  # fmt: skip


def rot(v: np.ndarray, phi: float) -> np.ndarray:
    """``v`` rotated by ``phi`` rad."""
    c, s = math.cos(phi), math.sin(phi)
    return np.array([v[0] * c - v[1] * s, v[0] * s + v[1] * c])


def draw_side_mouse(img: np.ndarray, ctr: np.ndarray, f: np.ndarray, n: np.ndarray, L: float, d: float,
                    swings: Sequence[float], legs: Sequence[tuple[float, float]], colours: MouseColours,
                    tail_sway: float, tail_len: float = 1.0) -> list[np.ndarray]:
    """A mouse seen from the side: far legs, tail, body, head, cheek, eye, (nose), near legs.

    ``ctr`` is the body's centre, ``f`` the nose direction, ``n`` the belly direction (unit
    vectors), ``L`` the body length in px, ``d`` +1 facing right / -1 left. Legs are, in order,
    fore near, fore far, hind near, hind far: ``legs[k]`` = (position along the body in body
    lengths, resting angle in rad) and ``swings[k]`` the angle added now. ``tail_sway`` bends
    each tail segment (rad), ``tail_len`` scales them. Returns the paw tips in the order drawn
    (fore far, hind far, fore near, hind near), for droplets thrown where a paw breaks the surface.
    """
    ang = math.degrees(math.atan2(f[1], f[0]))
    lw = max(1.0, 0.07 * L)
    tips: list[np.ndarray] = []

    def leg(k: int, colour: Color) -> None:
        along, base = legs[k]
        a = ctr + f * along * L + n * 0.12 * L
        direction = rot(n, d * (base + swings[k]) * (1 if k < 2 else -1))
        tip = a + direction * 0.3 * L
        draw_line(img, a, tip, colour, lw)
        draw_ellipse(img, tip, (0.05 * L, 0.035 * L), ang, colour)
        tips.append(tip)

    far = tuple(0.8 * v for v in colours.limb)
    leg(1, far)
    leg(3, far)
    p, direction = ctr - f * 0.48 * L, -f
    for k in range(3):  # three segments swaying behind the body
        direction = rot(direction, d * (0.25 + tail_sway) * 0.5)
        q = p + direction * 0.28 * L * tail_len
        draw_line(img, p, q, colours.tail, max(1.0, 0.05 * L * (1 - 0.25 * k)))
        p = q
    draw_ellipse(img, ctr, (0.5 * L, 0.2 * L), ang, colours.body)
    draw_ellipse(img, ctr + f * HEAD_AT * L, (HEAD_AXES[0] * L, HEAD_AXES[1] * L), ang, colours.body)
    draw_ellipse(img, ctr + f * 0.42 * L - n * 0.12 * L, (0.06 * L, 0.06 * L), 0, colours.limb)
    draw_ellipse(img, ctr + f * 0.56 * L - n * 0.04 * L, (0.025 * L, 0.025 * L), 0, colours.eye)
    if colours.nose is not None:
        draw_ellipse(img, ctr + f * 0.69 * L, (0.03 * L, 0.03 * L), 0, colours.nose)
    leg(0, colours.limb)
    leg(2, colours.limb)
    return tips


def draw_top_mouse(img: np.ndarray, ctr: np.ndarray, heading: float, L: float, swings: Sequence[float],
                   colours: MouseColours, tail_sway: float, tail_len: float = 1.0) -> list[np.ndarray]:
    """A mouse seen from above: four paws, tail, body, head, cheeks, eyes.

    ``heading`` is the nose direction (rad), ``L`` the body length in px, ``swings[k]`` how far
    paw k (fore left, fore right, hind left, hind right) reaches forward now, in units of 0.14 L.
    Returns the paw tips in that order (a fore paw scrabbling at the wall splashes)."""
    f = np.array([math.cos(heading), math.sin(heading)])
    s = np.array([-f[1], f[0]])
    ang = math.degrees(heading)
    tips: list[np.ndarray] = []
    for along, side, k in ((0.25, 1, 0), (0.25, -1, 1), (-0.22, 1, 2), (-0.22, -1, 3)):
        base = ctr + f * along * L + s * side * 0.2 * L
        tip = base + f * 0.14 * L * swings[k] + s * side * 0.08 * L
        draw_line(img, base, tip, colours.limb, max(1.0, 0.06 * L))
        draw_ellipse(img, tip, (0.05 * L, 0.035 * L), ang, colours.limb)
        tips.append(tip)
    p, direction = ctr - f * 0.48 * L, -f
    for k in range(3):
        direction = rot(direction, tail_sway * 0.6)
        q = p + direction * 0.3 * L * tail_len
        draw_line(img, p, q, colours.tail, max(1.0, 0.05 * L * (1 - 0.25 * k)))
        p = q
    draw_ellipse(img, ctr, (0.5 * L, 0.2 * L), ang, colours.body)
    draw_ellipse(img, ctr + f * 0.48 * L, (0.2 * L, 0.14 * L), ang, colours.body)
    for side in (1, -1):
        draw_ellipse(img, ctr + f * 0.4 * L + s * side * 0.13 * L, (0.055 * L, 0.055 * L), 0, colours.limb)
        draw_ellipse(img, ctr + f * 0.55 * L + s * side * 0.07 * L, (0.02 * L, 0.02 * L), 0, colours.eye)
    return tips
