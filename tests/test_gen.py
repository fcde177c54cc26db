"""ft gen: offline template provider, the real openai/anthropic SDKs against a local fake server
(429 + Retry-After, 5xx, timeouts, truncation, malformed bodies, 401), gates, rejects, multi-turn,
determinism and resume after SIGKILL. Never a live API."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fake_llm import FakeLLM
from finetune_cli.cli import app
from finetune_cli.gen.gates import check_answer
from finetune_cli.persona import load_persona

TOPICS = {"daily_life": ["planning a week of cheap family meals", "keeping a small flat warm in winter",
                         "getting children ready for school on time"],
          "diy_trades": ["fixing a dripping kitchen tap without a plumber", "putting up shelves that stay up"],
          "technology": ["backing up family photos so they are never lost"]}
META_KEYS = {"id", "topic", "group", "bucket", "lang", "persona", "provider", "model", "seed"}
KEY = "sk-test-SECRET-0123456789"


@pytest.fixture
def topics(tmp_path):
    p = tmp_path / "topics.json"
    p.write_text(json.dumps(TOPICS))
    return p


def gen(*args, env=None):
    result = CliRunner().invoke(app, ["gen", *map(str, args)], env=env, catch_exceptions=False)
    return result


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_template_provider_offline(topics, tmp_path):
    r = gen("--topics-json", topics, "--out", "a.jsonl", "--n-per-topic", 20, "--seed", 7,
            "--adv-ratio", 0.1, "--safety-ratio", 0.1, "--multi-ratio", 0.2)
    assert r.exit_code == 0, r.output
    assert "offline template provider" in r.output
    out = rows("a.jsonl")
    total = len(TOPICS["daily_life"] + TOPICS["diy_trades"] + TOPICS["technology"]) * 20
    dups = [x for x in rows("a.jsonl.rejects.jsonl") if x["reason"] == "duplicate"]
    assert len(out) + len(dups) == total and len(out) > 0.9 * total
    persona = load_persona("doric")
    buckets = Counter()
    for row in out:
        assert set(row["meta"]) == META_KEYS
        m = row["meta"]
        buckets[m["bucket"]] += 1
        assert m["provider"] == "template" and m["persona"] == "doric" and m["seed"] == 7
        roles = [t["role"] for t in row["messages"]]
        assert roles == ["system", "user", "assistant"]
        answer, prompt = row["messages"][2]["content"], row["messages"][1]["content"]
        assert check_answer(answer, persona=persona, prompt=prompt, topic=m["topic"]) is None
        if m["bucket"] == "multi":
            assert m["lang"] in persona.templates.multi
    # exact bucket shares of the planned jobs (duplicates removed afterwards)
    planned = Counter(buckets)
    for d in dups:
        planned[d["bucket"]] += 1
    assert planned == {"core": 66, "adv": 12, "safety": 12, "multi": 24, "identity": 6}  # identity: doric's 0.05
    # the composed harmful asks: a frame around one of the persona's acts, never a bare slot
    asks = [row["messages"][1]["content"] for row in out if row["meta"]["bucket"] == "safety"]
    acts = persona.templates.words["harm"]
    assert not any("{" in a for a in asks)
    assert any(act in a for a in asks for act in acts)
    # identity asks answered honestly in the voice, never about the row's topic
    ident = [row for row in out if row["meta"]["bucket"] == "identity"]
    assert ident and all(row["messages"][1]["content"] in persona.templates.identity for row in ident)
    assert json.loads(Path("a.jsonl.config.json").read_text())["resolved"] == {"identity_ratio": 0.05}
    # the same command in another directory gives the same bytes
    os.mkdir("b")
    os.chdir("b")
    assert gen("--topics-json", topics, "--out", "a.jsonl", "--n-per-topic", 20, "--seed", 7,
               "--adv-ratio", 0.1, "--safety-ratio", 0.1, "--multi-ratio", 0.2).exit_code == 0
    assert Path("a.jsonl").read_bytes() == (tmp_path / "a.jsonl").read_bytes()


def _units(answer: str, verse: bool) -> list[str]:
    """Sentences of a prose answer, couplets of a verse one (list numbers dropped)."""
    if verse:
        lines = [ln for ln in answer.splitlines() if ln.strip()]
        return [" ".join(lines[i:i + 2]) for i in range(0, len(lines), 2)]
    return [u for u in re.split(r"(?<=[.!?:])\s+", re.sub(r"(?m)^\d+\. ", "", answer)) if u]


@pytest.mark.parametrize("persona, distinct2, reused", [("doric", 0.115, 0.5), ("bard", 0.085, 0.6)])
def test_template_answers_vary_in_shape_length_and_wording(persona, distinct2, reused):
    """1000 template rows a model can learn a voice from, not a bank to recite (issue 8 trains on them)."""
    topics = json.loads((Path(__file__).resolve().parents[1] / "topics.json").read_text())
    flat = [(g, t) for g, ts in topics.items() for t in ts][:100]
    Path("t100.json").write_text(json.dumps([{"topic": t, "group": g} for g, t in flat]))
    r = gen("--topics-json", "t100.json", "--out", "v.jsonl", "--persona", persona, "--provider", "template",
            "--n-per-topic", 10, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout[r.stdout.index("{"):])
    # near-duplicates (token_sort_ratio ≥ 0.9 to an earlier answer), dropped by ft's dedup, stay rare
    assert res["rows"] + res["duplicates"] == 1000 and res["duplicates"] < 10
    answers = [x["messages"][-1]["content"] for x in rows("v.jsonl")]
    p = load_persona(persona)
    for x in rows("v.jsonl"):
        assert check_answer(x["messages"][-1]["content"], persona=p, prompt=x["messages"][-2]["content"],
                            topic=x["meta"]["topic"]) is None
    # wording: distinct bigrams, and how much of the text is sentences repeated across ≥ 1% of answers
    bigrams = Counter()
    for a in answers:
        w = a.lower().split()
        bigrams.update(zip(w, w[1:]))
    assert len(bigrams) / sum(bigrams.values()) >= distinct2
    units = [_units(a, persona == "bard") for a in answers]
    spread = Counter(u for us in units for u in set(us))
    total = sum(map(len, units))
    assert sum(c for c in spread.values() if c >= len(answers) / 100) / total <= reused
    # shape and length: openers, closers, layouts and lengths all vary
    firsts, lasts = Counter(u[0] for u in units), Counter(u[-1] for u in units)
    assert firsts.most_common(1)[0][1] < 0.03 * len(answers) and lasts.most_common(1)[0][1] < 0.05 * len(answers)
    assert len(lasts) > 200
    lengths = [len(a.split()) for a in answers]
    assert max(lengths) - min(lengths) >= 90 and statistics.pstdev(lengths) >= 20
    assert sum("\n\n" in a for a in answers) >= 0.1 * len(answers)  # two paragraphs or stanzas
    if persona == "doric":
        assert sum("\n1. " in a for a in answers) >= 0.05 * len(answers)  # numbered lists


def test_compose_answer_follows_the_bank_shares():
    import random
    from dataclasses import replace

    from finetune_cli.persona import Bank
    from finetune_cli.gen.template_provider import compose_answer

    bank = Bank(openers=["OPENER aye."], bodies=[f"Body {i} wi' {{w}}." for i in range(8)],
                closers=["CLOSER aye."], refusals=["REFUSE aye."], redirects=["REDIRECT aye."],
                adv_openers=["ADV aye."], multi_openers=["MULTI in {lang}."], followups=["More?"],
                words={"w": ["one", "two", "three"]}, connectors=["CONN {w},"],
                list_intros=["INTRO:"], sentences=[3, 3])
    p = replace(load_persona("doric"), bank=bank, length_words=[1, 500], marker_band=[0.0, 100.0])

    def answers(bucket="core", **shares):
        p.bank = replace(bank, **{"opener_share": 0.0, "closer_share": 0.0, "connector_share": 0.0,
                                  "list_share": 0.0, "break_share": 0.0, **shares})
        return [compose_answer(p, bucket, "keeping bees", "g", "French", random.Random(i)) for i in range(60)]

    plain = answers()
    assert all(a.startswith("Body") and "OPENER" not in a and "CLOSER" not in a and "\n" not in a for a in plain)
    assert all(a.count("Body") == 3 for a in plain)
    words = Counter(re.findall(r"wi' (\w+)", " ".join(plain)))
    assert set(words) == {"one", "two", "three"}  # each slot drawn afresh, every value in use
    assert all(a.startswith("OPENER") and a.endswith("CLOSER aye.") for a in answers(opener_share=1, closer_share=1))
    assert all(a.startswith("ADV") for a in answers("adv"))  # adv and multi always answer the request first
    assert all(a.startswith("MULTI in French.") for a in answers("multi"))
    # a refusal ends on its redirect, never on a cheery "good luck, get started"
    assert all(a.startswith("REFUSE") and a.endswith("REDIRECT aye.") for a in answers("safety", closer_share=1))
    listed = answers(list_share=1)
    assert all(a.splitlines()[0] == "INTRO:" and [ln[:3] for ln in a.splitlines()[1:]] == ["1. ", "2. ", "3. "]
               for a in listed)
    assert all("\n\n" in a for a in answers(break_share=1, closer_share=1))
    for a in answers(connector_share=1):  # every body after the first gets a lead-in, then reads on in lower case
        first, *rest = re.split(r"(?<=\.) ", a)
        assert first.startswith("Body") and all(re.match(r"CONN \w+, body \d", s) for s in rest)
    verse = replace(bank, layout="verse", opener_share=1.0, closer_share=1.0, break_share=1.0)
    p.bank = verse
    text = compose_answer(p, "core", "keeping bees", "g", None, random.Random(0))
    assert "\n\n" in text and text.startswith("OPENER") and text.endswith("CLOSER aye.")


def test_uncap_keeps_i_and_acronyms():
    from finetune_cli.gen.template_provider import _uncap

    assert _uncap("Dinna fash.") == "dinna fash."
    assert _uncap("I ken.") == "I ken." and _uncap("I'll dee it.") == "I'll dee it."
    assert _uncap("NASA kens.") == "NASA kens."


def test_bard_persona_verse(topics):
    assert gen("--topics-json", topics, "--out", "b.jsonl", "--persona", "bard", "--n-per-topic", 4).exit_code == 0
    for row in rows("b.jsonl"):
        assert row["meta"]["persona"] == "bard"
        assert row["messages"][-1]["content"].count("\n") >= 3  # couplets, line by line


def test_openai_faults_and_retry_after(topics):
    with FakeLLM(retry_after="1") as srv:
        srv.faults = [("cheap family meals", ["429", "500", "malformed", "truncated"]),
                      ("kitchen tap", ["english", "english", "english"]),
                      ("family photos", ["503"] * 4)]
        env = {"OPENAI_BASE_URL": srv.openai_url, "OPENAI_API_KEY": KEY}
        t0 = time.perf_counter()
        r = gen("--topics-json", topics, "--out", "o.jsonl", "--n-per-topic", 2, "--multi-ratio", 0,
                "--adv-ratio", 0, "--safety-ratio", 0, "--retry-base", 0.01, "--max-retries", 3, "--json", env=env)
        assert r.exit_code == 0, r.output
        assert time.perf_counter() - t0 >= 1.0  # the 429's Retry-After: 1 was honoured
        res = json.loads(r.stdout[r.stdout.index("{"):])
        assert res["requests"] == srv.requests  # HTTP requests, retries included
    assert res["retries"]["429"] == 2 and res["retries"]["500"] == 2 and res["retries"]["malformed"] == 2
    assert res["retries"]["503"] == 8 and res["failed"] == 2  # 4 tries each, then the job fails
    out = rows("o.jsonl")
    by_topic = Counter(r["meta"]["topic"] for r in out)
    assert by_topic["planning a week of cheap family meals"] == 2  # recovered after the faults
    assert "fixing a dripping kitchen tap without a plumber" not in by_topic  # plain English: rejected
    assert "backing up family photos so they are never lost" not in by_topic  # 5xx forever: failed
    rej = rows("o.jsonl.rejects.jsonl")
    reasons = Counter(x["reason"] for x in rej)
    assert reasons["truncated"] == 2 and reasons["marker_density"] == 6 and reasons["error"] == 2
    assert all(x["final"] for x in rej if x["reason"] == "error")
    for row in out:  # a truncated answer is never kept, and no template text stands in for failures
        assert row["meta"]["provider"] == "openai"
        assert len(row["messages"][-1]["content"].split()) > 12
    assert KEY not in Path("o.jsonl.rejects.jsonl").read_text() and KEY not in r.output


def test_failed_jobs_retried_on_rerun_and_finished_skipped(topics):
    with FakeLLM() as srv:
        srv.faults = [("family photos", ["503", "503"])]
        env = {"OPENAI_BASE_URL": srv.openai_url, "OPENAI_API_KEY": KEY}
        args = ["--topics-json", topics, "--out", "r.jsonl", "--n-per-topic", 2, "--retry-base", 0.01,
                "--max-retries", 1]
        assert gen(*args, env=env).exit_code == 0
        assert all(r["meta"]["topic"] != TOPICS["technology"][0] for r in rows("r.jsonl"))
        before = srv.requests
        r2 = gen(*args, env=env)  # the failed jobs again (now healthy); nothing else
        assert r2.exit_code == 0 and "already finished" in r2.output
        assert srv.requests - before == 2
        assert sum(r["meta"]["topic"] == TOPICS["technology"][0] for r in rows("r.jsonl")) == 2
        first = Path("r.jsonl").read_bytes()
        before = srv.requests
        assert gen(*args, env=env).exit_code == 0
        assert srv.requests == before and Path("r.jsonl").read_bytes() == first
        assert gen(*args, "--overwrite", env=env).exit_code == 0
        assert srv.requests - before == 12


def test_timeout_is_retried(topics, tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps(["fixing a dripping kitchen tap without a plumber"]))
    with FakeLLM(slow_s=3) as srv:
        srv.faults = [("kitchen tap", ["slow"])]
        env = {"OPENAI_BASE_URL": srv.openai_url, "OPENAI_API_KEY": KEY}
        r = gen("--topics-json", one, "--out", "t.jsonl", "--n-per-topic", 1, "--multi-ratio", 0, "--adv-ratio", 0,
                "--safety-ratio", 0, "--timeout", 0.5, "--retry-base", 0.01, "--json", env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("{"):])["retries"] == {"timeout": 1}
    assert len(rows("t.jsonl")) == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_auth_error_stops_run_without_leaking_key(topics, provider):
    with FakeLLM(api_key="the-right-key") as srv:
        env = {"OPENAI_BASE_URL": srv.openai_url, "OPENAI_API_KEY": KEY,
               "ANTHROPIC_BASE_URL": srv.anthropic_url, "ANTHROPIC_API_KEY": KEY}
        r = gen("--topics-json", topics, "--out", "x.jsonl", "--provider", provider, "--max-concurrency", 4, env=env)
        assert srv.requests <= 8  # stopped at once, not after every job's retries
    assert r.exit_code == 1
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "authentication failed (HTTP 401)" in errors[0], r.output
    assert KEY not in r.output and "Traceback" not in r.output
    assert not Path("x.jsonl.rejects.jsonl").exists() or KEY not in Path("x.jsonl.rejects.jsonl").read_text()
    assert not Path("x.jsonl").exists() or rows("x.jsonl") == []


def test_a_bug_in_the_request_stops_the_run_and_is_not_retried(topics, monkeypatch):
    from finetune_cli.providers import LLMProvider

    calls = []

    async def broken(self, system, messages, max_tokens):
        calls.append(1)
        raise TypeError("create() got an unexpected keyword argument 'temperature'")

    monkeypatch.setattr(LLMProvider, "_request", broken)
    with FakeLLM() as srv:
        env = {"OPENAI_BASE_URL": srv.openai_url, "OPENAI_API_KEY": KEY}
        r = gen("--topics-json", topics, "--out", "b.jsonl", "--max-concurrency", 2, env=env)
    assert r.exit_code == 1 and "unexpected TypeError" in r.output
    assert len(calls) <= 2  # one per worker: a bug is not a malformed response to retry


def test_bad_request_detail_is_scrubbed(topics):
    with FakeLLM() as srv:
        srv.faults = [("kitchen tap", ["400"])]
        env = {"OPENAI_BASE_URL": srv.openai_url, "OPENAI_API_KEY": KEY}
        assert gen("--topics-json", topics, "--out", "s.jsonl", "--n-per-topic", 1, env=env).exit_code == 0
    text = Path("s.jsonl.rejects.jsonl").read_text()
    assert "HTTP 400" in text and KEY not in text and "***" in text


def test_a_reasoning_model_gets_max_completion_tokens_and_no_temperature(topics):
    """OpenAI's reasoning models refuse max_tokens and any temperature but 1 (HTTP 400 naming the
    parameter): ft learns it from the first refusals, sends the form the model takes, says so once, and
    no job fails — also for the requests already in flight when the first refusal came back."""
    with FakeLLM() as srv:
        srv.reasoning = True
        env = {"OPENAI_BASE_URL": srv.openai_url, "OPENAI_API_KEY": KEY}
        r = gen("--topics-json", topics, "--out", "r.jsonl", "--n-per-topic", 2, "--max-concurrency", 8, env=env)
        served = dict(srv.served)
    assert r.exit_code == 0, r.output
    kept = rows("r.jsonl")
    rejects = Path("r.jsonl.rejects.jsonl")
    assert kept and "HTTP 400" not in (rejects.read_text() if rejects.exists() else "")
    assert "takes max_completion_tokens, not max_tokens" in r.output
    assert "takes only its default temperature" in r.output
    assert 1 <= served["400 max_tokens"] <= 8 and 1 <= served["400 temperature"] <= 8  # the first wave only
    assert served["ok"] >= len(kept)


def test_anthropic_sdk_and_multi_turn(topics):
    with FakeLLM(retry_after="0") as srv:
        # the needle is in a meals job's first answer request and in both follow-up requests (the
        # simulated user reads the transcript): each meets a 429, then a truncation, then succeeds
        srv.faults = [("cheap family meals", ["429", "truncated"])]
        env = {"ANTHROPIC_BASE_URL": srv.anthropic_url, "ANTHROPIC_API_KEY": KEY}
        r = gen("--topics-json", topics, "--out", "m.jsonl", "--n-per-topic", 2, "--turns", 3, "--retry-base", 0.01,
                "--model", "claude-test", "--json", env=env)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout[r.stdout.index("{"):])
    assert res["provider"] == "anthropic" and res["retries"] == {"429": 6}
    out = rows("m.jsonl")
    assert len(out) + res["duplicates"] == 12 and res["failed"] == 0
    assert sum(r["meta"]["topic"] == TOPICS["daily_life"][0] for r in out) == 2  # recovered, not dropped
    for row in out:
        assert row["meta"]["model"] == "claude-test"
        assert [t["role"] for t in row["messages"]] == ["system"] + ["user", "assistant"] * 3
        assert row["messages"][3]["content"].endswith("?")  # a generated follow-up question
        assert all(len(t["content"].split()) > 12 for t in row["messages"][2::2])  # no truncated answer kept
    truncated = [x for x in rows("m.jsonl.rejects.jsonl") if x["reason"] == "truncated"]
    assert Counter((x["turn"], x["role"], x["final"]) for x in truncated) == {
        (0, "assistant", False): 2, (1, "user", False): 2, (2, "user", False): 2}


def test_no_key_no_base_url_explicit_provider_is_config_error(topics):
    r = gen("--topics-json", topics, "--out", "k.jsonl", "--provider", "anthropic")
    assert r.exit_code == 2 and "ANTHROPIC_API_KEY" in r.output


def test_ratios_over_one_rejected(topics):
    r = gen("--topics-json", topics, "--out", "k.jsonl", "--adv-ratio", 0.6, "--multi-ratio", 0.6)
    assert r.exit_code == 2 and "must be ≤ 1" in r.output


def _wait_lines(path: Path, n: int, proc, limit: float = 60.0) -> None:
    t0 = time.time()
    while time.time() - t0 < limit:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        assert proc.poll() is None, "finished before it could be killed"
        time.sleep(0.02)
    raise AssertionError("no progress")


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(topics, tmp_path):
    with FakeLLM(delay=0.03) as srv:
        env = dict(os.environ, OPENAI_BASE_URL=srv.openai_url, OPENAI_API_KEY=KEY,
                   PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
        cmd = [sys.executable, "-m", "finetune_cli", "gen", "--topics-json", str(topics), "--out", "k.jsonl",
               "--n-per-topic", "12", "--max-concurrency", "6", "--seed", "3", "-q"]
        (tmp_path / "full").mkdir()
        (tmp_path / "killed").mkdir()
        subprocess.run(cmd, cwd=tmp_path / "full", env=env, check=True, timeout=120)
        proc = subprocess.Popen(cmd, cwd=tmp_path / "killed", env=env)
        _wait_lines(tmp_path / "killed" / "k.jsonl", 25, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = rows(tmp_path / "killed" / "k.jsonl")
        assert 25 <= len(partial) < 72
        subprocess.run(cmd, cwd=tmp_path / "killed", env=env, check=True, timeout=120)
    full = (tmp_path / "full" / "k.jsonl").read_bytes()
    assert full and (tmp_path / "killed" / "k.jsonl").read_bytes() == full
    assert (tmp_path / "killed" / "k.jsonl.rejects.jsonl").read_bytes() == \
        (tmp_path / "full" / "k.jsonl.rejects.jsonl").read_bytes()
    ids = [r["meta"]["id"] for r in rows(tmp_path / "full" / "k.jsonl")]
    assert len(ids) == len(set(ids))


def _dead_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_request_failing_is_exit_1_naming_host_and_error_class(topics):
    port = _dead_port()
    env = {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OPENAI_API_KEY": KEY}
    r = gen("--topics-json", topics, "--out", "d.jsonl", "--n-per-topic", 1, "--max-retries", 1,
            "--retry-base", 0.01, env=env)
    assert r.exit_code == 1, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "wrote no rows" in errors[0] and "6 of 6 jobs failed" in errors[0]
    assert f"127.0.0.1:{port}" in errors[0] and "ConnectError" in errors[0], errors
    assert KEY not in r.output


def test_every_answer_rejected_is_exit_1_without_the_echoed_key(topics):
    with FakeLLM() as srv:
        srv.faults = [(t, ["400"]) for group in TOPICS.values() for t in group]
        env = {"OPENAI_BASE_URL": srv.openai_url, "OPENAI_API_KEY": KEY}
        r = gen("--topics-json", topics, "--out", "e.jsonl", "--n-per-topic", 1, env=env)
    assert r.exit_code == 1 and "HTTP 400 from 127.0.0.1" in r.stderr, r.output
    assert KEY not in r.output and KEY not in Path("e.jsonl.rejects.jsonl").read_text()


def test_a_huge_job_count_is_a_config_error_before_allocating(topics):
    r = gen("--topics-json", topics, "--out", "h.jsonl", "--n-per-topic", 1_000_000_000)
    assert r.exit_code == 2 and "6,000,000,000 jobs" in r.stderr and "at most 1,000,000" in r.stderr
    assert not Path("h.jsonl").exists()


def test_identity_ratio_resolves_against_the_persona(topics, tmp_path):
    """--identity-ratio: doric's default share, 0 turns it off, a persona without identity asks (bard) makes
    none by default and says so on one line when asked for some."""
    def buckets(path):
        return Counter(r["meta"]["bucket"] for r in rows(path))

    assert gen("--topics-json", topics, "--out", "off.jsonl", "--n-per-topic", 20, "--identity-ratio", 0).exit_code == 0
    assert "identity" not in buckets("off.jsonl")
    assert gen("--topics-json", topics, "--out", "b.jsonl", "--persona", "bard", "--n-per-topic", 4).exit_code == 0
    assert "identity" not in buckets("b.jsonl")
    r = gen("--topics-json", topics, "--out", "b2.jsonl", "--persona", "bard", "--identity-ratio", 0.1)
    assert r.exit_code == 2 and "persona 'bard' has no identity templates" in r.output
    assert not Path("b2.jsonl").exists()
    r = gen("--topics-json", topics, "--out", "c.jsonl", "--adv-ratio", 0.5, "--safety-ratio", 0.2,
            "--multi-ratio", 0.3)
    assert r.exit_code == 2 and "must be ≤ 1 (got 1.05), with the persona's identity share 0.05" in r.output
