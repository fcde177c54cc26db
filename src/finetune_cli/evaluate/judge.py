"""An LLM judge for ``ft eval``: rubric scores and blind pairwise A/B, cached and resumable.

    judge = Judge("openai", "gpt-4o-mini", cache_path=ft_home() / "judge" / "cache.jsonl")
    summary = run_judge(judge, items, character="A Doric fisherman...", pairwise=True)

* **Rubric**: each reply is scored 1–5 for voice, staying in character, coherence, engagement, relevance and
  length, shown to the judge with the character description and the conversation.
* **Pairwise**: for each prompt and each pair of candidates the judge sees two replies labelled
  "Reply 1" and "Reply 2", never the candidates' names, in both orders. A candidate wins a prompt
  only when the judge prefers it in both orders; otherwise it is a tie — a judge that always picks
  the first reply (position bias) produces ties, not wins.
* **Cache**: every judgment is appended to a JSONL file keyed by a hash of (provider, model,
  rubric version, character, conversation, replies), so a killed run resumes where it stopped and a
  re-run costs no tokens. Failed or unparseable answers are not cached (a re-run retries them).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import ProviderError
from ..jsonl import AppendWriter
from ..providers import DEFAULT_MODELS, KEY_VARS, OpenAIParams, redact
from ..ui import NULL, Reporter

VERSION = "ft-judge-v2"  # v2: the rubric asks for relevance too
CRITERIA = ("voice", "character", "coherence", "engagement", "length")
OPTIONAL = ("relevance",)  # scored when the answer has it: a judge that leaves it out still counts

RUBRIC_SYSTEM = """You grade replies of a fine-tuned chat model that must speak as a character.
Score the reply from 1 (bad) to 5 (excellent) on each criterion:
- voice: does it sound like the character (vocabulary, dialect, style)?
- character: does it stay in character, even when the user tries to break it (no "as an AI", no leaked instructions)?
- coherence: is it fluent, on-topic and free of loops, garbage or truncation?
- engagement: is it interesting and responsive to what the user said?
- length: is the length right for the request (not cut off, not rambling)?
- relevance: does it answer the question that was asked (not drift to another subject)?
Answer with one JSON object and nothing else:
{"voice": n, "character": n, "coherence": n, "engagement": n, "length": n, "relevance": n,
 "reason": "one short sentence"}"""

PAIR_SYSTEM = """You compare two replies of chat models that must speak as a character.
Decide which reply is better overall: in voice, staying in character, coherence, engagement and length.
Judge content, not position. Answer with one JSON object and nothing else:
{"winner": "1" | "2" | "tie", "reason": "one short sentence"}"""


def _conversation_text(turns: list[dict]) -> str:
    return "\n".join(f"[{t['role']}] {t['content']}" for t in turns)


def rubric_request(character: str, turns: list[dict], reply: str) -> str:
    return (f"Character:\n{character}\n\nConversation:\n{_conversation_text(turns)}\n\n"
            f"Reply to grade:\n<<<\n{reply}\n>>>")


def pair_request(character: str, turns: list[dict], first: str, second: str) -> str:
    return (f"Character:\n{character}\n\nConversation:\n{_conversation_text(turns)}\n\n"
            f"Reply 1:\n<<<\n{first}\n>>>\n\nReply 2:\n<<<\n{second}\n>>>")


def _first_json(text: str) -> dict | None:
    m = re.search(r"\{.*\}", text, re.S)
    if not m:
        return None
    try:
        obj = json.loads(m.group(0))
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def parse_rubric(text: str) -> dict | None:
    obj = _first_json(text)
    if obj is None:
        return None
    out = {}
    for c in CRITERIA:
        v = obj.get(c)
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 1 <= v <= 5:
            return None
        out[c] = float(v)
    for c in OPTIONAL:
        v = obj.get(c)
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 1 <= v <= 5:
            out[c] = float(v)
    out["reason"] = str(obj.get("reason", ""))[:300]
    return out


def parse_pair(text: str) -> dict | None:
    obj = _first_json(text)
    if obj is None:
        return None
    w = str(obj.get("winner", "")).strip().lower().replace("reply", "").strip()
    if w not in ("1", "2", "tie"):
        return None
    return {"winner": w, "reason": str(obj.get("reason", ""))[:300]}


@dataclass
class Usage:
    requests: int = 0
    cached: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class Judge:
    provider: str
    model: str | None = None
    base_url: str | None = None
    cache_path: Path | None = None
    workers: int = 4
    max_tokens: int = 300
    usage: Usage = field(default_factory=Usage)

    def __post_init__(self) -> None:
        self.model = self.model or DEFAULT_MODELS[self.provider]
        self._client = None
        self._key: str | None = None  # redacted from every provider error ft shows or writes
        self._params = OpenAIParams()  # the request form the model takes (reasoning models)
        self._cache: dict[str, dict] = {}
        if self.cache_path is not None and Path(self.cache_path).is_file():
            for line in Path(self.cache_path).read_bytes().splitlines():
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a torn last line from a killed run
                if isinstance(row, dict) and "key" in row:
                    self._cache[row["key"]] = row

    def key(self, kind: str, text: str) -> str:
        h = hashlib.sha256()
        for part in (VERSION, self.provider, self.model, kind, text):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
        return h.hexdigest()

    def client(self):
        if self._client is None:
            env = KEY_VARS[self.provider]
            key = os.environ.get(env) or ("local" if self.base_url else None)
            if not key:
                raise ProviderError(f"--judge {self.provider}: {env} is not set",
                                    hint=f"export {env}=... or put it in .env")
            self._key = key
            if self.provider == "openai":
                import openai

                self._client = openai.OpenAI(api_key=key, base_url=self.base_url, max_retries=3, timeout=120)
            else:
                import anthropic

                self._client = anthropic.Anthropic(api_key=key, base_url=self.base_url, max_retries=3,
                                                   timeout=120)
        return self._client

    def _call(self, system: str, user: str) -> tuple[str, int, int]:
        c = self.client()
        if self.provider == "openai":
            import openai

            msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            while True:  # again only in a form the model takes (OpenAIParams: at most one change per parameter)
                form = self._params.form()
                try:
                    r = c.chat.completions.create(model=self.model, messages=msgs,
                                                  **self._params.kwargs(self.max_tokens, 0))
                    break
                except openai.BadRequestError as e:
                    if not self._params.retry_after(e, form):
                        raise
            u = r.usage
            return (r.choices[0].message.content or "", getattr(u, "prompt_tokens", 0) or 0,
                    getattr(u, "completion_tokens", 0) or 0)
        r = c.messages.create(model=self.model, max_tokens=self.max_tokens, system=system,
                              messages=[{"role": "user", "content": user}])
        text = "".join(getattr(b, "text", "") for b in r.content)
        return text, r.usage.input_tokens or 0, r.usage.output_tokens or 0

    def _fatal(self, err: Exception) -> bool:
        name = type(err).__name__
        return name in ("AuthenticationError", "PermissionDeniedError", "NotFoundError", "BadRequestError")

    def ask_all(self, requests: dict[str, tuple[str, str, str]], reporter: Reporter = NULL) -> dict[str, dict]:
        """Answer ``{key: (kind, system, user)}``; kind is ``rubric`` or ``pair``. Cached answers are
        reused; new ones are appended to the cache as they arrive."""
        out = {k: self._cache[k]["result"] for k in requests if k in self._cache}
        self.usage.cached += len(out)
        todo = {k: v for k, v in requests.items() if k not in out}
        if not todo:
            return out
        parse = {"rubric": parse_rubric, "pair": parse_pair}
        writer = AppendWriter(self.cache_path, fsync_every=16) if self.cache_path else None
        with (writer or _Nothing()) as w, reporter.progress("judging", total=len(todo)) as task, \
                ThreadPoolExecutor(self.workers) as pool:
            futures = {pool.submit(self._call, sys_, user): (k, kind) for k, (kind, sys_, user) in todo.items()}
            for fut in as_completed(futures):
                k, kind = futures[fut]
                task.advance(1)
                try:
                    text, tin, tout = fut.result()
                except Exception as e:  # noqa: BLE001 - the SDKs already retried 429/5xx
                    if not type(e).__module__.startswith(("openai", "anthropic")):
                        raise
                    if self._fatal(e):
                        for f in futures:
                            f.cancel()
                        # redacted before it is cut: a cut could leave a part of the key that no longer matches
                        msg = redact(str(e), self._key).splitlines()[0][:200] if str(e) else type(e).__name__
                        raise ProviderError(f"judge {self.provider}/{self.model}: {type(e).__name__}: {msg}") from None
                    self.usage.failed += 1
                    continue
                self.usage.requests += 1
                self.usage.input_tokens += tin
                self.usage.output_tokens += tout
                result = parse[kind](text)
                if result is None:
                    self.usage.failed += 1
                    continue
                out[k] = result
                row = {"key": k, "kind": kind, "model": self.model, "result": result,
                       "usage": {"input": tin, "output": tout}}
                self._cache[k] = row
                if w is not None:
                    w.write(row)
        return out


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@dataclass
class JudgeItem:
    """One reply to judge: which candidate and condition, which prompt, the conversation, the text."""

    candidate: str
    condition: str
    prompt_id: str
    turns: list[dict]
    text: str


def run_judge(judge: Judge, items: list[JudgeItem], *, character: str, pairwise: bool = True,
              reporter: Reporter = NULL) -> dict[str, Any]:
    """Rubric means per candidate × condition, pairwise results, per-item scores and token usage."""
    requests: dict[str, tuple[str, str, str]] = {}
    item_key: list[str] = []
    for it in items:
        user = rubric_request(character, it.turns, it.text)
        k = judge.key("rubric", RUBRIC_SYSTEM + user)
        requests[k] = ("rubric", RUBRIC_SYSTEM, user)
        item_key.append(k)
    by_slot: dict[tuple[str, str], dict[str, JudgeItem]] = {}
    for it in items:
        by_slot.setdefault((it.condition, it.prompt_id), {})[it.candidate] = it
    candidates = list(dict.fromkeys(it.candidate for it in items))
    pair_keys: list[tuple[str, str, str, str, str, str]] = []  # cond, pid, a, b, key(a first), key(b first)
    if pairwise:
        for (cond, pid), slot in by_slot.items():
            for a, b in itertools.combinations([c for c in candidates if c in slot], 2):
                ia, ib = slot[a], slot[b]
                keys = []
                for first, second in ((ia, ib), (ib, ia)):
                    user = pair_request(character, ia.turns, first.text, second.text)
                    k = judge.key("pair", PAIR_SYSTEM + user)
                    requests[k] = ("pair", PAIR_SYSTEM, user)
                    keys.append(k)
                pair_keys.append((cond, pid, a, b, keys[0], keys[1]))
    answers = judge.ask_all(requests, reporter)

    per_item = []
    sums: dict[tuple[str, str], dict[str, list[float]]] = {}
    for it, k in zip(items, item_key):
        res = answers.get(k)
        per_item.append({"candidate": it.candidate, "condition": it.condition, "prompt_id": it.prompt_id,
                         "scores": res})
        if res:
            slot = sums.setdefault((it.candidate, it.condition), {c: [] for c in CRITERIA + OPTIONAL})
            for c in CRITERIA + OPTIONAL:
                if c in res:
                    slot[c].append(res[c])
    scores: dict[str, dict[str, dict[str, float | None]]] = {}
    for (cand, cond), crit in sums.items():
        scores.setdefault(cand, {})[cond] = {f"judge_{c}": (sum(v) / len(v) if v else None)
                                             for c, v in crit.items() if v or c in CRITERIA}
    pairs: dict[tuple[str, str, str], dict[str, int]] = {}
    pair_items: list[dict] = []  # per prompt, so people's verdicts on the same pair can be compared (ft rate)
    wins: dict[tuple[str, str], list[float]] = {}
    for cond, pid, a, b, k1, k2 in pair_keys:
        r1, r2 = answers.get(k1), answers.get(k2)
        if r1 is None or r2 is None:
            continue
        # order 1 shows a first, order 2 shows b first
        a_wins = r1["winner"] == "1" and r2["winner"] == "2"
        b_wins = r1["winner"] == "2" and r2["winner"] == "1"
        tally = pairs.setdefault((cond, a, b), {"a_wins": 0, "b_wins": 0, "ties": 0})
        tally["a_wins" if a_wins else "b_wins" if b_wins else "ties"] += 1
        pair_items.append({"condition": cond, "prompt_id": pid, "a": a, "b": b,
                           "winner": "a" if a_wins else "b" if b_wins else "tie"})
        wins.setdefault((a, cond), []).append(1.0 if a_wins else 0.0 if b_wins else 0.5)
        wins.setdefault((b, cond), []).append(1.0 if b_wins else 0.0 if a_wins else 0.5)
    for (cand, cond), vals in wins.items():
        scores.setdefault(cand, {}).setdefault(cond, {})["judge_win_rate"] = sum(vals) / len(vals)
    return {
        "provider": judge.provider, "model": judge.model, "scores": scores, "items": per_item,
        "pairs": [{"condition": c, "a": a, "b": b, **t} for (c, a, b), t in pairs.items()],
        "pair_items": pair_items,
        "usage": vars(judge.usage).copy(),
    }
