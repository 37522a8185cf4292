"""A model's BatchNorm statistics estimated again on the video it is about to score (AdaBN, Li et al.
2016, "Revisiting batch normalization for practical domain adaptation"), with no label.

Why here, in the stream: a model trained on our simulator meets a rig's background, light and mouse
for the first time, and its BatchNorm layers normalise features whose level and spread are not those
they were trained on. On the 9 held-out families, each recording adapted on 64 of its own unlabelled
clips took ``fst-top-112`` from 0.790 to 0.961 (``export-adapt-check``), while one adaptation on all
9 recordings together reached only 0.886: the statistics pay most when they are the recording's own.
So ``stream-run --adapt`` adapts each recorded video before it scores it (``stream.runner``), and
``export-adapt`` / ``export-adapt-check`` do the same offline.

The clips are those the live path cuts (``stream.clip_source.ClipSource``: the card's input size, crop
and TV-L1 settings, the arenas' ROIs, frames resampled to the card's fps by ``stream.capture``), and
which clips is decided exactly as ``export.dataset.ClipDataset`` would list and draw them (``pick_clips``):
so ``stream-run --adapt`` and ``export-adapt`` estimate the same statistics from the same centre frames
(the clips agree as the live and the training clips do: RGB exactly, flow within the training cache's
quantisation and TV-L1's warm start).

Two passes over the file: the first counts the model-rate frames (the draw needs their number), the
second computes flow only for the 17 frames each drawn clip needs (one before its first, so the clip's
first flow frame is the motion into it, as in a continuous run), and, for the mouse crop, follows the
mouse on every frame, as the live locator does.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream.capture import Capture, CaptureConfig, EndOfStream, Frame, Gap, SourceSpec
from stream.clip_source import ClipSource
from stream.flow import TVL1, FlowConfig
from stream.modelfile import ModelCard
from stream.preprocess import CLIP_FRAMES, Roi
from stream.run_config import ADAPT_CLIPS_DEFAULT

__all__ = ["ADAPT_METHOD", "DEFAULT_FRAME_STEP", "adapted_card", "pick_clips", "reestimate_batchnorm", "variance_change",
           "video_clips"]

log = logging.getLogger(__name__)

ADAPT_METHOD = "BatchNorm statistics estimated on unlabelled target video (AdaBN, Li et al. 2016)"
DEFAULT_FRAME_STEP = 15  # candidate clip centres every 15th model-rate frame (1 s at 15 fps)
PAST_FRAMES = CLIP_FRAMES // 2  # a clip holds its centre, 8 frames before it and 7 after


def pick_clips(num_frames: Sequence[int], *, frame_step: int, count: int, seed: int) -> list[tuple[int, int]]:
    """The (arena, centre) pairs drawn, in draw order: candidates arena by arena, every ``frame_step``-th
    frame from 0, then the first ``count`` of a seeded permutation. This is ``ClipDataset``'s item list
    with all-zero labels and ``export.train.recalibrate_batchnorm``'s draw, so both paths pick the same."""
    items = [(a, f) for a, n in enumerate(num_frames) for f in range(0, n, frame_step)]
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    return [items[i] for i in order]


def reestimate_batchnorm(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device | str) -> float:
    """Replaces the running statistics of ``model``'s BatchNorm layers by their average over ``batches``
    of (rgb, flow) clips, in place, and returns how far their variances moved (``variance_change``).
    Only the BatchNorm layers run in training mode (dropout stays off); the average is cumulative
    (momentum None), each batch counting once. Layers whose weights are frozen (``requires_grad`` off:
    a training recipe's frozen blocks) keep the statistics they came with."""
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   and (m.weight is None or m.weight.requires_grad)]  # fmt: skip
    if not batch_norms:
        return 0.0
    before = {f"{i}.running_var": m.running_var.clone() for i, m in enumerate(batch_norms) if m.running_var is not None}
    model.eval()
    saved = [m.momentum for m in batch_norms]
    for m in batch_norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with torch.no_grad():
            for rgb, flow in batches:
                model(rgb.to(device), flow.to(device))
    finally:
        for m, momentum in zip(batch_norms, saved):
            m.momentum = momentum
        model.eval()
    return variance_change(before, {f"{i}.running_var": m.running_var for i, m in enumerate(batch_norms) if m.running_var is not None})


def variance_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """How far the variances moved: the median over layers of each layer's median relative change."""
    keys = [k for k in before if k.endswith("running_var")]
    return float(np.median([((after[k] - before[k]).abs() / (before[k].abs() + 1e-6)).median().item() for k in keys])) if keys else 0.0


def adapted_card(card: ModelCard, *, name: str, videos: Sequence[str], recordings: int, clips: int, frame_step: int, seed: int | None,
                 moved: float, **more: Any) -> ModelCard:
    """The adapted model's card: the source's, renamed, saying what the statistics came from under
    ``training.adaptation`` (with the source's figures, measured before it) and that nothing was
    measured after; the checksum is filled in when the weights are saved."""
    facts = {"method": ADAPT_METHOD, "source_model": card.name, "source_weights_sha256": card.weights_sha256, "videos": list(videos),
             "recordings": recordings, "clips": clips, "frame_step": frame_step, "seed": seed,
             "median_relative_change_of_variances": round(moved, 4), **more, "source_metrics": card.metrics}  # fmt: skip
    return dataclasses.replace(
        card, name=name, training={**card.training, "adaptation": facts},
        metrics={"evaluation": "none after the adaptation; the source model's figures (measured before it) are under training.adaptation.source_metrics"},
        weights_sha256="", created_utc="",
    )  # fmt: skip


def _frames(video: Path, fps: float) -> Iterable[Frame | Gap]:
    """The file's model-rate frames (and gaps), resampled by the live rule."""
    capture = Capture(SourceSpec("file", str(video)), CaptureConfig(fps=fps, live=False))
    capture.open()
    capture.start()
    try:
        for item in capture:
            if isinstance(item, EndOfStream):
                if item.error:
                    raise OSError(f"{video}: {item.error}")
                return
            if item is not None:
                yield item
    finally:
        capture.close()


def video_clips(video: Path, rois: Sequence[Roi | None], card: ModelCard, *, count: int = ADAPT_CLIPS_DEFAULT, frame_step: int = DEFAULT_FRAME_STEP,
                seed: int = 0, warm_start: bool = True, on_frame: Callable[[int], None] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """``count`` unlabelled clips of ``video``'s arenas, as (rgb (3, 16, S, S), flow (2, 16, S, S)) in
    draw order (``pick_clips``). ``on_frame`` is called once per frame read, on both passes (progress)."""
    num_frames = 0
    for item in _frames(video, card.fps):
        if isinstance(item, Frame):
            num_frames += 1
            if on_frame is not None:
                on_frame(item.index)
    if num_frames == 0:
        raise OSError(f"{video}: no frame could be read")
    picks = pick_clips([num_frames] * len(rois), frame_step=frame_step, count=count, seed=seed)
    centres = sorted({c for _, c in picks})
    wanted = set()  # frames whose flow a drawn clip needs: one before its first, to its last
    for c in centres:
        wanted.update(range(max(0, c - PAST_FRAMES - 1), min(num_frames, c + CLIP_FRAMES - PAST_FRAMES)))
    source = ClipSource(len(rois), card.input_size_px, TVL1(FlowConfig(**card.flow)), crop=card.crop, fps=card.fps, warm_start=warm_start)
    clips: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    pending = list(centres)
    last_pushed = None
    for item in _frames(video, card.fps):
        if isinstance(item, Gap):
            source.reset()
            last_pushed = None
            continue
        i = item.index
        if on_frame is not None:
            on_frame(i)
        if i not in wanted and not source.follows_mouse:
            continue
        crops = source.crops(item.image, rois)
        if i in wanted:
            if last_pushed is not None and i != last_pushed + 1:
                source.reset()  # a new stretch: its first frame gets zero flow, as after a gap
            source.push(crops, i)
            last_pushed = i
        else:
            source.follow(crops, i)
        while pending and (pending[0] + CLIP_FRAMES - PAST_FRAMES - 1 <= i or i == num_frames - 1):
            c = pending.pop(0)
            try:
                rgb, flow = source.clip(c, min(i, c + CLIP_FRAMES - PAST_FRAMES - 1))
            except ValueError:  # a gap in the file took the centre out of the ring
                log.warning("%s: no clip at frame %d (a gap in the file); the statistics use the others", video, c)
                continue
            clips[c] = (rgb.cpu(), flow.cpu())
        if not pending:
            break
    if not clips:
        raise OSError(f"{video}: no clip could be cut on the second pass")
    return [(clips[c][0][a], clips[c][1][a]) for a, c in picks if c in clips]


def batches_of(clips: Sequence[tuple[torch.Tensor, torch.Tensor]], batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """The clips stacked ``batch_size`` at a time, in order (the batches a ``DataLoader`` would make)."""
    for i in range(0, len(clips), batch_size):
        part = clips[i : i + batch_size]
        yield torch.stack([r for r, _ in part]), torch.stack([f for _, f in part])
