"""A contact sheet of the mouse windows (``--crop mouse``) on cached arenas, and how often the locator saw a blob.

Why: the mouse crop is only as good as its locator, and the simulator records no mouse position to
score it against; a sheet of the windows the model was shown is the cheap check. Reads the cache an
``export-evaluate --crop mouse`` run left (the 2x arena frames and their ``.track.npy``), nothing else::

    python tools/mouse_crop_sheet.py runs/kin/top/cache --match 'test_*' --out docs/mouse_crop_top.jpg

One row per video (its first arena), one tile every ``--every`` frames from the third second on; the
red square is the window a clip centred on that frame is cut from. Prints, per arena, the share of
frames after the first two seconds on which the locator found a blob (else it held the last position).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from export.dataset import MOUSE_TRACK_VERSION
from stream.mouse_crop import MouseLocator, crop_window

START_FRAME = 45  # the locator has its third background sample after two seconds; skip three
TILES = 7  # tiles per row


def _label(frames_path: Path) -> tuple[str, str]:
    """(video stem, ROI key) from a cache file name ``<stem>-<sha>-v1-roi<x_y_w_h>-<S>px-...``."""
    stem, _, rest = frames_path.name.partition("-")
    return stem, rest.split("-roi", 1)[1].split("-", 1)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cache", type=Path, help="the --cache-dir of an export-evaluate --crop mouse run")
    p.add_argument("--match", default="test_*", help="video stems to show (glob; default: test_*)")
    p.add_argument("--fps", type=float, default=15.0, help="model frame rate of the cache (default: 15)")
    p.add_argument("--every", type=int, default=60, help="frames between tiles (default: 60)")
    p.add_argument("--out", type=Path, required=True, help="image to write (.jpg or .png)")
    args = p.parse_args()
    rows, shown = [], set()
    # the current locator's tracks only (export.dataset names them by MOUSE_TRACK_VERSION)
    for track_path in sorted(args.cache.glob(f"{args.match}-mouse{MOUSE_TRACK_VERSION}.track.npy")):
        frames_path = Path(str(track_path).rsplit("-mouse", 1)[0] + ".frames.npy")
        frames, track = np.load(frames_path, mmap_mode="r"), np.load(track_path)
        locator = MouseLocator(args.fps)
        found = [(locator.update(np.asarray(f)), locator.found)[1] for f in frames]
        stem, roi = _label(frames_path)
        print(f"{stem} roi {roi}: blob on {100 * np.mean(found[START_FRAME:]):.0f} % of frames from frame {START_FRAME} ({len(frames)} frames)")
        if stem in shown:
            continue
        shown.add(stem)
        tiles = []
        for c in range(START_FRAME, frames.shape[0], args.every)[:TILES]:
            tile = np.ascontiguousarray(frames[c]).copy()
            w = crop_window(track[c], tile.shape[0])
            cv2.rectangle(tile, (w.x, w.y), (w.x + w.size - 1, w.y + w.size - 1), (0, 0, 255), 1)
            tiles.append(tile)
        tiles += [np.zeros_like(tiles[0])] * (TILES - len(tiles))
        row = np.concatenate(tiles, axis=1)
        for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
            cv2.putText(row, stem, (3, row.shape[0] - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, thickness, cv2.LINE_AA)
        rows.append(row)
    if not rows:
        raise SystemExit(f"{args.cache}: no {args.match}.track.npy (run export-evaluate --crop mouse with this --cache-dir first)")
    cv2.imwrite(str(args.out), np.concatenate(rows, axis=0), [cv2.IMWRITE_JPEG_QUALITY, 80])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
