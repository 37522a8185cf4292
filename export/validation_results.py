"""What ``export-validate`` computes, as values: one animal's frames, and each scorer's results.

Why a module of its own: ``export.validate`` computes these and ``export.validation_report``
writes them (JSON, CSV, HTML, plots); with the types here neither imports the other.
``to_dict`` gives the JSON the report writes (``human_*`` / ``model_*`` are rater 1 / the scorer
under test, as in the published report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from export.agreement import AnimalAgreement, FrameAgreement

__all__ = ["Animal", "AnimalResult", "BinResult", "ScorerResult"]


@dataclass
class Animal:
    """One recording of one arena as two scorers saw it (same frames, same order)."""

    video: str
    arena: str
    reference: np.ndarray  # class index per frame, -1 = not labelled (not scored)
    other: np.ndarray  # class index per frame by the scorer under test
    timestamps_s: np.ndarray  # test clock of each frame
    fps: float  # frame rate of these frames (seconds = frames / fps)
    animal: str = ""  # the trial's animal (--trials / --schedule), "" when the arena is the animal


@dataclass(frozen=True)
class AnimalResult:
    """One animal: per-frame agreement, immobile seconds by both scorers, class shares."""

    video: str
    arena: str
    frames_total: int  # frames the scorer under test classified
    agreement: FrameAgreement  # over the frames the reference labelled
    reference_immobile_s: float
    other_immobile_s: float
    window_reference_immobile_s: float
    window_other_immobile_s: float
    label_share: dict[str, float]  # share of each class in the reference labels
    predicted_share: dict[str, float]  # ... in the other scorer's, on the same frames
    near_constant: bool  # one predicted class >= export.validate.NEAR_CONSTANT_SHARE while the labels are mixed
    animal: str = ""  # the trial's animal (--trials / --schedule)

    @property
    def name(self) -> str:
        return f"{self.video}/{self.arena}" + (f"/{self.animal}" if self.animal else "")

    def to_dict(self) -> dict[str, Any]:
        return {"video": self.video, "arena": self.arena, "animal": self.animal, "frames_total": self.frames_total,
                "frames_scored": self.agreement.frames, "accuracy": self.agreement.accuracy,
                "kappa": self.agreement.kappa, "macro_f1": self.agreement.macro_f1,
                "human_immobile_s": self.reference_immobile_s, "model_immobile_s": self.other_immobile_s,
                "window_human_immobile_s": self.window_reference_immobile_s,
                "window_model_immobile_s": self.window_other_immobile_s, "label_share": self.label_share,
                "predicted_share": self.predicted_share, "near_constant_prediction": self.near_constant}


@dataclass(frozen=True)
class BinResult:
    """Immobile seconds per animal in one time bin, over animals."""

    index: int  # 1-based: minute 1, 2, ... with 60-s bins
    start_s: float
    end_s: float
    reference_mean_s: float
    other_mean_s: float
    agreement: AnimalAgreement

    def to_dict(self) -> dict[str, Any]:
        return {"bin": self.index, "start_s": self.start_s, "end_s": self.end_s, "human_mean_s": self.reference_mean_s,
                "model_mean_s": self.other_mean_s, **self.agreement.to_dict()}


@dataclass
class ScorerResult:
    """One scorer (a model, or rater 2) against rater 1 on every animal."""

    name: str
    kind: str  # "i3d", "motion" or "human"
    frames: FrameAgreement  # pooled over all scored frames
    animals: list[AnimalResult]
    immobility: AnimalAgreement  # immobile seconds of the whole run, over animals
    window_s: tuple[float, float]  # the scoring window [start, end)
    window: AnimalAgreement  # immobile seconds inside the scoring window
    bins: list[BinResult]
    bins_pooled: AnimalAgreement  # every (animal, bin) pair together: a figure even with few animals
    bin_points: tuple[tuple[float, float], ...]  # (rater 1, scorer) immobile s per (animal, bin), for the plots
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "frames": self.frames.to_dict(),
                "animals": [a.to_dict() for a in self.animals], "immobility": self.immobility.to_dict(),
                "window": {"start_s": self.window_s[0], "end_s": self.window_s[1], **self.window.to_dict()},
                "bins": [b.to_dict() for b in self.bins], "bins_pooled": self.bins_pooled.to_dict(),
                "flags": list(self.flags)}
