"""The tokenizer as GGUF ``tokenizer.ggml.*`` metadata: byte-level BPE (what Llama 3, Qwen2 and SmolLM use).

llama.cpp re-implements the tokenizer from these keys, so each one matters: the token strings and
types (special tokens are CONTROL, so ``<|im_end|>`` is parsed as one token and ends generation),
the merges, the pre-tokenizer *name* (llama.cpp maps it to its own split regexes and refuses a name it
does not know; ``gguf_pretok`` picks it as llama.cpp's converter does), bos/eos/eot/pad ids and whether a
BOS is added, and the chat template used in training.
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
    import gguf
    from transformers import AutoTokenizer

    from ..train.template import end_of_turn

    tj_path = model_dir / "tokenizer.json"
    if not tj_path.is_file():
        raise ExportError(f"{model_dir}: no tokenizer.json: ft's GGUF writer needs a fast (BPE) tokenizer")
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    model = tj.get("model", {})
    sentencepiece = "Metaspace" in json.dumps(tj.get("pre_tokenizer")) or \
        "\u2581" in json.dumps(tj.get("normalizer"), ensure_ascii=False)
    if model.get("type") != "BPE" or sentencepiece:
        raise ExportError("GGUF export: this tokenizer is SentencePiece-style (Llama 2 / Mistral v0.x); ft's "
                          "converter writes byte-level BPE tokenizers only",
                          hint="use llama.cpp's convert_hf_to_gguf.py on the merged folder")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    pre, pre_how = pre_tokenizer_name(tok, keep=keep_pre)

    vocab: dict[str, int] = dict(model["vocab"])
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    for i, a in added.items():
        vocab[a["content"]] = i
    by_id = {i: t for t, i in vocab.items()}
    if max(by_id) >= vocab_size:
        raise ExportError(f"GGUF export: the tokenizer has id {max(by_id)} but the model's vocabulary is {vocab_size}")
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
