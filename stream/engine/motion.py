"""The motion-threshold baseline as a model kind: what labs score with today, run by the live loop.

DBscorer calls a 1-s bin immobile when the animal's area changes by less than 1.6 % and keeps
bouts of at least 2 s; EthoVision thresholds "mobility" the same way. This is that scorer built
from what the pipeline already computes: the TV-L1 optical flow of each arena's crop, i.e. the
flow clip the engine receives for every frame. Its one feature is the mean flow magnitude (pixels
per frame at the model's input size) over the 16-frame clip, a ~1 s window centred on the frame
at 15 fps, like DBscorer's bin. Thresholds on it give the class:

* top view: ``immobile`` below the threshold, ``mobile`` at or above it;
* side view: three classes ordered by how much they move, two thresholds
  (``lowest < t1 <= middle < t2 <= highest``). The order is fitted from the annotations
  (classes sorted by their median motion), not assumed: on the simulator ``struggle`` (one hind
  foot paddling) moves less than ``swim`` (the whole body travelling), on real mice it is usually
  the reverse, and the fit must not depend on which.

The thresholds and the minimum bout are fitted on a lab's annotations by ``export-fit-motion``
(``export/motion_fit.py``). A fitted model is a folder like any other: ``card.json`` with
``"kind": "motion"`` (classes, fps, input size and flow settings, the fitted values under
``training``, the fitted minimum bout under ``decisions``) and ``motion.json`` holding the
parameters the engine reads, whose sha256 the card records exactly like I3D weights. So
``stream-run --model DIR`` runs it live with the same capture, flow, decisions and counters.

Its probabilities are one-hot (a threshold rule has no confidence): ``--smoothing average`` then
takes a majority vote over the window, hysteresis works on the 0/1 immobile probability, and the
minimum-bout rule relabels a short immobile run with the first mobile class in the card's order.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream.engine.base import Engine, EngineConfig, torch_device
from stream.errors import UserError
from stream.flow import FLOW_CLIP_PX
from stream.modelfile import CARD_FILE, ModelCard, ModelFileError, load_card, sha256_file, verify_weights, write_model_text

__all__ = ["MOTION_FILE", "MOTION_KIND", "MOTION_FEATURE", "MotionEngine", "MotionParams", "classify",
           "motion_feature", "read_params", "save_motion_model"]

log = logging.getLogger(__name__)

MOTION_KIND = "motion"  # card "kind" of this model type
MOTION_FILE = "motion.json"  # the parameters file; the card's weights_file / weights_sha256 point at it
MOTION_FEATURE = "mean_flow_magnitude_px"  # the only feature so far; named so a file says what it thresholds
MOTION_FORMAT_VERSION = 1


def motion_feature(flow_clips: torch.Tensor | np.ndarray) -> np.ndarray:
    """Mean optical-flow magnitude per clip, in pixels per frame at the model input size.

    ``flow_clips`` are the encoded (B, 2, T, S, S) clips the ring hands the engine
    (``stream.flow.encode_flow``: clipped to +-FLOW_CLIP_PX and scaled to [-1, 1]); decoding is the
    inverse scale. Edge-padding frames carry zero flow, exactly as for the I3D.
    """
    flow = torch.as_tensor(flow_clips).float() * FLOW_CLIP_PX
    magnitude = torch.sqrt(flow[:, 0] ** 2 + flow[:, 1] ** 2)  # (B, T, S, S)
    return magnitude.mean(dim=(1, 2, 3)).double().cpu().numpy()


@dataclass(frozen=True)
class MotionParams:
    """What ``motion.json`` holds; validated on load and before saving."""

    classes_low_to_high: tuple[str, ...]  # the card's classes ordered from least to most motion
    thresholds_px: tuple[float, ...]  # len(classes) - 1 increasing thresholds on the feature
    min_bout_s: float  # the fitted minimum immobility bout (also the card's decisions default)
    feature: str = MOTION_FEATURE

    def validate(self, classes: list[str], where: str) -> None:
        problems = []
        if sorted(self.classes_low_to_high) != sorted(classes):
            problems.append(f"classes_low_to_high {list(self.classes_low_to_high)} are not the card's classes {classes}")
        t = list(self.thresholds_px)
        if len(t) != len(classes) - 1:
            problems.append(f"{len(t)} thresholds for {len(classes)} classes (need {len(classes) - 1})")
        if any(not math.isfinite(x) for x in t) or any(b < a for a, b in zip(t, t[1:])):
            problems.append(f"thresholds_px {t} must be finite and non-decreasing")
        if not (math.isfinite(self.min_bout_s) and self.min_bout_s >= 0):
            problems.append(f"min_bout_s {self.min_bout_s} must be >= 0")
        if self.feature != MOTION_FEATURE:
            problems.append(f"feature {self.feature!r} unknown (this swim-stream knows {MOTION_FEATURE!r})")
        if problems:
            raise ModelFileError(f"{where}: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {"format": "swim-stream-motion", "format_version": MOTION_FORMAT_VERSION, **asdict(self),
                "classes_low_to_high": list(self.classes_low_to_high), "thresholds_px": list(self.thresholds_px)}


def classify(features: np.ndarray, params: MotionParams, classes: list[str]) -> np.ndarray:
    """Class index (in ``classes`` order) of each feature value: the threshold rule."""
    rank = np.searchsorted(np.asarray(params.thresholds_px, dtype=np.float64), np.asarray(features, np.float64), side="right")
    order = np.array([classes.index(c) for c in params.classes_low_to_high])
    return order[rank]


def read_params(directory: Path, card: ModelCard) -> MotionParams:
    """``motion.json`` of a motion model, after checking its sha256 against the card."""
    path = verify_weights(directory, card)
    try:
        data = json.loads(path.read_text())
        params = MotionParams(classes_low_to_high=tuple(data["classes_low_to_high"]),
                              thresholds_px=tuple(float(x) for x in data["thresholds_px"]),
                              min_bout_s=float(data["min_bout_s"]), feature=str(data.get("feature", MOTION_FEATURE)))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a motion-model parameters file ({exc})") from exc
    params.validate(list(card.classes), str(path))
    return params


def save_motion_model(directory: str | Path, card: ModelCard, params: MotionParams) -> Path:
    """Write ``motion.json`` then ``card.json`` (with the parameters' sha256), each atomically."""
    from datetime import datetime, timezone

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    card.kind = MOTION_KIND
    card.weights_file = MOTION_FILE
    card.weights_dtype = "json"
    card.decisions = {**card.decisions, "min_bout_s": params.min_bout_s}
    card.validate(str(directory / CARD_FILE))
    params.validate(list(card.classes), str(directory / MOTION_FILE))
    write_model_text(directory / MOTION_FILE, json.dumps(params.to_dict(), indent=2) + "\n")
    card.weights_sha256 = sha256_file(directory / MOTION_FILE)
    card.created_utc = card.created_utc or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    write_model_text(directory / CARD_FILE, card.to_json())
    log.info("saved motion model %s to %s", card.name, directory)
    return directory


class MotionEngine(Engine):
    """The threshold rule behind the ``Engine`` interface (warmup / predict / close).

    Runs wherever the flow is (the ring's tensors live on ``device``): on a GPU the magnitude is
    computed there and only B numbers cross to the host.
    """

    backend = "motion"

    def __init__(self, model_dir: Path, config: EngineConfig) -> None:
        model_dir = Path(model_dir)
        card = load_card(model_dir)
        if getattr(card, "kind", "i3d") != MOTION_KIND:
            raise UserError(f"{model_dir}: not a motion model (card kind {getattr(card, 'kind', 'i3d')!r})")
        if config.kind not in ("auto", "torch"):
            raise UserError(f"--engine {config.kind}: a motion model has no network to run on {config.kind}; "
                            "leave --engine at auto")
        self.params = read_params(model_dir, card)
        super().__init__(card, config, model_dir)
        self._device = torch_device(config)
        self._classes = list(card.classes)
        self.last_features: np.ndarray | None = None  # of the last batch (validation reports, tests)

    @property
    def device(self) -> str:
        return str(self._device)

    def _run(self, rgb: np.ndarray | torch.Tensor, flow: np.ndarray | torch.Tensor) -> tuple[np.ndarray, ...]:
        features = motion_feature(flow)
        self.last_features = features
        probs = np.zeros((features.shape[0], len(self._classes)), np.float32)
        probs[np.arange(features.shape[0]), classify(features, self.params, self._classes)] = 1.0
        return probs, probs, probs
