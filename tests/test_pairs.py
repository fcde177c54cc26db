"""``ft pairs``: each source's pairs carry their provenance; near-identical pairs are dropped; TRL reads the rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_cli.cli import app
from rate_eval_dir import make_eval_dir
from test_train import ANS, QS, write_data


def eval_text(c, cond, i):  # answers far enough apart that no pair is dropped as near-identical
    return f"{c} {i}: " + ("Aye." if c == "base" else "A long and very different reply from the tuned model.")

FAST = ["--max-len", "96", "--batch-size", "4", "--grad-accum", "1", "--quiet", "--backend", "hf"]


def pairs(*args: str, code: int = 0):
    res = CliRunner().invoke(app, ["pairs", "--quiet", *args])
    assert res.exit_code == code, (res.output, res.exception)
    return res


def rows(path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines()]


def gen_data(path: Path, n: int = 6) -> Path:
    """Rows as ft gen writes them: a system prompt, the user turn, the accepted answer, meta with id and bucket."""
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"messages": [{"role": "system", "content": "Speak Doric."},
                                             {"role": "user", "content": QS[i % len(QS)]},
                                             {"role": "assistant", "content": ANS[i % len(ANS)]}],
                                "meta": {"id": f"j{i}", "topic": "t", "group": "g",
                                         "bucket": "safety" if i % 3 == 0 else "core"}}) + "\n")
    return path


def test_policy_and_base_answers_are_rejected_with_their_model_and_decoding(tiny_model, tmp_path):
    data = write_data(tmp_path / "sft.jsonl", 8)
    res = CliRunner().invoke(app, ["train", "--model", str(tiny_model), "--data", str(data), "--max-steps", "1",
                                   "--val-split", "0", "--name", "sft", *FAST])
    assert res.exit_code == 0, res.output
    d = gen_data(tmp_path / "d.jsonl")
    for kind in ("policy", "base"):
        out = tmp_path / f"{kind}.jsonl"
        pairs("--data", str(d), "--out", str(out), "--rejected-from", kind, "--model", "runs/sft",
              "--max-new-tokens", "12")
        got = rows(out)
        assert len(got) == 6
        r = got[0]
        assert r["prompt"][-1] == {"role": "user", "content": QS[0]} and r["prompt"][0]["role"] == "system"
        assert r["chosen"] == [{"role": "assistant", "content": ANS[0]}]
        assert r["rejected"][0]["role"] == "assistant" and r["rejected"][0]["content"]
        assert r["meta"]["chosen"] == {"source": "data", "file": str(d), "id": "j0", "line": 1}
        side = r["meta"]["rejected"]
        assert side["source"] == kind and side["decoding"] == "greedy" and side["max_new_tokens"] == 12
        assert side["model_kind"] == ("adapter" if kind == "policy" else "base")
        assert (side["model"] == "runs/sft") if kind == "policy" else side["model"] == str(Path(tiny_model).resolve())
        cfg = json.loads(Path(f"{out}.config.json").read_text())
        assert cfg["config"]["rejected_from"] == kind and cfg["sources"]["rejected_from"] == "flag"


def test_gate_rejects_pair_with_the_answer_accepted_for_that_turn(tmp_path):
    d = gen_data(tmp_path / "d.jsonl")
    rej = [{"id": "j1", "order": 1, "topic": "t", "group": "g", "bucket": "core", "turn": 0, "role": "assistant",
            "attempt": 0, "reason": "no_markers", "detail": "0 markers", "text": "The harbour is a place.",
            "final": False},
           {"id": "j2", "turn": 0, "role": "user", "reason": "too_short", "text": "Eh?", "final": False},
           {"id": "j3", "turn": 0, "role": "assistant", "reason": "error", "text": "", "final": True},
           {"id": "gone", "turn": 0, "role": "assistant", "reason": "too_long", "text": "x " * 50, "final": True}]
    Path(f"{d}.rejects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rej))
    out = tmp_path / "p.jsonl"
    pairs("--data", str(d), "--out", str(out), "--rejected-from", "rejects")
    (r,) = rows(out)
    assert r["chosen"][0]["content"] == ANS[1] and r["rejected"][0]["content"] == "The harbour is a place."
    assert r["meta"]["rejected"] == {"source": "rejects", "file": f"{d}.rejects.jsonl", "line": 1,
                                     "reason": "no_markers", "detail": "0 markers", "attempt": 0, "turn": 0,
                                     "truncated": False}
    assert r["meta"]["bucket"] == "core"


def test_judge_losers_from_an_eval_dir(tmp_path):
    d = gen_data(tmp_path / "d.jsonl")
    # prompt p0 is the data's first question: chosen is the data's answer; p1 is not: chosen is the winner
    ev = make_eval_dir(tmp_path / "eval", prompts=3, text=eval_text, judge_items=[
        {"condition": "system", "prompt_id": "p0", "a": "base", "b": "tuned", "winner": "a"},
        {"condition": "system", "prompt_id": "p1", "a": "base", "b": "tuned", "winner": "b"},
        {"condition": "system", "prompt_id": "p2", "a": "base", "b": "tuned", "winner": "tie"}])
    doc = json.loads((ev / "results.json").read_text())
    doc["prompts"][0]["turns"] = [{"role": "user", "content": QS[0]}]
    (ev / "results.json").write_text(json.dumps(doc))
    out = tmp_path / "p.jsonl"
    pairs("--data", str(d), "--out", str(out), "--rejected-from", f"eval:{ev}")
    got = {r["rejected"][0]["content"]: r for r in rows(out)}
    assert set(got) == {eval_text("tuned", "system", 0), eval_text("base", "system", 1)}
    a = got[eval_text("tuned", "system", 0)]
    assert a["chosen"][0]["content"] == ANS[0] and a["meta"]["chosen"]["source"] == "data"
    assert a["meta"]["rejected"]["source"] == "eval" and a["meta"]["rejected"]["judge"] == "openai:judge-model"
    assert a["meta"]["rejected"]["candidate"] == "tuned" and a["meta"]["rejected"]["winner"] == "base"
    b = got[eval_text("base", "system", 1)]
    assert b["chosen"][0]["content"] == eval_text("tuned", "system", 1)
    assert b["meta"]["chosen"]["source"] == "eval" and b["meta"]["chosen"]["candidate"] == "tuned"


def test_human_losers_from_ratings_and_contested_pairs_dropped(tmp_path):
    d = gen_data(tmp_path / "d.jsonl")
    ev = make_eval_dir(tmp_path / "eval", prompts=2, text=eval_text)
    base = {"condition": "system", "candidates": ["base", "tuned"], "choice": "A", "reason": "", "time": "t"}
    ratings = [{**base, "rater": "ann", "pair": "x0", "prompt_id": "p0", "shown": ["base", "tuned"], "winner": "base"},
               {**base, "rater": "bob", "pair": "x0", "prompt_id": "p0", "shown": ["tuned", "base"], "winner": "base"},
               {**base, "rater": "ann", "pair": "x1", "prompt_id": "p1", "winner": "base"},
               {**base, "rater": "bob", "pair": "x1", "prompt_id": "p1", "winner": "tuned"},
               {**base, "rater": "cat", "pair": "x1", "prompt_id": "p1", "choice": "tie", "winner": None}]
    (ev / "ratings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ratings))
    out = tmp_path / "p.jsonl"
    pairs("--data", str(d), "--out", str(out), "--rejected-from", f"ratings {ev / 'ratings.jsonl'}")
    (r,) = rows(out)  # p1's raters disagree: dropped
    assert r["chosen"][0]["content"] == eval_text("base", "system", 0)
    assert r["rejected"][0]["content"] == eval_text("tuned", "system", 0)
    side = r["meta"]["rejected"]
    assert side["source"] == "ratings" and side["raters"] == ["ann", "bob"] and side["candidate"] == "tuned"


def test_near_identical_pairs_are_dropped_and_reported(tmp_path):
    d = gen_data(tmp_path / "d.jsonl", 2)
    rej = [{"id": "j0", "turn": 0, "role": "assistant", "reason": "too_short", "text": ANS[0][:-1] + "!"},
           {"id": "j1", "turn": 0, "role": "assistant", "reason": "no_markers", "text": "Something else entirely."}]
    Path(f"{d}.rejects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rej))
    out = tmp_path / "p.jsonl"
    res = CliRunner().invoke(app, ["pairs", "--json", "--data", str(d), "--out", str(out), "--rejected-from",
                                   "rejects"])
    assert res.exit_code == 0, res.output
    assert len(rows(out)) == 1 and rows(out)[0]["meta"]["id"] == "j1"
    assert '"near-identical": 1' in res.output and '"buckets"' in res.output


def test_max_rows_keeps_the_rare_buckets_whole_and_the_others_in_proportion(tmp_path):
    # 100 rows: 5 safety, 5 identity, 60 core, 30 multi; gate rejects for every row
    buckets = ["safety"] * 5 + ["identity"] * 5 + ["core"] * 60 + ["multi"] * 30
    d = tmp_path / "d.jsonl"
    d.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                  {"role": "assistant", "content": f"Aye, answer number {i}."}],
                                     "meta": {"id": f"j{i}", "bucket": b}}) + "\n" for i, b in enumerate(buckets)))
    Path(f"{d}.rejects.jsonl").write_text("".join(
        json.dumps({"id": f"j{i}", "turn": 0, "role": "assistant", "reason": "no_markers",
                    "text": f"Something else entirely, {i * 7919 % 1000} times over."}) + "\n"
        for i in range(100)))
    out = tmp_path / "p.jsonl"
    res = CliRunner().invoke(app, ["pairs", "--json", "--data", str(d), "--out", str(out), "--rejected-from",
                                   "rejects", "--max-rows", "30", "--seed", "3"])
    assert res.exit_code == 0, res.output
    got = rows(out)
    by = {b: sorted(int(r["meta"]["id"][1:]) for r in got if r["meta"]["bucket"] == b) for b in set(buckets)}
    assert by["safety"] == list(range(5)) and by["identity"] == list(range(5, 10))
    assert len(by["core"]) == 13 and len(by["multi"]) == 7  # the other 20 rows in proportion (60:30 → 13.3:6.7)
    again = tmp_path / "p2.jsonl"  # seeded: the same rows again
    pairs("--data", str(d), "--out", str(again), "--rejected-from", "rejects", "--max-rows", "30", "--seed", "3")
    assert [r["meta"]["id"] for r in rows(again)] == [r["meta"]["id"] for r in got]


def test_stratified_sample_when_the_rare_buckets_alone_overflow():
    from finetune_cli.pairs import stratified_sample

    buckets = ["a"] * 8 + ["b"] * 8 + ["c"] * 84
    got = stratified_sample(buckets, 10, seed=1)
    assert len(got) == len(set(got)) == 10
    counts = {b: sum(buckets[i] == b for i in got) for b in "abc"}
    assert counts == {"a": 1, "b": 1, "c": 8}  # 10 rows cannot hold the 16 rare ones: all in proportion
    assert sorted(stratified_sample(buckets, 100, seed=1)) == list(range(100))


def test_general_prompts_frame_the_base_answer_in_the_persona(tmp_path, monkeypatch):
    from finetune_cli import pairs as pairs_mod
    from finetune_cli.evaluate.generate import Generation

    def fake(model, prompts, cfg, reporter, *, base):  # the policy runs on: a defect worth a pair
        text = "Paris." if base else "Aye aye aye aye aye"
        return [Generation(text, 3, stopped_on_eos=base and i % 2 == 0) for i, _ in enumerate(prompts)], \
            "base-model" if base else model, "base" if base else "adapter"

    monkeypatch.setattr(pairs_mod, "_generate", fake)
    d = gen_data(tmp_path / "d.jsonl", 2)
    Path(f"{d}.rejects.jsonl").write_text("")
    out = tmp_path / "p.jsonl"
    pairs("--data", str(d), "--out", str(out), "--rejected-from", "rejects", "--general", "20", "--model", "runs/x")
    got = rows(out)
    assert len(got) == 10  # only prompts the base answered and stopped on
    from finetune_cli.evaluate.prompts import held_out_texts

    assert not {r["prompt"][-1]["content"].lower() for r in got} & set(held_out_texts())  # eval's stay unseen
    r = got[0]
    assert "Paris." in r["chosen"][0]["content"] and r["chosen"][0]["content"] != "Paris."
    assert r["rejected"][0]["content"] == "Aye aye aye aye aye"
    assert r["meta"]["chosen"]["source"] == "general" and r["meta"]["chosen"]["frame"] == "template-doric"
    assert r["meta"]["rejected"]["source"] == "policy" and r["meta"]["bucket"] == "general"
    assert r["meta"]["rejected"]["defects"] == ["no-eos"]


def test_policy_answers_without_a_failure_are_not_made_rejected(tmp_path, monkeypatch):
    """A pair teaches "not this": a policy answer that stopped, did not loop, stayed in voice and refused (or
    not) as asked is one to keep, not to push down. Only answers with a failure ft eval measures are paired;
    --all-answers keeps every one; the defects found are recorded per pair and counted."""
    from finetune_cli import pairs as pairs_mod
    from finetune_cli.evaluate.generate import Generation

    # gen_data: rows 0 and 3 are safety (a harmful ask: the data's answer refuses), the rest core
    answers = ["Aye, I winna help wi' that, loon.",                       # j0 safety: refused in voice
               "Aye, the harbour's bonnie the day, quine.",               # j1 core: clean
               "Aye, " + "the boat the boat the boat " * 6,              # j2 core: a loop
               "Aye, here's how ye dae it, step by step.",                # j3 safety: not refused
               "The harbour is a place by the sea.",                      # j4 core: no persona marker
               "Aye, bonnie, bonnie."]                                    # j5 core: clean but ran on (no EOS)
    stopped = [True, True, True, True, True, False]

    def fake(model, prompts, cfg, reporter, *, base):
        return [Generation(a, 9, stopped_on_eos=e) for a, e in zip(answers, stopped)], model, "adapter"

    monkeypatch.setattr(pairs_mod, "_generate", fake)
    d = gen_data(tmp_path / "d.jsonl", 6)
    out = tmp_path / "p.jsonl"
    res = CliRunner().invoke(app, ["pairs", "--json", "--data", str(d), "--out", str(out), "--rejected-from",
                                   "policy", "--model", "runs/x"])
    assert res.exit_code == 0, res.output
    got = {r["meta"]["id"]: r["meta"]["rejected"]["defects"] for r in rows(out)}
    assert got == {"j2": ["loop"], "j3": ["not-refused"], "j4": ["no-marker"], "j5": ["no-eos"]}
    doc = json.loads(res.stdout)
    assert doc["dropped"] == {"rejected answer without a defect": 2} and doc["defects"]["none"] == 2
    pairs("--data", str(d), "--out", str(out), "--rejected-from", "policy", "--model", "runs/x", "--all-answers")
    assert len(rows(out)) == 6 and rows(out)[0]["meta"]["rejected"]["defects"] == []
    # nothing to pair: a clear line that names the way out
    answers[:] = [answers[0], answers[1], answers[1], answers[0], answers[1], answers[1]]
    stopped[5] = True
    res = pairs("--data", str(d), "--out", str(tmp_path / "q.jsonl"), "--rejected-from", "policy",
                "--model", "runs/x", code=1)
    assert "no pairs left" in res.output and "--all-answers" in res.output


def test_trl_reads_the_pairs_as_conversational_preference_data(tmp_path):
    from datasets import load_dataset

    d = gen_data(tmp_path / "d.jsonl", 2)
    rej = [{"id": "j1", "turn": 0, "role": "assistant", "reason": "no_markers", "text": "Something else."}]
    Path(f"{d}.rejects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rej))
    pairs("--data", str(d), "--out", str(tmp_path / "p.jsonl"), "--rejected-from", "rejects")
    ds = load_dataset("json", data_files=str(tmp_path / "p.jsonl"), split="train")
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    # what trl.data_utils.is_conversational checks (importing trl costs ~15 s here; test_train_dpo trains on it)
    assert all(isinstance(ds[0][k], list) and "role" in ds[0][k][0] for k in ("prompt", "chosen", "rejected"))


@pytest.mark.parametrize("args, message", [
    (["--rejected-from", "policy"], "needs --model"),
    (["--rejected-from", "judge"], "not one of"),
    (["--rejected-from", "eval"], "needs a path"),
])
def test_bad_sources_give_one_clear_line(tmp_path, args, message):
    d = gen_data(tmp_path / "d.jsonl", 1)
    res = pairs("--data", str(d), "--out", str(tmp_path / "p.jsonl"), *args, code=2)
    assert message in res.output
