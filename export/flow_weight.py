"""Choosing the fusion weight of the two streams from labelled clips they were not trained on.

A card's ``flow_weight`` belongs to the streams it was chosen for. Fine-tuning on a lab's few
minutes changes the streams (often the RGB stream gains most, having a new look to learn), so the
old weight may no longer fit; choosing a new one on the training clips would favour whichever
stream memorised them. Both ``export-train --flow-weight auto`` (on a validation split of whole
recordings) and ``export-learning-curve --flow-weight held-back`` (on one held-back recording's
stretches) choose it here, the same way.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FLOW_WEIGHT_GRID", "weight_sweep", "choose_flow_weight"]

FLOW_WEIGHT_GRID = tuple(float(w) for w in np.round(np.arange(0.0, 1.01, 0.1), 1))  # the paper's sweep: 0 to 1 in steps of 0.1


def weight_sweep(rgb_probs: np.ndarray, flow_probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Fused accuracy at each weight of ``FLOW_WEIGHT_GRID`` (keys "0.0" ... "1.0"), fused as the live engine fuses."""
    from stream.model import fuse

    log_rgb, log_flow = np.log(np.clip(rgb_probs, 1e-12, None)), np.log(np.clip(flow_probs, 1e-12, None))
    return {f"{w:.1f}": round(float((fuse(log_rgb, log_flow, w).argmax(1) == labels).mean()), 4) for w in FLOW_WEIGHT_GRID}


def choose_flow_weight(sweep: dict[str, float], prior: float) -> float:
    """The weight with the best accuracy on clips not trained on; among ties the one nearest ``prior`` (the card's).

    A few labelled stretches give few distinct accuracies, so ties are common; leaving the card's
    weight only when those labels say another is better keeps a small sample from moving it.
    """
    if not sweep:
        raise ValueError("empty flow-weight sweep")
    top = max(sweep.values())
    return min((float(w) for w, acc in sweep.items() if acc >= top - 1e-9), key=lambda w: (abs(w - prior), w))
