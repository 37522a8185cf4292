"""The model card ``export-train`` writes beside the weights: data, recipe, result.

Split out of ``export/train.py`` (issue 23); ``export.train`` re-exports every name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from export.train_data import DataSpec
    from export.train_config import TrainConfig
    from export.train_checkpoint import TrainResult

__all__ = ["INPUT_STATS_CLIPS", "make_card", "training_input_stats"]


# Clips sampled for the card's input statistics (issue 24.12): evenly over the training clips, enough
# for 1st/99th percentiles (20 clips beyond each), a few seconds from the cache.
INPUT_STATS_CLIPS = 2000


def training_input_stats(dataset, indices: Sequence[int] | np.ndarray | None = None, *,
                         max_clips: int = INPUT_STATS_CLIPS) -> dict[str, Any]:
    """The card's ``input_stats``: brightness, contrast, flow magnitude of the training clips as the
    model sees them (un-augmented, ``stream.input_check.clip_input_stats``), so that stream-run can
    tell a trial far outside them. Used at training (``make_card``) and to backfill older cards."""
    from stream.input_check import clip_input_stats, input_stats_summary

    plain = dataset.with_augment(False) if hasattr(dataset, "with_augment") else dataset
    idx = np.arange(len(plain)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(idx) > max_clips:
        idx = idx[np.linspace(0, len(idx) - 1, max_clips).round().astype(np.int64)]
    rows = [clip_input_stats(*plain[int(i)][:2])[0] for i in idx]
    return input_stats_summary(np.stack(rows))


def make_card(*, name: str, view: str, spec: DataSpec, immobile: Sequence[str], flow_config: dict[str, Any], init_text: str, config: TrainConfig, result: TrainResult, flow_weight: float, step: str, metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None, input_stats: dict[str, Any] | None = None):
    from stream.modelfile import ModelCard

    data_note = "SYNTHETIC simulator videos (export-synth), not real mice" if spec.synthetic else "annotated videos"
    last = result.history[result.best_epoch - 1] if result.history and result.best_epoch else {}  # the epoch whose weights ship
    training = {
        "step": step,
        "data": data_note,
        "synthetic": spec.synthetic,
        "videos": [Path(v).name for v in spec.videos],
        "video_stride": spec.stride,
        "frame_step": spec.frame_step,
        "streams": "joint: one loop, loss = CE(rgb logits) + CE(flow logits)",
        "config": asdict(config),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
    }
    training.update(extra or {})
    card_metrics = metrics if metrics is not None else {
        k: last[k] for k in ("train_fused_acc", "train_rgb_acc", "train_flow_acc", "val_fused_acc", "val_rgb_acc", "val_flow_acc", "val_loss") if k in last
    }
    return ModelCard(
        name=name,
        view=view,
        classes=list(spec.classes),
        immobile_classes=list(immobile),
        input_size_px=spec.size_px,
        fps=spec.fps,
        flow=flow_config,
        flow_weight=flow_weight,
        init=init_text,
        dropout_keep_prob=config.dropout_keep_prob,
        training=training,
        metrics=card_metrics,
        input_stats=input_stats or {},
        crop=spec.crop,
    )
