"""A small two-arena recording of a lab's session: empty lead-in, mouse, removal, next mouse.

Until ``export-synth --trials`` renders such videos, this generator is the test bed of the trial
modes. The water is textured and rippled (moving sine waves), the light dims slowly and steps
down once, so the presence detector meets what a real rig shows. ``TRUTH`` gives when each mouse
is put in and taken out.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

FPS = 15.0
SIZE = (96, 48)  # two 48 px arenas side by side
ARENAS = {"A1": (0, 0, 48, 48), "A2": (48, 0, 48, 48)}
# arena -> [(animal, group, in_s, out_s)]: 4 s in the water, 1 s between mice
TRUTH = {
    "A1": [("M1", "saline", 1.0, 5.0), ("M2", "drug", 6.0, 10.0)],
    "A2": [("M3", "drug", 1.5, 5.5), ("M4", "saline", 6.5, 10.5)],
}
DURATION_S = 11.5
LIGHT_STEP_S = 8.0  # the room light steps down by 15 % here (both arenas, mice in the water)
LIGHT_STEP_EMPTY_S = 0.5  # and once while both arenas are still empty


def _light(t: float) -> float:
    gain = 1.0 - 0.15 * t / DURATION_S  # a slow dimming
    if t >= LIGHT_STEP_EMPTY_S:
        gain *= 0.9
    if t >= LIGHT_STEP_S:
        gain *= 0.85
    return gain


def write_trials_video(folder: Path, name: str = "session") -> Path:
    """``<folder>/<name>.mp4`` with its ``.arenas.json``; returns the video path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.mp4"
    w, h = SIZE
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    assert writer.isOpened()
    rng = np.random.default_rng(7)
    texture = rng.normal(0, 4, (h, w)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(int(DURATION_S * FPS)):
        t = i / FPS
        ripples = 5.0 * np.sin(0.9 * xx + 0.5 * yy - 3.0 * t) + 3.0 * np.sin(0.6 * yy - 2.1 * t + 1.0)
        water = 165.0 + texture + ripples
        img = np.repeat(water[:, :, None], 3, axis=2)
        for arena, trials in TRUTH.items():
            x0, y0, aw, ah = ARENAS[arena]
            cv2.rectangle(img, (x0 + 2, y0 + 2), (x0 + aw - 3, y0 + ah - 3), (120, 120, 120), 1)  # cylinder wall
            for _animal, _group, t_in, t_out in trials:
                if t_in <= t < t_out:
                    k = (t - t_in) * FPS
                    cx = x0 + aw // 2 + int(8 * np.sin(k / 9.0))
                    cy = y0 + ah // 2 + int(6 * np.cos(k / 13.0))
                    cv2.ellipse(img, (cx, cy), (7, 4), (k * 7) % 180, 0, 360, (35, 30, 30), -1)
        img = np.clip(img * _light(t), 0, 255).astype(np.uint8)
        writer.write(img)
    writer.release()
    arenas = {"arenas": [{"id": a, "roi": list(r)} for a, r in ARENAS.items()]}
    (folder / f"{name}.arenas.json").write_text(json.dumps(arenas))
    return path


def write_schedule(path: Path, video: Path) -> Path:
    rows = ["video,arena,animal,group,start_s"]
    for arena, trials in TRUTH.items():
        for animal, group, t_in, _t_out in trials:
            rows.append(f"{video.name},{arena},{animal},{group},{t_in}")
    path.write_text("\n".join(rows) + "\n")
    return path
