"""The LLM judge against a local fake OpenAI/Anthropic server: scores, position bias, cache, tokens."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from finetune_cli.errors import ProviderError
from finetune_cli.evaluate.judge import Judge, JudgeItem, parse_pair, parse_rubric, run_judge
from tests.fake_llm import FakeLLM

TURNS = [{"role": "user", "content": "Fit like?"}]


class FakeJudge:
    """Scores replies that contain "aye" 5, others 2; prefers the reply with "aye".
    ``biased=True``: always answers that reply 1 wins (pure position bias)."""

    def __init__(self, biased=False, fail_first=0, status=200, reasoning=False):
        self.biased = biased
        self.reasoning = reasoning  # refuse max_tokens and temperature as OpenAI's reasoning models do
        self.fail_first = fail_first
        self.status = status
        self.requests = []
        self.lock = threading.Lock()

    def answer(self, system, user):
        if "Reply 1:" in user:
            if self.biased:
                return {"winner": "1", "reason": "first"}
            r1 = re.search(r"Reply 1:\n<<<\n(.*?)\n>>>", user, re.S).group(1)
            r2 = re.search(r"Reply 2:\n<<<\n(.*?)\n>>>", user, re.S).group(1)
            a1, a2 = "aye" in r1.lower(), "aye" in r2.lower()
            return {"winner": "1" if a1 and not a2 else "2" if a2 and not a1 else "tie", "reason": "r"}
        reply = re.search(r"Reply to grade:\n<<<\n(.*?)\n>>>", user, re.S).group(1)
        s = 5 if "aye" in reply.lower() else 2
        return {"voice": s, "character": s, "coherence": 4, "engagement": 3, "length": "4", "reason": "ok"}


def serve(fake):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with fake.lock:
                fake.requests.append((self.path, body))
                n = len(fake.requests)
            refusal = FakeLLM._reasoning_refusal(body) if fake.reasoning else None
            if refusal:
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps({"error": refusal}).encode())
                return
            if fake.status != 200 or n <= fake.fail_first:
                status = fake.status if fake.status != 200 else 500
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps({"error": {"message": "nope", "type": "x"}}).encode())
                return
            if self.path.endswith("/chat/completions"):
                system, user = body["messages"][0]["content"], body["messages"][1]["content"]
                text = "Here you go: " + json.dumps(fake.answer(system, user))
                out = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}],
                       "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}
            else:
                text = json.dumps(fake.answer(body["system"], body["messages"][0]["content"]))
                out = {"id": "m", "type": "message", "role": "assistant", "model": body["model"],
                       "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                       "stop_sequence": None, "usage": {"input_tokens": 80, "output_tokens": 10}}
            data = json.dumps(out).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture
def fake_server():
    servers = []

    def start(**kw):
        fake = FakeJudge(**kw)
        srv = serve(fake)
        servers.append(srv)
        return fake, srv.server_address[1]

    yield start
    for s in servers:
        s.shutdown()


def items():
    out = []
    for pid in ("p1", "p2", "p3"):
        out.append(JudgeItem("zeta17", "system", pid, TURNS, f"Aye, nae bad ({pid})."))
        out.append(JudgeItem("omega42", "system", pid, TURNS, f"I am fine, thank you ({pid})."))
    return out


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_rubric_pairwise_cache_and_tokens(provider, fake_server, tmp_path, monkeypatch):
    fake, port = fake_server()
    monkeypatch.setenv("OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY", "sk-test")
    url = f"http://127.0.0.1:{port}/v1" if provider == "openai" else f"http://127.0.0.1:{port}"
    cache = tmp_path / "cache.jsonl"
    judge = Judge(provider, "judge-model", base_url=url, cache_path=cache, workers=3)
    res = run_judge(judge, items(), character="A Doric fisherman.")
    s = res["scores"]
    assert s["zeta17"]["system"]["judge_voice"] == 5 and s["omega42"]["system"]["judge_voice"] == 2
    assert s["zeta17"]["system"]["judge_length"] == 4
    assert s["zeta17"]["system"]["judge_win_rate"] == 1.0 and s["omega42"]["system"]["judge_win_rate"] == 0.0
    assert res["pairs"] == [{"condition": "system", "a": "zeta17", "b": "omega42", "a_wins": 3, "b_wins": 0,
                             "ties": 0}]
    # 6 rubric + 3 prompts × 2 orders
    assert len(fake.requests) == 12 and res["usage"]["requests"] == 12
    per = (100, 20) if provider == "openai" else (80, 10)
    assert res["usage"]["input_tokens"] == 12 * per[0] and res["usage"]["output_tokens"] == 12 * per[1]
    assert all(b["model"] == "judge-model" for _, b in fake.requests)
    # judged blind: candidate names never reach the judge
    assert not any("zeta17" in json.dumps(b) or "omega42" in json.dumps(b) for _, b in fake.requests)

    # resumable: a new judge on the same cache asks nothing and gets the same answer
    again = Judge(provider, "judge-model", base_url=url, cache_path=cache)
    res2 = run_judge(again, items(), character="A Doric fisherman.")
    assert len(fake.requests) == 12 and res2["usage"]["cached"] == 12 and res2["usage"]["requests"] == 0
    assert res2["scores"] == res["scores"]
    # a torn last line (killed run) is ignored, the rest is reused
    with open(cache, "ab") as f:
        f.write(b'{"key": "abc", "res')
    third = Judge(provider, "judge-model", base_url=url, cache_path=cache)
    assert run_judge(third, items(), character="A Doric fisherman.")["usage"]["cached"] == 12


def test_position_bias_gives_ties_not_wins(fake_server, tmp_path, monkeypatch):
    fake, port = fake_server(biased=True)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    judge = Judge("openai", "m", base_url=f"http://127.0.0.1:{port}/v1", cache_path=None)
    res = run_judge(judge, items(), character="c")
    assert res["pairs"][0]["ties"] == 3 and res["pairs"][0]["a_wins"] == 0
    assert res["scores"]["zeta17"]["system"]["judge_win_rate"] == 0.5


def test_retries_server_errors(fake_server, monkeypatch):
    fake, port = fake_server(fail_first=1)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    judge = Judge("openai", "m", base_url=f"http://127.0.0.1:{port}/v1", workers=1)
    res = run_judge(judge, items()[:1], character="c", pairwise=False)
    assert res["scores"]["zeta17"]["system"]["judge_voice"] == 5 and len(fake.requests) == 2


def test_a_reasoning_model_as_judge_gets_max_completion_tokens_and_no_temperature(fake_server, monkeypatch):
    fake, port = fake_server(reasoning=True)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    judge = Judge("openai", "m", base_url=f"http://127.0.0.1:{port}/v1", workers=1)
    res = run_judge(judge, items()[:2], character="c", pairwise=False)
    assert res["scores"]["zeta17"]["system"]["judge_voice"] == 5
    sent = [body for _, body in fake.requests]
    assert "max_tokens" in sent[0] and "max_completion_tokens" in sent[-1] and "temperature" not in sent[-1]
    assert len(sent) == 2 + 2  # two refusals, then each item once


def test_auth_error_is_a_provider_error_without_the_key(fake_server, monkeypatch):
    fake, port = fake_server(status=401)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    judge = Judge("openai", "m", base_url=f"http://127.0.0.1:{port}/v1", workers=1)
    with pytest.raises(ProviderError) as e:
        run_judge(judge, items()[:2], character="c")
    assert "sk-secret-123" not in str(e.value)


def test_missing_key_is_a_clear_error():
    with pytest.raises(ProviderError, match="ANTHROPIC_API_KEY"):
        run_judge(Judge("anthropic"), items()[:1], character="c")


def test_parsers():
    assert parse_rubric('{"voice": 5, "character": 4, "coherence": 3, "engagement": 2, "length": 1}')["voice"] == 5
    assert parse_rubric('{"voice": 6, "character": 4, "coherence": 3, "engagement": 2, "length": 1}') is None
    assert parse_rubric("no json here") is None
    assert parse_pair('Sure. {"winner": "Reply 2"}')["winner"] == "2"
    assert parse_pair('{"winner": "both"}') is None


ECHOED = "sk-echo-SECRET-0123456789abcdef"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_provider_error_that_echoes_the_key_is_redacted(provider, monkeypatch):
    with FakeLLM() as srv:
        srv.faults = [("", ["400"])]  # "bad request for key <the key sent>"
        monkeypatch.setenv(f"{provider.upper()}_API_KEY", ECHOED)
        url = srv.openai_url if provider == "openai" else srv.anthropic_url
        judge = Judge(provider, "m", base_url=url, workers=1)
        with pytest.raises(ProviderError) as e:
            run_judge(judge, items()[:1], character="c", pairwise=False)
    assert ECHOED not in str(e.value) and "bad request for key ***" in str(e.value)


def _eval(tiny_model, *args):
    from typer.testing import CliRunner

    from finetune_cli.cli import app

    with open("p.txt", "w") as f:
        f.write("Fit like?\n")
    return CliRunner().invoke(app, ["eval", "--base", str(tiny_model), "--prompts", "p.txt", "--no-probes",
                                    "--no-general", "--decoding", "sample", "--conditions", "no_system", "--temperature", "0", "--max-new-tokens", "4",
                                    "--no-judge-pairwise", "-o", "out", *args])


def _files_holding(root, secret):
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_eval_with_a_judge_that_fails_exits_1_and_never_writes_the_key(provider, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv(f"{provider.upper()}_API_KEY", ECHOED)
    with FakeLLM() as srv:
        srv.faults = [("", ["400"] * 100)]
        url = srv.openai_url if provider == "openai" else srv.anthropic_url
        r = _eval(tiny_model, "--judge", provider, "--judge-base-url", url)
        assert r.exit_code == 1, r.output
        assert f"--judge {provider} did not run" in r.stderr and "--judge-optional" in r.stderr
        results = json.loads((tmp_path / "out" / "results.json").read_text())
        assert "bad request for key ***" in results["judge_error"]

        r2 = _eval(tiny_model, "--judge", provider, "--judge-base-url", url, "--judge-optional", "--json")
        assert r2.exit_code == 0, r2.output
        assert "warning: judge skipped" in r2.stderr
    for out in (r, r2):
        assert ECHOED not in out.stdout and ECHOED not in out.stderr
    assert _files_holding(tmp_path, ECHOED) == []


def test_eval_with_a_judge_without_its_key_fails_before_generating_unless_optional(tiny_model, tmp_path):
    r = _eval(tiny_model, "--judge", "anthropic")
    assert r.exit_code == 1 and "ANTHROPIC_API_KEY is not set" in r.stderr, r.output
    assert not (tmp_path / "out").exists()  # stopped before generating
    r = _eval(tiny_model, "--judge", "anthropic", "--judge-optional")
    assert r.exit_code == 0, r.output
    assert "warning: judge skipped" in r.stderr and "ANTHROPIC_API_KEY" in r.stderr
    assert "ANTHROPIC_API_KEY" in json.loads((tmp_path / "out" / "results.json").read_text())["judge_error"]


def test_no_probes_and_no_prompts_is_one_clear_error(tiny_model):
    from typer.testing import CliRunner

    from finetune_cli.cli import app

    r = CliRunner().invoke(app, ["eval", "--base", str(tiny_model), "--no-probes", "--no-general"])
    assert r.exit_code == 2
    assert r.stderr.splitlines() == ["error: ft eval: no prompts: --no-probes, --no-general, no --prompts and no "
                                     "run with heldout.jsonl (pass --prompts FILE or drop --no-probes)"]
