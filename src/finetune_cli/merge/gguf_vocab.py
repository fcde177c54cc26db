"""The tokenizer as GGUF ``tokenizer.ggml.*`` metadata: byte-level BPE (what Llama 3, Qwen2/3 and SmolLM use)
or SentencePiece-style BPE (Gemma, Llama 2, Mistral v0.x: spaces as ``▁``, unknown bytes as ``<0xXX>`` tokens).

llama.cpp re-implements the tokenizer from these keys, so each one matters: the token strings and
types (special tokens are CONTROL, so ``<|im_end|>`` is parsed as one token and ends generation),
the merges, the pre-tokenizer *name* (llama.cpp maps it to its own split regexes and refuses a name it
does not know; ``gguf_pretok`` picks it as llama.cpp's converter does), bos/eos/eot/pad ids and whether a
BOS is added, and the chat template used in training.

SentencePiece-style tokenizers are written as llama.cpp's converter writes a ``tokenizer.model``: model
"llama", pre "default", token scores and types (BYTE for ``<0xXX>``, UNKNOWN, CONTROL), and whether a space
is prefixed: written as the tokenizer treats text after a special token (``_space_prefix``), where llama.cpp's
converter leaves the key out (true), which splits Mistral's ``[INST] Hi`` otherwise than transformers.
transformers saves such tokenizers as tokenizer.json BPE merges, not as a ``tokenizer.model``; llama.cpp's SentencePiece tokenizer merges by token score instead, so each token's score is minus the rank of
the first merge that makes it: the merge order becomes the score order (tokens no merge makes come last).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..ui import NULL, Reporter
from ..gguf_pretok import pre_tokenizer_name

def add_tokenizer(w: Any, model_dir: Path, vocab_size: int, reporter: Reporter = NULL, *,
                  config: dict | None = None, keep_pre: str | None = None) -> dict:
    """Add the ``tokenizer.ggml.*`` keys for the tokenizer saved in ``model_dir``; returns what was written.

    ``keep_pre``: the pre-tokenizer name of the GGUF the model came from, kept as it was."""
    from transformers import AutoTokenizer

    tj_path = model_dir / "tokenizer.json"
    if not tj_path.is_file():
        raise ExportError(f"{model_dir}: no tokenizer.json: ft's GGUF writer needs a fast (BPE) tokenizer")
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    model = tj.get("model", {})
    sentencepiece = "Metaspace" in json.dumps(tj.get("pre_tokenizer")) or \
        "\u2581" in json.dumps(tj.get("normalizer"), ensure_ascii=False)
    if model.get("type") != "BPE" or (sentencepiece and not model.get("byte_fallback")):
        raise ExportError(f"GGUF export: ft's converter writes BPE tokenizers (byte-level, or SentencePiece-style "
                          f"with byte fallback); this one is {model.get('type')!r}"
                          f"{' without byte fallback' if model.get('type') == 'BPE' else ''}",
                          hint="use llama.cpp's convert_hf_to_gguf.py on the merged folder")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if sentencepiece:
        tokens, scores, types = _sentencepiece_vocab(tj, vocab_size, tok.unk_token)
        pre, pre_how = "default", "SentencePiece tokenizer (llama.cpp ignores the name)"
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        space_prefix = _space_prefix(tok)
        w.add_add_space_prefix(space_prefix["after_special"])
    else:
        pre, pre_how = pre_tokenizer_name(tok, keep=keep_pre)
        _byte_level_vocab(w, tj, vocab_size, pre)
    return {"tokenizer_model": "llama" if sentencepiece else "gpt2",
            **({"add_space_prefix": space_prefix} if sentencepiece else {}),
            **_special_tokens(w, tok, config, pre, pre_how)}


def _space_prefix(tok: Any) -> dict:
    """``tokenizer.ggml.add_space_prefix`` as the HF tokenizer behaves after a special token.

    llama.cpp's SentencePiece tokenizer prefixes a space to the start of the text *and* to every piece of text
    after a special token when the key is true (as sentencepiece, encoding each piece on its own, does), and to
    none when false. llama.cpp's converter never writes the key, so it is true. transformers' Llama/Mistral
    tokenizers with ``legacy: false`` (Metaspace, prepend_scheme "first") prefix the start of the text only:
    ``<s>[INST] Hi`` is ``[INST] ▁Hi`` in transformers but ``[INST] ▁▁Hi`` in llama.cpp with the key true. A
    chat template renders text after special tokens, so the key follows the tokenizer there; where the start of
    the text then differs (``start`` true, ``after_special`` false), llama.cpp tokenizes text that opens
    without a special token (not a chat) without the leading ``▁``."""
    def first_piece(text: str) -> str:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        pieces = tok.convert_ids_to_tokens(ids)
        return next((t for t in pieces if t != tok.eos_token), "")

    start = first_piece("a").startswith("\u2581")
    after_special = first_piece(f"{tok.eos_token}a").startswith("\u2581") if tok.eos_token else start
    return {"start": start, "after_special": after_special}


def _tokens_by_id(tj: dict, vocab_size: int) -> tuple[dict[int, str], dict[int, dict]]:
    """``({id: token}, {id: added token entry})`` from tokenizer.json; added tokens win."""
    vocab: dict[str, int] = dict(tj["model"]["vocab"])
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    for i, a in added.items():
        vocab[a["content"]] = i
    by_id = {i: t for t, i in vocab.items()}
    if max(by_id) >= vocab_size:
        raise ExportError(f"GGUF export: the tokenizer has id {max(by_id)} but the model's vocabulary is {vocab_size}")
    return by_id, added


def _sentencepiece_vocab(tj: dict, vocab_size: int, unk: str | None) -> tuple[list[str], list[float], list[int]]:
    import re

    import gguf

    model = tj["model"]
    by_id, added = _tokens_by_id(tj, vocab_size)
    rank: dict[str, int] = {}
    for r, m in enumerate(model.get("merges", [])):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    n = len(model.get("merges", []))
    byte = re.compile(r"<0x[0-9A-F]{2}>")
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        t = by_id.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            scores.append(-1e9)
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(t)
        if t in (model.get("unk_token"), unk):  # Mistral's tokenizer.json names no unk_token in its model
            scores.append(0.0)
            types.append(gguf.TokenType.UNKNOWN)
        elif i in added:
            scores.append(0.0)
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        elif byte.fullmatch(t):
            scores.append(0.0)
            types.append(gguf.TokenType.BYTE)
        else:
            scores.append(-float(rank.get(t, n + i)))
            types.append(gguf.TokenType.NORMAL)
    return tokens, scores, types


def _byte_level_vocab(w: Any, tj: dict, vocab_size: int, pre: str) -> None:
    import gguf

    model = tj["model"]
    by_id, added = _tokens_by_id(tj, vocab_size)
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)


def _special_tokens(w: Any, tok: Any, config: dict | None, pre: str, pre_how: str) -> dict:
    from ..chat_template import end_of_turn

    probe = tok("a", add_special_tokens=True)["input_ids"]
    adds_bos = tok.bos_token_id is not None and bool(probe) and probe[0] == tok.bos_token_id
    # llama.cpp reads a BOS id whether or not it adds one (absent, it falls back to a guess: token 11). A
    # tokenizer without one (ChatML models) gets the model config's, else the EOS id, with add_bos false.
    bos = tok.bos_token_id
    if bos is None and isinstance((config or {}).get("bos_token_id"), int):
        bos = config["bos_token_id"]
    if bos is None:
        bos = tok.eos_token_id
    if bos is not None:
        w.add_bos_token_id(bos)
    w.add_add_bos_token(adds_bos)
    w.add_add_eos_token(False)
    if tok.eos_token_id is None:
        raise ExportError("GGUF export: the tokenizer has no EOS token: llama.cpp would never stop")
    w.add_eos_token_id(tok.eos_token_id)
    eot = end_of_turn(tok)
    if eot is not None:
        w.add_eot_token_id(eot[1])
    if tok.pad_token_id is not None:
        w.add_pad_token_id(tok.pad_token_id)
    if tok.unk_token_id is not None:
        w.add_unk_token_id(tok.unk_token_id)
    if getattr(tok, "chat_template", None):
        w.add_chat_template(tok.chat_template)
    return {"tokenizer_pre": pre, "tokenizer_pre_from": pre_how, "bos_token_id": bos, "eos_token": tok.eos_token,
            "end_of_turn": eot[0] if eot else None, "add_bos": adds_bos}
