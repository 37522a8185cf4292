"""``export-synth``: procedural forced-swim-test videos with exact per-frame labels, written to a folder.

The frames (configuration, labels, the fixed look, the randomized scene) are
:mod:`export.synth_render`; this module writes them and their labels, and is the command line.

Outputs in ``--out`` (``<name>`` defaults to ``synth_<view>``):

* ``<name>.mp4``: the video;
* ``<name>.labels.csv``: per-frame labels, ``frame,label`` with one arena, ``frame,arena,label``
  (arena-major, arenas named ``arena0``, ``arena1`` ... as ``stream-run`` names them) with several;
* ``<name>.boris.csv``: the same labels as a BORIS 8 tabular events export (START/STOP rows, one
  ``Subject`` per arena, "No focal subject" with one arena);
* ``<name>.arenas.json``: ``{"arenas": [{"id": "arena0", "roi": [x, y, w, h]}, ...]}`` (the
  ``stream.arenas`` format) plus the video's size, fps, frame count, view and classes, for
  ``stream-run --arenas`` and training;
* with ``--trials``, ``<name>.trials.json``: each trial's arena, animal, start and end (the truth).

``--contact-sheet PATH.png`` writes a grid of randomized frames instead (:mod:`export.synth_sheet`).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

import numpy as np

from export.annotations import write_boris_tabular, write_frame_csv
from export.synth_families import describe_families, parse_family_list
from export.synth_render import (  # the render API, importable from here as it always was
    DEFAULT_ARENA_SIZE_PX,
    DEFAULT_CRF,
    DEFAULT_FPS,
    IMMOBILE,
    MIN_BOUT_S,
    VIEWS,
    SynthConfig,
    SynthResult,
    arena_rois,
    generate_labels,
    render_frames,
    resolve,
    trial_plan,
)
from export.synth_sheet import contact_sheet
from stream.atomic import atomic_write
from stream.errors import UserError, cli_main
from stream.version import add_version_argument

__all__ = [
    "MIN_BOUT_S",
    "SynthConfig",
    "SynthResult",
    "arena_rois",
    "generate_labels",
    "main",
    "render_frames",
    "render_video",
    "resolve",
]

log = logging.getLogger(__name__)

X264_PRESET = "veryfast"


def _write_h264(path: Path, frames: Iterator[np.ndarray], cfg: SynthConfig) -> None:
    """H.264 without x264's macroblock-tree rate control: with it, one seed encoded twice gave
    other videos (decoded pixels up to 28 grey levels apart), depending on what the process had
    done before; without it the same seed gives the same bytes, so a render, the arena sweep and a
    training set repeat."""
    import av

    w, h = cfg.frame_size
    rate = Fraction(cfg.fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(cfg.crf), "preset": X264_PRESET, "mbtree": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def render_video(cfg: SynthConfig, out_dir: Path | str) -> SynthResult:
    """Render ``cfg`` into ``out_dir``: video, label CSV, BORIS export, arenas JSON."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out_dir}: cannot create the folder ({exc.strerror})") from None
    start = time.perf_counter()
    requested = cfg
    cfg, fam = resolve(cfg)
    labels = generate_labels(cfg)
    stem = cfg.stem
    video = out_dir / f"{stem}.mp4"
    _write_h264(video, render_frames(requested, labels), cfg)
    rois = arena_rois(cfg, fam)
    result = SynthResult(
        video_path=video,
        labels_csv=out_dir / f"{stem}.labels.csv",
        boris_csv=out_dir / f"{stem}.boris.csv",
        arenas_json=out_dir / f"{stem}.arenas.json",
        labels=labels,
        classes=cfg.classes,
        rois=rois,
        fps=cfg.fps,
        num_frames=cfg.num_frames,
    )
    anns = result.annotations()
    write_frame_csv(result.labels_csv, anns)
    write_boris_tabular(result.boris_csv, anns, media_file=video.name, observation_id=stem)
    w, h = cfg.frame_size
    meta = {
        "video": video.name,
        "width": w,
        "height": h,
        "fps": cfg.fps,
        "num_frames": cfg.num_frames,
        "view": cfg.view,
        "classes": cfg.classes,
        "immobile_classes": IMMOBILE[cfg.view],
        "arenas": [{"id": n, "name": n, "roi": [r.x, r.y, r.w, r.h]} for n, r in zip(cfg.arena_names(), rois)],
        "generator": {"program": "export-synth", "config": asdict(requested)},
    }
    if fam is not None:
        meta.update(randomized=cfg.randomize, held_out=sorted(cfg.held_out), families=fam)
    if cfg.trials:
        plan = trial_plan(cfg)
        result.trials_json = out_dir / f"{stem}.trials.json"
        truth = {"video": video.name, "fps": cfg.fps, "num_frames": cfg.num_frames, "view": cfg.view,
                 "spec": cfg.trials, "arenas": cfg.arena_names(), "trials": [t.to_json() for t in plan.trials]}  # fmt: skip
        atomic_write(result.trials_json, json.dumps(truth, indent=1) + "\n")
    atomic_write(result.arenas_json, json.dumps(meta, indent=1) + "\n")
    result.render_s = time.perf_counter() - start
    log.info("%s: %d frames rendered in %.1f s", video, cfg.num_frames, result.render_s)
    return result


# ----------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export-synth", description="Render labelled synthetic forced-swim-test videos.")
    add_version_argument(p)
    p.add_argument("--view", choices=VIEWS + ("both",), default=None,
                   help="side: swim/struggle/float; top: mobile/immobile (default side; both: --contact-sheet only)")
    dur = p.add_mutually_exclusive_group()
    dur.add_argument("--minutes", type=float, help="duration in minutes (default 1)")
    dur.add_argument("--seconds", type=float, help="duration in seconds")
    p.add_argument("--fps", type=float, help=f"frame rate (default {DEFAULT_FPS:g}; drawn with --randomize)")
    p.add_argument("--arenas", type=int, help="cylinders, each with its own mouse (default 1; drawn 1-4 with --randomize)")
    p.add_argument("--arena-size-px", type=int, default=DEFAULT_ARENA_SIZE_PX, help="side of one arena, legacy look only (default %(default)s)")
    p.add_argument("--width", type=int, help="frame width in px (overrides --arena-size-px)")
    p.add_argument("--height", type=int, help="frame height in px (overrides --arena-size-px)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crf", type=int, help=f"x264 quality, lower = better (default {DEFAULT_CRF}; drawn with --randomize)")
    p.add_argument("--name", default="", help="output file stem (default synth_<view>)")
    p.add_argument("--out", type=Path, default=Path("."), help="output folder (default: current)")
    p.add_argument("--trials", metavar="SPEC",
                   help="trials instead of one test: segments empty:SECONDS / mouse:SECONDS, e.g. "
                        "'empty:20,mouse:60,empty:10,mouse:60' for every arena, or one pattern per arena "
                        "separated by ';'. Sets the duration; writes <name>.trials.json (the truth). "
                        "Without --randomize the nominal look of every family")  # fmt: skip
    g = p.add_argument_group("domain randomization (see --list-families)")
    g.add_argument("--randomize", action="store_true",
                   help="draw every family (geometry, mouse, water, cylinder, background, lighting, dynamics, "
                        "capture) from its TRAIN range; --fps/--arenas/--width/--height/--crf given explicitly "
                        "still win. For export-train data pin --fps (it takes one frame rate per run)")  # fmt: skip
    g.add_argument("--held-out", metavar="FAMILY,...", help="draw these families from their HELD-OUT range (implies --randomize)")
    g.add_argument("--fix", metavar="FAMILY,...", help="pin these families to their nominal look (implies --randomize)")
    g.add_argument("--list-families", action="store_true", help="print every family's train / held-out ranges and exit")
    g.add_argument("--contact-sheet", type=Path, metavar="PATH.png",
                   help="write a grid of random frames of randomized renders (ROIs labelled with their class) "
                        "instead of a video; --view side|top|both (default both), --seed, --held-out, --fix apply")  # fmt: skip
    return p


@cli_main("export-synth")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list_families:
        print(describe_families())
        return 0
    duration = 60.0 * args.minutes if args.minutes is not None else (args.seconds if args.seconds is not None else 60.0)
    if args.trials and (args.minutes is not None or args.seconds is not None):
        raise UserError("--trials sets the duration; leave out --minutes / --seconds")
    try:
        held_out = parse_family_list(args.held_out, "--held-out")
        fixed = parse_family_list(args.fix, "--fix")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    randomize = bool(args.randomize or held_out or fixed)
    if args.contact_sheet is not None:
        views = VIEWS if args.view in (None, "both") else (args.view,)
        print(contact_sheet(args.contact_sheet, views, seed=args.seed, held_out=held_out, fixed=fixed))
        return 0
    if args.view == "both":
        raise UserError("--view both: only with --contact-sheet; a video has one view")
    given = {"fps": args.fps, "arenas": args.arenas, "width_px": args.width, "height_px": args.height, "crf": args.crf}
    cfg = SynthConfig(view=args.view or "side", duration_s=duration, fps=DEFAULT_FPS if args.fps is None else args.fps,
                      arenas=1 if args.arenas is None else args.arenas,
                      arena_size_px=args.arena_size_px, width_px=args.width, height_px=args.height,
                      seed=args.seed, name=args.name, crf=DEFAULT_CRF if args.crf is None else args.crf,
                      randomize=randomize, held_out=held_out, fixed=fixed, trials=args.trials or "",
                      pinned=tuple(k for k, v in given.items() if v is not None) if randomize or args.trials else ())  # fmt: skip
    result = render_video(cfg, args.out)
    cfg, _ = resolve(cfg)
    w, h = cfg.frame_size
    look = f", randomized (held out: {','.join(cfg.held_out) or 'none'})" if cfg.randomize else ""
    print(f"{result.video_path}: {cfg.num_frames} frames {w}x{h} @ {cfg.fps:g} fps, {cfg.arenas} arena(s){look}, "
          f"{result.render_s:.1f} s")  # fmt: skip
    for name, lab in zip(cfg.arena_names(), result.labels):
        counts = np.bincount(lab[lab >= 0], minlength=len(cfg.classes)) / lab.size
        unlabelled = f", no mouse {100 * np.mean(lab < 0):.0f}%" if np.any(lab < 0) else ""
        print(f"  {name}: " + ", ".join(f"{c} {100 * v:.0f}%" for c, v in zip(cfg.classes, counts)) + unlabelled)
    print(f"{result.labels_csv}\n{result.boris_csv}\n{result.arenas_json}")
    if result.trials_json is not None:
        print(result.trials_json)
    return 0
