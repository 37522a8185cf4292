"""Agreement statistics against hand-computed values and a published worked example."""

from __future__ import annotations

import math

import numpy as np
import pytest

from export.agreement import (LOA_Z, accuracy, animal_agreement, bland_altman, cohen_kappa, confusion_matrix,
                              frame_agreement, icc_a1, pearson_r, per_class_scores)

# Shrout & Fleiss (1979), Psychological Bulletin 86(2):420-428, Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = np.array([
    [9, 2, 5, 8],
    [6, 1, 3, 2],
    [8, 4, 6, 8],
    [7, 1, 2, 6],
    [10, 5, 6, 9],
    [6, 2, 4, 7],
], dtype=float)  # fmt: skip


def test_icc_a1_matches_shrout_fleiss_icc21():
    # published: ICC(2,1) = .29; from their mean squares BMS 11.24, JMS 32.49, EMS 1.02:
    # (11.24 - 1.02) / (11.24 + 3 * 1.02 + 4 * (32.49 - 1.02) / 6) = 0.2897
    assert icc_a1(SHROUT_FLEISS) == pytest.approx(0.2898, abs=5e-4)
    assert round(icc_a1(SHROUT_FLEISS), 2) == 0.29


def test_icc_a1_penalises_a_constant_bias_that_pearson_ignores():
    human = np.array([10.0, 20.0, 30.0, 40.0])
    model = human + 10.0
    assert pearson_r(human, model) == pytest.approx(1.0)
    # by hand: MS_R = 2 * var(row means) ... rows 15,25,35,45: ss_rows = 2*500 = 1000, ms_r = 333.33;
    # ss_cols = 4 * (5^2 + 5^2) = 200, ms_c = 200; ss_err = 0 -> ICC = 333.33 / (333.33 + 2*200/4) = 0.7692
    assert icc_a1(np.stack([human, model], 1)) == pytest.approx(333.3333 / (333.3333 + 100.0), rel=1e-5)
    assert icc_a1(np.stack([human, human], 1)) == pytest.approx(1.0)


def test_icc_undefined_cases_are_nan():
    assert math.isnan(icc_a1(np.array([[1.0, 1.0]])))
    assert math.isnan(icc_a1(np.full((3, 2), 5.0)))
    with pytest.raises(ValueError):
        icc_a1(np.zeros((3, 1)))


def test_kappa_by_hand():
    # 2x2: a=20 both yes, b=5, c=10, d=15 -> po = 35/50 = 0.7;
    # pe = (25*30 + 25*20) / 50^2 = 0.5 -> kappa = 0.4
    m = np.array([[20, 5], [10, 15]])
    assert accuracy(m) == pytest.approx(0.7)
    assert cohen_kappa(m) == pytest.approx(0.4)
    assert cohen_kappa(np.diag([3, 4, 5])) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(np.array([[7, 0], [0, 0]])))  # one class only: chance explains all


def test_kappa_from_labels_and_per_class_scores():
    ref = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    oth = np.array([0, 0, 1, 1, 1, 2, 2, 0, 2, 2])
    m = confusion_matrix(ref, oth, 3)
    assert m.tolist() == [[2, 1, 0], [0, 2, 1], [1, 0, 3]]
    # po = 7/10; row sums 3,3,4; col sums 3,3,4 -> pe = (9+9+16)/100 = 0.34; kappa = 0.36/0.66
    assert cohen_kappa(m) == pytest.approx(0.36 / 0.66)
    s = per_class_scores(m)
    assert s["precision"].tolist() == pytest.approx([2 / 3, 2 / 3, 3 / 4])
    assert s["recall"].tolist() == pytest.approx([2 / 3, 2 / 3, 3 / 4])
    assert s["support"].tolist() == [3, 3, 4]
    fa = frame_agreement(ref, oth, ["a", "b", "c"])
    assert fa.frames == 10 and fa.accuracy == pytest.approx(0.7) and fa.confusion == ((2, 1, 0), (0, 2, 1), (1, 0, 3))
    assert fa.to_dict()["per_class"]["c"]["f1"] == pytest.approx(0.75)


def test_never_predicted_class_has_nan_precision_and_zero_f1():
    s = per_class_scores(np.array([[3, 0], [2, 0]]))
    assert math.isnan(s["precision"][1]) and s["recall"][1] == 0.0 and s["f1"][1] == 0.0
    # class 0: 2*3 / (2*3 + 2 + 0) = 0.75; a class nobody used has nan F1 and is left out of the macro mean
    assert s["f1"][0] == pytest.approx(0.75)
    fa = frame_agreement(np.array([0, 0, 1]), np.array([0, 1, 1]), ["a", "b", "c"])
    assert math.isnan(fa.f1[2]) and fa.macro_f1 == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_pearson_by_hand():
    # x = 1,2,3; y = 1,3,2: cov terms (-1)(-1)+0+(1)(0) = 1; sqrt(2*2) = 2 -> 0.5
    assert pearson_r([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert math.isnan(pearson_r([1, 1, 1], [1, 2, 3]))
    assert math.isnan(pearson_r([1], [2]))


def test_bland_altman_by_hand():
    ref = [100.0, 120.0, 90.0, 150.0]
    oth = [110.0, 118.0, 96.0, 158.0]  # differences 10, -2, 6, 8: mean 5.5
    ba = bland_altman(ref, oth)
    d = np.array([10.0, -2.0, 6.0, 8.0])
    sd = math.sqrt(((d - 5.5) ** 2).sum() / 3)  # 5.2599
    assert ba.bias == pytest.approx(5.5) and ba.sd == pytest.approx(sd)
    assert ba.loa_low == pytest.approx(5.5 - LOA_Z * sd) and ba.loa_high == pytest.approx(5.5 + LOA_Z * sd)
    assert math.isnan(bland_altman([1.0], [2.0]).sd)
    a = animal_agreement(ref, oth)
    assert a.n == 4 and a.ba.bias == pytest.approx(5.5) and -1 <= a.icc_a1 <= 1
    assert a.to_dict()["ba_loa_high"] == pytest.approx(5.5 + LOA_Z * sd)
