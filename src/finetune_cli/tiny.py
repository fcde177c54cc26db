"""Tiny random-weight chat models, built offline in a second, for smoke runs, CI and tests.

    ft model tiny runs/tiny-model                 # ChatML, pad ≠ eos
    make_tiny_model(path, template="llama3")      # Llama-3 headers, no pad token (like the real one)
    make_tiny_model(path, template=None)          # a base model without a chat template
    make_tiny_model(path, template="gemma", arch="gemma3_text")   # SentencePiece tokenizer, Gemma turns
    make_tiny_model(path, template="mistral", arch="mistral")     # SentencePiece tokenizer, [INST] turns

The tokenizer is a byte-level BPE trained on the fly on ft's own text (topics, personas, prose),
so it round-trips any UTF-8 text. The model is a 2-layer Llama (or Qwen2) with hidden size 64. The
``gemma`` template gets a SentencePiece BPE tokenizer instead (trained by ``sentencepiece`` with byte
fallback, converted as transformers converts Gemma's), ``mistral`` one shaped like Mistral v0.3's (a dummy
prefix space, ``[INST]``/``[/INST]`` control tokens), and the other architectures their own config class.
"""

from __future__ import annotations

import json
from pathlib import Path

from dataclasses import dataclass

from .chat_template import CHATML_TEMPLATE, GEMMA_TEMPLATE, LLAMA3_TEMPLATE  # the templates ft trains with
from .config import opt
from .errors import ConfigError
from .ui import Reporter

_SEED_TEXT = """
Aye, it's a dreich day the day, but the bairns are fine. Fit like? I dinna ken fit ye mean, loon.
The quine gaed doon tae the harbour. It's nae bother at aw. Muckle thanks tae ye.
The quick brown fox jumps over the lazy dog. What is the capital of France? Paris is the capital.
Write a two-line poem about rain. Rain falls soft on silver streets; the city hums in quiet beats.
I cannot help with that request, but here is a verse instead. Tell me about your work and family.
Explain how a compiler turns source code into machine instructions, step by step, with care.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Punctuation: . , ; : ! ? ' " ( ) [ ] { } - _ / \\ @ # %
Ça va? ¿Qué tal? Wie geht's? Hoe gaat het? Jak się masz? 你好 こんにちは
{"references": ["a", "b"]} system user assistant
"""


def _corpus() -> list[str]:
    lines = [ln for ln in _SEED_TEXT.splitlines() if ln.strip()]
    root = Path(__file__).parent
    for p in sorted(root.glob("personas/*.toml")):
        lines += [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return lines * 3


def make_sentencepiece_tokenizer(*, vocab_size: int = 1024, template: str = "gemma"):
    """A SentencePiece BPE tokenizer with byte fallback, as Gemma's is, converted to a transformers fast
    tokenizer the way transformers converts Gemma's ``tokenizer.model`` (BPE merges, spaces as ``▁``)."""
    import io
    import tempfile

    import sentencepiece as spm
    from transformers import GemmaTokenizer
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    turns = ["<start_of_turn>", "<end_of_turn>"]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=1.0, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
        eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=turns,
        add_dummy_prefix=False, split_digits=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True, minloglevel=2, num_threads=1)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "tokenizer.model").write_bytes(buf.getvalue())
        vocab, _, merges = SentencePieceExtractor(str(Path(d) / "tokenizer.model")).extract()
    tok = GemmaTokenizer(vocab=vocab, merges=merges)
    tok.add_special_tokens({"additional_special_tokens": turns})
    tok.chat_template = GEMMA_TEMPLATE
    tok.model_max_length = 2048
    return tok


# Mistral v0.3's template (tokenizer v3) without its tool calls: a system message goes into the last user turn
MISTRAL_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] | trim + eos_token }}"
    "{%- else %}{{- raise_exception('Only user and assistant roles are supported, with the exception of an "
    "initial optional system message!') }}{%- endif %}{%- endfor %}"
)


def make_mistral_tokenizer(*, vocab_size: int = 1024):
    """A SentencePiece BPE tokenizer shaped like Mistral 7B v0.3's: byte fallback, a dummy prefix space,
    ``<unk>`` ``<s>`` ``</s>`` then the control tokens ``[INST]`` ``[/INST]``; converted to a transformers fast
    tokenizer as transformers loads Mistral's (``LlamaTokenizer``, ``legacy=False``: a ``▁`` is prepended to
    the start of the text only, not after special tokens)."""
    import io
    import tempfile

    import sentencepiece as spm
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    turns = ["[INST]", "[/INST]"]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        control_symbols=turns, add_dummy_prefix=True, split_digits=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True, minloglevel=2, num_threads=1)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "tokenizer.model").write_bytes(buf.getvalue())
        vocab, _, merges = SentencePieceExtractor(str(Path(d) / "tokenizer.model")).extract()
    tok = LlamaTokenizer(vocab=vocab, merges=merges, legacy=False)
    tok.add_special_tokens({"additional_special_tokens": turns})
    tok.chat_template = MISTRAL_TEMPLATE
    tok.model_max_length = 2048
    return tok


def make_tokenizer(template: str | None = "chatml", *, vocab_size: int = 1024, pre: str = "gpt-2"):
    """A byte-level BPE tokenizer with chat special tokens; returns a transformers fast tokenizer.

    ``pre``: the pre-tokenizer, by llama.cpp's name for it (gpt-2, llama-bpe, qwen2, smollm)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .gguf_pretok import pre_tokenizer_from_name

    if template == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                    "<|eot_id|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)]
    else:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer_from_name(pre)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if template == "llama3":
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                       eos_token="<|eot_id|>")
        fast.chat_template = LLAMA3_TEMPLATE
    elif template == "chatml":
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                       pad_token="<|pad|>")
        fast.chat_template = CHATML_TEMPLATE
    elif template == "chatml-pad-eos":  # like SmolLM2's GGUF tokenizer: pad == eos
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                       pad_token="<|im_end|>")
        fast.chat_template = CHATML_TEMPLATE
    elif template is None:  # a base model: no chat template, eos = end of text, no pad
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|endoftext|>")
    else:
        raise ValueError(f"unknown tiny template {template!r}")
    fast.model_max_length = 2048
    return fast


def _config(arch: str, common: dict, head_dim: int | None):
    """The transformers config of a tiny ``arch``: the real architecture's config class, small shapes."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, Qwen3Config

    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "mistral":  # v0.3: no sliding window
        return MistralConfig(**common, sliding_window=None)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "qwen3":
        return Qwen3Config(**common, head_dim=head_dim or common["hidden_size"] // common["num_attention_heads"])
    if arch == "gemma3_text":  # Gemma 3's head_dim (256, = query_pre_attn_scalar) and layer pattern (every 6th
        hd = head_dim or 256  # global): what transformers' GGUF reader assumes; window 16 so tests cross it
        return Gemma3TextConfig(**{**common, "tie_word_embeddings": True}, head_dim=hd, query_pre_attn_scalar=hd,
                                sliding_window=16)
    if arch == "phi3":  # fused qkv_proj and gate_up_proj; with a ChatML tokenizer it is shaped like Phi-4
        return Phi3Config(**common)
    raise ValueError(f"unknown tiny arch {arch!r}")


def make_tiny_model(path: str | Path, *, template: str | None = "chatml", arch: str = "llama",
                    hidden: int = 64, layers: int = 2, seed: int = 0, vocab_size: int = 1024,
                    pre: str = "gpt-2", head_dim: int | None = None) -> Path:
    """Save a random-weight causal LM and its tokenizer to ``path``; returns the path.

    ``arch``: llama, mistral, qwen2, qwen3 (q/k norms; ``head_dim`` may differ from hidden / heads), gemma3_text
    (tied embeddings, head_dim 256, sliding window 16), phi3."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if template == "gemma":
        tok = make_sentencepiece_tokenizer(vocab_size=vocab_size)
    elif template == "mistral":
        tok = make_mistral_tokenizer(vocab_size=vocab_size)
    else:
        tok = make_tokenizer(template, vocab_size=vocab_size, pre=pre)
    common = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=2048, tie_word_embeddings=False,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    cfg = _config(arch, common, head_dim)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               bos_token_id=tok.bos_token_id)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "ft_tiny.json").write_text(json.dumps({"template": template, "arch": arch, "seed": seed, "pre": pre}))
    from .files import umask_modes

    umask_modes(path)
    return path


# ---------------------------------------------------------------- ft model tiny

@dataclass
class TinyConfig:
    dir: str = opt(help="Where to write the model (a new or empty directory).", required=True, positional=True)
    template: str = opt("chatml", "Chat template: chatml (pad ≠ eos), llama3 (Llama-3 headers, no pad), "
                                  "chatml-pad-eos (pad == eos, like SmolLM2's GGUF) or none (a base model).",
                        choices=("chatml", "llama3", "chatml-pad-eos", "none"))
    arch: str = opt("llama", "Architecture.", choices=("llama", "qwen2"))
    seed: int = opt(0, "Seed for the random weights.")


def run(cfg: TinyConfig, reporter: Reporter) -> dict:
    """Build a 2-layer, hidden-64 random-weight model with a byte-level BPE tokenizer, offline, in seconds."""
    out = Path(cfg.dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{cfg.dir}: exists and is not an empty directory")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no info chatter from save_pretrained: ft prints the result
    make_tiny_model(out, template=None if cfg.template == "none" else cfg.template, arch=cfg.arch, seed=cfg.seed)
    reporter.result(f"tiny {cfg.arch} model ({cfg.template}) → {out}  (try: ft train --model {out} --data ...)")
    return {"model": str(out), "template": cfg.template, "arch": cfg.arch}
