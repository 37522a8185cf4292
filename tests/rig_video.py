"""A small two-cylinder side-view rig for the web page's tests: walls the arena detector finds, a mouse in each."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

FPS = 15.0
SIZE = (320, 180)
ARENAS = {"A1": (20, 8, 130, 166), "A2": (170, 8, 130, 166)}
CYLINDERS = ((35, 135), (185, 285))  # left and right wall x of each cylinder


def rig_frame(i: int) -> np.ndarray:
    w, h = SIZE
    image = np.full((h, w, 3), (205, 200, 196), np.uint8)
    rng = np.random.default_rng(i)
    for k, (x0, x1) in enumerate(CYLINDERS):
        water = image[45:165, x0:x1]
        water[:] = (170, 140, 110)  # BGR: blue-grey water
        ripple = (6 * np.sin(np.arange(x1 - x0) / 5.0 + i / 3.0)).astype(np.int16)
        water[:] = np.clip(water.astype(np.int16) + ripple[None, :, None], 0, 255).astype(np.uint8)
        for x in (x0, x1):
            cv2.line(image, (x, 12), (x, 168), (45, 45, 45), 3)
        t = i / FPS
        cx = int((x0 + x1) / 2 + 25 * np.sin(t * (1.3 + k)))
        cy = int(70 + 10 * np.sin(t * 2.1 + k))
        cv2.ellipse(image, (cx, cy), (16, 9), 15 * np.sin(t * 3), 0, 360, (40, 40, 48), -1)
        image[45:165, x0 + 2:x1 - 1] = np.clip(image[45:165, x0 + 2:x1 - 1].astype(np.int16)
                                                + rng.integers(-3, 4, (120, x1 - x0 - 3, 1)), 0, 255).astype(np.uint8)
    return image


def write_rig_video(folder: Path, seconds: float, name: str = "rig") -> Path:
    """``<folder>/<name>.mp4`` (mp4v) with its ``.arenas.json``; returns the video path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    for i in range(int(seconds * FPS)):
        writer.write(rig_frame(i))
    writer.release()
    (folder / f"{name}.arenas.json").write_text(json.dumps(
        {"arenas": [{"id": a, "roi": list(r)} for a, r in ARENAS.items()]}))
    return path
