"""Cross-validation splits that do not leak neighbouring frames into the test set.

Two clips centred on neighbouring frames share 15 of their 16 frames, so a random frame-level
split puts near-copies of every test clip in the training set and overstates accuracy. Here a
fold's test set is made of contiguous stretches of video (or of whole videos), and training
items closer than ``gap_frames`` to a test stretch are left out of that fold's training set.

The gap is counted in VIDEO frames and scales with the subsampling step: a clip centred on frame
``t`` at step ``s`` (video fps = ``s`` x model fps) reads frames ``t - 8s .. t + 7s``, and its
first flow field also reads ``t - 9s``. Two clips whose centres are more than ``16 s`` frames apart
therefore share no source frame; a gap of ``CLIP_FRAMES * s`` keeps every training centre at least
``16 s + 1`` frames from every test centre. A fixed 16-frame gap at step 2 let training clips
reuse test frames.

Both splitters take the ``(M, 3)`` item table of ``ClipDataset.items`` (source index, centre
frame, label) and return item indices, and both are stratified where the data allow it: the
stretches (or videos) are assigned to folds so that every fold's class mix is as close as
possible to the whole set's. The FST makes this matter: immobility grows over the test, so the
last minute of every video is float-heavy, and a naive "fold j = j-th fifth of each video" split
would test on float only in the last fold.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stream.errors import UserError
from stream.preprocess import CLIP_FRAMES

__all__ = ["Fold", "contiguous_folds", "gap_for_step", "video_folds"]

DEFAULT_GAP_FRAMES = CLIP_FRAMES  # at step 1, a train clip this far from a test stretch shares no frame with it


def gap_for_step(step: int) -> int:
    """Video frames to leave between test and training centres when clips span ``step`` frames per clip frame."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    return DEFAULT_GAP_FRAMES * step
MAX_PERMUTATION_K = 6  # try all k! chunk-to-fold assignments up to 720; beyond that, rotations only


@dataclass(frozen=True)
class Fold:
    """Item indices (into the dataset) of one fold's training and test sets."""

    train: np.ndarray
    test: np.ndarray
    excluded: np.ndarray  # items in neither: inside the gap around a test stretch


def _check(items: np.ndarray, k: int) -> np.ndarray:
    items = np.asarray(items, dtype=np.int64)
    if items.ndim != 2 or items.shape[1] != 3:
        raise ValueError(f"items must be (M, 3) source/frame/label, got shape {items.shape}")
    if k < 2:
        raise UserError(f"k={k}: cross-validation needs at least 2 folds")
    return items


def _counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_classes).astype(np.float64)


def _imbalance(fold_counts: np.ndarray, target: np.ndarray) -> float:
    return float(np.square(fold_counts - target).sum())


def contiguous_folds(
    items: np.ndarray, k: int, *, step: int = 1, gap_frames: int | None = None, chunks_per_fold: int = 1
) -> list[Fold]:
    """k folds of contiguous stretches: each source is cut into ``k * chunks_per_fold`` stretches
    of equal item count; each fold tests on ``chunks_per_fold`` stretches of every source.

    ``step`` is the dataset's subsampling step (``ClipDataset.stride``: video frames between clip
    frames); the gap defaults to ``gap_for_step(step)`` video frames. ``gap_frames`` overrides it.
    Which stretch of a source goes to which fold is chosen to balance the folds' class mix.
    """
    items = _check(items, k)
    if gap_frames is None:
        gap_frames = gap_for_step(step)
    if gap_frames < 0 or chunks_per_fold < 1:
        raise ValueError("gap_frames must be >= 0 and chunks_per_fold >= 1")
    num_classes = int(items[:, 2].max()) + 1 if items.size else 1
    target = _counts(items[:, 2], num_classes) / k
    fold_counts = np.zeros((k, num_classes))
    # per fold: list of (source, start_frame, stop_frame) test stretches
    stretches: list[list[tuple[int, int, int]]] = [[] for _ in range(k)]
    n_chunks = k * chunks_per_fold
    for s in np.unique(items[:, 0]):
        sel = items[items[:, 0] == s]
        frames = np.sort(sel[:, 1])
        if frames.size < n_chunks:
            raise UserError(f"source {s} has {frames.size} labelled items, fewer than the {n_chunks} stretches "
                            f"needed for {k} folds; use fewer folds or video_folds")  # fmt: skip
        cuts = [int(frames[(j * frames.size) // n_chunks]) for j in range(n_chunks)] + [int(frames[-1]) + 1]
        chunk_counts = [_counts(sel[(sel[:, 1] >= cuts[j]) & (sel[:, 1] < cuts[j + 1]), 2], num_classes)
                        for j in range(n_chunks)]  # fmt: skip
        for g in range(chunks_per_fold):
            group = list(range(g * k, (g + 1) * k))
            perms = itertools.permutations(range(k)) if k <= MAX_PERMUTATION_K else (
                tuple((i + r) % k for i in range(k)) for r in range(k))  # fmt: skip
            best, best_cost = None, np.inf
            for perm in perms:  # perm[i] = fold of chunk group[i]
                trial = fold_counts.copy()
                for i, fold in enumerate(perm):
                    trial[fold] += chunk_counts[group[i]]
                cost = _imbalance(trial, target)
                if cost < best_cost - 1e-9:
                    best, best_cost = perm, cost
            for i, fold in enumerate(best):
                fold_counts[fold] += chunk_counts[group[i]]
                stretches[fold].append((int(s), cuts[group[i]], cuts[group[i] + 1]))
    folds = []
    all_idx = np.arange(items.shape[0])
    for j in range(k):
        test = np.zeros(items.shape[0], dtype=bool)
        near = np.zeros(items.shape[0], dtype=bool)
        for s, a, b in stretches[j]:
            same = items[:, 0] == s
            test |= same & (items[:, 1] >= a) & (items[:, 1] < b)
            near |= same & (items[:, 1] >= a - gap_frames) & (items[:, 1] < b + gap_frames)
        excluded = near & ~test
        folds.append(Fold(train=all_idx[~near], test=all_idx[test], excluded=all_idx[excluded]))
    return folds


def video_folds(items: np.ndarray, k: int, *, groups: Sequence[object] | None = None) -> list[Fold]:
    """k folds by whole source (or by group of sources, e.g. all arenas of one video file).

    ``groups[s]`` names the group of source ``s``; sources of a group always land in the same fold.
    Groups are assigned largest first to the fold that leaves the class mix most balanced.
    """
    items = _check(items, k)
    sources = np.unique(items[:, 0])
    group_of = {int(s): (groups[int(s)] if groups is not None else int(s)) for s in sources}
    names = list(dict.fromkeys(group_of.values()))
    if len(names) < k:
        raise UserError(f"{len(names)} videos/groups cannot make {k} folds; use k <= {len(names)} or contiguous_folds")
    num_classes = int(items[:, 2].max()) + 1 if items.size else 1
    member = {g: np.isin(items[:, 0], [s for s, gg in group_of.items() if gg == g]) for g in names}
    g_counts = {g: _counts(items[member[g], 2], num_classes) for g in names}
    target = _counts(items[:, 2], num_classes) / k
    order = sorted(names, key=lambda g: (-g_counts[g].sum(), str(g)))
    fold_counts = np.zeros((k, num_classes))
    assign: dict[object, int] = {}
    for n, g in enumerate(order):
        if n < k:
            fold = n  # every fold gets at least one group
        else:
            costs = []
            for f in range(k):
                trial = fold_counts.copy()
                trial[f] += g_counts[g]
                costs.append(_imbalance(trial, target))
            fold = int(np.argmin(costs))
        assign[g] = fold
        fold_counts[fold] += g_counts[g]
    all_idx = np.arange(items.shape[0])
    folds = []
    for j in range(k):
        test = np.zeros(items.shape[0], dtype=bool)
        for g, f in assign.items():
            if f == j:
                test |= member[g]
        folds.append(Fold(train=all_idx[~test], test=all_idx[test], excluded=all_idx[:0]))
    return folds
