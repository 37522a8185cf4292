"""How often the mouse window (``--crop mouse``) holds the mouse, scored against the simulator's truth.

Why: the mouse crop is only as good as its locator, and a window left at the arena centre shows the
model water. This re-renders each randomized ``export-synth`` video of a folder from the config in
its ``.arenas.json`` (deterministic) to get the mouse's true centre per frame, decodes the video
itself (what training and ``stream-run`` see), cuts each arena as ``--crop mouse`` does (the ROI at
``2 x --size-px``) and runs ``stream.mouse_crop.MouseLocator`` with the fixed threshold and with
the noise-relative one::

    python tools/mouse_locator_check.py runs/kin/top/videos --match 'test_*'

Per video (a held-out group in a regenerate.sh render): the share of frames, from the third second
on, whose window has the mouse's centre in its central half ("held": the mouse and a margin of a
quarter window around it are in view), and the share on which a blob was found. The first locator
(presence's fixed threshold, the largest single piece) is the reference arm.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from export.synth_render import SynthConfig, render_frames
from stream.mouse_crop import CROP_FRACTION, DECODE_SCALE, MouseLocator
from stream.preprocess import Roi, crop_resize

START_FRAME = 45  # the locator has its third background sample after two seconds; skip three


def _config(meta: dict) -> SynthConfig:
    cfg = dict(meta["generator"]["config"])
    for key in ("held_out", "fixed", "pinned"):
        cfg[key] = tuple(cfg.get(key) or ())
    return SynthConfig(**cfg)


def check_video(arenas_json: Path, size_px: int, arms: dict[str, tuple[float | None, int]]) -> list[dict]:
    """One row per arena: the held and found shares of each locator arm."""
    meta = json.loads(arenas_json.read_text())
    truth: list[list[tuple[float, float]]] = []
    for _ in render_frames(_config(meta), positions=truth):
        pass
    rois = [Roi(*a["roi"]) for a in meta["arenas"]]
    side = DECODE_SCALE * size_px
    cap = cv2.VideoCapture(str(arenas_json.parent / meta["video"]))
    locators = {arm: [MouseLocator(meta["fps"], k, merge) for _ in rois] for arm, (k, merge) in arms.items()}
    held = {arm: [[] for _ in rois] for arm in arms}
    found = {arm: [[] for _ in rois] for arm in arms}
    t = 0
    while True:
        ok, frame = cap.read()
        if not ok or t >= len(truth):
            break
        for i, roi in enumerate(rois):
            crop = crop_resize(frame, roi, side)
            tx = (truth[t][i][0] - roi.x) * side / roi.w
            ty = (truth[t][i][1] - roi.y) * side / roi.h
            for arm in arms:
                loc = locators[arm][i]
                x, y = loc.update(crop)
                if t >= START_FRAME:
                    quarter = CROP_FRACTION * side / 4.0
                    held[arm][i].append(abs(x - tx) <= quarter and abs(y - ty) <= quarter)
                    found[arm][i].append(loc.found)
        t += 1
    cap.release()
    rows = []
    for i, roi in enumerate(rois):
        row = {"video": arenas_json.name.removesuffix(".arenas.json"), "arena": i, "frames": len(held[next(iter(arms))][i])}
        for arm in arms:
            row[f"{arm}_held"] = float(np.mean(held[arm][i])) if held[arm][i] else float("nan")
            row[f"{arm}_found"] = float(np.mean(found[arm][i])) if found[arm][i] else float("nan")
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("videos", type=Path, help="a folder of export-synth --randomize videos (.mp4 + .arenas.json)")
    p.add_argument("--match", default="test_*", help="video stems (glob; default: test_*)")
    p.add_argument("--size-px", type=int, default=64, help="model input size: arenas are cut at twice it (default: 64)")
    p.add_argument("--noise-k", default=None, help="the noise arms' k, comma-separated (default: stream.mouse_crop.NOISE_K)")
    args = p.parse_args()
    from stream.mouse_crop import MERGE_PX, NOISE_K

    ks = [float(k) for k in args.noise_k.split(",")] if args.noise_k else [NOISE_K]
    # the first locator (fixed threshold, largest single piece) against the noise-relative one
    arms: dict[str, tuple[float | None, int]] = {"fixed": (None, 1)} | {f"k={k:g}": (k, MERGE_PX) for k in ks}
    paths = sorted(args.videos.glob(f"{args.match}.arenas.json"))
    if not paths:
        raise SystemExit(f"{args.videos}: no {args.match}.arenas.json")
    print("| video | arenas | " + " | ".join(f"{'first locator (fixed threshold)' if k[0] is None else 'noise-relative, ' + a}: window holds the mouse (blob found)" for a, k in arms.items()) + " |")
    print("|---|---|" + "---|" * len(arms))
    total = {arm: [] for arm in arms}
    for path in paths:
        rows = check_video(path, args.size_px, arms)
        cells = []
        for arm in arms:
            h = [r[f"{arm}_held"] for r in rows]
            f = [r[f"{arm}_found"] for r in rows]
            total[arm] += h
            cells.append(f"{100 * np.mean(h):.0f} % ({100 * np.mean(f):.0f} %)")
        print(f"| {rows[0]['video']} | {len(rows)} | " + " | ".join(cells) + " |", flush=True)
    print("| **all arenas, mean** | | " + " | ".join(f"**{100 * np.mean(total[a]):.0f} %**" for a in arms) + " |")


if __name__ == "__main__":
    main()
