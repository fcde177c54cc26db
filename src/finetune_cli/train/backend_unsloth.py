"""The Unsloth backend (CUDA): Unsloth's kernels, offloaded gradient checkpointing, fused loss and
padding-free batches, under ft's recipe, checks and outputs.

It differs from the hf backend only where Unsloth is faster: loading (``FastLanguageModel``), the
LoRA wrap (``FastLanguageModel.get_peft_model`` with ``use_gradient_checkpointing="unsloth"``) and
the padding-free batch, which carries ``packed_seq_lengths`` so Unsloth's attention runs varlen /
block-diagonal kernels. ft's own template, pad/EOS and masking checks run unchanged (run.py), and the
saved adapter is a plain PEFT adapter that transformers + peft load.

Unsloth patches transformers, peft and trl when it is imported, so it must be imported first:
``import_unsloth()`` runs before anything in the process imports transformers (run.py calls it while
picking the backend) and refuses to go on silently unpatched.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from ..errors import ConfigError
from ..models import refuse_remote_code, resolve_model
from . import backend_hf
from .backend_hf import Setup
from .config import TrainConfig
from ..chat_template import prepare_model_and_tokenizer

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def import_unsloth() -> None:
    """Import Unsloth before transformers (Unsloth patches it on import)."""
    if "unsloth" in sys.modules:
        return
    if "transformers" in sys.modules:
        raise ConfigError("option --backend unsloth: transformers was imported before Unsloth, so Unsloth "
                          "cannot patch it", hint="run `ft train` in a fresh process")
    import unsloth  # noqa: F401


def _dtype(cfg: TrainConfig):
    import torch

    if cfg.dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if cfg.dtype == "float32":
        raise ConfigError("option --dtype float32: Unsloth trains in bf16/fp16", hint="use --backend hf")
    return getattr(torch, cfg.dtype)


def load(cfg: TrainConfig, reporter) -> tuple[Any, Any, Setup]:
    import_unsloth()
    from pathlib import Path

    from unsloth import FastLanguageModel

    path = resolve_model(cfg.model, reporter)
    refuse_remote_code(path, cfg.model, cfg.trust_remote_code)
    if Path(path).is_dir():
        path = str(Path(path).resolve())
    dtype = _dtype(cfg)
    gc = cfg.gradient_checkpointing != "off"
    try:
        model, tok = FastLanguageModel.from_pretrained(
            model_name=path, max_seq_length=cfg.max_len, dtype=dtype, load_in_4bit=cfg.method == "qlora",
            full_finetuning=cfg.method == "full", fix_tokenizer=False, random_state=cfg.seed,
            trust_remote_code=cfg.trust_remote_code,
            use_gradient_checkpointing="unsloth" if gc else False)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"model {cfg.model!r}: Unsloth could not load it ({msg})") from None
    tok = getattr(tok, "tokenizer", tok)  # a processor for multimodal models: ft trains text

    template, added, pad_eos = prepare_model_and_tokenizer(model, tok, cfg.chat_template, cfg.thinking)

    if cfg.method != "full":
        targets = LLAMA_LINEAR if cfg.target_modules == ["all-linear"] else cfg.target_modules
        extra: dict[str, Any] = {}
        if added and cfg.embeddings_trained == "all":
            extra["modules_to_save"] = ["embed_tokens", "lm_head"]
        elif added and [t for t in added if t != pad_eos.pad_token] and cfg.embeddings_trained == "new":
            extra["trainable_token_indices"] = {"embed_tokens": sorted(tok.convert_tokens_to_ids(added)),
                                                "lm_head": sorted(tok.convert_tokens_to_ids(added))}
        model = FastLanguageModel.get_peft_model(
            model, r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.dropout, bias="none",
            target_modules=targets, use_rslora=cfg.method == "rslora", use_dora=cfg.method == "dora",
            use_gradient_checkpointing="unsloth" if gc else False, random_state=cfg.seed, **extra)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    optim = cfg.optimizer
    if optim == "auto":
        optim = "adamw_8bit"  # bitsandbytes is an Unsloth dependency
    return model, tok, Setup(base_model=path, device="cuda", dtype=str(dtype).replace("torch.", ""),
                             template=template, pad_eos=pad_eos, added_tokens=added, trainable_params=trainable,
                             total_params=total, attn="unsloth", optimizer=optim, gradient_checkpointing=gc)


def varlen_kernel() -> str | None:
    """The varlen attention kernel Unsloth uses for padding-free batches, if one works here. Unsloth's own
    verdict, not whether a package is installed: an xformers built for another torch imports, and
    Unsloth then falls back to SDPA (seen on the H100 with xformers 0.0.35 and torch 2.11)."""
    try:
        from unsloth.utils import attention_dispatch as ad
    except Exception:  # noqa: BLE001  (not installed, or no GPU to import it on)
        return None
    if getattr(ad, "HAS_FLASH_ATTENTION", False):
        return "flash-attn"
    if getattr(ad, "_TORCH_VARLEN_ATTN", None) is not None and getattr(ad, "_NATIVE_BEATS_XFORMERS", False):
        return "torch varlen_attn"
    if getattr(ad, "HAS_XFORMERS", False):
        return "xformers"
    return None


def padding_free_supported(model) -> tuple[bool, str]:
    """Padding-free batches pay off on Unsloth only with a varlen kernel. Without one (flash-attn, a working
    xformers, or torch's varlen_attn where Unsloth prefers it) Unsloth runs SDPA once per example of the row:
    measured on an H100 (1B shapes, chats of 50–600 tokens, 8 per batch) at 0.23x-0.26x the effective
    tokens/s of padded batches, so ft pads instead."""
    kernel = varlen_kernel()
    if kernel is None:
        return False, "unsloth without flash-attn or xformers (padded batches are faster there)"
    return True, f"unsloth + {kernel}"


def varlen_attention(model) -> bool:
    return varlen_kernel() is not None


training_kernels = backend_hf.training_kernels


class Collator(backend_hf.Collator):
    """ft's batches, plus the per-example lengths Unsloth's varlen attention needs when padding-free."""

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        batch = backend_hf.examples(batch)  # once, here: the base collator takes the flat list as it is
        out = super().__call__(batch)
        if self.padding_free:
            out["packed_seq_lengths"] = torch.tensor([len(ex["input_ids"]) for ex in batch], dtype=torch.int32)
        elif "attention_mask" in out and bool(out["attention_mask"].all()):
            # No padding in this batch (e.g. text chunks of one length): without a mask Unsloth takes its
            # causal fast path; an all-ones mask cost ~8% tokens/s on an H100 (bench/unsloth_overhead.py).
            del out["attention_mask"]
        return out


def build_trainer(cfg: TrainConfig, setup: Setup, model, tok, train: list[dict], val: list[dict], **kw):
    # Unsloth does its own (offloaded) gradient checkpointing: the Trainer must not add a second one.
    trainer = backend_hf.build_trainer(cfg, dataclasses.replace(setup, gradient_checkpointing=False), model, tok,
                                       train, val, **kw)
    trainer.data_collator = Collator(tok.pad_token_id, kw["padding_free"])
    return trainer
