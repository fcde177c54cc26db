"""rate/stats.py against values computed by hand."""

import math

import numpy as np
import pytest

from finetune_cli.rate import stats


def test_wilson_interval_matches_hand_values():
    # 7/10, z = 1.96: centre (0.7 + 1.9208/10) / 1.38416, half-width 1.96·sqrt(0.021 + 0.009604) / 1.38416
    lo, hi = stats.wilson_interval(7, 10)
    assert lo == pytest.approx(0.396774, abs=1e-6) and hi == pytest.approx(0.892210, abs=1e-6)
    lo, hi = stats.wilson_interval(0, 10)  # never 0 wide: 0 .. 2·0.19208/1.38416
    assert lo == 0.0 and hi == pytest.approx(0.277540, abs=1e-6)
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = stats.wilson_interval(2.5, 5)  # half wins are fine; symmetric around 0.5
    assert lo == pytest.approx(1 - hi)


def test_bradley_terry_two_candidates_is_the_win_ratio():
    p = stats.bradley_terry(np.array([[0, 3], [1, 0]]))
    assert p == pytest.approx([0.75, 0.25], abs=1e-9)
    # the prior adds 0.5 wins each way: 3.5 : 1.5
    assert stats.bradley_terry(np.array([[0, 3], [1, 0]]), prior=0.5) == pytest.approx([0.7, 0.3], abs=1e-9)


def test_bradley_terry_chain_and_cycle():
    # A beats B 2:1, B beats C 2:1, A and C never met: p_A/p_B = 2, p_B/p_C = 2 -> (4, 2, 1)/7
    w = np.array([[0, 2, 0], [1, 0, 2], [0, 1, 0]], dtype=float)
    p = stats.bradley_terry(w)
    assert p == pytest.approx(np.array([4, 2, 1]) / 7, abs=1e-8)
    # the MLE equations hold: wins_i = sum_j n_ij p_i / (p_i + p_j)
    n = w + w.T
    for i in range(3):
        expected = sum(n[i, j] * p[i] / (p[i] + p[j]) for j in range(3) if j != i and n[i, j])
        assert w[i].sum() == pytest.approx(expected, abs=1e-8)
    cycle = np.array([[0, 2, 1], [1, 0, 2], [2, 1, 0]], dtype=float)  # each beats the next 2:1
    assert stats.bradley_terry(cycle) == pytest.approx([1 / 3] * 3, abs=1e-9)


def test_bradley_terry_candidate_without_games_is_nan():
    p = stats.bradley_terry(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=float))
    assert p[:2] == pytest.approx([0.5, 0.5]) and math.isnan(p[2])


def test_elo_scale():
    e = stats.elo_scale(np.array([4, 2, 1]) / 7)  # geometric mean is the middle one
    assert e == pytest.approx([1000 + 400 * math.log10(2), 1000, 1000 - 400 * math.log10(2)])


def test_cohen_kappa_textbook_example():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o 0.7, p_e 0.5·0.6 + 0.5·0.4 = 0.5, kappa 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert stats.cohen_kappa(a, b) == pytest.approx(0.4)
    assert stats.cohen_kappa(["a", "b", "tie"], ["a", "b", "tie"]) == pytest.approx(1.0)
    assert stats.cohen_kappa(["a", "a"], ["a", "a"]) is None  # chance agreement is 1: undefined
    assert stats.cohen_kappa([], []) is None
    with pytest.raises(ValueError):
        stats.cohen_kappa(["a"], [])


def test_rater_agreement():
    labels = {"p1": {"ana": "a", "ben": "a", "cy": "b"}, "p2": {"ana": "b", "ben": "a"}, "p3": {"ana": "a"}}
    ag = stats.rater_agreement(labels)
    assert ag["items"] == 2
    assert ag["percent"] == pytest.approx(1 / 4)  # p1: 1 of 3 rater pairs agree, p2: 0 of 1
    ana_ben = next(p for p in ag["pairs"] if p["raters"] == ["ana", "ben"])
    # ana [a, b], ben [a, a]: p_o 1/2, p_e (1·2)/4 = 1/2 -> kappa 0
    assert ana_ben["n"] == 2 and ana_ben["kappa"] == pytest.approx(0.0) and ana_ben["percent"] == 0.5
    assert stats.rater_agreement({"p1": {"ana": "a"}}) == {"items": 0, "percent": None, "mean_kappa": None,
                                                            "pairs": []}


def test_majority():
    assert stats.majority(["x", "x", "y"]) == "x"
    assert stats.majority(["x", "y"]) == "tie"
    assert stats.majority([]) == "tie"
