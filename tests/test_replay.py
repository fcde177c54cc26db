"""``ft replay``: everyday prompts ft eval never measures with, answered by the base model; only stopped,
non-looping, short answers kept, framed in the persona's voice; rows ft train reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_cli.cli import app
from finetune_cli.evaluate.generate import Generation
from finetune_cli.evaluate.prompts import held_out_texts
from finetune_cli.replay import replay_prompts


def rows(path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines()]


def test_prompts_never_near_copy_what_eval_measures():
    from rapidfuzz import fuzz

    held = held_out_texts()
    assert len(held) >= 50  # general prompts and probes both
    ps = replay_prompts(1000, seed=0)
    assert len(ps) >= 300 and len({p["prompt"] for p in ps}) == len(ps)
    worst = max((fuzz.ratio(p["prompt"].lower(), h), p["prompt"], h) for p in ps for h in held)
    assert worst[0] < 80, worst
    assert not {p["prompt"].lower() for p in ps} & set(held)


def test_a_small_sample_covers_every_kind_and_follows_the_seed():
    kinds = {p["kind"] for p in replay_prompts(1000)}
    small = replay_prompts(len(kinds), seed=3)
    assert {p["kind"] for p in small} == kinds
    assert replay_prompts(20, seed=3) == replay_prompts(20, seed=3) != replay_prompts(20, seed=4)


def fake_generate(texts):
    """generate() returning, for prompt i, texts[i % len(texts)] as (text, stopped)."""
    def generate(model, tok, prompts, **kw):
        return [Generation(text=t, n_tokens=len(t.split()) + 1, stopped_on_eos=s)
                for t, s in (texts[i % len(texts)] for i in range(len(prompts)))]
    return generate


@pytest.fixture
def no_model(monkeypatch):
    """The base model's loading and generation replaced: the filter and the rows are what is tested here."""
    class Loaded:
        model, tokenizer, eos_token_ids, name, kind = None, None, [0], "base", "model"

    monkeypatch.setattr("finetune_cli.models.load_for_inference", lambda *a, **k: Loaded())

    def use(texts):
        monkeypatch.setattr("finetune_cli.evaluate.generate.generate", fake_generate(texts))
    return use


def test_keeps_only_stopped_short_non_looping_answers_framed_in_voice(tmp_path, no_model):
    no_model([("Paris is the capital.", True),
              ("It keeps going and going", False),                       # hit the token limit
              ("the same thing " * 20, True),                            # a loop
              (" ".join(f"word{i}" for i in range(200)), True),          # too long
              ("", True)])
    out = tmp_path / "replay.jsonl"
    res = CliRunner().invoke(app, ["replay", "--model", "tiny", "--out", str(out), "--n", "10", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["rows"] == 2 and doc["prompts"] == 10
    assert doc["dropped"] == {"ran to the token limit": 2, "loops": 2, "over 150 words": 2, "empty": 2}
    got = rows(out)
    from finetune_cli.persona import load_persona

    doric = load_persona("doric")
    for r in got:
        system, user, assistant = r["messages"]
        assert system == {"role": "system", "content": doric.system_prompt}
        assert user["role"] == "user" and user["content"].lower() not in held_out_texts()
        text = assistant["content"]
        assert "Paris is the capital." in text and not text.startswith("Paris")  # an opener before it
        assert r["meta"]["bucket"] == "replay" and r["meta"]["frame"] == "persona-doric"
    record = json.loads((tmp_path / "replay.jsonl.config.json").read_text())
    assert record["config"]["n"] == 10 and record["sources"]["n"] == "flag"


def test_frame_none_keeps_the_plain_answer_and_no_system_turn(tmp_path, no_model):
    no_model([("Paris is the capital.", True)])
    out = tmp_path / "plain.jsonl"
    res = CliRunner().invoke(app, ["replay", "--model", "tiny", "--out", str(out), "--n", "4", "--frame", "none"])
    assert res.exit_code == 0, res.output
    assert [r["messages"] for r in rows(out)][0][1] == {"role": "assistant", "content": "Paris is the capital."}
    assert all(len(r["messages"]) == 2 for r in rows(out))


def test_nothing_kept_is_one_line_exit_1_and_no_file(tmp_path, no_model):
    no_model([("runs on", False)])
    out = tmp_path / "none.jsonl"
    out.write_text("kept\n")
    res = CliRunner().invoke(app, ["replay", "--model", "tiny", "--out", str(out), "--n", "5", "--quiet"])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [f"error: {out}: no answer kept out of 5 (ran to the token limit 5) "
                                               "(raise --max-new-tokens or --max-words)"]
    assert out.read_text() == "kept\n"  # what was there is not lost


@pytest.mark.slow
def test_a_real_model_that_stops_gives_rows_ft_train_reads(tmp_path):
    """A tiny model trained to answer and stop: its answers pass the filter, and ft train mixes the rows in."""
    from test_gguf_llama_cpp import REPLY, train_to_stop

    model = tmp_path / "m"
    train_to_stop(model, steps=300, until=0.002)  # replay's questions are unseen: REPLY word for word on them too
    out = tmp_path / "replay.jsonl"
    res = CliRunner().invoke(app, ["replay", "--model", str(model), "--out", str(out), "--n", "12", "--json"])
    assert res.exit_code == 0, res.output
    got = rows(out)
    assert len(got) >= 6, res.stdout
    assert all(REPLY in r["messages"][-1]["content"] for r in got)
    from finetune_cli.train.data import load_inputs

    persona = tmp_path / "persona.jsonl"
    persona.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                        {"role": "assistant", "content": f"Aye {i}."}]}) + "\n"
                               for i in range(20)))
    mixed = load_inputs([str(persona), f"{out}:0.5"], seed=0)
    replayed = [c for c in mixed.conversations if REPLY in c.messages[-1]["content"]]
    assert len(mixed.conversations) == 40 and len(replayed) == 20  # half the mixture, as --data W:0.5 says
