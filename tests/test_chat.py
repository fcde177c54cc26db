"""``ft chat`` on tiny models: the REPL through a pseudo-terminal, piped/JSON use, --compare, the token stream."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest
from typer.testing import CliRunner

from finetune_cli.cli import app
from test_merge import make_adapter, write_run

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[()][A-Z0-9]|\x1b[=>]|\r")


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    return write_run(root, tiny_model, make_adapter(tiny_model, root / "adapter-src"))


@pytest.fixture(scope="module")
def merged_dir(run_dir, tiny_model, tmp_path_factory):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("merged") / "m"
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    PeftModel.from_pretrained(base, run_dir / "adapter").merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(run_dir / "adapter").save_pretrained(out)
    return out


def chat_json(*args, input: str):
    res = runner.invoke(app, ["chat", *map(str, args), "--json"], input=input)
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in res.stdout.splitlines()]


class Terminal:
    """``python -m finetune_cli chat ...`` on a pseudo-terminal it has as its controlling terminal (so \\x03 is
    SIGINT, as in a shell), started with SIGINT ignored; what it writes is collected, escape sequences
    stripped, by a reader thread."""

    def __init__(self, args, cwd, columns=100):
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))

        def controlling_tty():
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            # started with SIGINT ignored, as a shell's background job, nohup or a CI runner may start it:
            # ft chat must take Ctrl-C back itself (it once ran every stopped answer to its limit then)
            signal.signal(signal.SIGINT, signal.SIG_IGN)

        env = dict(os.environ, PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm", COLUMNS=str(columns))
        self.proc = subprocess.Popen([sys.executable, "-m", "finetune_cli", "chat", *map(str, args)], cwd=cwd,
                                     stdin=slave, stdout=slave, stderr=slave, env=env, preexec_fn=controlling_tty)
        os.close(slave)
        self.master, self.raw, self.seen = master, b"", 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.raw += chunk

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", "replace"))

    def expect(self, pattern: str, timeout: float = 60) -> str:
        """Wait for ``pattern`` after the last match; the text up to and including it."""
        end = time.time() + timeout
        while time.time() < end:
            m = re.compile(pattern).search(self.text, self.seen)
            if m:
                got, self.seen = self.text[self.seen: m.end()], m.end()
                return got
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not seen; output so far:\n{self.text[-3000:]}")

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def type(self, line: str) -> None:
        """Wait for the ``you>`` prompt, then type ``line`` and Enter, as a person would. Typed earlier, the
        line would reach the terminal in its cooked mode (echoed by the kernel, read later by the prompt), and
        a Ctrl-C sent after it could reach the prompt as a key instead of the answer as SIGINT."""
        self.expect(r"you>")
        self.send(line + "\r")


def test_repl_streams_toggles_system_saves_and_survives_ctrl_c(run_dir, tmp_path):
    from finetune_cli.evaluate.prompts import load_prompts

    t = Terminal([run_dir, "--greedy", "--max-new-tokens", "8"], cwd=tmp_path)
    try:
        t.expect(r"/help for commands")
        t.type("/prompt")
        t.expect(r"<\|im_start\|>system\nYe speak Doric\.<\|im_end\|>")  # the run's prompt, in its template
        t.type("/system off")
        t.expect(r"system prompt off")
        t.type("Hello")
        answer = t.expect(r"\[8 tokens · [0-9.]+ tokens/s · HIT THE 8-TOKEN LIMIT[^\]]*\]")
        t.type("/prompt")
        shown = t.expect(r"<\|im_start\|>user\nHello<\|im_end\|>")
        assert "Ye speak Doric" not in shown
        t.type("/save conv.jsonl")
        t.expect(r"appended 1 conversation")
        # a long answer, stopped as soon as it starts streaming: the chat goes on
        t.type("/max 1900")
        t.expect(r"at most 1900 tokens")
        t.type("Tell me a long story")
        t.expect(r"Tell me a long story\n")
        t.expect(r"[^\n]{40}", timeout=30)  # the answer has started to appear
        t.send("\x03")
        stopped = t.expect(r"\[(\d+) tokens · [0-9.]+ tokens/s · stopped \(Ctrl-C\)\]")
        assert int(re.search(r"\[(\d+) tokens", stopped).group(1)) < 1900
        t.type("/max 8")
        t.type("Hello again")
        t.expect(r"\[8 tokens · [0-9.]+ tokens/s · HIT THE 8-TOKEN LIMIT")
        t.expect(r"you>")
        t.send("\x04")
        assert t.proc.wait(timeout=30) == 0
    finally:
        if t.proc.poll() is None:
            t.proc.kill()
    # what the chat showed is what a script gets for the same prompt (greedy), and /save is an eval prompt file
    piped = chat_json(run_dir, "--greedy", "--max-new-tokens", "8", "--no-use-system", input="Hello\n")
    assert piped[0]["answer"] and piped[0]["answer"] in answer
    saved = load_prompts(tmp_path / "conv.jsonl")
    assert [(p.turns, p.reference) for p in saved] == [([{"role": "user", "content": "Hello"}], piped[0]["answer"])]


def test_piped_json_gives_one_line_per_prompt(tiny_model):
    rows = chat_json(tiny_model, "--max-new-tokens", "6", input="Fit like?\n\nWhit's that?\nAye\n")
    assert [r["prompt"] for r in rows] == ["Fit like?", "Whit's that?", "Aye"]
    for r in rows:
        assert set(r) == {"prompt", "candidate", "answer", "tokens", "stopped_on_eos", "tokens_per_s"}
        assert r["candidate"] == "model" and 1 <= r["tokens"] <= 6 and r["stopped_on_eos"] == (r["tokens"] < 6)


def test_input_file_of_messages(tiny_model, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "One"}, {"role": "assistant", "content": "Aye"},
                                          {"role": "user", "content": "Two"}]}) + "\n")
    rows = chat_json(tiny_model, "--input", f, "--greedy", "--max-new-tokens", "4", input="")
    assert [r["prompt"] for r in rows] == ["Two"]


def test_compare_adapter_and_its_merged_model_answer_alike(run_dir, merged_dir):
    # the merged folder has no run.json, so no training prompt of its own: both get the run's
    rows = chat_json("--compare", run_dir, merged_dir, "--greedy", "--max-new-tokens", "12",
                     "--system", "Ye speak Doric.", input="Fit like?\nTell me aboot the boats\n")
    assert [r["candidate"] for r in rows] == ["a", "m", "a", "m"]
    assert rows[0]["answer"] == rows[1]["answer"] and rows[2]["answer"] == rows[3]["answer"]
    assert rows[0]["tokens"] == rows[1]["tokens"]


def test_compare_shares_one_base_between_adapters(run_dir, tiny_model, tmp_path):
    from finetune_cli.chat.compare import Settings, answer, load_candidates

    other = make_adapter(tiny_model, tmp_path / "other", seed=3)
    cands = load_candidates([str(run_dir), str(other)], device="cpu")
    assert cands[0].model is cands[1].model  # one base in memory
    alone = [load_candidates([s], device="cpu")[0] for s in (str(run_dir), str(other))]
    settings = Settings(max_new_tokens=10, temperature=0.9, seed=5)  # sampling: one seed, the same draws
    msgs = [{"role": "user", "content": "Fit like?"}]

    def say(c):
        s = answer(c, msgs, settings)
        list(s)
        return s.text

    together = [say(c) for c in cands]
    assert together == [say(c) for c in alone]
    assert together[0] != together[1]


def test_stream_matches_eval_generate_greedy(tiny_model):
    from finetune_cli.evaluate.generate import TokenStream, generate
    from finetune_cli.models import load_for_inference

    loaded = load_for_inference(str(tiny_model), device="cpu")
    msgs = [{"role": "system", "content": "Ye speak Doric."}, {"role": "user", "content": "Fit like?"}]
    stream = TokenStream(loaded.model, loaded.tokenizer, msgs, eos_ids=loaded.eos_token_ids, max_new_tokens=40)
    pieces = list(stream)
    ref = generate(loaded.model, loaded.tokenizer, [msgs], eos_ids=loaded.eos_token_ids, max_new_tokens=40)[0]
    assert len(pieces) > 1 and "".join(pieces).strip() == stream.text == ref.text
    assert (stream.n_tokens, stream.stopped_on_eos) == (ref.n_tokens, ref.stopped_on_eos)


def test_errors_and_help():
    res = runner.invoke(app, ["chat", "a", "b"])
    assert res.exit_code == 2 and "--compare" in res.output
    res = runner.invoke(app, ["chat", "--help"])
    assert res.exit_code == 0 and "--compare" in res.output


def test_stream_keeps_streaming_when_earlier_text_decodes_differently(tiny_model):
    """A tokenizer whose decode joins " ." into "." changes text already shown: the reply keeps streaming
    (a piece every step or two), not held back to the end, so Ctrl-C can land mid-reply."""
    import torch
    from transformers import AutoTokenizer

    from finetune_cli.evaluate.generate import TokenStream

    words = {10: "Hello", 11: " ", 12: "."} | {20 + i: f" w{i}" for i in range(30)}
    script = [10, 11, 12] + [20 + i for i in range(30)] + [2]
    real = AutoTokenizer.from_pretrained(str(tiny_model))

    class Tok:  # the real tokenizer, with a decode that cleans up spaces before a full stop
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, *a, **k):
            return real(*a, **k)

        def decode(self, ids, skip_special_tokens=True):
            return "".join(words.get(i, "") for i in ids).replace(" .", ".")

    class Scripted(torch.nn.Module):  # answers the script, one token a step
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.config = type("C", (), {"max_position_embeddings": 512})()
            self.step = 0

        def forward(self, input_ids, past_key_values=None, use_cache=True):
            logits = torch.zeros(1, input_ids.shape[1], 64)
            logits[0, -1, script[self.step]] = 1.0
            self.step += 1
            return type("O", (), {"logits": logits, "past_key_values": None})()

    stream = TokenStream(Scripted(), Tok(), [{"role": "user", "content": "Hi"}], eos_ids=[2], max_new_tokens=100)
    at = []
    for piece in stream:
        at.append(stream.n_tokens)
    assert stream.stopped_on_eos and stream.text == "Hello. " + " ".join(f"w{i}" for i in range(30)).strip()
    assert len(at) >= 30 and at[-2] >= 30  # pieces kept coming up to the end
