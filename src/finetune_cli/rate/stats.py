"""Statistics of pairwise verdicts, as plain functions: ft rate's summary and the arena share them.

    lo, hi = wilson_interval(7.5, 10)                  # a win rate with ties counted as half wins
    p = bradley_terry(wins)                            # wins[i, j]: times i beat j (ties: 0.5 each way)
    k = cohen_kappa(["a", "b", "tie"], ["a", "b", "b"])

Verdict labels are strings; which ones exist is the caller's business (ft rate uses a, b, tie, both_bad).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Hashable, Mapping, Sequence

import numpy as np


def wilson_interval(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% for z=1.96); ``successes`` may be fractional (half
    wins for ties). With ``n == 0`` nothing is known: (0, 1)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def wins_matrix(order: Sequence[Hashable], games: Sequence[tuple]) -> np.ndarray:
    """``wins[i, j]``: how often ``order[i]`` beat ``order[j]``, from ``(first, second, winner)`` games where
    winner is "a" (the first won), "b" (the second won) or anything else (a tie: half a win each)."""
    idx = {c: i for i, c in enumerate(order)}
    wins = np.zeros((len(order), len(order)))
    for first, second, winner in games:
        i, j = idx[first], idx[second]
        if winner == "a":
            wins[i, j] += 1
        elif winner == "b":
            wins[j, i] += 1
        else:
            wins[i, j] += 0.5
            wins[j, i] += 0.5
    return wins


def bradley_terry(wins: np.ndarray, *, prior: float = 0.0, max_iter: int = 10_000,
                  tol: float = 1e-12) -> np.ndarray:
    """Bradley–Terry strengths (summing to 1) by Hunter's MM iterations.

    ``wins[i, j]`` counts the times i beat j (a tie adds 0.5 to both sides). ``prior`` adds that many
    virtual wins each way to every pair that met, which keeps an unbeaten candidate finite. A
    candidate that never played gets NaN. The fixed point satisfies, for each i,
    ``sum_j wins[i, j] == sum_j n_ij * p_i / (p_i + p_j)`` with ``n_ij = wins[i, j] + wins[j, i]``.
    """
    w = np.asarray(wins, dtype=float).copy()
    np.fill_diagonal(w, 0.0)
    games = w + w.T
    if prior:
        w = w + prior * (games > 0)
        games = w + w.T
    played = games.sum(axis=1) > 0
    total_wins = w.sum(axis=1)
    p = np.where(played, 1.0, 0.0)
    p = p / max(p.sum(), 1.0)
    for _ in range(max_iter):
        denom = np.zeros_like(p)
        for i in np.flatnonzero(played):
            others = games[i] > 0
            denom[i] = np.sum(games[i, others] / (p[i] + p[others]))
        new = np.where(played & (denom > 0), total_wins / np.where(denom > 0, denom, 1.0), 0.0)
        if new.sum() <= 0:  # nobody won anything (only ties never happen here: ties are wins)
            break
        new = new / new.sum()
        done = np.max(np.abs(new - p)) < tol
        p = new
        if done:
            break
    return np.where(played, p, np.nan)


def elo_scale(strengths: np.ndarray, *, center: float = 1000.0) -> np.ndarray:
    """Strengths on the familiar Elo scale: 400·log10 of the strength over the geometric mean, plus
    ``center``; a difference of 400 means 10:1 odds."""
    s = np.asarray(strengths, dtype=float)
    with np.errstate(divide="ignore"):
        logs = np.log10(s)
    ok = np.isfinite(logs)
    mean = logs[ok].mean() if ok.any() else 0.0
    return np.where(ok, center + 400.0 * (logs - mean), np.nan)


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items (1 = perfect, 0 = chance).

    None when there are no items or when chance agreement is already 1 (both gave one label
    throughout): kappa is undefined there."""
    if len(first) != len(second):
        raise ValueError("cohen_kappa: the two label lists differ in length")
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second)) / n
    ca, cb = Counter(first), Counter(second)
    expected = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1 - expected)


def rater_agreement(labels: Mapping[Hashable, Mapping[str, Hashable]]) -> dict:
    """Agreement between raters: ``labels[item][rater] = label``.

    Items with at least two raters count. ``percent`` is the share of agreeing rater pairs over all
    such items; ``mean_kappa`` the mean of Cohen's kappa over every pair of raters who share items
    (a pair whose kappa is undefined is left out). ``pairs`` lists each pair of raters."""
    shared = {item: r for item, r in labels.items() if len(r) >= 2}
    agree = total = 0
    for by_rater in shared.values():
        for x, y in itertools.combinations(sorted(by_rater), 2):
            total += 1
            agree += by_rater[x] == by_rater[y]
    raters = sorted({r for by_rater in shared.values() for r in by_rater})
    pairs = []
    for x, y in itertools.combinations(raters, 2):
        common = [item for item, r in shared.items() if x in r and y in r]
        if not common:
            continue
        lx = [shared[i][x] for i in common]
        ly = [shared[i][y] for i in common]
        pairs.append({"raters": [x, y], "n": len(common), "kappa": cohen_kappa(lx, ly),
                      "percent": sum(a == b for a, b in zip(lx, ly)) / len(common)})
    kappas = [p["kappa"] for p in pairs if p["kappa"] is not None]
    return {"items": len(shared), "percent": agree / total if total else None,
            "mean_kappa": sum(kappas) / len(kappas) if kappas else None, "pairs": pairs}


def majority(labels: Sequence[Hashable], *, no_majority: Hashable = "tie") -> Hashable:
    """The label more than half of ``labels`` agree on, else ``no_majority``."""
    if not labels:
        return no_majority
    label, count = Counter(labels).most_common(1)[0]
    return label if count * 2 > len(labels) else no_majority
