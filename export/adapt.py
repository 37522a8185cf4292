"""BatchNorm statistics of a trained model estimated again on a lab's own, unlabelled video
(CLI ``export-adapt``): adaptive batch normalisation (AdaBN, Li et al. 2016, "Revisiting batch
normalization for practical domain adaptation").

Why: our models are trained on simulator video, and on another renderer's video the features that
BatchNorm normalises sit elsewhere (another background, light, mouse, flow level). The weights can
stay; the statistics each BatchNorm layer subtracts and divides by are what AdaBN replaces, by those
of the target video's clips. That needs no label: every frame of the given videos is a candidate
clip centre, and labels are never read. The clips are cut exactly as for training and live use
(the card's input size, fps, crop and TV-L1 settings, the arenas of each video), so the new
statistics are those of the inputs the model will see.

What it changes, and what it does not: only the running means and variances of the BatchNorm
layers (``export.train.recalibrate_batchnorm``); every weight and the flow weight stay. The card
says which videos the statistics come from, and keeps the source model's figures, which were
measured before the adaptation, under ``training.adaptation``. Whether the adaptation pays is a
question for labelled video of the target (``export-validate``, before and after); it is not
measured here.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from export import train as tr
from export.annotations import Annotation
from export.dataset import ClipDataset, VideoSource, load_fitting_arenas, probe_video
from export.train_config import apply_threads
from export.train_data import ARENAS_SUFFIX, _sibling
from stream.adabn import ADAPT_METHOD, DEFAULT_FRAME_STEP, adapted_card
from stream.errors import UserError, cli_main
from stream.flow import FlowConfig
from stream.modelfile import ModelCard, load_card, load_model, save_model
from stream.run_config import ADAPT_CLIPS_DEFAULT
from stream.version import add_version_argument

log = logging.getLogger(__name__)

__all__ = ["ADAPT_METHOD", "unlabelled_sources", "unlabelled_clips", "adapt_batchnorm", "main"]



def unlabelled_sources(videos: list[Path], arenas: list[Path | None], classes: list[str]) -> list[VideoSource]:
    """One source per arena of each video, every frame a clip centre. The label array is all zeros
    only because a ``ClipDataset`` item carries one; nothing reads it."""
    sources = []
    for video, arenas_json in zip(videos, arenas):
        if not video.is_file():
            raise UserError(f"{video}: video not found")
        n, fps, width, height = probe_video(video)
        if n <= 0 or fps <= 0:
            raise UserError(f"{video}: frame count or frame rate unknown; re-encode the video")
        arenas_json = arenas_json or _sibling(video, (ARENAS_SUFFIX,))
        rois = load_fitting_arenas(arenas_json, video, width, height) if arenas_json else [(None, None)]
        for name, roi in rois:
            annotation = Annotation(list(classes), np.zeros(n, dtype=np.int64), video, subject=name, fps=fps)
            sources.append(VideoSource(video, annotation, roi))
    return sources


def unlabelled_clips(card: ModelCard, videos: list[Path], arenas: list[Path | None], *, frame_step: int, cache_dir: Path,
                     progress: bool = False) -> ClipDataset:
    """The target's clips, cut as the card says (input size, fps, crop, TV-L1 settings)."""
    sources = unlabelled_sources(videos, arenas, card.classes)
    return ClipDataset(sources, card.classes, size_px=card.input_size_px, cache_dir=cache_dir, frame_step=frame_step,
                       flow_config=FlowConfig(**card.flow), fps=card.fps, crop=card.crop, progress=progress)  # fmt: skip


def adapt_batchnorm(model: torch.nn.Module, clips: ClipDataset, *, count: int, seed: int, batch_size: int, progress: bool = False) -> float:
    """Replaces ``model``'s BatchNorm statistics by those of ``count`` seeded clips of the target, in
    place, and returns how far the variances moved (median over layers of the median relative
    change), the one number that says whether the target looked different to the model at all."""
    if len(clips) < count:
        log.warning("only %d candidate clips for --clips %d: all of them are used", len(clips), count)
    config = tr.TrainConfig(seed=seed, batch_size=batch_size, bn_recalibration_clips=count, num_workers=0)
    return tr.recalibrate_batchnorm(model, clips, config, torch.device("cpu"), progress=progress)


def predict_adapted(model: torch.nn.Module, card: ModelCard, ds: Dataset, video_of_item: np.ndarray, units: Iterable[Sequence[int]],
                    videos: Sequence[Path], arenas: Sequence[Path | None], *, count: int, seed: int, frame_step: int, batch_size: int,
                    cache_dir: Path | None, device: str = "cpu") -> Iterator[tuple[np.ndarray, tr.StreamPredictions, float]]:  # fmt: skip
    """Per unit (indices into ``videos``): a copy of ``model`` with the BatchNorm statistics of that unit's
    unlabelled clips, and its predictions on the items of ``ds`` from those videos; yields (item indices,
    predictions, how far the variances moved). ``model`` itself is left as it is."""
    for unit in units:
        idx = np.flatnonzero(np.isin(video_of_item, list(unit)))
        adapted = copy.deepcopy(model).cpu()
        clips = unlabelled_clips(card, [videos[i] for i in unit], [arenas[i] for i in unit], frame_step=frame_step, cache_dir=cache_dir)
        moved = adapt_batchnorm(adapted, clips, count=count, seed=seed, batch_size=batch_size)
        yield idx, tr.predict_streams(adapted, Subset(ds, idx), batch_size=batch_size, device=device, progress=False), moved


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export-adapt",
        description="Estimate a model's BatchNorm statistics again on your own unlabelled video (AdaBN): same weights, same flow "
        "weight, normalisation of your rig's inputs. Input size, fps, crop and TV-L1 settings come from the model's card.",
        epilog="Example: export-adapt --model trained_models/fst-side-112-texture --videos my_rig/day1_*.mp4 "
        "--export-model models/side-my-rig   (then compare both with export-validate on labelled video)",
    )
    add_version_argument(p)
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="the model folder to adapt")
    p.add_argument("--videos", nargs="+", type=Path, required=True, metavar="VIDEO", help="video of the target rig; no labels needed")
    p.add_argument("--arenas", nargs="+", type=Path, metavar="JSON",
                   help="arenas file per video, same order (default: VIDEO stem + .arenas.json if present, else the whole frame)")  # fmt: skip
    p.add_argument("--export-model", type=Path, required=True, metavar="DIR", help="where the adapted model goes")
    p.add_argument("--name", help="model name for the card (default: --export-model folder name)")
    p.add_argument("--clips", type=int, default=ADAPT_CLIPS_DEFAULT, help=f"clips the statistics are estimated on, drawn over all arenas (default: {ADAPT_CLIPS_DEFAULT})")
    p.add_argument("--frame-step", type=int, default=DEFAULT_FRAME_STEP, help=f"candidate clip centres every Nth model-rate frame (default: {DEFAULT_FRAME_STEP})")
    p.add_argument("--cache-dir", type=Path, default=Path("runs/cache"), help="decoded crops and TV-L1 flow cache (default: runs/cache)")
    p.add_argument("--batch-size", type=int, default=8, help="(default: 8)")
    p.add_argument("--seed", type=int, default=0, help="which clips are drawn (default: 0)")
    p.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


@cli_main("export-adapt")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    apply_threads(args.threads)
    if args.clips < 1 or args.batch_size < 1 or args.frame_step < 1:
        raise UserError("--clips, --batch-size and --frame-step must be >= 1")
    if args.arenas is not None and len(args.arenas) != len(args.videos):
        raise UserError(f"--arenas: {len(args.arenas)} files for {len(args.videos)} videos; give one per video, in the same order")
    if args.export_model.resolve() == args.model.resolve():
        raise UserError("--export-model must be a new folder: the adapted model does not replace the one it comes from")
    t0 = time.monotonic()
    kind = load_card(args.model).kind  # before the weights: a motion model's file is not safetensors
    if kind != "i3d":
        raise UserError(f"--model {args.model}: a {kind!r} model has no BatchNorm statistics to adapt")
    model, card = load_model(args.model)
    ds = unlabelled_clips(card, list(args.videos), list(args.arenas or [None] * len(args.videos)), frame_step=args.frame_step,
                          cache_dir=args.cache_dir, progress=args.verbose)  # fmt: skip
    moved = adapt_batchnorm(model, ds, count=args.clips, seed=args.seed, batch_size=args.batch_size, progress=args.verbose)

    name = args.name or args.export_model.name
    adapted = adapted_card(card, name=name, videos=[v.name for v in args.videos], recordings=len(ds.sources), clips=min(args.clips, len(ds)),
                           frame_step=args.frame_step, seed=args.seed, moved=moved)  # fmt: skip
    save_model(model.eval(), adapted, args.export_model, half=args.half)
    print(f"export-adapt: {len(ds.sources)} recording(s), {adapted.training['adaptation']['clips']} clips; BatchNorm variances moved by {100 * moved:.0f} % (median); "
          f"wrote {args.export_model} in {time.monotonic() - t0:.0f} s. Compare it with {card.name} on labelled video (export-validate).")  # fmt: skip
    return 0
