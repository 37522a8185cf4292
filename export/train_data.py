"""Data wiring for ``export-train``: the dataset from the command line, the validation split, and the loaders of each epoch.

Split out of ``export/train.py`` (issue 23); ``export.train`` re-exports every name.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, WeightedRandomSampler

from export import distributed
from export.train_config import flow_config_for, flow_options_of
from export.train_model import resolve_device
from stream.errors import UserError
from stream.modelfile import CROP_ROI, ModelCard

if TYPE_CHECKING:
    from export.train_config import TrainConfig

__all__ = ["ARENAS_SUFFIX", "DataSpec", "LABEL_SUFFIXES", "RANK_SEED_STRIDE", "SAMPLER_SEED_STRIDE", "VAL_FOLD_INDEX", "classes_from_args", "dataset_from_args", "dataset_labels", "split_validation"]


SAMPLER_SEED_STRIDE = 1_000_003  # sampler seed = seed * stride + epoch: a fresh, reproducible draw per epoch
RANK_SEED_STRIDE = 7_919  # rank r > 0 seeds its dropout/augmentation RNGs with seed + r * stride (rank 0 = a single process)
VAL_FOLD_INDEX = 0  # which of the --val-folds contiguous folds is the validation set
LABEL_SUFFIXES = (".labels.csv", ".boris.csv", ".csv")  # sibling label files looked for, in this order
ARENAS_SUFFIX = ".arenas.json"  # sibling arenas file written by export-synth


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Class index of every item, without decoding clips when the dataset can tell (``.labels``)."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels, dtype=np.int64)
    return np.asarray([int(dataset[i][2]) for i in range(len(dataset))], dtype=np.int64)


def _class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_classes).astype(np.float64)


def _train_loader(dataset: Dataset, labels: np.ndarray, num_classes: int, config: TrainConfig, epoch: int) -> DataLoader:
    """Shuffled (or class-balanced) batches; the draw depends only on (seed, epoch), so a resumed run repeats it."""
    generator = torch.Generator().manual_seed(config.seed * SAMPLER_SEED_STRIDE + epoch)
    num_samples = config.clips_per_epoch or len(dataset)
    if config.balance == "sampler":
        counts = _class_counts(labels, num_classes)
        weights = 1.0 / counts[labels]
        sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.float64), num_samples, replacement=True, generator=generator)
    else:
        order = torch.randperm(len(dataset), generator=generator)
        reps = math.ceil(num_samples / len(dataset))
        sampler = torch.cat([order] * reps)[:num_samples].tolist()
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        drop_last=len(dataset) > config.batch_size,  # a 1-clip batch breaks BatchNorm statistics
        worker_init_fn=_seed_worker,
        generator=generator,
    )


def _epoch_batches(dataset: Dataset, labels: np.ndarray, num_classes: int, config: TrainConfig, epoch: int) -> list[np.ndarray]:
    """The global batches (dataset indices) of one epoch: exactly what ``_train_loader`` yields.

    Every rank of a job computes the same list from (seed, epoch) and takes its share of each
    batch, so the job trains on the draw a single process makes. The DataLoader draws its worker
    base seed from the generator before the sampler draws; the same order is kept here.
    """
    generator = torch.Generator().manual_seed(config.seed * SAMPLER_SEED_STRIDE + epoch)
    num_samples = config.clips_per_epoch or len(dataset)
    if config.balance == "sampler":
        counts = _class_counts(labels, num_classes)
        weights = 1.0 / counts[labels]
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # the DataLoader's base-seed draw
        order = torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), num_samples, True, generator=generator)
    else:
        perm = torch.randperm(len(dataset), generator=generator)
        order = torch.cat([perm] * math.ceil(num_samples / len(dataset)))[:num_samples]
    order = order.numpy().astype(np.int64)
    drop_last = len(dataset) > config.batch_size
    stop = (order.size // config.batch_size) * config.batch_size if drop_last else order.size
    return [order[i : i + config.batch_size] for i in range(0, stop, config.batch_size)]


def _rank_loader(dataset: Dataset, batches: list[np.ndarray], item_weights: np.ndarray, config: TrainConfig, epoch: int, here: distributed.Dist) -> tuple[DataLoader, list[float]]:
    """This rank's share of every global batch, and per batch the factor that turns DDP's mean of
    the ranks' (weighted) mean losses into the (weighted) mean loss of the global batch: the
    rank's share of the batch's loss weight times the world size (1.0 for equal unweighted shares).
    ``item_weights[i]`` is the cross-entropy weight of dataset item i (1 without class weights)."""
    shares = [np.array_split(b, here.world_size) for b in batches]
    if any(min(len(part) for part in parts) == 0 for parts in shares):
        raise UserError(f"a batch of {min(len(b) for b in batches)} clips cannot be shared by {here.world_size} processes; "
                        "use --batch-size (the global batch) >= the number of processes and enough clips")  # fmt: skip
    mine = [parts[here.rank] for parts in shares]
    factors = [float(item_weights[m].sum() * here.world_size / item_weights[b].sum()) if item_weights[b].sum() > 0 else 1.0
               for m, b in zip(mine, batches)]  # fmt: skip
    mine = [m.tolist() for m in mine]
    generator = torch.Generator().manual_seed(config.seed * SAMPLER_SEED_STRIDE + epoch + here.rank * RANK_SEED_STRIDE)
    loader = DataLoader(dataset, batch_sampler=mine, num_workers=config.num_workers, worker_init_fn=_seed_worker, generator=generator)
    return loader, factors


def _eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@dataclass(frozen=True)
class DataSpec:
    """What the dataset was built from; goes into the model card's ``training`` field."""

    videos: list[str]  # video files (or clip files of a Jhuang folder)
    classes: list[str]  # class order = logit order
    size_px: int  # model input size
    fps: float  # model frame rate
    stride: int  # model-rate frames between clip frames (1: videos are resampled to `fps` by timestamp)
    frame_step: int  # a clip is centred on every frame_step-th labelled frame
    synthetic: bool  # True when the videos come from export-synth
    crop: str = CROP_ROI  # input crop (stream.modelfile.CROPS): the whole arena, or the window around the mouse


def _split_names(text: str | None) -> list[str] | None:
    return None if text is None else [c.strip() for c in text.split(",") if c.strip()]


def classes_from_args(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Class list and immobile classes from --classes / --view / --immobile-classes."""
    from export.annotations import JHUANG_CLASSES, SIDE_CLASSES, TOP_CLASSES

    default = JHUANG_CLASSES if args.jhuang else (SIDE_CLASSES if args.view == "side" else TOP_CLASSES)
    classes = _split_names(args.classes) or list(default)
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise UserError(f"--classes {args.classes!r}: need at least two distinct class names")
    immobile = _split_names(args.immobile_classes)
    if immobile is None:
        immobile = [c for c in ("float", "immobile", "rest") if c in classes]
    unknown = [c for c in immobile if c not in classes]
    if unknown:
        raise UserError(f"--immobile-classes: {unknown} not among the classes {classes}")
    return classes, immobile


def _sibling(video: Path, suffixes: Sequence[str]) -> Path | None:
    for suffix in suffixes:
        candidate = video.with_name(video.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def _pair_up(videos: Sequence[Path], given: Sequence[Path] | None, option: str) -> list[Path | None]:
    if given is None:
        return [None] * len(videos)
    if len(given) != len(videos):
        raise UserError(f"{option}: {len(given)} files for {len(videos)} videos; give one per video, in the same order")
    return list(given)


def _video_fps(path: Path) -> float:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise UserError(f"{path}: cannot open video (missing file or unsupported codec)")
        return float(cap.get(cv2.CAP_PROP_FPS))
    finally:
        cap.release()


def _made_by_synth(arenas_json: Path) -> bool:
    """export-synth records itself in the arenas file; the card must say when data is synthetic."""
    try:
        return json.loads(arenas_json.read_text()).get("generator", {}).get("program") == "export-synth"
    except (OSError, ValueError, AttributeError):
        return False


def card_data_args(args: argparse.Namespace, card: ModelCard, *, what: str) -> argparse.Namespace:
    """What ``dataset_from_args`` needs to cut clips for a finished model: the videos, labels, arenas
    (and test_* of them), frame step, cache and device from ``args``; input size, fps, flow and crop
    from the card, so the clips are the ones the model was trained on. ``what`` names the models in
    the error for a card whose TV-L1 settings no --flow-preset gives."""
    options = flow_options_of(card.flow)
    if options is None:
        raise UserError(f"{what} TV-L1 settings are not one of export-train's --flow-preset choices, so their clips cannot be rebuilt here")
    preset, sigma = options
    return argparse.Namespace(
        videos=args.videos, labels=args.labels, arenas=args.arenas, test_videos=args.test_videos, test_labels=args.test_labels,
        test_arenas=args.test_arenas, jhuang=None, view=card.view, classes=",".join(card.classes),
        immobile_classes=",".join(card.immobile_classes), size_px=card.input_size_px, fps=card.fps, frame_step=args.frame_step,
        cache_dir=args.cache_dir, flow_preset=preset, flow_texture_sigma=sigma, crop=card.crop, device=args.device,
    )  # fmt: skip


def dataset_from_args(args: argparse.Namespace, classes: Sequence[str], *, progress: bool | None = None):
    """The ``ClipDataset`` the arguments describe (flow computed into the cache on first use) and its ``DataSpec``."""
    from export.annotations import read_jhuang_clips
    from export.dataset import ClipDataset, VideoSource, sources_from_files

    if args.size_px < 32:
        raise UserError(f"--size-px {args.size_px}: I3D downsamples by 32; use 32 or more")
    if args.fps <= 0 or args.frame_step < 1:
        raise UserError("--fps must be > 0 and --frame-step >= 1")
    if args.jhuang:
        if not args.jhuang.is_dir():
            raise UserError(f"--jhuang {args.jhuang}: not a folder of clips")
        sources = [VideoSource(a.source, a, None) for a in read_jhuang_clips(args.jhuang, classes=classes)]
    else:
        sources, synthetic = [], []
        for video, labels, arenas in zip(args.videos, _pair_up(args.videos, args.labels, "--labels"), _pair_up(args.videos, args.arenas, "--arenas")):
            if not video.is_file():
                raise UserError(f"{video}: video not found")
            labels = labels or _sibling(video, LABEL_SUFFIXES)
            if labels is None:
                raise UserError(f"{video}: no label file given and none found next to it ({', '.join(video.stem + s for s in LABEL_SUFFIXES)}); pass --labels")
            arenas = arenas or _sibling(video, (ARENAS_SUFFIX,))
            sources += sources_from_files(video, labels, arenas_json=arenas, classes=classes)
            synthetic.append(arenas is not None and _made_by_synth(arenas))
    for video in sorted({s.video_path for s in sources}):
        if _video_fps(video) <= 0:  # labels are per source frame, placed in time by the file's rate
            raise UserError(f"{video}: frame rate unknown; re-encode the video with a frame rate")
    # any camera rate: every video is resampled to --fps by timestamp, by the live rule (stream.capture)
    sigma = getattr(args, "flow_texture_sigma", 0.0)
    if not sigma >= 0:
        raise UserError(f"--flow-texture-sigma {sigma:g}: must be >= 0 px (0 = off)")
    flow_config = flow_config_for(args.flow_preset, sigma)
    crop = getattr(args, "crop", CROP_ROI)  # tools that build their own namespace (streaming fine-tuning) may leave it out
    device = resolve_device(getattr(args, "device", "cpu"))
    flow_device = "cpu" if device.type != "cuda" else ("cuda" if args.device in ("auto", "cuda") else str(device))  # "cuda": every visible GPU
    # in a torchrun job rank 0 decodes and caches (on every GPU) while the others wait; then they only open the cache
    with distributed.long_wait_barrier() as here:
        ds = ClipDataset(
            sources,
            classes,
            size_px=args.size_px,
            cache_dir=args.cache_dir,
            fps=args.fps,
            frame_step=args.frame_step,
            flow_config=flow_config,
            device=flow_device,
            progress=(sys.stderr.isatty() if progress is None else progress) and here.is_main,
            crop=crop,
        )
    if len(ds) == 0:
        raise UserError("no labelled frame in the label files: nothing to train on")
    synthetic = not args.jhuang and all(synthetic)
    spec = DataSpec(
        videos=sorted({str(s.video_path) for s in sources}),
        classes=list(classes),
        size_px=args.size_px,
        fps=args.fps,
        stride=1,  # clips are consecutive model-rate frames (resampled by timestamp)
        frame_step=args.frame_step,
        synthetic=synthetic,
        crop=crop,
    )
    return ds, spec


def split_validation(ds, indices: np.ndarray, val_folds: int, *, by_recording: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) item indices: validation = one contiguous fold of ``indices`` (with a gap),
    a stretch of every source; or, ``by_recording``, whole recordings: one fold of
    ``min(val_folds, recordings)``, where a recording is a video file (its arenas together), or an
    arena when every source comes from one video.

    By recording where something is chosen on the validation split that must hold for new ones (the
    flow weight): a fine-tuned RGB stream recognises the recordings it trained on far better than
    others (``export.learning_curve.split_held_back`` gives the figures).
    """
    from export.folds import contiguous_folds, video_folds

    indices = np.asarray(indices, dtype=np.int64)
    if val_folds == 0:
        return indices, indices[:0]
    if val_folds < 2:
        raise UserError(f"--val-folds {val_folds}: use 0 (no validation) or at least 2")
    items = ds.items[indices]
    if by_recording:
        used = np.unique(items[:, 0])
        videos = [str(src.video_path) for src in ds.sources]
        used_videos = {videos[int(i)] for i in used}
        groups = videos if len(used_videos) >= 2 else None  # None: each source (arena) alone
        recordings = len(used_videos) if groups is not None else len(used)
        if recordings < 2:
            raise UserError(f"the validation split holds back whole recordings (videos, or arenas of one video), and the labels cover "
                            f"{recordings}: label a second animal or video, or give --flow-weight a number")  # fmt: skip
        fold = video_folds(items, min(val_folds, recordings), groups=groups)[VAL_FOLD_INDEX]
    else:
        fold = contiguous_folds(items, val_folds, step=getattr(ds, "stride", 1))[VAL_FOLD_INDEX]
    return indices[fold.train], indices[fold.test]
