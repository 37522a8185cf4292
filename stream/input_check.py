"""Out of its depth, it says so: a trial whose input or predictions the model was not trained for.

A model trained on simulator video (or on one lab's rig) scores whatever it is shown, and a
confident number on foreign footage looks like any other (issue 24.12: on a real top-view open field,
where the mouse walks across the arena, the top model called 99.5 % of frames immobile, silently).
Two cheap signs that it is out of its depth, checked per trial:

* **near-constant predictions**: one class is the model's most probable on at least
  ``NEAR_CONSTANT_SHARE`` of a trial's frames (a forced swim test alternates swimming and
  floating; a real 6-minute test that is 98 % one behaviour is rare, a model that cannot read the
  input gives it every time);
* **input far from the training range**: the trial's median brightness, contrast or flow magnitude
  lies outside the card's training range (``card.input_stats``: 1st-99th percentiles over the
  training clips, recorded at training by ``input_stats_summary``) by more than
  ``OUT_OF_RANGE_MARGIN`` of that range's width.

The statistics are taken on the model's own input (the RGB and encoded-flow clips, so identical at
training and at run time, ``clip_input_stats``) in units a person can read: brightness and contrast
as grey levels (0-255; contrast = spatial standard deviation), flow magnitude in pixels per frame at
the model's input size. A trial with either sign gets a warning line, an ``input_check`` block with
``warnings`` in its summary JSON, ``out_of_depth`` in the ``quality`` column of ``results.csv``, and
``swim_stream_out_of_depth{arena} = 1``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stream.flow import FLOW_CLIP_PX

__all__ = [
    "INPUT_STATS",
    "NEAR_CONSTANT_SHARE",
    "OUT_OF_RANGE_MARGIN",
    "ArenaInputCheck",
    "InputReference",
    "clip_input_stats",
    "input_stats_problems",
    "input_stats_summary",
]

log = logging.getLogger(__name__)

INPUT_STATS = ("brightness", "contrast", "flow_magnitude")  # columns of clip_input_stats, keys of the card field
# 98 %: the simulator's FST has 35-65 % immobility and real tests 20-90 %; a model that cannot read the
# input gives one class on (nearly) every frame (99.5 % on the open-field video of issue 24.12)
NEAR_CONSTANT_SHARE = 0.98
# A short trial can be one behaviour throughout (a mouse placed in and taken out again): judge
# constancy only on trials of at least half a minute.
NEAR_CONSTANT_MIN_S = 30.0
# Far outside = beyond the training 1st-99th percentile range by more than half its width: a margin
# wide enough that a lab's brighter lamp or another camera's noise inside what the simulator drew is
# not flagged, narrow enough that a different kind of footage is.
OUT_OF_RANGE_MARGIN = 0.5
PERCENTILES = (1.0, 50.0, 99.0)  # what the card records per statistic: p01, p50, p99
SAMPLES_KEPT = 8192  # per-trial clip statistics kept for the median (halved by decimation beyond: bounded memory)
_GREY_SCALE = 127.5  # model RGB in [-1, 1] -> grey levels 0..255


def clip_input_stats(rgb: torch.Tensor | np.ndarray, flow: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per clip (N, 3): brightness and contrast (grey levels) and flow magnitude (px/frame).

    ``rgb`` (N, 3, T, S, S) in [-1, 1] and ``flow`` (N, 2, T, S, S) encoded (``stream.flow.encode_flow``),
    exactly what the model gets; a single clip without the batch axis is accepted too.
    """
    rgb_t = torch.as_tensor(rgb)
    flow_t = torch.as_tensor(flow)
    if rgb_t.dim() == 4:
        rgb_t, flow_t = rgb_t[None], flow_t[None]
    with torch.no_grad():
        grey = rgb_t.float().mean(dim=1)  # (N, T, S, S)
        brightness = (grey.mean(dim=(1, 2, 3)) + 1.0) * _GREY_SCALE
        contrast = grey.flatten(2).std(dim=2, correction=0).mean(dim=1) * _GREY_SCALE  # spatial spread, averaged over time
        flow_f = flow_t.float()
        magnitude = torch.sqrt(flow_f[:, 0] ** 2 + flow_f[:, 1] ** 2).mean(dim=(1, 2, 3)) * FLOW_CLIP_PX
        out = torch.stack([brightness, contrast, magnitude], dim=1)
    return out.detach().cpu().numpy().astype(np.float64)


def input_stats_summary(samples: np.ndarray) -> dict[str, Any]:
    """The card's ``input_stats`` from per-clip statistics (M, 3) of the training clips."""
    samples = np.asarray(samples, dtype=np.float64).reshape(-1, len(INPUT_STATS))
    if not len(samples):
        raise ValueError("no clips to take input statistics from")
    stats: dict[str, Any] = {"clips": int(len(samples)),
                             "units": "brightness, contrast: grey levels 0-255; flow_magnitude: px/frame at input size"}
    for k, name in enumerate(INPUT_STATS):
        p01, p50, p99 = np.percentile(samples[:, k], PERCENTILES)
        stats[name] = {"p01": round(float(p01), 3), "p50": round(float(p50), 3), "p99": round(float(p99), 3)}
    return stats


def input_stats_problems(stats: Mapping[str, Any]) -> list[str]:
    """What is wrong with a card's ``input_stats`` ({} is fine: an older card without it)."""
    if not stats:
        return []
    problems = []
    for name in INPUT_STATS:
        entry = stats.get(name)
        values = [entry.get(p) for p in ("p01", "p50", "p99")] if isinstance(entry, dict) else []
        ok = len(values) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                      for v in values)
        if not ok or not values[0] <= values[1] <= values[2]:
            problems.append(f"input_stats.{name} must be {{p01, p50, p99}}: finite numbers in order")
    return problems


@dataclass(frozen=True)
class InputReference:
    """What a trial is compared with: the card's training statistics (empty: only the constancy check)."""

    model: str
    classes: tuple[str, ...]
    fps: float
    input_stats: Mapping[str, Any]

    def range_of(self, name: str) -> tuple[float, float] | None:
        entry = self.input_stats.get(name) if self.input_stats else None
        if not isinstance(entry, Mapping):
            return None
        lo, hi = float(entry["p01"]), float(entry["p99"])
        margin = OUT_OF_RANGE_MARGIN * (hi - lo)
        return lo - margin, hi + margin


class ArenaInputCheck:
    """One arena's current trial: clip statistics and the model's labels, judged at the trial's end."""

    def __init__(self, reference: InputReference) -> None:
        self.reference = reference
        self.reset()

    def reset(self) -> None:
        self._samples: list[np.ndarray] = []
        self._every = 1  # keep every n-th sample (decimated when SAMPLES_KEPT is reached)
        self._seen = 0
        self._labels = np.zeros(len(self.reference.classes), dtype=np.int64)

    def add_clip(self, stats: np.ndarray) -> None:
        """Statistics of one model call's clip for this arena (``clip_input_stats`` row)."""
        self._seen += 1
        if self._seen % self._every:
            return
        self._samples.append(np.asarray(stats, dtype=np.float64))
        if len(self._samples) >= SAMPLES_KEPT:
            self._samples = self._samples[::2]
            self._every *= 2

    def add_prediction(self, probs: np.ndarray) -> None:
        """The model's probabilities for one classified frame (stride-filled frames too)."""
        self._labels[int(np.argmax(probs))] += 1

    def result(self) -> dict[str, Any]:
        """The summary's ``input_check`` block; ``warnings`` is empty when nothing looks foreign."""
        ref = self.reference
        frames = int(self._labels.sum())
        out: dict[str, Any] = {"model": ref.model, "frames": frames, "clips": self._seen, "warnings": []}
        if frames:
            k = int(np.argmax(self._labels))
            share = float(self._labels[k]) / frames
            out["majority_class"], out["majority_share"] = ref.classes[k], round(share, 4)
            if share >= NEAR_CONSTANT_SHARE and frames / ref.fps >= NEAR_CONSTANT_MIN_S:
                out["warnings"].append(
                    f"predictions near-constant: {share * 100:.1f} % of {frames} frames are {ref.classes[k]!r} "
                    f"(threshold {NEAR_CONSTANT_SHARE * 100:g} %); the footage may be unlike what {ref.model} "
                    "was trained on")
        if self._samples:
            medians = np.median(np.stack(self._samples), axis=0)
            out["input"] = {name: round(float(v), 3) for name, v in zip(INPUT_STATS, medians)}
            if ref.input_stats:
                out["training_range"] = {name: [ref.input_stats[name]["p01"], ref.input_stats[name]["p99"]]
                                         for name in INPUT_STATS if name in ref.input_stats}
            for name, value in zip(INPUT_STATS, medians):
                bounds = ref.range_of(name)
                if bounds is not None and not bounds[0] <= value <= bounds[1]:
                    lo, hi = out["training_range"][name]
                    out["warnings"].append(
                        f"{name.replace('_', ' ')} {value:.1f} is far outside {ref.model}'s training range "
                        f"{lo:g}-{hi:g}")
        return out


def warn(arena_id: str, trial_id: str, warnings: Sequence[str]) -> None:
    """The console line(s) for a trial out of the model's depth."""
    for text in warnings:
        log.warning("trial %s (arena %s) OUT OF ITS DEPTH: %s; check its figures by eye", trial_id, arena_id, text)
