"""The pre-tokenizer name a GGUF carries in ``tokenizer.ggml.pre``, chosen as llama.cpp's converter chooses it.

    name, how = pre_tokenizer_name(tok)          # ("smollm", "llama.cpp hash (HuggingFaceTB/SmolLM-135M)")
    fix_gguf_pre_tokenizer(tok, "smollm")        # a tokenizer transformers rebuilt from a GGUF, made whole

llama.cpp does not read tokenizer.json: it splits text with its own regexes, picked by this one name, and
refuses a name it does not know ("unknown pre-tokenizer type"). Its converter picks the name by encoding a
fixed text with the Hugging Face tokenizer and looking the SHA-256 of the ids up in a generated table
(``llama_cpp_pre.json`` beside this file, from the llama.cpp that llama-cpp-python 0.3.36 vendors). ft
decides the same way, in this order:

1. ``keep``: the name a GGUF source model already had (a model ft dequantized from a GGUF keeps it);
2. the hash of ``tokenizer.encode(chktxt)`` in llama.cpp's table: the same answer llama.cpp's converter gives;
3. a tokenizer whose vocabulary is in no table (one trained by the user, or ft's tiny ones) is named when its
   own normalizer and pre-tokenizer split the same text into exactly the pieces one of the llama.cpp
   pre-tokenizers below splits it into (each a transcription of llama.cpp's regexes for that name);
4. otherwise the export is refused: a guessed name makes llama.cpp tokenize differently from training.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ExportError

# llama.cpp's regexes (src/llama-vocab.cpp) for these names, as tokenizers pre-tokenizers.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _split_then_bytes(regex: str) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        _byte_level(False)]}


REFERENCE_PRE = {  # llama.cpp name -> the tokenizers pre-tokenizer that splits text as llama.cpp does
    "gpt-2": _byte_level(True),
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                     _byte_level(True)]},
    "llama-bpe": _split_then_bytes(_LLAMA3),
    "qwen2": _split_then_bytes(_QWEN2),
}


@lru_cache(maxsize=1)
def llama_cpp_table() -> dict:
    return json.loads((Path(__file__).with_name("llama_cpp_pre.json")).read_text(encoding="utf-8"))


def chkhsh(tok: Any) -> str:
    """llama.cpp's key: SHA-256 of ``str(tok.encode(chktxt))`` (special tokens as the tokenizer adds them)."""
    ids = tok.encode(llama_cpp_table()["chktxt"])
    return hashlib.sha256(str(ids).encode()).hexdigest()


def _pieces(backend: Any, text: str) -> list[str] | None:
    if backend.pre_tokenizer is None:
        return None
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    return [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(text)]


@lru_cache(maxsize=None)
def _reference_pieces(name: str) -> tuple[str, ...]:
    pre = _from_json(REFERENCE_PRE[name])
    return tuple(p for p, _ in pre.pre_tokenize_str(llama_cpp_table()["chktxt"]))


def pre_tokenizer_from_name(name: str) -> Any:
    """The tokenizers pre-tokenizer that splits text as llama.cpp's ``name`` does."""
    if name not in REFERENCE_PRE:
        raise ValueError(f"unknown pre-tokenizer {name!r}: one of {', '.join(REFERENCE_PRE)}")
    return _from_json(REFERENCE_PRE[name])


def _from_json(defn: dict) -> Any:
    """A tokenizers pre-tokenizer object from its tokenizer.json definition."""
    from tokenizers import Tokenizer

    skeleton = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
                "pre_tokenizer": defn, "post_processor": None, "decoder": None,
                "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                          "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                          "ignore_merges": False, "vocab": {}, "merges": []}}
    return Tokenizer.from_str(json.dumps(skeleton)).pre_tokenizer


def pre_tokenizer_name(tok: Any, *, keep: str | None = None) -> tuple[str, str]:
    """``(name, how it was decided)`` for a fast tokenizer; ExportError when llama.cpp has no name for it."""
    if keep:
        return keep, "kept from the source GGUF"
    h = chkhsh(tok)
    hit = llama_cpp_table()["hashes"].get(h)
    if hit:
        return hit["name"], f"llama.cpp hash ({hit['ref']})"
    backend = getattr(tok, "backend_tokenizer", None)
    got = _pieces(backend, llama_cpp_table()["chktxt"]) if backend is not None else None
    if got is not None:
        for name in REFERENCE_PRE:
            if tuple(got) == _reference_pieces(name):
                return name, "splits llama.cpp's check text exactly as llama.cpp's " + repr(name)
    raise ExportError(f"GGUF export: llama.cpp knows no pre-tokenizer for this tokenizer (check-text hash "
                      f"{h[:16]}…, and its splits match none of {', '.join(REFERENCE_PRE)}): ft will not write a "
                      "guessed tokenizer.ggml.pre that would make llama.cpp tokenize differently from training",
                      hint="convert the merged folder with llama.cpp's convert_hf_to_gguf.py after adding the "
                           "tokenizer there (convert_hf_to_gguf_update.py)")


def fix_gguf_pre_tokenizer(tok: Any, name: str | None) -> bool:
    """Give a tokenizer transformers rebuilt from a GGUF the pre-tokenizer its ``tokenizer.ggml.pre`` names
    (transformers rebuilds every byte-level GGUF tokenizer with a plain ByteLevel step, dropping e.g.
    SmolLM's digit splitting). Returns whether it changed anything."""
    defn = REFERENCE_PRE.get(name or "")
    backend = getattr(tok, "backend_tokenizer", None)
    if defn is None or backend is None:
        return False
    if _pieces(backend, llama_cpp_table()["chktxt"]) == list(_reference_pieces(name)):
        return False
    backend.pre_tokenizer = _from_json(defn)
    return True
