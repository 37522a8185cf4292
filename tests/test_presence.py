"""The presence detector: an animal appears and is removed; light changes and ripples alone are nothing."""

from __future__ import annotations

import numpy as np

from stream.presence import CONFIRM_FRAMES, PresenceConfig, PresenceDetector

FPS = 15.0


def water(i: int, gain: float = 1.0) -> np.ndarray:
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    img = 160 + 6 * np.sin(0.9 * xx + 0.4 * yy - 0.2 * i) + 3 * np.sin(0.7 * yy + 0.13 * i)
    return np.repeat(np.clip(img * gain, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def with_mouse(img: np.ndarray, i: int) -> np.ndarray:
    out = img.copy()
    x = 12 + (i % 6)
    out[14:19, x:x + 8] = 30
    return out


def test_light_steps_and_ripples_alone_never_start_a_trial() -> None:
    det = PresenceDetector(PresenceConfig(fps=FPS))
    events = [det.update(i, water(i, gain=1.0 if i < 40 else 0.7 if i < 80 else 1.2)) for i in range(150)]
    assert not any(events) and not det.present


def test_appearance_and_removal_are_dated_to_their_first_frame() -> None:
    det = PresenceDetector(PresenceConfig(fps=FPS))
    events = []
    for i in range(120):
        img = water(i, gain=0.8 if i >= 50 else 1.0)  # the light dims while the mouse swims
        if 20 <= i < 80:
            img = with_mouse(img, i)
        e = det.update(i, img)
        if e is not None:
            events.append((e.kind, e.frame_index, i))
    assert events[0][:2] == ("appeared", 20) and events[0][2] == 20 + CONFIRM_FRAMES - 1
    assert events[1][:2] == ("removed", 80)
    assert len(events) == 2
