"""LLM providers for ``ft gen`` and ``ft topics expand``: OpenAI (and any OpenAI-compatible server
through ``OPENAI_BASE_URL``: vLLM, Ollama, llama.cpp) and Anthropic, with ft's own retry policy.

The SDKs' built-in retries are switched off (``max_retries=0``) so that one policy, here, decides
and counts every retry: 429 (waiting what ``Retry-After`` / ``retry-after-ms`` asks, capped), 5xx,
timeouts, connection errors and malformed bodies are retried with exponential backoff and jitter;
401/403 (bad key) and 404 (no such model) stop the run (:class:`ProviderError`); anything else fails
the one job (:class:`JobFailed`). API keys are never put in a message.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import orjson

from .errors import ConfigError, ProviderError

DEFAULT_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}  # ft gen, topics and the eval judge
KEY_VARS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
URL_VARS = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}


@dataclass
class Completion:
    """One provider answer (the offline template provider returns the same type)."""

    text: str
    finish: str = "stop"  # "stop" or "length" (truncated)
    tokens_in: int = 0
    tokens_out: int = 0


USER_SIM = ("You play the user in a conversation with an assistant about: {topic}. Write the user's next "
            "message: one short, natural follow-up question in plain English that builds on the "
            "assistant's last answer. Reply with the question only.")


class JobFailed(Exception):
    """This request will not succeed (retries exhausted, a 400...): the job goes to the rejects file."""


def choose_provider(requested: str) -> str:
    """``auto``: openai if OPENAI_API_KEY or OPENAI_BASE_URL is set, else anthropic if its key is,
    else the offline template provider."""
    if requested != "auto":
        return requested
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
        return "openai"
    if os.environ.get("ANTHROPIC_API_KEY"):
        return "anthropic"
    return "template"


@dataclass
class RetryPolicy:
    max_retries: int = 6
    base: float = 1.0        # seconds before the first retry; doubles each time
    cap: float = 60.0        # no single wait is longer, Retry-After included
    timeout: float = 60.0    # per request

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Exponential backoff with 'equal jitter': between half and all of base·2^attempt."""
        d = min(self.cap, self.base * 2 ** attempt)
        return d / 2 + rng.random() * d / 2


@dataclass
class CallStats:
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    retries: Counter = field(default_factory=Counter)  # reason -> count
    waited_s: float = 0.0
    adapted: list = field(default_factory=list)  # request parameters changed for this model, once each


def retry_after_seconds(headers) -> float | None:
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        when = email.utils.parsedate_to_datetime(ra) if ra else None
        return max(0.0, when.timestamp() - time.time()) if when else None


class LLMProvider:
    """One client for ``openai`` or ``anthropic`` with ft's retry policy."""

    def __init__(self, kind: str, *, model: str | None, base_url: str | None, policy: RetryPolicy,
                 temperature: float = 0.8, max_tokens: int = 512, persona=None):
        if kind not in KEY_VARS:
            raise ConfigError(f"unknown provider {kind!r}")
        self.name = kind
        self.model = model or DEFAULT_MODELS[kind]
        self.policy = policy
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.persona = persona
        self.stats = CallStats()
        self._rng = random.Random()
        self._params = OpenAIParams()
        key = os.environ.get(KEY_VARS[kind])
        self.base_url = base_url or os.environ.get(URL_VARS[kind]) or None
        if not key:
            if kind == "openai" and self.base_url:
                key = "not-needed"  # local OpenAI-compatible servers (vLLM, Ollama) take any key
            else:
                raise ConfigError(f"provider {kind} needs {KEY_VARS[kind]} (in the environment or .env)")
        self._secret = key
        if kind == "openai":
            import openai as sdk

            self._client = sdk.AsyncOpenAI(api_key=key, base_url=self.base_url, max_retries=0,
                                           timeout=policy.timeout)
        else:
            import anthropic as sdk

            self._client = sdk.AsyncAnthropic(api_key=key, base_url=self.base_url, max_retries=0,
                                              timeout=policy.timeout)
        self._sdk = sdk

    # -- the two calls ft gen makes -------------------------------------------------------------
    async def answer(self, job, messages: list[dict], turn: int, attempt: int) -> Completion:
        system = self.persona.instructions
        if job.bucket == "multi" and turn == 0:
            system += f"\nThe user writes in {job.lang}. Answer in your own voice, not in {job.lang}."
        return await self.complete(system, messages)

    async def user_turn(self, job, messages: list[dict], turn: int, attempt: int) -> Completion:
        transcript = "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages)
        return await self.complete(USER_SIM.format(topic=job.topic),
                                   [{"role": "user", "content": transcript}], max_tokens=120)

    # -- one request, retried under the policy --------------------------------------------------
    async def complete(self, system: str | None, messages: list[dict], *,
                       max_tokens: int | None = None) -> Completion:
        sdk = self._sdk
        attempt = -1
        while attempt < self.policy.max_retries:
            attempt += 1
            self.stats.requests += 1
            wait = None
            form = self._params.form()
            try:
                return await self._request(system, messages, max_tokens or self.max_tokens)
            except (sdk.AuthenticationError, sdk.PermissionDeniedError) as e:
                raise ProviderError(f"{self.name}: authentication failed (HTTP {e.status_code}) at "
                                    f"{self.base_url or 'the default endpoint'}",
                                    hint=f"check {KEY_VARS[self.name]}") from None
            except sdk.NotFoundError:
                raise ProviderError(f"{self.name}: model {self.model!r} not found (HTTP 404) at "
                                    f"{self.base_url or 'the default endpoint'}", hint="check --model") from None
            except sdk.APITimeoutError:
                reason, last = "timeout", "timeout"
            except sdk.APIConnectionError as e:
                # the cause (httpx's ConnectError: "Connection refused", a DNS failure...) says what broke
                cause = e.__cause__ or e
                text = self._scrub(str(cause)).splitlines()[0][:120] if str(cause) else ""
                reason = "connection"
                last = f"connection failed ({type(cause).__name__}: {text})" if text else \
                    f"connection failed ({type(cause).__name__})"
            except sdk.APIStatusError as e:
                status = e.status_code
                last = f"HTTP {status}"
                if status == 429:
                    reason, wait = "429", retry_after_seconds(e.response.headers)
                elif status >= 500:
                    reason, wait = f"{status}", retry_after_seconds(e.response.headers)
                elif status == 408 or status == 409:
                    reason = f"{status}"
                elif status == 400 and self.name == "openai" and self._params.retry_after(e, form, self._changed):
                    attempt -= 1  # the same request in the form this model takes (learnt here or by a
                    continue      # request running beside this one): not a retry
                else:
                    raise JobFailed(f"HTTP {status} from {self.host}: {_short(e, self._secret)}") from None
            except (sdk.APIResponseValidationError, MalformedResponse, ValueError) as e:
                # a body that is not a chat completion; a TypeError from the call itself is a bug
                # (a keyword this SDK version lacks): it propagates, never retried
                reason = "malformed"
                last = f"malformed response ({e if isinstance(e, MalformedResponse) else type(e).__name__})"
            else:  # pragma: no cover - _request returns or raises
                continue
            self.stats.retries[reason] += 1
            if attempt == self.policy.max_retries:
                raise JobFailed(self._scrub(f"{last} after {attempt + 1} attempts to {self.host}"))
            delay = wait if wait is not None else self.policy.backoff(attempt, self._rng)
            delay = min(delay, self.policy.cap)
            self.stats.waited_s += delay
            await asyncio.sleep(delay)
        raise JobFailed("retries exhausted")  # pragma: no cover

    async def _request(self, system: str | None, messages: list[dict], max_tokens: int) -> Completion:
        # The raw body, parsed here with orjson: ft needs three fields, and building the SDK's
        # pydantic objects cost ~0.2 ms of CPU a request (~15% of a request at 200 req/s).
        if self.name == "openai":
            msgs = ([{"role": "system", "content": system}] if system else []) + messages
            raw = await self._client.chat.completions.with_raw_response.create(
                model=self.model, messages=msgs, **self._params.kwargs(max_tokens, self.temperature))
            body = raw.content
        else:
            # the installed anthropic SDK (2.x) takes no sampling parameters: no temperature here
            kw = {"system": system} if system else {}
            raw = await self._client.messages.with_raw_response.create(model=self.model, messages=messages,
                                                                       max_tokens=max_tokens, **kw)
            body = await raw.read()
        try:
            data = orjson.loads(body)
            comp = _parse_openai(data) if self.name == "openai" else _parse_anthropic(data)
        except (TypeError, AttributeError, KeyError, IndexError, ValueError) as e:
            raise MalformedResponse(type(e).__name__) from None
        self.stats.tokens_in += comp.tokens_in
        self.stats.tokens_out += comp.tokens_out
        return comp

    def _changed(self, param: str) -> None:
        self.stats.adapted.append(
            f"{self.model} takes max_completion_tokens, not max_tokens" if param == "max_tokens" else
            f"{self.model} takes only its default temperature: --temperature {self.temperature:g} not sent")

    @property
    def host(self) -> str:
        """Where requests go, for messages: ``127.0.0.1:8000``, ``api.openai.com``."""
        from urllib.parse import urlsplit

        return urlsplit(str(self._client.base_url)).netloc or str(self._client.base_url)

    def _scrub(self, text: str) -> str:
        return redact(text, self._secret)

    async def close(self) -> None:
        await self._client.close()


class OpenAIParams:
    """The form of an OpenAI chat request that the model takes. OpenAI's reasoning models refuse
    ``max_tokens`` (they take ``max_completion_tokens``) and any temperature but the default, with a 400
    that names the parameter; the first refusal changes the form for every later request (``ft gen``,
    ``ft topics expand`` and the eval judge share this), instead of failing every job."""

    def __init__(self) -> None:
        self.limit_key = "max_tokens"
        self.temperature = True

    def form(self) -> tuple[str, bool]:
        return self.limit_key, self.temperature

    def kwargs(self, max_tokens: int, temperature: float) -> dict:
        kw: dict = {self.limit_key: max_tokens}
        if self.temperature:
            kw["temperature"] = temperature
        return kw

    def retry_after(self, err, sent: tuple[str, bool], on_change: Callable[[str], None] | None = None) -> bool:
        """Whether a 400 for a request sent in form ``sent`` is worth sending again in the current form:
        it named a parameter that is now changed (here, once per parameter: ``on_change(param)``) or that a
        request running beside it already changed. A model that refuses the new form too fails as any 400."""
        param = refused_param(err)
        if param == "max_tokens" and self.limit_key == "max_tokens":
            self.limit_key = "max_completion_tokens"
        elif param == "temperature" and self.temperature:
            self.temperature = False
        else:
            return self.form() != sent
        if on_change:
            on_change(param)
        return True


def refused_param(err) -> str | None:
    """``max_tokens`` or ``temperature`` when an OpenAI 400 says this model does not take it (OpenAI's
    reasoning models: ``param`` with code ``unsupported_parameter`` / ``unsupported_value``)."""
    param, msg = getattr(err, "param", None), _short(err)
    if param == "max_tokens" or "max_completion_tokens" in msg:
        return "max_tokens"
    if param == "temperature":
        return "temperature"
    return None


class MalformedResponse(Exception):
    """A 200 response whose body does not have the shape of a chat completion."""


def _parse_openai(data: dict) -> Completion:
    choice = data["choices"][0]
    text = choice["message"]["content"]
    if not isinstance(text, str):
        raise ValueError("no message content")
    usage = data.get("usage") or {}
    tin, tout = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    return Completion(text, "length" if choice.get("finish_reason") == "length" else "stop", tin, tout)


def _parse_anthropic(data: dict) -> Completion:
    if not isinstance(data["content"], list):
        raise ValueError("no content")
    text = "".join(b["text"] for b in data["content"] if b.get("type") == "text")
    usage = data.get("usage") or {}
    tin, tout = usage.get("input_tokens") or 0, usage.get("output_tokens") or 0
    return Completion(text, "length" if data.get("stop_reason") == "max_tokens" else "stop", tin, tout)


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every secret replaced by ``***``: what a provider's error says goes to the
    terminal and to files, and some servers echo the key they were sent."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _short(err: Exception, secret: str | None = None) -> str:
    """The first line of a provider's error, at most 200 characters, ``secret`` redacted before the cut."""
    msg = redact(getattr(err, "message", None) or str(err), secret)
    return msg.splitlines()[0][:200] if msg else type(err).__name__
