"""Prediction with a trained two-stream model: each stream's probabilities per clip (sharded in a torchrun job).

Split out of ``export/train.py`` (issue 23); ``export.train`` re-exports every name.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from export import distributed
from export.train_data import _eval_loader
from export.train_model import resolve_device

__all__ = ["StreamPredictions", "predict_streams"]


@dataclass
class StreamPredictions:
    """Per-clip softmax of each stream: the fusion weight can then be swept without re-running the model."""

    rgb_probs: np.ndarray  # (N, K) float32
    flow_probs: np.ndarray  # (N, K) float32
    labels: np.ndarray  # (N,) int64


@torch.no_grad()
def predict_streams(model: torch.nn.Module, dataset: Dataset, *, batch_size: int = 8, device: str = "auto", progress: bool | None = None) -> StreamPredictions:
    """Each stream's softmax on every clip of ``dataset``, in dataset order.

    In a torchrun job every rank predicts a contiguous shard and all ranks receive the whole.
    """
    here = distributed.current()
    progress = (sys.stderr.isatty() if progress is None else progress) and here.is_main
    dev = resolve_device(device)
    model.to(dev).eval()
    part = Subset(dataset, distributed.shard(len(dataset)).tolist()) if here.active else dataset
    rgb_out, flow_out, label_out = [], [], []
    for rgb, flow, labels in tqdm(_eval_loader(part, batch_size), desc="predict", leave=False, disable=not progress, unit="batch"):
        _, rgb_logits, flow_logits = model(rgb.to(dev), flow.to(dev))
        rgb_out.append(torch.softmax(rgb_logits.float(), 1).cpu().numpy())
        flow_out.append(torch.softmax(flow_logits.float(), 1).cpu().numpy())
        label_out.append(np.asarray(labels, dtype=np.int64))
    if here.active:
        k = max(distributed.all_gather_plain(rgb_out[0].shape[1] if rgb_out else 0))  # a rank with no clip learns K from the others
        empty = np.zeros((0, k), np.float32)
        rgb_out = [distributed.gather_rows(np.concatenate(rgb_out) if rgb_out else empty)]
        flow_out = [distributed.gather_rows(np.concatenate(flow_out) if flow_out else empty)]
        label_out = [distributed.gather_rows(np.concatenate(label_out) if label_out else np.zeros(0, np.int64))]
    if not label_out or not sum(len(x) for x in label_out):
        k = 0
        return StreamPredictions(np.zeros((0, k), np.float32), np.zeros((0, k), np.float32), np.zeros(0, np.int64))
    return StreamPredictions(np.concatenate(rgb_out), np.concatenate(flow_out), np.concatenate(label_out))
