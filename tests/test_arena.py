"""The judge arena against a fake judge server whose preferences are known: ratings, intervals, position
bias, far fewer calls than every pair on every prompt, and a resumed arena that asks nothing again."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from finetune_cli.evaluate.judge import Judge
from finetune_cli.rate import stats
from finetune_cli.sweep.arena import human_ratings, run_arena
from finetune_cli.ui import NULL as NULL_REPORTER
from tests.fake_llm import FakeLLM

STRENGTH = {"q0": 1.0, "q1": 2.0, "q2": 4.0, "q3": 8.0}  # Bradley–Terry truth: q3 beats q0 8 times in 9
CANDS = ["base", "lora-lr1", "dora-lr1", "dora-lr2"]  # answering as q0..q3: names the judge never sees
PROMPTS = 48


def known_judge(bias: float):
    """Prefers the stronger reply with Bradley–Terry odds; with probability ``bias`` says "1" regardless."""
    def answer(user: str, rng) -> str:
        q1, q2 = re.findall(r"Reply [12]:\n<<<\n.*?(q\d)", user, re.S)
        if rng.random() < bias:
            return json.dumps({"winner": "1", "reason": "first"})
        p = STRENGTH[q1] / (STRENGTH[q1] + STRENGTH[q2])
        return json.dumps({"winner": "1" if rng.random() < p else "2", "reason": "better voice"})
    return answer


def arena_inputs():
    texts = {f"p{i}": {c: f"Answer number {i}, written by q{k}." for k, c in enumerate(CANDS)} for i in range(PROMPTS)}
    turns = {pid: [{"role": "user", "content": f"Question {pid}?"}] for pid in texts}
    return texts, turns


def run(srv, tmp_path, **kw):
    judge = Judge("openai", "judge-model", base_url=srv.openai_url, cache_path=tmp_path / "judge.jsonl", workers=8)
    texts, turns = arena_inputs()
    return run_arena(judge, CANDS, texts, turns, character="A Doric fisherman.", path=tmp_path / "arena.jsonl", **kw)


def test_ratings_order_intervals_and_budget(tmp_path):
    with FakeLLM() as srv:
        srv.judge = known_judge(bias=0.0)
        doc = run(srv, tmp_path)
        served = srv.requests
        again = run(srv, tmp_path)  # resumed: every verdict is in arena.jsonl
        assert srv.requests == served and again["asked_now"] == 0

    r = doc["ratings"]
    assert sorted(CANDS, key=lambda c: r[c]["rating"]) == CANDS  # the truth's order
    truth = stats.elo_scale(np.array([STRENGTH[f"q{k}"] for k in range(4)]))
    for c, t in zip(CANDS, truth):
        assert r[c]["lo"] <= t <= r[c]["hi"], (c, r[c], t)
    # adaptive: (N-1) × prompts comparisons, against N(N-1)/2 × prompts for every pair on every prompt
    assert doc["calls"] == 2 * 3 * PROMPTS and doc["all_pairs_calls"] == 2 * 6 * PROMPTS
    assert served == doc["calls"]
    pb = doc["position_bias"]
    assert pb["lo"] <= 0.5 <= pb["hi"] and pb["decisive"] == doc["calls"]
    assert again["ratings"] == r


def test_position_bias_is_measured_and_cancels(tmp_path):
    with FakeLLM() as srv:
        srv.judge = known_judge(bias=0.3)
        doc = run(srv, tmp_path, budget=100)
    pb = doc["position_bias"]
    # P(first wins) = 0.3 + 0.7 × 0.5 in expectation (each pair is shown in both orders)
    assert pb["lo"] <= 0.65 <= pb["hi"] and pb["lo"] > 0.5
    r = doc["ratings"]
    assert r["dora-lr2"]["rating"] > r["dora-lr1"]["rating"] > r["base"]["rating"]
    assert doc["comparisons"] == 100 and doc["calls"] == 200


def test_human_ratings_from_ft_rate(tmp_path):
    rows = []
    for i in range(12):  # people prefer b over a, 10 to 2
        win = "b" if i < 10 else "a"
        rows.append({"rater": "ann", "pair": f"x{i}", "candidates": ["base", "tuned"], "choice": "A",
                     "winner": "tuned" if win == "b" else "base", "condition": "system", "prompt_id": f"p{i}"})
    (tmp_path / "ratings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    h = human_ratings(tmp_path)
    assert h["tuned"]["rating"] > h["base"]["rating"] and h["tuned"]["games"] == 12


@pytest.mark.parametrize("bad", ["lr=1e-4..x", "nope=1,2", "target_modules=a,b"])
def test_grid_errors_name_the_key(bad):
    from finetune_cli.errors import ConfigError
    from finetune_cli.sweep.grid import parse_grid

    with pytest.raises(ConfigError, match="option --grid"):
        parse_grid(bad)


def test_arena_from_eval_joins_the_leaderboard_with_human_ratings(tmp_path):
    """The arena over an eval dir as ft sweep leaves it, and the leaderboard ranks by its rating first."""
    from types import SimpleNamespace

    from finetune_cli.evaluate.config import parse_gates

    from finetune_cli.sweep import leaderboard
    from finetune_cli.sweep.arena import arena_from_eval

    ev = tmp_path / "eval"
    ev.mkdir()
    names = ["base", "s-lr=1", "s-lr=2"]  # answering as q0, q3, q1: s-lr=1 is best whatever its loss
    quality = {"base": "q0", "s-lr=1": "q3", "s-lr=2": "q1"}
    prompts = [{"id": f"p{i}", "source": "heldout", "turns": [{"role": "user", "content": f"Q{i}?"}]}
               for i in range(12)]
    results = {n: {"system": {"heldout_loss": loss, "eos_rate": 1.0, "loop_rate": 0.0}}
               for n, loss in zip(names, (3.0, 2.9, 2.5))}
    (ev / "results.json").write_text(json.dumps({
        "candidates": [{"name": n, "system_prompt": "Speak Doric."} for n in names], "conditions": ["system"],
        "primary_decoding": "greedy", "prompts": prompts, "results": results, "generation": "greedy <i>"}))
    (ev / "outputs.jsonl").write_text("".join(
        json.dumps({"candidate": n, "condition": "system", "decoding": "greedy", "prompt_id": p["id"],
                    "text": f"Answer to {p['id']} by {quality[n]}."}) + "\n" for p in prompts for n in names))
    (ev / "ratings.jsonl").write_text("".join(json.dumps(
        {"rater": "ann", "pair": f"x{i}", "candidates": ["base", "s-lr=1"], "choice": "B", "winner": "s-lr=1"}) + "\n"
        for i in range(5)))
    with FakeLLM() as srv:
        srv.judge = known_judge(bias=0.0)
        cfg = SimpleNamespace(judge="openai", judge_model="j", judge_base_url=srv.openai_url, judge_workers=4,
                              judge_prompts=10, arena_budget=0, fail_if="loop_rate>0.5",
                              gates=parse_gates("loop_rate>0.5"))
        arena = arena_from_eval(cfg, ev, tmp_path / "arena.jsonl", NULL_REPORTER)
    assert arena["comparisons"] == 2 * 10 and arena["all_pairs_calls"] == 2 * 3 * 10
    ledger = {"name": "s", "base": "tiny", "runs_dir": str(tmp_path / "runs"),
              "variants": [{"name": n, "values": {"lr": v}, "status": "completed"}
                           for n, v in (("s-lr=1", "<b>1</b>"), ("s-lr=2", "2"))]}
    board = leaderboard.build(cfg, ledger, ev, arena)
    assert [r["run"] for r in board["rows"]] == ["s-lr=1", "s-lr=2", "base"]  # rating before loss
    assert board["rows"][0]["human_rating"] > board["rows"][2]["human_rating"]
    assert board["rows"][0]["rating_lo"] <= board["rows"][0]["rating"] <= board["rows"][0]["rating_hi"]
    page = leaderboard.render_html(board)
    assert "<b>1</b>" not in page and "&lt;b&gt;1&lt;/b&gt;" in page and "greedy &lt;i&gt;" in page
    assert "position bias" in leaderboard.render_md(board)
