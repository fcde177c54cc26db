"""A local fake LLM server speaking the OpenAI chat-completions and Anthropic messages APIs.

Tests (and bench/gen_throughput.py) drive the real ``openai`` and ``anthropic`` SDKs against it.
asyncio streams, HTTP/1.1 keep-alive, a listen backlog of 1024: it is never the bottleneck.

Answers are a pure function of the request (Doric from the doric persona's bank, seeded by a
hash of the messages), so two runs that send the same requests get the same answers whatever the
order. Faults are scripted per request: ``server.faults = [("needle", ["429", "500", "ok"])]``
makes the n-th identical request whose last user message contains "needle" behave as the n-th
item (then "ok"). Behaviours: ok, 429, 500, 503, slow, truncated, malformed, empty, english, 400, 401.

``ft gen --from-docs`` requests (a ``<passage>`` in the prompt) get a question from the passage and an
extractive answer from it (ft's offline stand-in, as JSON with references when asked for), unless
``server.doc_faults = {"needle": "invented_quote" | "offtopic" | "bad_reference"}`` names a word of the
passage: then every answer about that passage misbehaves so.

    with FakeLLM(delay=0.2) as srv:      # in a thread
        srv.openai_url  -> "http://127.0.0.1:PORT/v1";  srv.anthropic_url -> "http://127.0.0.1:PORT"

    python tests/fake_llm.py --delay 0.2    # as a process: prints "PORT <n>" and serves until killed;
                                            # GET /stats -> {"requests": n, "served": {...}}
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from finetune_cli.persona import load_persona  # noqa: E402
from finetune_cli.gen.extractive import OFF_SUBJECT, extract_answer, make_question  # noqa: E402
from finetune_cli.gen.template_provider import compose_answer  # noqa: E402

ENGLISH = ("Here is a plain answer in standard English. Start small, plan your week, ask for help when you "
           "need it, and keep notes of what works so that you can improve over time without stress.")


class FakeLLM:
    def __init__(self, *, delay: float = 0.0, api_key: str | None = None, retry_after: str = "1",
                 slow_s: float = 5.0, port: int = 0):
        self.delay = delay
        self.api_key = api_key
        self.retry_after = retry_after
        self.slow_s = slow_s
        self.port = port
        self.faults: list[tuple[str, list[str]]] = []
        self.reasoning = False  # answer as OpenAI's reasoning models: max_tokens and temperature refused
        self.topic_replies: dict[str, list[list[str]]] = {}  # group (as in the prompt) -> replies, in order
        self.doc_faults: dict[str, str] = {}  # a word of a passage -> how answers about it misbehave
        self.judge = None  # (user message, rng) -> text: answers pairwise judge requests ("Reply 1:") instead
        self.counts: Counter = Counter()       # (needle, request hash) -> times seen
        self.served: Counter = Counter()       # behaviour -> responses
        self.requests = 0
        self.persona = load_persona("doric")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._conn, "127.0.0.1", self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def serve(self) -> None:
        await self.start()
        print(f"PORT {self.port}", flush=True)
        async with self._server:
            await self._server.serve_forever()

    def __enter__(self) -> FakeLLM:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self.start())
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        """Close the listener and every open connection, inside the server's own loop."""
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- HTTP ---------------------------------------------------------------------------------------
    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in
                           (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status, extra, payload = await self._handle(method, path, headers, body)
                out = (f"HTTP/1.1 {status} {'OK' if status == 200 else 'ERR'}\r\n"
                       f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n"
                       f"connection: keep-alive\r\n" + "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                       + "\r\n").encode() + payload
                writer.write(out)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()

    def _behaviour(self, messages: list[dict], body: bytes) -> str:
        last_user = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
        last_user = last_user if isinstance(last_user, str) else json.dumps(last_user)
        key = hashlib.sha256(body).hexdigest()
        for needle, script in self.faults:
            if needle in last_user:
                n = self.counts[(needle, key)]
                self.counts[(needle, key)] += 1
                return script[n] if n < len(script) else "ok"
        return "ok"

    async def _handle(self, method: str, path: str, headers: dict, body: bytes):
        if method == "GET" and path == "/stats":  # for benchmarks that run the server in its own process
            return 200, {}, json.dumps({"requests": self.requests, "served": self.served}).encode()
        self.requests += 1
        anthropic = path.rstrip("/").endswith("/messages")
        if method != "POST" or not (anthropic or path.rstrip("/").endswith("/chat/completions")):
            return 404, {}, json.dumps({"error": {"message": f"no route {path}"}}).encode()
        # anthropic SDKs send x-api-key (1.x) or "Authorization: Bearer" (2.x)
        given = (headers.get("x-api-key") if anthropic else None) or headers.get("authorization", "")[7:]
        try:
            req = json.loads(body)
        except ValueError:
            return 400, {}, b'{"error": {"message": "bad json"}}'
        system = req.get("system") or ""
        messages = req.get("messages", [])
        if not anthropic and messages and messages[0].get("role") == "system":
            system, messages = messages[0]["content"], messages[1:]
        behaviour = self._behaviour(messages, body)
        if behaviour == "401" or (self.api_key is not None and given != self.api_key):
            self.served["401"] += 1
            return 401, {}, json.dumps({"type": "error", "error": {"type": "authentication_error",
                                        "message": "invalid x-api-key" if anthropic else "Incorrect API key"}}).encode()
        if self.reasoning and not anthropic:
            refused = self._reasoning_refusal(req)
            if refused:
                self.served["400 " + refused["param"]] += 1
                return 400, {}, json.dumps({"error": refused}).encode()
        self.served[behaviour] += 1
        if behaviour == "429":
            return 429, {"retry-after": self.retry_after}, json.dumps(
                {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}).encode()
        if behaviour == "400":  # a bad request whose message echoes the key, as some servers do
            return 400, {}, json.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                        "message": f"bad request for key {given}"}}).encode()
        if behaviour in ("500", "503"):
            return int(behaviour), {}, json.dumps({"type": "error", "error": {"type": "api_error",
                                                                               "message": "boom"}}).encode()
        if behaviour == "slow":
            await asyncio.sleep(self.slow_s)
        elif self.delay:
            await asyncio.sleep(self.delay)
        if behaviour == "malformed":
            return 200, {}, b'{"id": "x", "choices": [ {"message": '
        seed = int(hashlib.sha256(json.dumps([system, messages], sort_keys=True).encode()).hexdigest()[:12], 16)
        text = self._text(system, messages, random.Random(seed))
        if behaviour == "empty":
            text = ""
        elif behaviour == "english":
            text = ENGLISH
        finish = "length" if behaviour == "truncated" else "stop"
        if finish == "length":
            text = " ".join(text.split()[:12])
        tin, tout = sum(len(str(m.get("content", "")).split()) for m in messages), len(text.split())
        if anthropic:
            out = {"id": f"msg_{seed:x}", "type": "message", "role": "assistant", "model": req.get("model"),
                   "content": [{"type": "text", "text": text}],
                   "stop_reason": "max_tokens" if finish == "length" else "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": tin, "output_tokens": tout}}
        else:
            out = {"id": f"chatcmpl-{seed:x}", "object": "chat.completion", "created": int(time.time()),
                   "model": req.get("model"),
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                "finish_reason": finish}],
                   "usage": {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout}}
        return 200, {}, json.dumps(out).encode()

    @staticmethod
    def _reasoning_refusal(req: dict) -> dict | None:
        """OpenAI's errors for an o-series / gpt-5 model sent max_tokens or a temperature (their wording)."""
        if "max_tokens" in req:
            return {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                               "'max_completion_tokens' instead.", "type": "invalid_request_error",
                    "param": "max_tokens", "code": "unsupported_parameter"}
        if req.get("temperature", 1) != 1:
            return {"message": f"Unsupported value: 'temperature' does not support {req['temperature']} with this "
                               "model. Only the default (1) value is supported.", "type": "invalid_request_error",
                    "param": "temperature", "code": "unsupported_value"}
        return None

    def _text(self, system: str, messages: list[dict], rng: random.Random) -> str:
        last = str(messages[-1].get("content", "")) if messages else ""
        if self.judge is not None and "Reply 1:" in last:
            return self.judge(last, rng)
        if "<passage " in system or "<passage " in last:
            return self._doc_text(system, last, rng)
        if "You play the user" in system:
            return rng.choice(["And what if I only have an hour a week?", "What's the biggest mistake to avoid?",
                               "Could you give me a concrete example of that?", "How long until I see results?"])
        if "Reply with a JSON array of strings only" in last:
            k = int(last.split("Write ", 1)[1].split(" ", 1)[0])
            group = last.split("Topic group: ", 1)[1].split("\n", 1)[0]
            if self.topic_replies.get(group):
                return json.dumps(self.topic_replies[group].pop(0))
            items = [f"{rng.choice(['choosing', 'fixing', 'planning', 'learning', 'sharing'])} a "
                     f"{rng.choice(['small', 'cheap', 'quiet', 'simple', 'new'])} {group} thing number "
                     f"{rng.randrange(10**6)} at home" for _ in range(k)]
            items += ["too short", "The importance of " + group + " in modern everyday life"]
            return "Here you go:\n```json\n" + json.dumps(items) + "\n```"
        return compose_answer(self.persona, "core", "the matter at hand", "extras", None, rng)


    def _doc_text(self, system: str, last: str, rng: random.Random) -> str:
        m = re.search(r'<passage file="(.*?)" start="(\d+)" end="\d+">\n(.*)\n</passage>', system + last, re.S)
        file, start, chunk = m.group(1), int(m.group(2)), m.group(3)
        if "<passage " in last:  # ft asks for a question about the passage
            return make_question(chunk, "", "decline" if "does NOT answer" in last else "core", rng)
        schema = "Reply with one JSON object" in system
        off = any(x in last for x in OFF_SUBJECT)  # the questions ft's stand-in asks for the decline bucket
        fault = next((f for needle, f in self.doc_faults.items() if needle in chunk), None)
        if fault == "offtopic":
            return compose_answer(self.persona, "core", "the matter at hand", "extras", None, rng)
        text = extract_answer(self.persona, chunk, last, "decline" if off else "core", rng, start=start, file=file,
                              schema=schema)
        if fault == "invented_quote":
            obj = json.loads(text) if schema else None
            fake = ' As the text says, "the lawyer kept three green parrots in his study."'
            if obj:
                obj["answer"] += fake
                return json.dumps(obj)
            return text + fake
        if fault == "bad_reference" and schema:
            obj = json.loads(text)
            obj["references"] = [{"file": file, "start": start, "end": start + 20,
                                  "quote": "words the passage never had"}]
            return json.dumps(obj)
        return text


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    asyncio.run(FakeLLM(delay=args.delay, port=args.port).serve())


if __name__ == "__main__":
    main()
