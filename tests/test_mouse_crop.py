"""The mouse locator and its window: a moving blob on textured water is found, a still one keeps its
place, the window stays inside the arena, and no position depends on a later frame."""

from __future__ import annotations

import numpy as np
import pytest

from stream.mouse_crop import CROP_FRACTION, MouseLocator, Window, crop_window, track_positions

FPS = 15.0
SIDE = 128  # the arena decoded at 2x a 64 px input


def water(i: int) -> np.ndarray:
    """A static textured arena with faint moving ripples (what the median must keep as background)."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    img = 150 + 25 * np.sin(0.21 * xx) * np.cos(0.17 * yy) + 3 * np.sin(0.45 * xx + 0.3 * yy - 0.2 * i)
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def path(i: int) -> tuple[float, float]:
    """A mouse swimming a circle around the arena (about a body length a second)."""
    a = 2 * np.pi * i / (12 * FPS)
    return 64 + 34 * np.cos(a), 64 + 34 * np.sin(a)


def with_mouse(img: np.ndarray, x: float, y: float) -> np.ndarray:
    out = img.copy()
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    out[((xx - x) / 9.0) ** 2 + ((yy - y) / 5.0) ** 2 <= 1.0] = 35  # a dark ellipse, 18 x 10 px
    return out


def frames(n: int, still_from: int | None = None) -> list[np.ndarray]:
    out = []
    for i in range(n):
        x, y = path(i if still_from is None else min(i, still_from))
        out.append(with_mouse(water(i), x, y))
    return out


def test_a_moving_mouse_on_textured_water_is_found_within_a_few_pixels() -> None:
    n = int(20 * FPS)
    track = track_positions(frames(n), FPS)
    assert track.shape == (n, 2)
    start = int(2 * FPS) + 1  # from the third background sample on
    errors = [np.hypot(*(track[i] - path(i))) for i in range(start, n)]
    assert np.median(errors) < 2.0 and max(errors) < 4.0


def test_before_any_background_the_position_is_the_arena_centre() -> None:
    locator = MouseLocator(FPS)
    x, y = locator.update(frames(1)[0])
    assert (x, y) == ((SIDE - 1) / 2, (SIDE - 1) / 2) and not locator.found


def test_an_immobile_mouse_keeps_its_position_when_it_melts_into_the_background() -> None:
    still = int(5 * FPS)
    n = int(40 * FPS)  # 35 s still: longer than half the median's span, so the mouse melts into it
    locator = MouseLocator(FPS)
    found, positions = [], []
    for img in frames(n, still_from=still):
        positions.append(locator.update(img))
        found.append(locator.found)
    assert not any(found[-int(5 * FPS) :])  # it melted: no blob any more
    assert np.hypot(*(np.asarray(positions[-1]) - path(still))) < 3.0  # and the position held


@pytest.mark.parametrize(("position", "expected"), [((5.0, 6.0), (0, 0)), ((127.0, 120.0), (64, 64)), ((64.0, 3.0), (32, 0)), ((70.0, 70.0), (38, 38))])
def test_the_window_is_clamped_inside_the_arena(position: tuple[float, float], expected: tuple[int, int]) -> None:
    w = crop_window(position, SIDE)
    assert w.size == round(CROP_FRACTION * SIDE) == 64
    assert (w.x, w.y) == expected
    assert 0 <= w.x <= SIDE - w.size and 0 <= w.y <= SIDE - w.size


def test_the_window_cuts_frames_and_flow_alike() -> None:
    w = Window(10, 20, 64)
    frames_ = np.zeros((16, SIDE, SIDE, 3), np.uint8)
    flow = np.zeros((16, 2, SIDE, SIDE), np.float32)
    frames_[:, 20, 10] = 7
    flow[:, :, 20, 10] = 3.0
    assert w.cut_frames(frames_).shape == (16, 64, 64, 3) and w.cut_frames(frames_)[0, 0, 0, 0] == 7
    assert w.cut(flow).shape == (16, 2, 64, 64) and w.cut(flow)[0, 1, 0, 0] == 3.0


def test_a_frames_position_never_depends_on_later_frames() -> None:
    clip = frames(int(12 * FPS))
    full = track_positions(clip, FPS)
    cut = int(7 * FPS)
    changed = clip[:cut] + [np.full_like(f, 255) for f in clip[cut:]]  # the future replaced by a white glare
    assert np.array_equal(track_positions(changed, FPS)[:cut], full[:cut])
    assert np.array_equal(track_positions(clip[:cut], FPS), full[:cut])


def pale_frames(n: int, contrast: float, noise_std: float, seed: int = 0) -> list[np.ndarray]:
    """A pale mouse on pale water (the capture family): ``contrast`` of the brightness, sensor grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    out = []
    for i in range(n):
        x, y = path(i)
        img = np.full((SIDE, SIDE), 170.0, np.float32)
        img[((xx - x) / 9.0) ** 2 + ((yy - y) / 5.0) ** 2 <= 1.0] *= 1.0 - contrast
        img += rng.normal(0.0, noise_std, img.shape)
        out.append(np.repeat(np.clip(img, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2))
    return out


def test_a_pale_low_contrast_mouse_is_found_where_the_fixed_threshold_saw_nothing() -> None:
    """8 % contrast is under presence's 0.18: the first locator kept the arena centre; the
    noise-relative threshold follows the mouse."""
    n, start = int(12 * FPS), int(2 * FPS) + 1
    images = pale_frames(n, contrast=0.08, noise_std=2.0)
    first = MouseLocator(FPS, noise_k=None, merge_px=1)
    first_track = np.array([first.update(im) for im in images])
    track = track_positions(images, FPS)
    truth = np.array([path(i) for i in range(n)])
    assert np.all(np.hypot(*(first_track[start:] - (SIDE - 1) / 2).T) == 0)  # never moved off the centre
    assert np.median(np.hypot(*(track[start:] - truth[start:]).T)) < 3.0


def test_sensor_grain_alone_is_never_a_mouse() -> None:
    """No animal, heavy grain: the threshold rises with the noise, so no blob is found."""
    rng = np.random.default_rng(1)
    locator = MouseLocator(FPS)
    seen = []
    for i in range(int(8 * FPS)):
        img = np.clip(150 + rng.normal(0, 12, (SIDE, SIDE)), 0, 255).astype(np.uint8)
        locator.update(np.repeat(img[:, :, None], 3, axis=2))
        seen.append(locator.found)
    assert not any(seen)


def test_pieces_of_one_mouse_are_one_blob() -> None:
    """Body and tail apart by 2 px at the locate size: their joint centroid, not the larger piece's."""
    from stream.mouse_crop import _largest_blob_centre

    mask = np.zeros((64, 64), np.uint8)
    mask[20:26, 20:28] = 1  # body, 48 px
    mask[22:24, 30:40] = 1  # tail, 20 px, a gap of 2 px
    x, _ = _largest_blob_centre(mask)
    assert x == pytest.approx((48 * 23.5 + 20 * 34.5) / 68)  # the pieces' joint centroid
    assert _largest_blob_centre(mask, merge_px=1)[0] == pytest.approx(23.5)
