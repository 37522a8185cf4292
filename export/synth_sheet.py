"""A contact sheet of randomized simulator frames (``export-synth --contact-sheet PATH.png``).

Why: what domain randomization covers is easier to judge by looking than by reading the ranges.
Each cell is one frame of its own randomized render (its own seed, so its own rig, mouse, room,
light and camera), before compression, with every arena's ROI drawn and labelled with the class
the mouse is showing in that frame. The sheet draws from the same options as a render
(``--held-out``, ``--fix``), so a sheet of held-out families shows what a model has not seen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from export.synth_render import SynthConfig, arena_rois, render_frames, resolve
from stream.errors import UserError

__all__ = ["contact_sheet"]

log = logging.getLogger(__name__)

CELL_PX = (240, 180)  # width, height of one cell: the ROIs and labels stay legible, the PNG small
COLUMNS = 4
ROWS_PER_VIEW = 2
CLIP_S = 2.0  # each cell's render
LEAD_IN_S = 0.5  # every mouse swims first (the water moves), then shows its cell's class
SHOW_FROM_S = 1.2  # the frame is drawn from here on: the posture has settled into the class
CLASS_BGR = {"swim": (60, 200, 60), "struggle": (40, 140, 255), "float": (230, 120, 40),
             "mobile": (60, 200, 60), "immobile": (230, 120, 40)}  # fmt: skip
SEED_STRIDE = 1000  # cell i of sheet seed s renders seed s * SEED_STRIDE + i (+ TOP_OFFSET for top)
TOP_OFFSET = 500  # top-view cells get other rigs and rooms than the side-view cells above them


def _cell(view: str, seed: int, held_out: Sequence[str], fixed: Sequence[str], pick: np.random.Generator) -> np.ndarray:
    cfg = SynthConfig(view=view, duration_s=CLIP_S, seed=seed, randomize=True, held_out=tuple(held_out), fixed=tuple(fixed))
    eff, fam = resolve(cfg)
    # each arena shows a class drawn uniformly (a random frame of a test would be mostly one class)
    labels = []
    for _ in range(eff.arenas):
        lab = np.full(eff.num_frames, int(pick.integers(len(eff.classes))), np.int64)
        lab[: int(LEAD_IN_S * eff.fps)] = 0  # classes[0] is the active one: swim / mobile
        labels.append(lab)
    index = int(pick.integers(min(eff.num_frames - 1, int(SHOW_FROM_S * eff.fps)), eff.num_frames))
    for t, frame in enumerate(render_frames(cfg, labels)):
        if t == index:
            break
    w, h = eff.frame_size
    scale = min(CELL_PX[0] / w, CELL_PX[1] / h)
    small = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    cell = np.full((CELL_PX[1], CELL_PX[0], 3), 255, np.uint8)
    oy, ox = (CELL_PX[1] - small.shape[0]) // 2, (CELL_PX[0] - small.shape[1]) // 2
    cell[oy : oy + small.shape[0], ox : ox + small.shape[1]] = small
    for roi, lab in zip(arena_rois(eff, fam), labels):
        name = eff.classes[int(lab[index])]
        colour = CLASS_BGR[name]
        x0, y0 = ox + int(roi.x * scale), oy + int(roi.y * scale)
        x1, y1 = ox + int((roi.x + roi.w) * scale) - 1, oy + int((roi.y + roi.h) * scale) - 1
        cv2.rectangle(cell, (x0, y0), (x1, y1), colour, 1)
        cv2.putText(cell, name, (x0 + 2, y0 + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(cell, name, (x0 + 2, y0 + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.36, colour, 1, cv2.LINE_AA)
    caption = f"{view} {w}x{h} {eff.fps:g} fps, {fam['mouse']['colour']} mouse, {fam['background']['texture']}"
    cv2.rectangle(cell, (0, CELL_PX[1] - 13), (CELL_PX[0] - 1, CELL_PX[1] - 1), (0, 0, 0), -1)
    cv2.putText(cell, caption, (3, CELL_PX[1] - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
    return cell


def contact_sheet(path: Path | str, views: Sequence[str] = ("side", "top"), seed: int = 0,
                  held_out: Sequence[str] = (), fixed: Sequence[str] = (), columns: int = COLUMNS,
                  rows_per_view: int = ROWS_PER_VIEW) -> Path:  # fmt: skip
    """Write a PNG grid: ``rows_per_view`` rows of ``columns`` randomized frames per view."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"--contact-sheet {path}: the sheet is a PNG; name it *.png")
    if not path.parent.is_dir():
        raise UserError(f"--contact-sheet {path}: the folder {path.parent} does not exist")
    pick = np.random.default_rng([seed, 40_000])
    cells = [(view, seed * SEED_STRIDE + i + (TOP_OFFSET if view == "top" else 0))
             for view in views for i in range(columns * rows_per_view)]  # fmt: skip
    rendered = [_cell(v, s, held_out, fixed, pick) for v, s in tqdm(cells, desc="contact sheet", unit="cell")]
    rows = [np.concatenate(rendered[i : i + columns], axis=1) for i in range(0, len(rendered), columns)]
    sheet = np.concatenate(rows, axis=0)
    ok, png = cv2.imencode(".png", sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(png.tobytes())
    os.replace(tmp, path)
    log.info("%s: %d cells", path, len(rendered))
    return path
