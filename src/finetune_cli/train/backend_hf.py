"""The transformers + peft backend: load and wrap the model, batch the examples, build the Trainer.

It uses ``transformers.Trainer`` (checkpoints, resume, eval, early stopping, and
``accelerate launch``/``torchrun`` unchanged), less its host syncs per step (``trainer.py``); ft owns tokenization and masking (``template.py``),
so TRL's dataset preparation has nothing left to do and is not used.

Padding-free batching: a micro-batch is one row holding its examples back to back, with
``position_ids`` restarting at 0 for each and no attention mask. transformers turns restarting
position ids into a block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``) for
the sdpa and eager kernels and into varlen calls for flash-attention, so no attention crosses
examples; the first label of every example is masked so no example predicts the next one. Batches
carry ``use_cache=False``: with a cache object, transformers skips that detection (measured on 5.17).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..models import default_dtype, quiet_hf, refuse_remote_code, resolve_model
from . import distributed
from .config import TrainConfig
from .trainer import trainer_class
from ..chat_template import PadEos, prepare_model_and_tokenizer


@dataclass
class Setup:
    """What loading decided, printed at start and saved in run.json."""

    base_model: str
    device: str
    dtype: str
    template: str
    pad_eos: PadEos
    added_tokens: list[str] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    attn: str = ""
    optimizer: str = ""
    gradient_checkpointing: bool = False


def _dtype(cfg: TrainConfig, device: str):
    import torch

    if cfg.dtype == "auto":
        return default_dtype(device)
    if device == "cpu" and cfg.dtype != "float32":
        raise ConfigError(f"option --dtype {cfg.dtype}: CPU training runs in float32")
    return getattr(torch, cfg.dtype)


def _embedding_names(model) -> tuple[str | None, str | None]:
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    return names.get(id(emb)), (names.get(id(out)) if out is not None and out.weight is not emb.weight else None)


def tracker_args(cfg, output_dir: str) -> dict:
    """The Trainer's ``report_to`` and ``run_name`` for ``--report-to`` (SFT and DPO/ORPO alike); TensorBoard's
    event files go next to the run's records (``RUN/tensorboard``, read by transformers' TensorBoardCallback)."""
    if cfg.report_to == "tensorboard":
        os.environ["TENSORBOARD_LOGGING_DIR"] = os.path.join(os.path.dirname(output_dir), "tensorboard")
    # "none" unless --report-to names a tracker; the run's name (output_dir is RUN/checkpoints)
    return {"report_to": cfg.report_to, "run_name": os.path.basename(os.path.dirname(output_dir))}


def load(cfg: TrainConfig, reporter) -> tuple[Any, Any, Setup]:
    """Model and tokenizer, with the chat template installed, pad/EOS fixed and the adapter attached."""
    import torch
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_hf()
    path = resolve_model(cfg.model, reporter)
    refuse_remote_code(path, cfg.model, cfg.trust_remote_code)
    if Path(path).is_dir():
        path = str(Path(path).resolve())  # run.json must name the base wherever eval/merge run from
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.method == "qlora" and device != "cuda":
        raise ConfigError("option --method qlora: 4-bit QLoRA needs a CUDA GPU (bitsandbytes)",
                          hint="use --method lora on this machine")
    dtype = _dtype(cfg, device)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError("option --method qlora needs the bitsandbytes package",
                              hint="pip install bitsandbytes") from None
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"model {cfg.model!r}: could not load it ({msg})",
                          hint="offline? pass a local directory, a .gguf file or `tiny`") from None
    if "device_map" not in kwargs and not cfg.fsdp:
        model.to(device)  # under torchrun/accelerate: this process's GPU (set by distributed.join)

    from transformers import set_seed

    set_seed(cfg.seed)  # before resizing and LoRA init: both draw random numbers
    template, added, pad_eos = prepare_model_and_tokenizer(model, tok, cfg.chat_template, cfg.thinking)

    gc = cfg.gradient_checkpointing == "on" or (cfg.gradient_checkpointing == "auto" and device == "cuda")
    if cfg.method != "full":
        model = _wrap_peft(cfg, model, tok, added, gc)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    optim = cfg.optimizer
    if optim == "auto":
        optim = "adamw_torch"
        if device == "cuda" and not cfg.fsdp:  # bitsandbytes' 8-bit state does not shard under FSDP
            try:
                import bitsandbytes  # noqa: F401
                optim = "adamw_8bit"
            except ImportError:
                pass
    return model, tok, Setup(base_model=path, device=device, dtype=str(dtype).replace("torch.", ""),
                             template=template, pad_eos=pad_eos, added_tokens=added, trainable_params=trainable,
                             total_params=total, attn=getattr(model.config, "_attn_implementation", None) or "",
                             optimizer=optim, gradient_checkpointing=gc)


def _wrap_peft(cfg: TrainConfig, model, tok, added: list[str], gc: bool):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc)
    targets = cfg.target_modules
    lora = dict(r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.dropout, bias="none",
                task_type="CAUSAL_LM", use_dora=cfg.method == "dora", use_rslora=cfg.method == "rslora",
                target_modules="all-linear" if targets == ["all-linear"] else targets)
    emb_name, out_name = _embedding_names(model)
    if added and cfg.embeddings_trained == "new":
        ids = sorted(tok.convert_tokens_to_ids(added))
        lora["trainable_token_indices"] = {emb_name.rsplit(".", 1)[-1]: ids}
        if out_name:
            lora["trainable_token_indices"][out_name.rsplit(".", 1)[-1]] = ids
    elif cfg.embeddings_trained == "all" and added:
        lora["modules_to_save"] = [n.rsplit(".", 1)[-1] for n in (emb_name, out_name) if n]
    try:
        peft_model = get_peft_model(model, LoraConfig(**lora))
    except ValueError as e:
        raise ConfigError(f"option --target-modules: {str(e).splitlines()[0]}") from None
    if "trainable_token_indices" in lora:
        # PEFT saves the whole resized embedding and lm_head when it sees a resized vocabulary (GBs on an
        # 8B model); the trained rows live in the adapter's trainable tokens, which is all a reload needs.
        peft_model.save_pretrained = functools.partial(peft_model.save_pretrained, save_embedding_layers=False)
    return peft_model


def examples(batch: list[dict]) -> list[dict]:
    """A collator's examples: with --batch-tokens the dataset's items are whole micro-batches."""
    return [ex for item in batch for ex in item["group"]] if batch and "group" in batch[0] else batch


class Collator:
    """Pad to the longest example, or (padding-free) concatenate examples into one row."""

    def __init__(self, pad_id: int, padding_free: bool):
        self.pad_id = pad_id
        self.padding_free = padding_free

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        batch = examples(batch)
        if self.padding_free:
            ids, labels, pos = [], [], []
            for ex in batch:
                ids += ex["input_ids"]
                labels += [-100] + ex["labels"][1:]  # never predict one example from the previous one
                pos += range(len(ex["input_ids"]))
            # use_cache=False is load-bearing: with a KV cache object present, transformers 5.x skips
            # the packed-sequence detection and the examples attend to each other (tested).
            return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                    "position_ids": torch.tensor([pos]), "use_cache": False}
        n = max(len(ex["input_ids"]) for ex in batch)
        ids = [ex["input_ids"] + [self.pad_id] * (n - len(ex["input_ids"])) for ex in batch]
        labels = [ex["labels"] + [-100] * (n - len(ex["labels"])) for ex in batch]
        mask = [[1] * len(ex["input_ids"]) + [0] * (n - len(ex["input_ids"])) for ex in batch]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask),
                "use_cache": False}


def padding_free_supported(model) -> tuple[bool, str]:
    """Padding-free needs a model whose masks come from position ids (transformers' masking utils)."""
    attn = getattr(model.config, "_attn_implementation", None) or "eager"
    if attn in ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"):
        return True, attn
    return False, attn


def varlen_attention(model) -> bool:
    """Whether attention over a padding-free row costs only its examples' own lengths (flash-attn's varlen
    kernels). SDPA and eager build a dense block-diagonal mask over the whole row instead: fine for 8 chats
    in a row, but over a 16k-token --batch-tokens row it ran at 0.41x of padded length-grouped batches
    (H100, 1B shapes, bench/short_chats.py)."""
    return padding_free_supported(model)[1] in ("flash_attention_2", "flash_attention_3")


def training_kernels(device: str, varying_lengths: bool):
    """On CUDA, keep SDPA off its cuDNN backend when batches differ in length: cuDNN builds a new plan for
    every new sequence length (see attention.py). Measured on an H100 (1B shapes, chats of 50–600
    tokens, 8 a batch, transformers + peft): 3,764 effective tokens/s with cuDNN, 10,040 without. Batches of
    one length (text chunks) keep SDPA's own choice."""
    from contextlib import nullcontext

    from ..attention import attention_kernels

    return attention_kernels(device) if varying_lengths else nullcontext()


def build_trainer(cfg: TrainConfig, setup: Setup, model, tok, train: list[dict], val: list[dict], *,
                  output_dir: str, total_steps: int, eval_steps: int, logging_steps: int, padding_free: bool,
                  callbacks: list):
    from transformers import EarlyStoppingCallback, TrainingArguments

    evaluating = bool(val)
    optim = {"adamw_8bit": "adamw_bnb_8bit"}.get(setup.optimizer, setup.optimizer)
    several: dict[str, Any] = {}
    if distributed.world_size() > 1:
        several = distributed.ddp_args(model)
        if cfg.fsdp:
            several.update(distributed.fsdp_args(model, activation_checkpointing=setup.gradient_checkpointing))
    checkpointing = setup.gradient_checkpointing and not cfg.fsdp  # FSDP checkpoints activations itself
    args = dict(
        output_dir=output_dir,
        per_device_train_batch_size=1 if cfg.batch_tokens else cfg.batch_size,  # an item is a whole batch
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.scheduler if cfg.scheduler != "constant" else "constant_with_warmup",
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        num_train_epochs=cfg.epochs,
        max_steps=total_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim=optim,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=setup.dtype == "bfloat16",
        fp16=setup.dtype == "float16",
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        eval_strategy="steps" if evaluating else "no",
        eval_steps=eval_steps if evaluating else None,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=evaluating,
        metric_for_best_model="eval_loss" if evaluating else None,
        greater_is_better=False if evaluating else None,
        logging_steps=logging_steps,
        logging_first_step=True,
        include_num_input_tokens_seen="no",  # counted by FtTrainer without a host sync per step
        logging_nan_inf_filter=False,  # a sync per step; ft stops on a non-finite loss instead
        dataloader_pin_memory=setup.device == "cuda",
        accelerator_config={"non_blocking": setup.device == "cuda"},  # pinned batches copied without waiting
        **tracker_args(cfg, output_dir),
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=setup.device == "cpu",
    )
    args = TrainingArguments(**{**args, **several})
    all_callbacks = list(callbacks)
    if evaluating and cfg.early_stopping:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping))
    trainer = trainer_class()(model=model, args=args, train_dataset=train, eval_dataset=val or None,
                              data_collator=Collator(tok.pad_token_id, padding_free), processing_class=tok,
                              callbacks=all_callbacks)
    if distributed.world_size() > 1:
        distributed.exact_eval_loss(trainer)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer
