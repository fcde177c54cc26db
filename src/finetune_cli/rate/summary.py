"""``ft rate --summary``: what people said, and whether the LLM judge agrees with them.

Verdicts are read relative to a pair's candidates (results.json order), whatever side each was shown
on: ``a``, ``b``, ``tie`` or ``both_bad``; skips count nowhere. For win rates and Bradley–Terry a tie
and "both bad" are half a win each. A rater's later verdict on the same pair replaces the earlier.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from ..jsonl import read_json, read_rows
from ..ui import Reporter
from . import stats
from .store import RATINGS

BT_PRIOR = 0.5  # virtual wins each way for every pair of candidates that met: one virtual tie


def _label(row: dict) -> str | None:
    a, b = row["candidates"]
    if row["choice"] in ("A", "B"):
        return "a" if row["winner"] == a else "b" if row["winner"] == b else None
    return row["choice"] if row["choice"] in ("tie", "both_bad") else None


def load_verdicts(eval_dir: str | Path) -> list[dict]:
    """The last non-skip verdict of each rater on each pair, with its ``label``."""
    path = Path(eval_dir) / RATINGS
    if not path.is_file():
        raise DataError("no ratings yet", path=str(path), hint=f"run ft rate {eval_dir} and rate some pairs")
    last: dict[tuple[str, str], dict] = {}
    for _, row in read_rows(path, on_error="skip"):  # a torn last line from a killed server is skipped
        try:
            label = _label(row)
            key = (row["rater"], row["pair"])
        except (KeyError, TypeError, ValueError):
            continue
        if row.get("choice") == "skip":
            last.pop(key, None)
        elif label is not None:
            last[key] = {**row, "label": label}
    return list(last.values())


def summarize(eval_dir: str | Path) -> dict:
    doc = read_json(Path(eval_dir) / "results.json")
    verdicts = load_verdicts(eval_dir)
    order = [c["name"] for c in doc.get("candidates", [])]
    for v in verdicts:
        for c in v["candidates"]:
            if c not in order:
                order.append(c)

    tallies: dict[tuple[str, str], dict[str, int]] = {}
    for v in verdicts:
        t = tallies.setdefault(tuple(v["candidates"]), {"a": 0, "b": 0, "tie": 0, "both_bad": 0})
        t[v["label"]] += 1
    win_rates = []
    for (a, b), t in tallies.items():
        n = sum(t.values())
        score = t["a"] + 0.5 * (t["tie"] + t["both_bad"])
        lo, hi = stats.wilson_interval(score, n)
        win_rates.append({"a": a, "b": b, "n": n, "a_wins": t["a"], "b_wins": t["b"], "ties": t["tie"],
                          "both_bad": t["both_bad"], "a_win_rate": score / n, "ci95": [lo, hi]})

    idx = {c: i for i, c in enumerate(order)}
    wins = stats.wins_matrix(order, [(v["candidates"][0], v["candidates"][1], v["label"]) for v in verdicts])
    strengths = stats.bradley_terry(wins, prior=BT_PRIOR)
    elo = stats.elo_scale(strengths)
    bt = sorted(({"candidate": c, "strength": float(strengths[i]), "elo": float(elo[i])}
                 for c, i in idx.items() if np.isfinite(strengths[i])), key=lambda r: -r["strength"])

    by_pair: dict[str, dict[str, str]] = {}
    for v in verdicts:
        by_pair.setdefault(v["pair"], {})[v["rater"]] = v["label"]
    agreement = stats.rater_agreement(by_pair)

    return {"eval_dir": str(eval_dir), "ratings": len(verdicts),
            "raters": dict(sorted({r: sum(v["rater"] == r for v in verdicts)
                                   for r in {v["rater"] for v in verdicts}}.items())),
            "win_rates": win_rates, "bradley_terry": bt, "bt_prior": BT_PRIOR,
            "rater_agreement": agreement, "judge_agreement": judge_agreement(doc, verdicts)}


def judge_agreement(doc: dict, verdicts: list[dict]) -> dict:
    """Cohen's kappa between people (the majority verdict per pair; both bad counts as a tie, no
    majority as a tie) and the LLM judge's pairwise verdict (a win in both orders, else a tie)."""
    judge = doc.get("judge") or {}
    items = judge.get("pair_items")
    if not items:
        why = ("ft eval ran without --judge" if not judge else
               "results.json has no per-prompt pairwise verdicts (judge without --judge-pairwise, or from "
               "an ft eval before ft rate)")
        return {"available": False, "why": why}
    judged: dict[tuple[str, str, frozenset], str] = {}
    for it in items:
        winner = it["a"] if it["winner"] == "a" else it["b"] if it["winner"] == "b" else "tie"
        judged[(it["condition"], it["prompt_id"], frozenset((it["a"], it["b"])))] = winner
    people: dict[tuple[str, str, frozenset], list[str]] = {}
    for v in verdicts:
        a, b = v["candidates"]
        name = a if v["label"] == "a" else b if v["label"] == "b" else "tie"
        people.setdefault((v["condition"], v["prompt_id"], frozenset((a, b))), []).append(name)
    common = [k for k in people if k in judged]
    ours = [stats.majority(people[k]) for k in common]
    theirs = [judged[k] for k in common]
    return {"available": True, "model": f"{judge.get('provider')}/{judge.get('model')}", "n": len(common),
            "kappa": stats.cohen_kappa(ours, theirs),
            "percent": sum(x == y for x, y in zip(ours, theirs)) / len(common) if common else None}


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def print_summary(reporter: Reporter, s: dict) -> None:
    reporter.result(f"ft rate: {s['ratings']} verdicts from {len(s['raters'])} rater(s): "
                    + ", ".join(f"{r} {n}" for r, n in s["raters"].items()))
    reporter.table("win rates (ties and both-bad count half; 95% Wilson interval)",
                   ["A", "B", "n", "A wins", "B wins", "ties", "both bad", "A win rate", "95% CI"],
                   [[w["a"], w["b"], w["n"], w["a_wins"], w["b_wins"], w["ties"], w["both_bad"],
                     _fmt(w["a_win_rate"]), f"{w['ci95'][0]:.2f}–{w['ci95'][1]:.2f}"] for w in s["win_rates"]])
    reporter.table(f"Bradley–Terry from people (prior: {s['bt_prior']} virtual wins each way)",
                   ["candidate", "strength", "Elo-scale"],
                   [[r["candidate"], _fmt(r["strength"], ".3f"), _fmt(r["elo"], ".0f")] for r in s["bradley_terry"]])
    ag = s["rater_agreement"]
    reporter.result(f"agreement between raters: {ag['items']} pairs with 2+ raters, "
                    f"{_fmt(ag['percent'])} agreeing, mean Cohen's kappa {_fmt(ag['mean_kappa'])}")
    ja = s["judge_agreement"]
    if ja["available"]:
        reporter.result(f"people vs LLM judge ({ja['model']}): {ja['n']} pairs, {_fmt(ja['percent'])} agreeing, "
                        f"Cohen's kappa {_fmt(ja['kappa'])}")
    else:
        reporter.result(f"people vs LLM judge: not available ({ja['why']})")
