"""Batched generation and held-out loss for one loaded model.

    outs = generate(model, tok, [[{"role": "user", "content": "Fit like?"}]], eos_ids=[2],
                    max_new_tokens=128, batch_size=16)
    outs[0].text, outs[0].n_tokens, outs[0].stopped_on_eos

Prompts are rendered with the model's chat template (the one saved with the adapter), sorted by
length so a batch holds prompts of similar length, left-padded, and generated together; results
come back in input order. Generation stops on any of ``eos_ids`` (the template's end-of-turn token
and the tokenizer's EOS). Greedy batched generation equals one-prompt-at-a-time generation (tested).

Speed (issue 21): ``batch_size=0`` sizes the batch from the prompt count and, on CUDA, the free memory
(``auto_batch_size``); ``merge_lora_for_inference`` folds an unquantized LoRA adapter into its base in memory
when the logits agree (peft's unmerged layers cost several kernel launches each per step); ``decode=Decoding(
"auto")`` decodes with a static KV cache and ``torch.compile(mode="reduce-overhead")`` (CUDA graphs) when
``choose_decode`` says it repays its warm-up, and falls back to eager decoding when compiling fails;
``static_cache=True`` alone gives the same greedy tokens as the default dynamic cache (tested on CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ..attention import attention_kernels
from ..errors import ConfigError, FtError
from .config import COMPILE_MODES


@dataclass
class Generation:
    text: str
    n_tokens: int         # generated tokens, the end-of-turn token included
    stopped_on_eos: bool  # ended on an end-of-turn/EOS token before max_new_tokens
    prompt_truncated: bool = False  # the prompt's start was cut to fit the model's context


def context_length(model) -> int | None:
    """The positions the model was built for (max_position_embeddings), when its config says."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def fit_prompt(tok, text: str, budget: int) -> tuple[list[int], bool]:
    """The prompt's token ids, cut at the start to at most ``budget`` tokens (the end holds the question and
    the assistant header the reply follows); True when cut. Only the text's tail is tokenized, growing until
    it covers the budget, so a 10 MB prompt costs what a budget-sized one does."""
    window = budget * 8
    while True:
        part = text[-window:] if window < len(text) else text
        ids = tok(part, add_special_tokens=False)["input_ids"]
        if part is text:
            return (ids[-budget:], True) if len(ids) > budget else (ids, False)
        if len(ids) > budget:  # the first token may be a piece of a word cut by the window: dropped here
            return ids[-budget:], True
        window *= 4


def render_prompt(tok, messages: list[dict]) -> str:
    """The text the model continues: the chat template with the assistant header, or, for a base
    model without a template, the turns' contents separated by blank lines."""
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def _trim(ids: list[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    """Cut at the first stop id (kept). A row without one ran to max_new_tokens: rows are only
    padded after they stop, so it holds no padding."""
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[: i + 1], True
    return ids, False


CPU_BATCH = 16  # on CPU a bigger batch buys little and pads more
MAX_BATCH = 512


def auto_batch_size(model, n_prompts: int, max_tokens: int) -> int:
    """Rows per batch for ``n_prompts`` prompts of at most ``max_tokens`` tokens (prompt + reply): all of
    them on CUDA while their KV cache, last-position logits and prefill activations fit in half the free
    memory, else as many as do; ``CPU_BATCH`` elsewhere."""
    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return max(1, min(n_prompts, CPU_BATCH))
    c = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers, hidden = c.num_hidden_layers, c.hidden_size
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    inter = getattr(c, "intermediate_size", None) or 4 * hidden
    elem = next(model.parameters()).element_size()
    per_row = (2 * layers * kv * head_dim * max_tokens * elem       # K and V for every position
               + max_tokens * (3 * inter + 6 * hidden) * elem       # one layer's prefill activations
               + 3 * c.vocab_size * 4)                               # fp32 logits, scores and probabilities
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(n_prompts, MAX_BATCH, int(free * 0.5) // per_row))


def _quantized(model) -> str | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
        return "the base is loaded in 4/8 bits"
    if getattr(base, "hf_quantizer", None) is not None or getattr(base.config, "quantization_config", None):
        return "the base is quantized"
    return None


def merge_lora_for_inference(model, *, rtol: float | None = None) -> tuple[Any, dict]:
    """``(model, info)``: a peft model with one LoRA adapter folded into its base weights in memory (the
    adapter's layers gone, so a decoding step launches what the base's does), when the base is not quantized
    and the merged logits on a probe equal the unmerged ones within ``rtol`` of their largest magnitude
    (default: 1e-4 in float32, 3e-2 in 16-bit, where merging rounds ``W + BA`` once instead of adding two
    rounded products). Otherwise the model comes back unchanged; ``info["adapter"]`` says which ("merged" or
    "unmerged", with ``reason``) for the run record. The files on disk are never touched."""
    import torch

    if not hasattr(model, "peft_config"):
        return model, {"adapter": None}
    if len(model.peft_config) != 1:
        return model, {"adapter": "unmerged", "reason": "several adapters share the base"}
    why = _quantized(model)
    if why:
        return model, {"adapter": "unmerged", "reason": why}
    param = next(model.parameters())
    if rtol is None:
        rtol = 1e-4 if param.dtype == torch.float32 else 3e-2
    vocab = model.get_input_embeddings().weight.shape[0]
    probe = (torch.arange(1, 33, device=param.device) * 7919 % vocab).unsqueeze(0)
    with torch.inference_mode():
        before = model(input_ids=probe).logits.float()
        try:
            model.merge_adapter()
        except (ValueError, RuntimeError, NotImplementedError) as e:
            return model, {"adapter": "unmerged", "reason": f"peft could not merge it ({str(e).splitlines()[0]})"}
        after = model(input_ids=probe).logits.float()
    diff = float((after - before).abs().max())
    scale = float(before.abs().max()) or 1.0
    info = {"max_logit_diff": round(diff, 6), "rtol": rtol}
    if not diff <= rtol * scale:
        model.unmerge_adapter()
        return model, {"adapter": "unmerged", "reason": f"merged logits differ by {diff:.3g}", **info}
    return model.unload(), {"adapter": "merged", **info}  # unload keeps the merged weights, drops LoRA


# --compile auto compiles a generate() call of at least this many tokens (prompts × max_new_tokens): 64 prompts of
# 256 tokens, ft eval's default prompt count. Compiling costs ~40 s for the first model of a process (~20 s for the
# next) on an H100, then a call of 128 × 256 tokens takes ~2 s instead of ~8 s: it repays over an eval's calls
# (conditions × decodings per candidate), not within one small call (docs/benchmarks.md)
COMPILE_MIN_TOKENS = 64 * 256


def static_cache_refusal(model) -> str | None:
    """Why ``model`` cannot decode with a compiled static KV cache, or None when it can. These are the
    installed transformers' own checks (generation/utils.py): ``_prepare_cache_for_generation`` ignores
    ``cache_implementation="static"`` for a class whose ``_supports_default_dynamic_cache()`` is False (Mamba,
    RWKV, ...), and ``_valid_auto_compile_criteria`` skips compiling under a quantizer that does not compile or
    with layers offloaded to the CPU or disk."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    supports = getattr(base, "_supports_default_dynamic_cache", None)
    if supports is None or not supports():
        return f"{type(base).__name__} has no static KV cache in transformers"
    quantizer = getattr(base, "hf_quantizer", None)
    if quantizer is not None and not getattr(quantizer, "is_compileable", False):
        return "its quantization does not compile"
    devices = set((getattr(base, "hf_device_map", None) or {}).values())
    if len(devices) > 1 and devices & {"cpu", "disk"}:
        return "layers are offloaded to the CPU or disk"
    return None


def choose_decode(mode: str, *, device_type: str, n_prompts: int, max_new_tokens: int,
                  refusal: str | None = None) -> tuple[bool, str | None]:
    """``(compiled, why_eager)`` for one generate() call under ``--compile mode``: compiled on CUDA when the
    model takes a static cache (``refusal`` is None) and, under ``auto``, the call generates at least
    ``COMPILE_MIN_TOKENS``. Under ``on`` a reason to decode eagerly is an error instead."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r}: one of {', '.join(COMPILE_MODES)}")
    if mode == "off":
        return False, "--compile off"
    why = None
    if device_type != "cuda":
        why = f"the device is {device_type}; compiled decoding is CUDA only"
    elif refusal:
        why = refusal
    elif mode == "auto" and n_prompts * max_new_tokens < COMPILE_MIN_TOKENS:
        why = (f"{n_prompts} prompts × {max_new_tokens} tokens is under {COMPILE_MIN_TOKENS:,}, too little to "
               "repay compiling")
    if why and mode == "on":
        raise ConfigError(f"option --compile on: cannot decode compiled: {why}",
                          hint="--compile auto decodes eagerly where compiling cannot run or does not pay")
    return why is None, why


@dataclass
class Decoding:
    """``--compile`` for one run of generate() calls, and what the last call did (``record``).

        d = Decoding("auto", warn=reporter.warn)
        generate(model, tok, prompts, eos_ids=[2], decode=d); d.record  # {"decode": "compiled"}

    When compiling fails under ``auto`` (torch.compile, dynamo, inductor, CUDA graphs, or the static cache
    refused), the call is generated again eagerly, ``warn`` gets one line naming the reason, and every
    later call with this Decoding decodes eagerly: an optimisation never fails the run. Under ``on`` the
    failure is an error."""

    mode: str = "auto"
    warn: Callable[[str], Any] | None = None
    failure: str | None = None  # why compiling failed in this run
    record: dict = field(default_factory=dict)  # {"decode": "compiled"|"eager", "decode_reason": ...}

    def choose(self, model, n_prompts: int, max_new_tokens: int) -> bool:
        if self.failure and self.mode == "auto":
            compiled, why = False, f"compiling failed earlier in this run ({self.failure})"
        else:
            device = next(model.parameters()).device
            refusal = static_cache_refusal(model) if device.type == "cuda" and self.mode != "off" else None
            compiled, why = choose_decode(self.mode, device_type=device.type, n_prompts=n_prompts,
                                          max_new_tokens=max_new_tokens, refusal=refusal)
        self.record = {"decode": "compiled"} if compiled else {"decode": "eager", "decode_reason": why}
        return compiled

    def failed(self, err: Exception) -> None:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reason = f"{type(err).__name__}: {first}"[:300].rstrip(": ")
        if self.mode == "on":
            raise FtError(f"compiled decoding failed: {reason}",
                          hint="--compile auto falls back to eager decoding, --compile off never compiles") from err
        self.failure = reason
        self.record = {"decode": "eager", "decode_reason": f"compiling failed ({reason})"}
        if self.warn is not None:
            self.warn(f"compiled decoding failed ({reason}): decoding eagerly for the rest of the run")


def _generate_batch(model, enc: dict, gcfg):
    """One ``model.generate`` call (its own function: tests make the compiled one fail here)."""
    return model.generate(**enc, generation_config=gcfg)


def generate(model, tok, prompts: list[list[dict]], *, eos_ids: list[int], max_new_tokens: int = 256,
             temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0,
             batch_size: int = 16, seed: int = 0,
             on_batch: Callable[[int], Any] | None = None, static_cache: bool = False,
             decode: Decoding | None = None) -> list[Generation]:
    """Generate one reply per prompt (a list of messages); ``temperature=0`` is greedy.

    ``batch_size=0``: ``auto_batch_size``. ``decode``: whether to decode compiled (static KV cache, CUDA graphs;
    see ``Decoding``), and the record of what ran; None decodes eagerly. ``static_cache``: the static cache
    without compiling."""
    import torch

    if not eos_ids:
        raise ValueError("eos_ids is empty: generation would never stop before max_new_tokens")
    tok.padding_side = "left"
    ctx = context_length(model)
    if ctx is not None and max_new_tokens >= ctx:
        raise ConfigError(f"option --max-new-tokens {max_new_tokens}: the model's context is {ctx} tokens, "
                          "which leaves no room for the prompt", hint=f"pass --max-new-tokens below {ctx}")
    # a prompt past the context would make the model allocate for all of it (25 TB for a 10 MB prompt)
    budget = ctx - max_new_tokens if ctx is not None else 1 << 62
    fitted = [fit_prompt(tok, render_prompt(tok, m), budget) for m in prompts]
    if not batch_size:
        longest = max((len(ids) for ids, _ in fitted), default=0)
        batch_size = auto_batch_size(model, len(fitted), longest + max_new_tokens)
    kw = dict(eos_ids=eos_ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
              repetition_penalty=repetition_penalty, batch_size=batch_size, seed=seed)
    progress = on_batch
    if decode is not None and decode.choose(model, len(fitted), max_new_tokens):
        counted = 0  # rows on_batch was told of: the eager rerun after a failure does not count them twice

        def count(n: int) -> None:
            nonlocal counted
            counted += n
            if on_batch is not None:
                on_batch(n)

        try:
            return _generate_fitted(model, tok, fitted, compiled=True, on_batch=count, **kw)
        except (KeyboardInterrupt, torch.cuda.OutOfMemoryError):
            raise  # not compiling's fault: eager decoding would fail the same way
        except Exception as e:  # torch.compile/dynamo/inductor/CUDA-graph errors share no base class
            decode.failed(e)  # raises under --compile on

        def progress(n: int) -> None:
            nonlocal counted
            told = min(n, counted)
            counted -= told
            if on_batch is not None and n > told:
                on_batch(n - told)
    return _generate_fitted(model, tok, fitted, static_cache=static_cache, on_batch=progress, **kw)


def _generate_fitted(model, tok, fitted: list[tuple[list[int], bool]], *, eos_ids: list[int], max_new_tokens: int,
                     temperature: float, top_p: float, repetition_penalty: float, batch_size: int, seed: int,
                     on_batch: Callable[[int], Any] | None, static_cache: bool = False,
                     compiled: bool = False) -> list[Generation]:
    import torch
    from transformers import GenerationConfig

    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos_ids[0]
    order = sorted(range(len(fitted)), key=lambda i: -len(fitted[i][0]))
    device = next(model.parameters()).device
    sample = temperature > 0
    cache: dict[str, Any] = {}
    if compiled:
        from transformers import CompileConfig

        cache = dict(cache_implementation="static", compile_config=CompileConfig(mode="reduce-overhead"))
    elif static_cache:
        cache = dict(cache_implementation="static", disable_compile=True)
    gcfg = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature if sample else None,
        top_p=top_p if sample else None, top_k=None, repetition_penalty=repetition_penalty,
        eos_token_id=list(eos_ids), pad_token_id=pad_id, bos_token_id=tok.bos_token_id, **cache)
    stop = set(eos_ids)
    results: list[Generation | None] = [None] * len(fitted)
    torch.manual_seed(seed)
    for b in range(0, len(order), batch_size):
        idx = order[b: b + batch_size]
        enc = tok.pad({"input_ids": [fitted[i][0] for i in idx]}, return_tensors="pt", padding=True)
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.inference_mode(), attention_kernels(device):
            out = _generate_batch(model, enc, gcfg)
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        for i, ids in zip(idx, new):
            ids, stopped = _trim(ids, stop)
            body = ids[:-1] if stopped else ids
            results[i] = Generation(text=tok.decode(body, skip_special_tokens=True).strip(),
                                    n_tokens=len(ids), stopped_on_eos=stopped, prompt_truncated=fitted[i][1])
        if on_batch is not None:
            on_batch(len(idx))
    return results  # type: ignore[return-value]


def heldout_loss(model, tok, conversations: list[list[dict]], *, max_len: int = 2048,
                 batch_size: int = 4) -> tuple[float | None, int]:
    """Mean cross-entropy per assistant token (nats) over conversations, and the token count.

    Labels are the training labels (``train.template.assistant_only_labels``): every assistant
    turn through its end-of-turn token. None when the model has no chat template.
    """
    import torch

    from ..chat_template import assistant_only_labels

    if not getattr(tok, "chat_template", None) or not conversations:
        return None, 0
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = next(model.parameters()).device
    max_len = min(max_len, context_length(model) or max_len)
    encoded = [assistant_only_labels(tok, conv, max_len=max_len) for conv in conversations]
    total, count = 0.0, 0
    for b in range(0, len(encoded), batch_size):
        batch = encoded[b: b + batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (x, y) in enumerate(batch):  # right padding: positions are plain 0..n-1
            ids[r, : len(x)] = torch.tensor(x)
            labels[r, : len(y)] = torch.tensor(y)
            mask[r, : len(x)] = 1
        with torch.inference_mode(), attention_kernels(device):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            shift = logits[:, :-1].float()
            target = labels[:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(shift.reshape(-1, shift.shape[-1]), target.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((target != -100).sum())
    if not count:
        return None, 0
    return total / count, count


def perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    return math.exp(min(loss, 50.0))


def _takes_logits_to_keep(model) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


class TokenStream:
    """One reply, token by token, for ``ft chat``: iterate for text pieces as they are decoded.

        s = TokenStream(model, tok, messages, eos_ids=[2], max_new_tokens=128)
        for piece in s: print(piece, end="", flush=True)
        s.text, s.n_tokens, s.stopped_on_eos, s.tokens_per_s

    The same prompt (``render_prompt``, ``fit_prompt``) and stop ids as ``generate``; greedy gives
    ``generate``'s text (tested). A plain step loop over the KV cache rather than ``generate`` in a thread:
    Ctrl-C lands between two steps, and the counts so far stay right for a reply stopped midway.
    Sampling draws from a generator seeded with ``seed`` per reply: one seed, one answer, for every model.
    """

    def __init__(self, model, tok, messages: list[dict], *, eos_ids: list[int], max_new_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int = 0):
        if not eos_ids:
            raise ValueError("eos_ids is empty: generation would never stop before max_new_tokens")
        self.model, self.tok, self.messages, self.eos_ids = model, tok, messages, list(eos_ids)
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.repetition_penalty, self.seed = repetition_penalty, seed
        self.ids: list[int] = []
        self.text = ""
        self.stopped_on_eos = False
        self.prompt_truncated = False
        self.prompt_tokens = 0
        self.seconds = 0.0
        self.first_token_s: float | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    @property
    def tokens_per_s(self) -> float:
        return len(self.ids) / self.seconds if self.seconds > 0 else 0.0

    def _processors(self):
        from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                  TopPLogitsWarper)

        procs = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.temperature > 0:
            procs.append(TemperatureLogitsWarper(self.temperature))
            if self.top_p < 1.0:
                procs.append(TopPLogitsWarper(self.top_p))
        return procs

    def __iter__(self):
        import time

        import torch

        model, tok = self.model, self.tok
        ctx = context_length(model)
        if ctx is not None and self.max_new_tokens >= ctx:
            raise ConfigError(f"max new tokens {self.max_new_tokens}: the model's context is {ctx} tokens, "
                              "which leaves no room for the prompt", hint=f"use fewer than {ctx}")
        budget = ctx - self.max_new_tokens if ctx is not None else 1 << 62
        ids, self.prompt_truncated = fit_prompt(tok, render_prompt(tok, self.messages), budget)
        self.prompt_tokens = len(ids)
        device = next(model.parameters()).device
        procs = self._processors()
        rng = torch.Generator(device=device).manual_seed(self.seed)
        seq = torch.tensor([ids], device=device)
        step_input, past = seq, None
        stop = set(self.eos_ids)
        shown = ""  # what has been yielded, joined
        prefix_at = read_at = 0  # the decode window: ids[prefix_at:read_at] is text already shown
        start = time.perf_counter()
        # the prompt's logits but the last are never read: not computing them (vocab × prompt floats, 128k × n
        # for a Llama-3 model) is most of what separates the first token from a bare streamer's
        last = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}
        with torch.inference_mode(), attention_kernels(device):
            for _ in range(self.max_new_tokens):
                out = model(input_ids=step_input, past_key_values=past, use_cache=True, **last)
                past = out.past_key_values
                scores = procs(seq, out.logits[:, -1, :].float())
                if self.temperature > 0:
                    nxt = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=rng)
                else:
                    nxt = scores.argmax(dim=-1, keepdim=True)
                token = int(nxt)
                self.ids.append(token)
                self.seconds = time.perf_counter() - start
                if self.first_token_s is None:
                    self.first_token_s = self.seconds
                if token in stop:
                    self.stopped_on_eos = True
                    break
                seq, step_input = torch.cat([seq, nxt], dim=-1), nxt
                # decode a window of the last few tokens (text-generation-inference's incremental detokenizing):
                # a byte-level token may hold half a character (shown once complete), and a tokenizer may join
                # pieces differently than it decodes them one by one; a window, unlike decoding the whole reply,
                # never holds the rest of the reply back when an earlier character decodes differently later
                before = tok.decode(self.ids[prefix_at:read_at], skip_special_tokens=True)
                now = tok.decode(self.ids[prefix_at:], skip_special_tokens=True)
                if len(now) <= len(before) or now.endswith("\ufffd"):
                    continue
                piece = now[len(before):]
                prefix_at, read_at = read_at, len(self.ids)
                if not shown:
                    piece = piece.lstrip()
                shown += piece
                self.text = shown.strip()
                if piece:
                    yield piece
        body = self.ids[:-1] if self.stopped_on_eos else self.ids
        text = tok.decode(body, skip_special_tokens=True).lstrip()
        self.text = text.strip()
        if text.startswith(shown) and len(text) > len(shown):
            yield text[len(shown):]
