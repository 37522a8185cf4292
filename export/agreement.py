"""Agreement statistics between two scorers: a model and a person, or two people.

A lab trusts an automatic scorer when it agrees with its human scorers about as well as they agree
with each other. Two kinds of agreement matter in the forced swim test, and they are measured
differently:

* **per frame** (what was the mouse doing at this moment?): accuracy, Cohen's kappa (agreement
  beyond what two scorers with these label rates would reach by chance), the confusion matrix and
  per-class precision / recall / F1;
* **per animal** (how long was this mouse immobile?): Pearson's r, the intraclass correlation
  ICC(A,1) and Bland-Altman's bias and 95 % limits of agreement. r only says the two rise and fall
  together; a scorer that reports every animal 30 s too long still has r = 1. ICC(A,1) (two-way
  model, *absolute* agreement, single measures; McGraw & Wong 1996, case A,1 -- numerically equal to
  Shrout & Fleiss 1979's ICC(2,1)) drops with such a bias, and Bland-Altman shows its size in seconds.

Everything here is plain numpy on small arrays, checked in ``tests/test_agreement.py`` against
hand-computed values and Shrout & Fleiss's published worked example. A statistic that is undefined
for the data (kappa when both scorers use one class only, r or ICC of constant values, anything of
fewer than two animals) is ``nan``, never a made-up number; reports print it as "-".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LOA_Z",
    "MIN_ANIMALS_FOR_AGREEMENT",
    "BlandAltman",
    "accuracy",
    "animal_agreement",
    "AnimalAgreement",
    "FrameAgreement",
    "bland_altman",
    "cohen_kappa",
    "confusion_matrix",
    "frame_agreement",
    "icc_a1",
    "pearson_r",
    "per_class_scores",
]

LOA_Z = 1.959964  # two-sided 95 % normal quantile: limits of agreement = bias +- LOA_Z * sd
# r and ICC of fewer animals than this are not reported as figures: with 2 animals r is always
# +-1, and with 3-4 the 95 % interval of an ICC of 0.9 still reaches below 0 (Shrout & Fleiss 1979),
# so a number would read as agreement that the data cannot show
MIN_ANIMALS_FOR_AGREEMENT = 5


def _pair(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two 1-D arrays of the same length, got shapes {a.shape} and {b.shape}")
    return a, b


def confusion_matrix(reference: Sequence[int] | np.ndarray, other: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """``m[i, j]`` = frames the reference called class ``i`` and the other scorer class ``j``."""
    a, b = _pair(reference, other)
    a = a.astype(np.int64)
    b = b.astype(np.int64)
    if a.size and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}")
    return np.bincount(a * num_classes + b, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(matrix: np.ndarray) -> float:
    """Fraction of frames on the diagonal (nan for an empty matrix)."""
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else math.nan


def cohen_kappa(matrix: np.ndarray) -> float:
    """Cohen's (1960) kappa from a confusion matrix: ``(p_o - p_e) / (1 - p_e)``.

    ``p_e`` is the agreement expected by chance from the two scorers' marginal label rates. nan when
    ``p_e == 1`` (both scorers used one and the same class throughout: chance explains everything).
    """
    m = np.asarray(matrix, dtype=np.float64)
    n = m.sum()
    if n == 0:
        return math.nan
    p_o = np.trace(m) / n
    p_e = float((m.sum(axis=1) * m.sum(axis=0)).sum() / (n * n))
    if p_e >= 1.0 - 1e-12:
        return math.nan
    return float((p_o - p_e) / (1.0 - p_e))


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class; the reference is the rows.

    A class the other scorer never predicted has precision nan (0/0), one the reference never used
    recall nan. F1 = 2 TP / (2 TP + FP + FN), so a class that is labelled but never predicted has
    F1 = 0 (it counts against the macro mean, as it should); nan only for a class neither used.
    """
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)
    predicted = m.sum(axis=0)
    support = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        denom = predicted + support  # = 2 TP + FP + FN
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


@dataclass(frozen=True)
class FrameAgreement:
    """Per-frame agreement of two label arrays over the frames both scored."""

    classes: tuple[str, ...]
    frames: int
    accuracy: float
    kappa: float
    macro_f1: float  # mean F1 over the classes where it is defined
    confusion: tuple[tuple[int, ...], ...]  # rows: reference, columns: the other scorer
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]  # reference frames per class

    def to_dict(self) -> dict:
        return {"frames": self.frames, "accuracy": self.accuracy, "kappa": self.kappa, "macro_f1": self.macro_f1,
                "confusion": [list(r) for r in self.confusion],
                "per_class": {c: {"precision": self.precision[i], "recall": self.recall[i], "f1": self.f1[i],
                                  "support": self.support[i]} for i, c in enumerate(self.classes)}}


def frame_agreement(reference: np.ndarray, other: np.ndarray, classes: Sequence[str]) -> FrameAgreement:
    """All per-frame statistics of two label arrays (only frames both scored: pass those)."""
    m = confusion_matrix(reference, other, len(classes))
    s = per_class_scores(m)
    f1 = s["f1"]
    return FrameAgreement(
        classes=tuple(classes), frames=int(m.sum()), accuracy=accuracy(m), kappa=cohen_kappa(m),
        macro_f1=float(np.nanmean(f1)) if np.isfinite(f1).any() else math.nan,
        confusion=tuple(tuple(int(v) for v in row) for row in m), precision=tuple(map(float, s["precision"])),
        recall=tuple(map(float, s["recall"])), f1=tuple(map(float, f1)), support=tuple(map(int, s["support"])),
    )  # fmt: skip


def pearson_r(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson's correlation; nan with fewer than 2 pairs or when either side is constant."""
    a, b = _pair(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    if a.size < 2:
        return math.nan
    da = a - a.mean()
    db = b - b.mean()
    denom = math.sqrt(float((da * da).sum() * (db * db).sum()))
    if denom == 0.0:
        return math.nan
    return float((da * db).sum() / denom)


def icc_a1(ratings: np.ndarray) -> float:
    """ICC(A,1): two-way random effects, absolute agreement, single measures (McGraw & Wong 1996).

    ``ratings`` is (n targets, k raters), e.g. immobile seconds of n animals by k = 2 scorers.
    From the two-way ANOVA mean squares (rows = targets, columns = raters, residual)::

        ICC(A,1) = (MS_R - MS_E) / (MS_R + (k - 1) MS_E + k (MS_C - MS_E) / n)

    which is Shrout & Fleiss's (1979) ICC(2,1). nan with fewer than 2 targets or when every rating
    is the same (0/0).
    """
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"ratings must be (targets, raters >= 2), got shape {x.shape}")
    n, k = x.shape
    if n < 2:
        return math.nan
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_total = ((x - grand) ** 2).sum()
    ss_err = ss_total - ss_rows - ss_cols
    ms_r = ss_rows / (n - 1)
    ms_c = ss_cols / (k - 1)
    ms_e = ss_err / ((n - 1) * (k - 1))
    denom = ms_r + (k - 1) * ms_e + k * (ms_c - ms_e) / n
    if abs(denom) < 1e-12:
        return math.nan
    return float((ms_r - ms_e) / denom)


@dataclass(frozen=True)
class BlandAltman:
    """Bland & Altman (1986): differences ``other - reference`` per target."""

    n: int
    bias: float  # mean difference (positive: the other scorer reports more)
    sd: float  # sample standard deviation of the differences (ddof = 1)
    loa_low: float  # bias - 1.96 sd
    loa_high: float  # bias + 1.96 sd

    def to_dict(self) -> dict:
        return {"n": self.n, "bias": self.bias, "sd": self.sd, "loa_low": self.loa_low, "loa_high": self.loa_high}


def bland_altman(reference: Sequence[float] | np.ndarray, other: Sequence[float] | np.ndarray) -> BlandAltman:
    """Mean bias and 95 % limits of agreement; sd and limits are nan with fewer than 2 targets."""
    a, b = _pair(np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64))
    d = b - a
    if d.size == 0:
        return BlandAltman(0, math.nan, math.nan, math.nan, math.nan)
    bias = float(d.mean())
    sd = float(d.std(ddof=1)) if d.size > 1 else math.nan
    return BlandAltman(int(d.size), bias, sd, bias - LOA_Z * sd, bias + LOA_Z * sd)


@dataclass(frozen=True)
class AnimalAgreement:
    """Agreement of one quantity (e.g. immobile seconds) measured on n animals by two scorers."""

    n: int
    pearson_r: float
    icc_a1: float
    ba: BlandAltman

    @property
    def meaningful(self) -> bool:
        """Enough animals for r and ICC to be a figure (``MIN_ANIMALS_FOR_AGREEMENT``)."""
        return self.n >= MIN_ANIMALS_FOR_AGREEMENT

    def not_meaningful_note(self) -> str:
        """What a report prints instead of r / ICC when there are too few animals ("" when there are enough)."""
        return "" if self.meaningful else f"not meaningful (n={self.n} < {MIN_ANIMALS_FOR_AGREEMENT})"

    def to_dict(self) -> dict:
        return {"n": self.n, "pearson_r": self.pearson_r, "icc_a1": self.icc_a1, "meaningful": self.meaningful,
                **{f"ba_{k}": v for k, v in self.ba.to_dict().items() if k != "n"}}


def animal_agreement(reference: Sequence[float] | np.ndarray, other: Sequence[float] | np.ndarray) -> AnimalAgreement:
    """Pearson r, ICC(A,1) and Bland-Altman of one quantity (e.g. immobile s) over animals."""
    a, b = _pair(np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64))
    return AnimalAgreement(int(a.size), pearson_r(a, b), icc_a1(np.stack([a, b], axis=1)) if a.size else math.nan,
                           bland_altman(a, b))
