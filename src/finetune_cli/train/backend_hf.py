"""The transformers + peft backend: load and wrap the model, batch the examples, build the Trainer.

It uses the stock ``transformers.Trainer`` (checkpoints, resume, eval, early stopping, and
``accelerate launch``/``torchrun`` unchanged); ft owns tokenization and masking (``template.py``),
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
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..models import default_dtype, quiet_hf, refuse_remote_code, resolve_model
from . import distributed
from .config import TrainConfig
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


def _drop_grads(params: list, set_to_none: bool = True) -> None:
    for p in params:
        if p.grad is not None:
            if set_to_none:
                p.grad = None
            else:
                p.grad.zero_()


def _still_training(model, mode: bool = True):
    return model if mode else type(model).train(model, mode)


LOSS_FILE = "ft_loss.json"


def loss_before(checkpoint: str) -> float:
    """The summed step losses up to ``checkpoint``: what ft saved there, else (a checkpoint from before ft
    kept it) an estimate from the logged losses, the steps after the last log taken at its loss."""
    path = os.path.join(checkpoint, LOSS_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            return float(json.load(f)["loss_sum"])
    with open(os.path.join(checkpoint, "trainer_state.json")) as f:
        state = json.load(f)
    total, last_step, last_loss = 0.0, 0, 0.0
    for h in state.get("log_history", []):
        if "loss" in h:
            total += h["loss"] * (h["step"] - last_step)
            last_step, last_loss = h["step"], h["loss"]
    return total + last_loss * (state.get("global_step", last_step) - last_step)


@functools.cache
def trainer_class():
    """``transformers.Trainer`` without its host syncs per step.

    The stock loop waits for the GPU three times a step: ``logging_nan_inf_filter`` reads the loss
    (``torch.isnan(loss)`` in an ``if``), ``include_num_input_tokens_seen`` reads a token count
    (``.item()``), and the batch is copied to the GPU with a blocking copy. Each wait drains the GPU's
    queue, which then idles while Python prepares the next step. ft turns the filter off (a non-finite
    loss stops the run instead, see callbacks.py), copies pinned batches without blocking, and counts
    tokens here on the device, read back only when the Trainer logs, evaluates or saves (one read, one
    gather across processes). The per-step FLOP estimate walks every module of the model in stock
    transformers; its parameter count is taken once. Three more walks a step are skipped: ``model.train()``
    when the model is already training, and ``model.parameters()`` for clipping and for ``zero_grad``
    (only the trainable parameters have gradients). Measured on a 16-layer LoRA model on a CPU, where
    compute is small: the Trainer's cost over a hand-written loop went from ~7 to ~2 ms a step
    (docs/benchmarks.md).

    A log that is only a log (no evaluation, save or end of training at that step) does not wait either:
    its loss, gradient norm and token count are gathered and copied to the host without blocking, and the
    row is written one step later, once the copy is done, with the step, epoch and token count of the
    step it belongs to, and the time that step ended on the device (a CUDA event's time on the host's
    clock), so that tokens/s over the logs is not flattered by the host running ahead. The stock log read
    the loss at once and drained the GPU's queue (~2% of tokens/s at a log every 5 steps on an H200,
    bench/unsloth_autocast_probe.py).
    """
    import torch
    from transformers import Trainer, TrainerCallback

    class _FlushTokens(TrainerCallback):
        def __init__(self, trainer):
            self.trainer = trainer

        def on_step_end(self, args, state, control, **kw):
            # DefaultFlowCallback (first in the list) has set the flags; every process sees the same ones
            if self.trainer.deferred_log():
                return  # the log takes its token count with it
            if control.should_log or control.should_evaluate or control.should_save or control.should_training_stop:
                self.trainer.emit_log()  # a log still pending belongs before these tokens
                self.trainer.flush_tokens()

        def on_train_end(self, args, state, control, **kw):
            self.trainer.flush_tokens()

    class FtTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._tokens = 0  # non-pad input tokens since the last flush: an int or a device tensor
            self._non_embedding_params: int | None = None
            self._params: dict[int, list] = {}  # the trainable parameters of each model object trained
            self._modes_set = False  # every module put in training mode since train() began
            self._pending: dict | None = None  # a log on its way to the host (see deferred_log)
            self._anchor: tuple | None = None  # (host time, CUDA event) taken together, for log times
            self._log_time: float | None = None
            self._loss_before = 0.0  # the summed step losses of the steps before a resumed checkpoint
            self.add_callback(_FlushTokens(self))
            for cb in self.callback_handler.callbacks:
                if hasattr(cb, "clock"):  # ft's metrics callback times its logs with log_clock
                    cb.clock = self.log_clock

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            # ft's batches have no padding unless they carry a mask (padding-free rows and full chunks)
            self._tokens = self._tokens + (mask.sum() if mask is not None else inputs["input_ids"].numel())
            if "zero_grad" not in vars(model):
                # the loop's model.zero_grad() after every optimizer step walks every parameter of the
                # model (frozen ones included); only the trainable ones have gradients to drop
                model.zero_grad = functools.partial(_drop_grads, self._trainable(model))
            if not (model.training and self._modes_set):
                # the first step (a loaded model can have its top module training and others not) and the
                # first after an evaluation (model.eval()): the stock model.train() sets every module
                self._modes_set = True
                return super().training_step(model, inputs, num_items_in_batch)
            # already training: the stock step's model.train() would walk every module (~1,300 in a
            # 16-layer LoRA model) to set flags that are already set
            model.train = functools.partial(_still_training, model)
            try:
                return super().training_step(model, inputs, num_items_in_batch)
            finally:
                del model.train

        def _trainable(self, model) -> list:
            if id(model) not in self._params:
                self._params[id(model)] = [p for p in model.parameters() if p.requires_grad]
            return self._params[id(model)]

        def _clip_trainable(self, model, max_norm: float):
            """The stock clip passes model.parameters(), a walk over every parameter each step; None where
            the stock path must run (FSDP, or gradients on mixed device meshes)."""
            if self.is_fsdp_enabled or self._has_mixed_mesh_grads(model):
                return None
            return self.accelerator.clip_grad_norm_(self._trainable(model), max_norm)

        def _clip_grad_norm(self, model):
            norm = self._clip_trainable(model, self.args.max_grad_norm)
            return super()._clip_grad_norm(model) if norm is None else norm

        def _get_grad_norm(self, model, grad_norm=None):
            if grad_norm is None:  # --max-grad-norm 0: the norm without clipping
                grad_norm = self._clip_trainable(model, float("inf"))
            return super()._get_grad_norm(model, grad_norm)

        def train(self, resume_from_checkpoint=None, *args, **kwargs):
            self._modes_set = False
            self._pending, self._anchor = None, None
            self._loss_before = loss_before(resume_from_checkpoint) if resume_from_checkpoint else 0.0
            try:
                return super().train(resume_from_checkpoint, *args, **kwargs)
            finally:
                for m in (self.model, self.model_wrapped):
                    if m is not None and "zero_grad" in vars(m):
                        del m.zero_grad
                self._params.clear()

        def _save_checkpoint(self, model, trial):
            # the stock train_loss after a resume sums only the resumed steps' losses (divided by every
            # step): each checkpoint keeps the sum so far, logged and not yet logged, for the resumed run
            loss_sum = self._total_loss_scalar + self.accelerator.gather(self._tr_loss.detach()[None]).mean().item()
            if self.args.should_save:
                folder = os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, LOSS_FILE), "w") as f:
                    json.dump({"global_step": self.state.global_step, "loss_sum": loss_sum}, f)
            return super()._save_checkpoint(model, trial)

        def _finalize_training(self, *args, **kwargs):
            self._total_loss_scalar += self._loss_before
            return super()._finalize_training(*args, **kwargs)

        def flush_tokens(self) -> None:
            n = torch.as_tensor(self._tokens, dtype=torch.int64, device=self.args.device)
            self._tokens = 0
            self.state.num_input_tokens_seen += int(self.accelerator.gather(n).sum().item())

        def deferred_log(self) -> bool:
            """This step logs and does nothing else that needs the host to wait (evaluate, save, stop)."""
            c = self.control
            return (c.should_log and self.state.global_step > self._globalstep_last_logged
                    and not (c.should_evaluate or c.should_save or c.should_training_stop))

        def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, *args, **kwargs):
            self.emit_log()
            if self.deferred_log():
                self._defer_log(tr_loss, grad_norm, kwargs.get("learning_rate"))
                self.control.should_log = False  # the stock method below then has nothing to do
            return super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, *args, **kwargs)

        def _defer_log(self, tr_loss, grad_norm, learning_rate) -> None:
            """What the stock log reads at once (the loss over the steps since the last log, the gradient
            norm, the token count), gathered over the processes and copied to the host without blocking."""
            norm = grad_norm if isinstance(grad_norm, torch.Tensor) else torch.tensor(
                float("nan") if grad_norm is None else float(grad_norm))
            if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor, which a collective takes only with its kind
                norm = norm.full_tensor()
            tokens = torch.as_tensor(self._tokens, device=tr_loss.device)
            values = torch.stack([tr_loss.detach().double(), norm.detach().double().to(tr_loss.device),
                                  tokens.double()])
            values = self.accelerator.gather(values[None])  # (processes, 3): every process logs the same
            event, done = None, time.perf_counter()  # off CUDA the step is done by now
            if values.is_cuda:
                if self._anchor is None:  # once a run: a device time that is also a host time
                    torch.cuda.synchronize()
                    self._anchor = time.perf_counter(), torch.cuda.Event(enable_timing=True)
                    self._anchor[1].record()
                host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
                host.copy_(values, non_blocking=True)
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                values = host
            self._pending = {"values": values, "event": event, "done": done, "step": self.state.global_step,
                             "epoch": self.state.epoch, "steps": self.state.global_step - self._globalstep_last_logged,
                             "has_grad_norm": grad_norm is not None,
                             "learning_rate": self._get_learning_rate() if learning_rate is None else learning_rate}
            tr_loss -= tr_loss
            self._tokens = 0
            self._globalstep_last_logged = self.state.global_step

        def emit_log(self) -> None:
            """Write the pending log (one step later: its copy to the host is done by now) as the stock
            log would have at its own step."""
            p, self._pending = self._pending, None
            if p is None:
                return
            done = p["done"]
            if p["event"] is not None:
                p["event"].synchronize()
                done = self._anchor[0] + self._anchor[1].elapsed_time(p["event"]) / 1e3
            rows = p["values"].tolist()
            loss = sum(r[0] for r in rows) / len(rows)
            self._total_loss_scalar += loss
            logs = {"loss": loss / p["steps"]}
            if p["has_grad_norm"]:
                logs["grad_norm"] = rows[0][1]
            logs["learning_rate"] = p["learning_rate"]
            self.state.num_input_tokens_seen += int(sum(r[2] for r in rows))
            now = self.state.global_step, self.state.epoch, self.control.should_log
            self.state.global_step, self.state.epoch = p["step"], p["epoch"]
            self._log_time = done
            try:
                self.log(logs)  # (its on_log clears should_log: this step's own log is still to come)
            finally:
                self.state.global_step, self.state.epoch, self.control.should_log = now
                self._log_time = None

        def log_clock(self) -> float:
            """When the step being logged ended: now, except for a log written a step later."""
            return time.perf_counter() if self._log_time is None else self._log_time

        def floating_point_ops(self, inputs) -> int:
            if self._non_embedding_params is None:
                count = getattr(self.model, "num_parameters", None)
                self._non_embedding_params = count(exclude_embeddings=True) if count else 0
            ids = inputs.get("input_ids")
            return 6 * ids.numel() * self._non_embedding_params if ids is not None else 0

    return FtTrainer


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
        report_to=cfg.report_to,  # "none" unless --report-to names a tracker
        run_name=os.path.basename(os.path.dirname(output_dir)),  # the run's name (output_dir is RUN/checkpoints)
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=setup.device == "cpu",
    )
    if cfg.report_to == "tensorboard":  # read by transformers' TensorBoardCallback; next to the run's records
        os.environ["TENSORBOARD_LOGGING_DIR"] = os.path.join(os.path.dirname(output_dir), "tensorboard")
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
