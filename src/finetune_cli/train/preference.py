"""``ft train --method dpo|orpo``: the preference stage, on TRL's trainers, in ft's run directory.

    ft pairs --data data/doric.jsonl --out pairs.jsonl --rejected-from policy --model runs/doric
    ft train --model smollm2-135m --from runs/doric --method dpo --data pairs.jsonl --name doric-dpo

The data is TRL's conversational preference format (what ``ft pairs`` writes; extra keys such as ``meta`` are
ignored). The adapter is LoRA, or DoRA with ``--adapter dora``; ``--from RUN`` continues an SFT run's adapter
(its base model, chat template and tokenizer) instead of a fresh one.

The reference model is never a second copy of the weights. TRL's DPOTrainer, given a PEFT model and no
``ref_model``, copies the adapter into a frozen "ref" adapter: a fresh adapter starts at zero, so the
reference is exactly the base; with ``--from RUN`` it is the SFT model, which is what DPO's reference means.
ORPO has no reference model at all (its odds-ratio term rides on the SFT loss of the chosen answer).

Held-out pairs (``--val-split``/``--val-file``) give eval_rewards/accuracies (DPO: the share of pairs whose
chosen answer gains more log-probability over the reference than the rejected one; ORPO: over the policy
alone) and eval_rewards/margins (by how much, on average). The margin picks the best checkpoint and drives
``--early-stopping``: the accuracy saturates early (SmolLM2, 416 on-policy pairs: 1.0 from step 14 of 75 while
the margin grew 0.85 → 2.49), and picking by it kept a barely trained adapter. Both are recorded. Same run directory, run.json ledger,
template and pad/EOS checks, checkpoints and ``--resume`` as SFT.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

from ..config import config_record
from ..errors import ConfigError, DataError, TrainingError
from ..files import umask_modes
from ..jsonl import read_rows
from ..rundir import RunDir, library_versions, now
from ..ui import Reporter
from . import callbacks as ft_callbacks
from .config import TrainConfig

KEYS = ("prompt", "chosen", "rejected")


def load_pairs(paths: list[str]) -> list[dict]:
    """Pairs in TRL's conversational format; a row that is not one is a DataError naming file and line."""
    rows = []
    for path in paths:
        for line, row in read_rows(path):
            if not (isinstance(row, dict) and all(isinstance(row.get(k), list) and row[k] for k in KEYS)):
                raise DataError("not a conversational preference pair ({'prompt': [messages], 'chosen': "
                                "[assistant], 'rejected': [assistant]})", path=path, line=line,
                                hint="build pairs with ft pairs")
            rows.append({k: row[k] for k in KEYS})
    if not rows:
        raise DataError("no preference pairs", path=",".join(paths))
    return rows


def split_pairs(rows: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    if not share:
        return rows, []
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    n_val = max(1, round(len(rows) * share))
    held = set(idx[:n_val])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def from_run(cfg: TrainConfig) -> tuple[RunDir, dict, str]:
    """The --from run, its run.json and the base-model argument the new run records: --model when given (it
    must name the run's own base, which is what gets loaded), else the run's."""
    rd = RunDir.find(Path(cfg.from_run))
    if rd is None:
        raise ConfigError(f"option --from {cfg.from_run}: not an ft run (no run.json there or above it)")
    run = rd.record()
    recorded = run.get("base_model_arg") or run.get("base_model")
    if not recorded:
        raise ConfigError(f"option --from {cfg.from_run}: {rd.run_json} names no base model", hint="pass --model")
    if cfg.model and cfg.model not in (run.get("base_model_arg"), run.get("base_model")) and not (
            run.get("base_model") and Path(cfg.model).expanduser().resolve() == Path(run["base_model"]).resolve()):
        raise ConfigError(f"option --model {cfg.model}: the --from run {rd.path} was trained on {recorded}, "
                          "and its adapter is loaded on that base", hint="leave --model out, or name that model")
    return rd, run, cfg.model or recorded


def load_from_run(cfg: TrainConfig, reporter: Reporter, found: tuple[RunDir, dict, str] | None = None):
    """The SFT run's base model, tokenizer (its chat template) and adapter, trainable; ``found``: what
    :func:`from_run` returned, when the caller has it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..chat_template import prepare_model_and_tokenizer
    from ..models import default_dtype, quiet_hf, resolve_model
    from .backend_hf import Setup

    quiet_hf()
    rd, run, model_arg = found or from_run(cfg)
    adapter = rd.adapter_for(Path(cfg.from_run))
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"option --from {cfg.from_run}: no adapter there (a LoRA-family SFT run's adapter/)")
    base = run.get("base_model") or resolve_model(model_arg, reporter)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = default_dtype(device)
    tok = AutoTokenizer.from_pretrained(str(adapter))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device)
    from transformers import set_seed

    set_seed(cfg.seed)
    template, added, pad_eos = prepare_model_and_tokenizer(model, tok, "model", run.get("thinking"))
    model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, tok, Setup(base_model=base, device=device, dtype=str(dtype).replace("torch.", ""),
                             template=template, pad_eos=pad_eos, added_tokens=added, trainable_params=trainable,
                             total_params=sum(p.numel() for p in model.parameters()),
                             optimizer="adamw_torch", attn=getattr(model.config, "_attn_implementation", "") or "")


class TorchLogProbs:
    """TRL 1.15's DPO head (``ChunkedLogProbFunction``) in plain torch, for devices without Triton (CPU).

    TRL computes per-token log-probabilities through a Triton kernel with no fallback, so DPO fails off CUDA
    with "0 active drivers". This materializes the logits (fine for the small models trained on a CPU) and
    returns the same five outputs; autograd does the backward."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, softcap=None, logit_scale=1.0,
              outputs=("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")):
        import torch

        y = (hidden @ weight.t() + (bias if bias is not None else 0)).float() * logit_scale
        if softcap is not None:
            y = softcap * torch.tanh(y / softcap)
        z = y / temperature
        logp = torch.log_softmax(z, -1)
        target = logp.gather(1, targets[:, None])[:, 0]
        entropy = -(logp.exp() * logp).sum(-1) if "entropy" in outputs else None
        sq = torch.logsumexp(2 * logp, -1).detach() if "log_sum_sq_probs" in outputs else None
        mean = z.mean(-1).detach() if "mean_logits" in outputs else None
        top1 = (z.argmax(-1) == targets) if "is_top1" in outputs else None
        return target, entropy, sq, mean, top1


def _plain_torch_head(device: str) -> None:
    if device != "cuda":
        import trl.trainer.utils as trl_utils

        trl_utils._ChunkedLogProbFunction = TorchLogProbs


def _head_with_added_tokens(model) -> None:
    """Let TRL's fused DPO head read the LM head PEFT's trainable tokens wrap (the rows of tokens ft added: a pad,
    ChatML's markers) as that wrapper's own forward does.

    TRL computes per-token log-probabilities from ``get_output_embeddings().weight`` and ``.bias`` directly, past
    the wrapper's forward: ``.bias`` does not exist there (an AttributeError at the first step) and ``.weight``
    would be the base's rows. Here both are what the forward uses: the base weight with the active adapter's
    trained rows in place (differentiable), and the base layer's bias."""
    from peft.utils.other import TrainableTokensWrapper

    head = model.get_output_embeddings()
    if not isinstance(head, TrainableTokensWrapper) or getattr(type(head), "_ft_merged_head", False):
        return

    def weight(self):
        layer = self.token_adapter
        if self.disable_adapters or not self.active_adapters or layer.merged:
            return layer.base_layer.weight
        return layer.get_merged_weights(self.active_adapters)

    head.__class__ = type(f"Merged{type(head).__name__}", (type(head),), {
        "_ft_merged_head": True, "weight": property(weight),
        "bias": property(lambda self: getattr(self.token_adapter.base_layer, "bias", None))})


def _trainer(cfg: TrainConfig, setup, model, tok, train, val, *, output_dir: str, total: int, eval_steps: int,
             logging_steps: int, callbacks: list):
    from datasets import Dataset
    from transformers import EarlyStoppingCallback

    from .backend_hf import tracker_args

    _plain_torch_head(setup.device)
    _head_with_added_tokens(model)
    evaluating = bool(val)
    common = dict(
        output_dir=output_dir, per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.scheduler if cfg.scheduler != "constant" else "constant_with_warmup",
        warmup_steps=cfg.warmup_ratio, num_train_epochs=cfg.epochs, max_steps=total, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, data_seed=cfg.seed, bf16=setup.dtype == "bfloat16",
        fp16=setup.dtype == "float16", eval_strategy="steps" if evaluating else "no",
        eval_steps=eval_steps if evaluating else None, save_strategy="steps", save_steps=eval_steps,
        save_total_limit=cfg.save_total_limit, load_best_model_at_end=evaluating,
        metric_for_best_model="eval_rewards/margins" if evaluating else None,
        greater_is_better=True if evaluating else None, logging_steps=logging_steps, logging_first_step=True,
        **tracker_args(cfg, output_dir), disable_tqdm=True, use_cpu=setup.device == "cpu", max_length=cfg.max_len, beta=cfg.beta,
        dataloader_num_workers=0)
    extra = []
    if evaluating and cfg.early_stopping:
        extra.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping))
    data = dict(train_dataset=Dataset.from_list(train), eval_dataset=Dataset.from_list(val) if val else None)
    if cfg.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        loss = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, cfg.sft_weight]) if cfg.sft_weight else {}
        return DPOTrainer(model=model, ref_model=None, args=DPOConfig(**common, **loss), processing_class=tok,
                          callbacks=list(callbacks) + extra, **data)
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    return ORPOTrainer(model=model, args=ORPOConfig(**common), processing_class=tok,
                       callbacks=list(callbacks) + extra, **data)


def run(cfg: TrainConfig, reporter: Reporter, backend_name: str) -> dict:
    from .plan import check_resume, default_name, schedule

    if backend_name != "hf":
        raise ConfigError(f"option --method {cfg.method}: ft trains preferences on the hf backend only for now "
                          "(Unsloth's patched DPO path is CUDA-only and untested here)", hint="pass --backend hf")
    found = from_run(cfg) if cfg.from_run else None  # checked before a run directory exists
    model_arg = found[2] if found else cfg.model
    name = cfg.name or default_name(dataclasses.replace(cfg, model=model_arg))
    rd = RunDir.create(cfg.runs_dir, name, resume=cfg.resume)
    checkpoint, damaged = check_resume(cfg, rd, 1) if cfg.resume else (None, [])
    rows = load_pairs(cfg.data)
    if cfg.val_file:
        train, val = rows, load_pairs([cfg.val_file])
    else:
        train, val = split_pairs(rows, cfg.held_out_share, cfg.seed)
    if found:
        model, tok, setup = load_from_run(cfg, reporter, found)
    else:
        from . import backend_hf

        model, tok, setup = backend_hf.load(dataclasses.replace(cfg, method=cfg.adapter), reporter)
    pe = setup.pad_eos
    if pe.pad_id == pe.eos_id:
        raise TrainingError(f"pad token equals EOS ({pe.eos_token!r}): the model would never learn to stop")
    total, eval_steps, logging_steps = schedule(cfg, len(train))

    created = rd.read().get("created", now())
    rd.write_json("config.json", config_record(cfg, learning_rate=cfg.learning_rate, lora_alpha=cfg.lora_alpha,
                                               held_out_share=cfg.held_out_share, total_steps=total,
                                               eval_steps=eval_steps, logging_steps=logging_steps,
                                               dtype=setup.dtype))
    rd.write_json("data.json", {"files": cfg.data, "val_files": [cfg.val_file] if cfg.val_file else [],
                                "kind": "preference", "train_rows": len(train), "val_rows": len(val)})
    if val:  # as conversations (prompt + chosen), so ft eval and merge read them like SFT's held-out rows
        rd.write_heldout([{"messages": r["prompt"] + r["chosen"]} for r in val])
        rd.write_json("heldout_pairs.json", val)
    system = next((m["content"] for m in train[0]["prompt"] if m.get("role") == "system"), None)
    rd.update(name=name, status="running", created=created, started=now(), base_model=setup.base_model,
              base_model_arg=model_arg, method=cfg.method, adapter=cfg.adapter, from_run=cfg.from_run,
              beta=cfg.beta, sft_weight=cfg.sft_weight, backend="hf", chat_template=setup.template,
              system_prompt=system,
              eos_token=pe.eos_token, pad_token=pe.pad_token, end_of_turn=pe.end_of_turn,
              added_tokens=setup.added_tokens, learning_rate=cfg.learning_rate,
              lora_alpha=cfg.lora_alpha, train_rows=len(train), val_rows=len(val), total_steps=total,
              best_checkpoint=None, global_step=0, versions=library_versions(), world_size=1)
    reporter.info(f"ft train: {name} → {rd.path}")
    reporter.info(f"  method     {cfg.method} (beta {cfg.beta:g}"
                  + (f", chosen-answer LM loss × {cfg.sft_weight:g}" if cfg.sft_weight else "")
                  + f") on a {cfg.adapter} adapter"
                  + (f" from {cfg.from_run}" if cfg.from_run else " (fresh)")
                  + f" · reference: {'none (ORPO)' if cfg.method == 'orpo' else 'the base, adapter disabled' if not cfg.from_run else 'the SFT adapter, frozen copy'}")
    reporter.info(f"  data       {len(train)} train / {len(val)} held-out pairs · {total} steps · lr {cfg.learning_rate:g}")
    reporter.info(f"  template   {setup.template} · eos {pe.eos_token!r} (id {pe.eos_id}) · pad {pe.pad_token!r} "
                  f"(id {pe.pad_id})")

    cbs = ft_callbacks.make(rd, reporter, total)
    trainer = _trainer(cfg, setup, model, tok, train, val, output_dir=str(rd.checkpoints), total=total,
                       eval_steps=eval_steps, logging_steps=logging_steps, callbacks=cbs)
    for line in damaged:
        reporter.warn(f"{line}: resuming from {checkpoint.name} instead")
    t0 = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except BaseException as e:
        last = rd.last_checkpoint()
        rd.update(status="stopped" if isinstance(e, KeyboardInterrupt) else "failed",
                  error=None if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}",
                  global_step=trainer.state.global_step, ended=now(), last_checkpoint=str(last) if last else None)
        raise
    finally:
        for cb in cbs:
            if hasattr(cb, "stack"):
                cb.stack.close()
    seconds = time.perf_counter() - t0

    out = rd.adapter
    trainer.model.save_pretrained(str(out), selected_adapters=["default"])  # not TRL's frozen "ref" copy
    tok.save_pretrained(str(out))
    umask_modes(out)
    state = trainer.state
    best = state.best_model_checkpoint
    evals = [h for h in state.log_history if "eval_rewards/accuracies" in h]
    final = rd.update(status="completed", ended=now(), global_step=state.global_step,
                      best_checkpoint=str(Path(best).relative_to(rd.path)) if best else None,
                      best_eval_margin=state.best_metric if best else None,
                      best_eval_accuracy=next((h["eval_rewards/accuracies"] for h in evals
                                               if h.get("eval_rewards/margins") == state.best_metric), None),
                      eval_accuracies=[h.get("eval_rewards/accuracies") for h in evals],
                      eval_margins=[h.get("eval_rewards/margins") for h in evals],
                      train_seconds=round(seconds, 2), output=str(out.relative_to(rd.path)))
    del trainer, model
    reporter.result(f"trained {name} ({cfg.method}): {state.global_step} steps in {seconds:.1f}s"
                    + (f" · held-out preference accuracy {evals[-1]['eval_rewards/accuracies']:.2f}" if evals else "")
                    + f" → {out}")
    return {"run": str(rd.path), "output": str(out), "status": "completed", "global_step": state.global_step,
            "best_checkpoint": final.get("best_checkpoint"), "train_rows": len(train), "val_rows": len(val),
            "eval": evals}
