"""The judge arena: blind pairwise verdicts between a sweep's candidates, rated with Bradley–Terry.

    arena = run_arena(judge, candidates, texts, turns, character=..., path=sweep_dir / "arena.jsonl")
    arena["ratings"]["doric-method=dora"]   # {"rating": 1042, "lo": 1010, "hi": 1077, "games": 36}

* **Blind, both orders**: a comparison is one prompt answered by two candidates; the judge (ft eval's,
  evaluate/judge.py: its prompt, parser and cache) sees "Reply 1" and "Reply 2", never a name, once in
  each order. Each order is a verdict of its own (a tie is half a win each way), so a judge that favours
  the first reply helps both candidates equally, and that favour is measured: the share of decisive
  verdicts the first-shown reply won (0.5 = none), with a Wilson interval.
* **Adaptive**: comparisons are scheduled in rounds; each round takes the pairs whose outcome is least
  known, ``p(1-p) / (n+1)`` with ``p`` the current Bradley–Terry win probability and ``n`` the
  comparisons the pair had, on a prompt the pair has not met. Close pairs get the comparisons, lopsided
  ones few: the default budget, (candidates − 1) × prompts, is 2/candidates of every pair on every prompt.
* **Ratings**: Bradley–Terry (rate/stats.py) on the Elo scale (1000 = the geometric mean), 95% intervals
  from a bootstrap over comparisons.
* **Cached, resumable**: every verdict is appended to arena.jsonl keyed by condition, prompt, pair, order
  and a hash of both replies; a re-run asks only for what is missing (and the judge's own cache answers
  a repeated request without tokens).
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

import numpy as np

from ..jsonl import AppendWriter, read_json, read_rows, repair_tail
from ..rate import stats
from ..ui import NULL, Reporter

PRIOR = 0.5  # virtual wins each way per pair that met (ft rate's summary uses the same): unbeaten stays finite
BOOTSTRAP = 200


def verdict_key(condition: str, prompt_id: str, a: str, b: str, order: str, text_a: str, text_b: str) -> str:
    h = hashlib.sha256()
    for part in (condition, prompt_id, a, b, order, text_a, text_b):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:32]


def load_verdicts(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    repair_tail(path)  # a torn last line from a killed run
    return {row["key"]: row for _, row in read_rows(path, on_error="skip") if isinstance(row, dict) and "key" in row}


def wins_matrix(cands: list[str], rows: list[dict]) -> np.ndarray:
    return stats.wins_matrix(cands, [(r["a"], r["b"], r["winner"]) for r in rows])


def strengths(cands: list[str], rows: list[dict]) -> np.ndarray:
    return stats.bradley_terry(wins_matrix(cands, rows), prior=PRIOR, tol=1e-10)


def ratings(cands: list[str], rows: list[dict], *, n_boot: int = BOOTSTRAP, seed: int = 0) -> dict[str, dict]:
    """Elo-scale Bradley–Terry ratings with 95% bootstrap intervals (resampling whole comparisons)."""
    point = stats.elo_scale(strengths(cands, rows))
    rows = sorted(rows, key=lambda r: (r["condition"], r["prompt_id"], r["a"], r["b"], r["order"]))
    units: dict[tuple, list[dict]] = {}
    for r in rows:
        units.setdefault((r["condition"], r["prompt_id"], r["a"], r["b"]), []).append(r)
    by_pair: dict[tuple, list[list[dict]]] = {}  # resampled within each pair: the schedule's counts stay
    for (_, _, a, b), unit in units.items():
        by_pair.setdefault((a, b), []).append(unit)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot if units else 0):
        sample = [r for us in by_pair.values() for k in rng.integers(0, len(us), len(us)) for r in us[k]]
        boots.append(stats.elo_scale(strengths(cands, sample)))
    boots_a = np.array(boots) if boots else np.full((1, len(cands)), np.nan)
    games = wins_matrix(cands, rows)
    out = {}
    for i, c in enumerate(cands):
        col = boots_a[:, i][np.isfinite(boots_a[:, i])]
        out[c] = {"rating": _f(point[i]), "lo": _f(np.percentile(col, 2.5)) if col.size else None,
                  "hi": _f(np.percentile(col, 97.5)) if col.size else None,
                  "games": int(round(games[i].sum() + games[:, i].sum())), "wins": float(games[i].sum())}
    return out


def _f(x: float) -> float | None:
    return round(float(x), 2) if np.isfinite(x) else None


def position_bias(rows: list[dict]) -> dict[str, Any]:
    """The share of decisive verdicts won by the reply shown first (0.5 = no bias), with its interval."""
    decisive = [r for r in rows if r["winner"] != "tie" and not r.get("identical")]
    first = sum((r["winner"] == "a") == (r["order"] == "ab") for r in decisive)
    lo, hi = stats.wilson_interval(first, len(decisive))
    return {"first_rate": first / len(decisive) if decisive else None, "lo": lo, "hi": hi,
            "decisive": len(decisive), "verdicts": len(rows)}


def schedule(cands: list[str], prompts: list[str], met: dict[tuple[str, str], set[str]], p: np.ndarray,
             k: int) -> list[tuple[str, str, str]]:
    """The next ``k`` comparisons (a, b, prompt): most uncertain pairs first, each on a prompt it has not met.
    Prompts are taken in a per-pair rotation so that pairs spread over the prompts."""
    p = np.where(np.isfinite(p) & (p > 0), p, 1.0 / len(cands))
    n = {pair: len(s) for pair, s in met.items()}
    taken = {pair: set(s) for pair, s in met.items()}
    out = []
    for _ in range(k):
        best, best_score = None, -1.0
        for i, j in itertools.combinations(range(len(cands)), 2):
            pair = (cands[i], cands[j])
            if len(taken.get(pair, ())) >= len(prompts):
                continue
            q = p[i] / (p[i] + p[j])
            score = q * (1 - q) / (n.get(pair, 0) + 1)
            if score > best_score + 1e-12:
                best, best_score = pair, score
        if best is None:
            break
        start = int(hashlib.sha256("\0".join(best).encode()).hexdigest()[:8], 16) % len(prompts)
        pid = next(prompts[(start + s) % len(prompts)] for s in range(len(prompts))
                   if prompts[(start + s) % len(prompts)] not in taken.get(best, ()))
        taken.setdefault(best, set()).add(pid)
        n[best] = n.get(best, 0) + 1
        out.append((best[0], best[1], pid))
    return out


def run_arena(judge, cands: list[str], texts: dict[str, dict[str, str]], turns: dict[str, list[dict]], *,
              character: str, path: Path, condition: str = "system", budget: int = 0,
              reporter: Reporter = NULL) -> dict[str, Any]:
    """Compare ``cands`` on ``texts[prompt_id][candidate]`` until ``budget`` comparisons (0 = (N-1) × prompts)."""
    from ..evaluate.judge import PAIR_SYSTEM, pair_request

    prompts = [pid for pid in texts if all(c in texts[pid] for c in cands)]
    all_pairs = len(cands) * (len(cands) - 1) // 2 * len(prompts)
    budget = min(budget or (len(cands) - 1) * len(prompts), all_pairs)
    cache = load_verdicts(path)

    def key(a, b, pid, order):
        return verdict_key(condition, pid, a, b, order, texts[pid][a], texts[pid][b])

    def recorded(a, b, pid):
        return [cache.get(key(a, b, pid, o)) for o in ("ab", "ba")]

    met: dict[tuple[str, str], set[str]] = {}
    for a, b in itertools.combinations(cands, 2):  # what earlier runs compared
        for pid in prompts:
            if all(recorded(a, b, pid)):
                met.setdefault((a, b), set()).add(pid)
    done = sum(len(s) for s in met.values())
    asked = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with AppendWriter(path, fsync_every=16) as out:
        while done < budget:
            rows = [r for a, b in met for pid in met[(a, b)] for r in recorded(a, b, pid) if r is not None]
            batch = schedule(cands, prompts, met, strengths(cands, rows), min(len(cands), budget - done))
            if not batch:
                break
            requests, slots = {}, []
            for a, b, pid in batch:
                met.setdefault((a, b), set()).add(pid)  # asked once per run even if the judge fails it
                done += 1
                for order in ("ab", "ba"):
                    k = key(a, b, pid, order)
                    if k in cache:
                        continue
                    first, second = (a, b) if order == "ab" else (b, a)
                    row = {"key": k, "condition": condition, "prompt_id": pid, "a": a, "b": b, "order": order}
                    if texts[pid][a] == texts[pid][b]:  # nothing to judge: a tie without a call
                        cache[k] = {**row, "winner": "tie", "identical": True}
                        out.write(cache[k])
                        continue
                    user = pair_request(character, turns[pid], texts[pid][first], texts[pid][second])
                    jk = judge.key("pair", PAIR_SYSTEM + user)
                    requests[jk] = ("pair", PAIR_SYSTEM, user)
                    slots.append((jk, row, first))
            answers = judge.ask_all(requests, reporter) if requests else {}
            asked += len(requests)
            for jk, row, first in slots:
                res = answers.get(jk)
                if res is None:
                    continue
                w = res["winner"]
                shown = (row["a"], row["b"]) if row["order"] == "ab" else (row["b"], row["a"])
                winner = "tie" if w == "tie" else ("a" if shown[int(w) - 1] == row["a"] else "b")
                cache[row["key"]] = {**row, "winner": winner, "reason": res.get("reason", "")}
                out.write(cache[row["key"]])
    rows = [r for a, b in met for pid in met[(a, b)] for r in recorded(a, b, pid) if r is not None]
    comparisons = sum(len(s) for s in met.values())
    return {"judge": f"{judge.provider}/{judge.model}", "condition": condition, "candidates": cands,
            "prompts": len(prompts), "budget": budget, "comparisons": comparisons, "calls": 2 * comparisons,
            "asked_now": asked, "all_pairs_calls": 2 * all_pairs, "verdicts": len(rows),
            "ties": sum(r["winner"] == "tie" for r in rows), "position_bias": position_bias(rows),
            "ratings": ratings(cands, rows), "usage": vars(judge.usage).copy()}


def arena_from_eval(cfg, eval_dir: Path, path: Path, reporter: Reporter) -> dict[str, Any]:
    """The arena over ft eval's outputs: the base and every variant, on the first --judge-prompts prompts of
    the primary condition (with the system prompt when evaluated) and decoding."""
    from ..config import ft_home
    from ..evaluate.judge import Judge

    doc = read_json(eval_dir / "results.json")
    cands = [c["name"] for c in doc["candidates"]]
    condition = "system" if "system" in doc["conditions"] else doc["conditions"][0]
    decoding = doc.get("primary_decoding")
    chosen = [p["id"] for p in doc["prompts"]][: cfg.judge_prompts]
    texts: dict[str, dict[str, str]] = {pid: {} for pid in chosen}
    for _, o in read_rows(eval_dir / "outputs.jsonl"):
        if o["condition"] == condition and o["prompt_id"] in texts and o.get("decoding", decoding) == decoding:
            texts[o["prompt_id"]][o["candidate"]] = o["text"]
    turns = {p["id"]: p["turns"] for p in doc["prompts"]}
    character = next((c.get("system_prompt") for c in doc["candidates"] if c.get("system_prompt")), None) or \
        "No character description was given: judge general quality."
    judge = Judge(cfg.judge, cfg.judge_model, base_url=cfg.judge_base_url,
                  cache_path=ft_home() / "judge" / "cache.jsonl", workers=cfg.judge_workers)
    judge.client()  # a missing key fails here, in one line
    reporter.info(f"sweep: judge arena over {len(cands)} candidates × {len(chosen)} prompts ({condition})")
    return run_arena(judge, cands, texts, turns, character=character, path=path, condition=condition,
                     budget=cfg.arena_budget, reporter=reporter)


def human_ratings(eval_dir: Path) -> dict[str, dict]:
    """People's verdicts from ``ft rate`` (eval_dir/ratings.jsonl) as Bradley–Terry ratings (Elo scale)."""
    from ..rate.summary import load_verdicts as load_people

    verdicts = load_people(eval_dir)
    cands = list(dict.fromkeys(c for v in verdicts for c in v["candidates"]))
    rows = [{"a": v["candidates"][0], "b": v["candidates"][1], "winner": v["label"] if v["label"] in ("a", "b")
             else "tie"} for v in verdicts]
    if not rows:
        return {}
    w = wins_matrix(cands, rows)
    elo = stats.elo_scale(stats.bradley_terry(w, prior=PRIOR))
    return {c: {"rating": _f(elo[i]), "games": int(round(w[i].sum() + w[:, i].sum()))} for i, c in enumerate(cands)}
