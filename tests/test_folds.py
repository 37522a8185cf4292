"""export/folds.py: the cross-validation gap keeps training clips off every test frame at any step."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from export import train as tr
from export.folds import DEFAULT_GAP_FRAMES, contiguous_folds, gap_for_step
from stream.preprocess import clip_indices

NUM_FRAMES = 900  # one 30 s video at 30 fps


def _items(num_sources: int = 2, n: int = NUM_FRAMES, seed: int = 0) -> np.ndarray:
    """Every frame labelled, in bouts of 20-80 frames of one of 3 classes."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(num_sources):
        t = 0
        while t < n:
            length, label = int(rng.integers(20, 80)), int(rng.integers(0, 3))
            rows += [(s, f, label) for f in range(t, min(n, t + length))]
            t += length
    return np.array(rows, dtype=np.int64)


def _frames_read(items: np.ndarray, step: int, n: int = NUM_FRAMES) -> set[tuple[int, int]]:
    """(source, video frame) pairs the clips of ``items`` read: their 16 frames and, for the flow of
    each clip frame, the frame ``step`` before it (what ``ClipDataset`` feeds TV-L1)."""
    used: set[tuple[int, int]] = set()
    for s, t, _ in items:
        idx = clip_indices(int(t), n, step)
        for f in np.concatenate([idx, np.maximum(idx - step, 0)]):
            used.add((int(s), int(f)))
    return used


def _shared_frames(items: np.ndarray, folds, step: int) -> int:
    return sum(len(_frames_read(items[f.train], step) & _frames_read(items[f.test], step)) for f in folds)


@pytest.mark.parametrize("step", [1, 2, 3])
def test_no_training_clip_reads_a_test_frame(step):
    items = _items()
    folds = contiguous_folds(items, 5, step=step)
    assert _shared_frames(items, folds, step) == 0
    for f in folds:  # the gap costs only the items next to a test stretch
        assert len(f.train) + len(f.test) + len(f.excluded) == len(items)
        assert len(f.excluded) <= 2 * 2 * gap_for_step(step)  # 2 sources x 2 sides at most


def test_a_fixed_16_frame_gap_leaks_at_step_2():
    """What the scaled gap fixes: at step 2 a 16-frame gap lets training clips read test frames."""
    items = _items()
    assert _shared_frames(items, contiguous_folds(items, 5, gap_frames=DEFAULT_GAP_FRAMES), step=2) > 0


def test_gap_for_step():
    assert [gap_for_step(s) for s in (1, 2, 3)] == [16, 32, 48]
    with pytest.raises(ValueError):
        gap_for_step(0)


@pytest.mark.parametrize("step", [1, 3])
def test_validation_split_uses_the_dataset_step(step):
    items = _items(num_sources=1)
    ds = SimpleNamespace(items=items, stride=step)
    train_idx, val_idx = tr.split_validation(ds, np.arange(len(items)), 5)
    gaps = np.abs(items[train_idx, 1][:, None] - items[val_idx, 1][None, :]).min()
    assert gaps == gap_for_step(step) + 1
