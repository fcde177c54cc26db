"""llama.cpp itself reading each GGUF ft writes: the program users run the file in (and Ollama and LM Studio are
built on), through llama-cpp-python when it is installed (``uv sync --extra llama``).

    reason = unavailable()               # None, or why the check cannot run here
    res = check(path, tok, ref)          # load, tokenize, score, generate greedily

A Python reader agreeing with ft's own writer can lock a bug in (a ``tokenizer.ggml.pre`` name llama.cpp does
not know passed every such check); llama.cpp is the consumer. What is compared with the 16-bit merged model
(``Reference``, computed once by the caller):
- tokenization: llama.cpp's ids for each sample text (and llama.cpp's own pre-tokenizer check text) against
  the training tokenizer's;
- drift on the same ids: mean KL(16-bit ‖ llama.cpp) per token, top-1 agreement, perplexity;
- greedy decoding: llama.cpp's next token at each step of the 16-bit model's greedy answer to a chat prompt
  (per-step agreement), then llama.cpp's own greedy answer, and whether it stopped on an end-of-generation token.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ExportError


@dataclass
class Reference:
    """What the 16-bit model said, for llama.cpp to be compared with."""
    texts: list[str]  # sample texts, tokenized by the training tokenizer without special tokens
    ids: list[Any]  # their ids (1-D tensors), as scored
    logits: list[Any]  # the 16-bit model's logits on those ids
    prompt_ids: list[int]  # a chat prompt, generation prompt included
    greedy_ids: list[int]  # the 16-bit model's greedy answer to it (ends with the end token if it stopped)
    end_ids: list[int]  # ids that end a reply (EOS, end of turn)


def unavailable() -> str | None:
    """Why llama.cpp cannot check files here, or None."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (`uv sync --extra train --extra llama` builds it once, ~10 min)"
    return None


_LOG: list[str] = []
_CALLBACK: Any = None


def _capture_log() -> None:
    """Keep llama.cpp's warnings and errors (llama-cpp-python sends them to a silenced stderr while loading)."""
    global _CALLBACK
    import llama_cpp

    if _CALLBACK is None:
        @llama_cpp.llama_log_callback
        def _cb(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
            if level in (3, 4):  # ggml.h: GGML_LOG_LEVEL_WARN = 3, GGML_LOG_LEVEL_ERROR = 4
                _LOG.append(text.decode("utf-8", "replace").strip())

        _CALLBACK = _cb
    _LOG.clear()
    llama_cpp.llama_log_set(_CALLBACK, ctypes.c_void_p(0))


@contextmanager
def no_weight_repacking():
    """Load without llama.cpp's extra CPU buffer types (weights repacked for AMX / AVX-512 kernels). They only
    change the layout, not the numbers, and their AMX path crashes (SIGSEGV in ggml_backend_amx_mul_mat) on
    virtual machines that report AMX without enabling it, as ft's own CI machines do."""
    import llama_cpp.llama_cpp as api

    default = api.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    api.llama_model_default_params = params
    try:
        yield
    finally:
        api.llama_model_default_params = default


def load(path: Path, n_ctx: int = 1024) -> Any:
    """The file in llama.cpp, logits for every position kept; ExportError with llama.cpp's reason if refused."""
    import llama_cpp
    from llama_cpp import Llama

    _capture_log()
    try:
        with no_weight_repacking():
            return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, seed=0,
                         n_threads=os.cpu_count() or 1, n_batch=min(n_ctx, 512))
    except ValueError as e:
        errors = [m for m in _LOG if "error" in m.lower()]
        why = errors[-1] if errors else str(e)
        raise ExportError(f"{path}: llama.cpp refused the file: {why}") from None
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _scores(llm: Any, ids: list[int]) -> Any:
    import torch

    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(llm.scores[: len(ids)].copy()).float()


def is_end(llm: Any, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), token))


def greedy(llm: Any, prompt_ids: list[int], max_new: int) -> tuple[list[int], bool]:
    """llama.cpp's own greedy answer (argmax each step); True when it ended on an end-of-generation token."""
    llm.reset()
    llm.eval(prompt_ids)
    out: list[int] = []
    for _ in range(max_new):
        token = int(llm.scores[llm.n_tokens - 1].argmax())
        out.append(token)
        if is_end(llm, token):
            return out, True
        llm.eval([token])
    return out, False


def _first_difference(llm: Any, tok: Any, got: list[int], want: list[int]) -> str:
    """Where llama.cpp's ids for a text first differ from the training tokenizer's, as token strings."""
    k = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    lc = [llm.detokenize([i], special=True).decode("utf-8", "replace") for i in got[max(k - 1, 0): k + 3]]
    hf = tok.convert_ids_to_tokens(want[max(k - 1, 0): k + 3])
    return f"token {k}: llama.cpp {lc!r}, transformers {hf!r}"


def check(path: Path, tok: Any, ref: Reference, *, max_new: int) -> dict:
    """Load ``path`` in llama.cpp and compare it with the 16-bit model; raises ExportError if it cannot load."""
    from ..gguf_pretok import llama_cpp_table
    from .verify import drift

    n_ctx = max([len(x) for x in ref.ids] + [len(ref.prompt_ids) + max(len(ref.greedy_ids), max_new)]) + 16
    llm = load(path, n_ctx=max(n_ctx, 256))
    try:
        def ids_of(text: str) -> list[int]:
            return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

        def hf_ids(text: str) -> list[int]:
            return tok(text, add_special_tokens=False)["input_ids"]

        mismatched = [i for i, t in enumerate(ref.texts) if ids_of(t) != hf_ids(t)]
        first_difference = _first_difference(llm, tok, ids_of(ref.texts[mismatched[0]]),
                                             hf_ids(ref.texts[mismatched[0]])) if mismatched else None
        chktxt = llama_cpp_table()["chktxt"]
        d = drift(ref.logits, lambda x: _scores(llm, [int(i) for i in x]), ref.ids)
        # per step of the 16-bit model's greedy answer: does llama.cpp pick the same next token?
        seq = ref.prompt_ids + ref.greedy_ids
        scores = _scores(llm, seq)
        picks = scores[len(ref.prompt_ids) - 1: len(seq) - 1].argmax(-1).tolist()
        agree = sum(int(a == b) for a, b in zip(picks, ref.greedy_ids))
        own, stopped = greedy(llm, ref.prompt_ids, max_new)
        end_token = llm.detokenize([own[-1]], special=True).decode("utf-8", "replace") if stopped else None
        return {
            "status": "ok",
            "tokenizer_agrees": not mismatched,
            "tokenizer_mismatched_texts": len(mismatched),
            "tokenizer_first_difference": first_difference,
            "tokenizer_check_text_agrees": ids_of(chktxt) == hf_ids(chktxt),
            **d,
            "greedy_steps": len(ref.greedy_ids),
            "greedy_next_token_agreement": agree / max(len(ref.greedy_ids), 1),
            "generated_tokens": len(own),
            "stopped": stopped,
            "stop_token": end_token,
            "sample": llm.detokenize(own, special=True).decode("utf-8", "replace"),
            "stops_on": sorted({tok.convert_ids_to_tokens(i) for i in ref.end_ids if is_end(llm, i)}),
        }
    finally:
        llm.close()  # frees the model and context now, not at garbage collection
