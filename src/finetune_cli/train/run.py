"""``ft train``: setup → train → save → cleanup, one readable recipe.

    ft model tiny runs/tiny-model
    ft train --model runs/tiny-model --data data/doric.jsonl --max-len 128 --max-steps 20 --name smoke
    ft train --model smollm2-135m --data data/doric.jsonl --method dora --system @system.txt
    ft train --name smoke --resume ...same options...     # continue from the last checkpoint
    ft train --gpus 2 ...same options...                  # data-parallel on 2 GPUs (see distributed.py)
    torchrun --nproc_per_node 2 -m finetune_cli train ... # the same, launched by hand
    ft runs

Everything the run decided is printed before the first step and saved in ``runs/<name>/``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from pathlib import Path

from ..config import config_record, sources_of, text_or_file
from ..errors import ConfigError, TrainingError
from ..files import umask_modes
from ..ui import Reporter
from . import callbacks as ft_callbacks
from . import distributed
from .config import PREFERENCE, TrainConfig
from .data import Inputs, load_inputs, most_common_system
from .plan import check_resume, default_name, schedule
from .examples import check_truncation, drop_system, masking_stats, split_val, token_batches, tokenize_inputs
from ..rundir import RunDir, is_main, library_versions, now

# options that may differ when resuming: they do not change what is trained (the number of processes
# does, and is checked against run.json whichever way the processes were launched)


def pick_backend(choice: str) -> str:
    """``auto`` = unsloth where a CUDA GPU and the unsloth package are present and one process trains,
    else hf. Unsloth (2026.10.7) also trains under DDP (each rank loads onto its own GPU), so
    ``--backend unsloth`` works under torchrun/--gpus; ``auto`` keeps several processes on hf, the path
    ft has measured there.

    Unsloth patches transformers, peft and trl on import, so when it is picked it is imported here,
    before anything in this process has imported transformers.
    """
    if choice == "hf":
        return "hf"
    import torch

    cuda = torch.cuda.is_available()
    installed = importlib.util.find_spec("unsloth") is not None
    if choice == "unsloth":
        if not cuda:
            raise ConfigError("option --backend unsloth: Unsloth needs a CUDA GPU", hint="use --backend hf")
        if not installed:
            raise ConfigError("option --backend unsloth: the unsloth package is not installed",
                              hint="uv sync --extra train --extra unsloth, or use --backend hf")
    elif not (cuda and installed) or distributed.world_size() > 1:
        return "hf"
    from .backend_unsloth import import_unsloth

    import_unsloth()
    return "unsloth"


def _backend(name: str):
    if name == "hf":
        from . import backend_hf

        return backend_hf
    return importlib.import_module(f"finetune_cli.train.backend_{name}")


def print_setup(reporter: Reporter, cfg: TrainConfig, setup, stats: dict, *, name: str, path: Path, total: int,
                eval_steps: int, n_train: int, n_val: int, padding_free: str, system: str | None,
                processes: int = 1, no_system: int = 0, effective_batch: int = 0) -> None:
    pe = setup.pad_eos
    sources = sources_of(cfg)
    s = lambda k: " (default)" if sources[k] == "default" else ""  # noqa: E731
    lines = [
        f"ft train: {name} → {path}",
        f"  model      {cfg.model} → {setup.base_model} · {setup.device} {setup.dtype} · attention {setup.attn}",
        f"  method     {cfg.method}{s('method')}"
        + ("" if cfg.method == "full" else f" · r {cfg.r}{s('r')} · alpha {cfg.lora_alpha:g}{s('alpha')} · dropout "
                                           f"{cfg.dropout:g} · targets {','.join(cfg.target_modules)}{s('target_modules')}")
        + f" · trainable {setup.trainable_params:,} of {setup.total_params:,} params",
        f"  optimizer  {setup.optimizer} · lr {cfg.learning_rate:g}{s('lr')} · {cfg.scheduler}{s('scheduler')} · warmup "
        f"{cfg.warmup_ratio:.0%}{s('warmup_ratio')} · grad checkpointing {'on' if setup.gradient_checkpointing else 'off'}",
        f"  steps      {total} ({'--max-steps' if cfg.max_steps else f'{cfg.epochs:g} epochs'}) · batch "
        + (f"≤ {cfg.batch_tokens:,} tokens" if cfg.batch_tokens else f"{cfg.batch_size}")
        + f" × accum {cfg.grad_accum}" + (f" × {processes} processes" if processes > 1 else "")
        + (f" = ≤ {cfg.batch_tokens * cfg.grad_accum * processes:,} tokens per step (~{effective_batch} examples)"
           if cfg.batch_tokens else
           f" = {cfg.batch_size * cfg.grad_accum * processes} examples per step{s('batch_size')}")
        + f" · max len {cfg.max_len}{s('max_len')} · seed {cfg.seed}",
        "  eval       " + (f"{n_val} rows, every {eval_steps} steps · best checkpoint kept"
                            + (f" · early stopping after {cfg.early_stopping}" if cfg.early_stopping else "")
                            if n_val else "off (no validation rows)"),
        f"  template   {setup.template} · eos {pe.eos_token!r} (id {pe.eos_id}) · pad {pe.pad_token!r} (id {pe.pad_id})"
        f" · pad ≠ eos: {'yes' if pe.pad_id != pe.eos_id else 'NO'}",
    ]
    if processes > 1:
        import torch.distributed as dist

        lines.append(f"  devices    {processes} processes ({dist.get_backend()}) · "
                     + ("FSDP2: weights, gradients and optimizer state sharded, one unit per decoder layer"
                        if cfg.fsdp else "DDP: a full copy each, gradients averaged")
                     + (" · each process takes its own micro-batches" if cfg.batch_tokens else
                        f" · each process takes its own {cfg.batch_size} of every {cfg.batch_size * processes} "
                        f"examples per micro-batch"))
    lines += [f"  fixed      {c}" for c in pe.changes]
    if setup.added_tokens:
        lines.append(f"  added      {', '.join(setup.added_tokens)} (embeddings resized; train: {cfg.embeddings_trained})")
    lines += [
        f"  data       {stats['examples']} examples ({n_train} train / {n_val} val) · {stats['tokens']:,} tokens · "
        f"length p50 {stats['length']['p50']} / p95 {stats['length']['p95']} / max {stats['length']['max']} · "
        f"truncated {stats['truncated_examples']}",
        f"  masking    train on {cfg.train_on} · trainable tokens {stats['trainable_share']:.1%} · "
        f"empty examples {stats['empty_examples']}",
    ]
    if stats["chat_examples"]:
        k, n = stats["eos_trained_examples"], stats["chat_examples"]
        lines.append(f"  EOS trained: {'yes' if k == n else 'NO'} (id {pe.eos_id} in {k}/{n} examples)")
    lines.append(f"  batching   {padding_free}")
    for tip in (batching_tip(cfg, setup.device, stats["length"]["p50"]), replay_tip(cfg, stats),
                schedule_tip(cfg, total, setup.total_params)):
        if tip:
            lines.append(f"  tip        {tip}")
    lines.append(f"  system     {system!r}" if system else "  system     none")
    if no_system:
        lines.append(f"             left out of {no_system}/{n_train} training conversations (--system-dropout), "
                     "so the voice holds without it")
    for ln in lines:
        reporter.info(ln)


def replay_tip(cfg: TrainConfig, stats: dict) -> str | None:
    """Chat SFT on one dataset: a voice tuned on its own topics alone drifts, runs on and loops on other questions
    under greedy decoding (docs/results.md); general chat mixed in is the cure ft offers."""
    if cfg.method in PREFERENCE or len(cfg.data) != 1 or not stats.get("chat_examples"):
        return None
    return ("one dataset: asked outside its topics, the tuned model may run on and loop under greedy decoding; "
            "mix general chat in: ft replay --model MODEL --out replay.jsonl, then --data replay.jsonl:0.25")


# Peak learning rate × optimizer steps below which a small model's SFT was measured under-trained
# (gpu/schedule_result.sh on SmolLM2-135M, one H100, docs/results.md): greedy answers to general prompts stopped
# in 57% (2e-4 × 69 steps) and 85% (2e-4 × 183), looping 57% and 15%; from 0.069 (1e-3 × 69) up, 95–100% stopped
# with ≤ 5% loops. Measured on a 135M model only: larger models learn more per step, so the tip stays below 1B
# parameters.
SHORT_SCHEDULE = 0.06
SMALL_MODEL = 1_000_000_000


def schedule_tip(cfg: TrainConfig, total_steps: int, total_params: int) -> str | None:
    """A small model given few steps at a low learning rate stays under-trained: it rambles and loops."""
    if cfg.method == "full" or cfg.method in PREFERENCE or not total_params or total_params >= SMALL_MODEL:
        return None
    if cfg.learning_rate * total_steps >= SHORT_SCHEDULE:
        return None
    size = f"{total_params / 1e6:.0f}M" if total_params >= 1e6 else f"{total_params:,}"
    return (f"{total_steps} steps at lr {cfg.learning_rate:g} is a short schedule for a {size}-parameter model: "
            "on SmolLM2-135M, 2e-4 × 183 steps stopped only 85% of greedy answers (15% looped), 2e-4 × 459 or "
            "1e-3 × 69 stopped 95–100% (docs/results.md); raise --epochs or --lr until lr × steps ≥ "
            f"{SHORT_SCHEDULE:g}")


def batching_tip(cfg: TrainConfig, device: str, p50: int) -> str | None:
    """On a GPU, micro-batches of a few thousand tokens leave it waiting on the host: a 1B LoRA step cost
    about the same for 2.5k or 15k tokens on an H100 (docs/benchmarks.md)."""
    if device != "cuda" or cfg.batch_tokens or p50 * cfg.batch_size > 4096:
        return None
    return (f"micro-batches of ~{p50 * cfg.batch_size:,} tokens keep a GPU waiting: --batch-tokens 16384 groups "
            "like-length examples (3-4x tokens/s on an H100; fewer, larger steps)")


def launch(cfg: TrainConfig, reporter: Reporter) -> None:
    """``--gpus N``: the checks that need no model, then N processes through torch.distributed.run."""
    from ..models import resolve_model

    distributed.check(cfg, processes=cfg.gpus)
    name = cfg.name or default_name(cfg)  # one name for all processes
    rd = RunDir.create(cfg.runs_dir, name, resume=cfg.resume)
    if cfg.resume:
        check_resume(cfg, rd, cfg.gpus)
    resolve_model(cfg.model, reporter)  # `tiny` built or a GGUF converted once, not once per process
    distributed.launch(dataclasses.replace(cfg, name=name), reporter, run_dir=str(rd.path))


def run(cfg: TrainConfig, reporter: Reporter) -> dict | None:
    if cfg.gpus > 1 and not distributed.launched():
        return launch(cfg, reporter)  # rank 0 of the processes prints the result
    # ---- setup
    processes = distributed.world_size()
    distributed.check(cfg, processes=processes)
    preference_stage = cfg.method in PREFERENCE  # hf only for now: auto means hf there
    # before anything imports transformers (Unsloth)
    backend_name = pick_backend("hf" if preference_stage and cfg.backend == "auto" else cfg.backend)
    from .trainer import check_transformers

    check_transformers()  # a transformers ft's Trainer was not tested with fails here, not mid-run
    if preference_stage:
        from . import preference

        return preference.run(cfg, reporter, backend_name)
    backend = _backend(backend_name)
    distributed.join()
    try:
        return _run_joined(cfg, reporter, processes, backend)
    except BaseException:
        distributed.abandon()
        raise


def _run_joined(cfg: TrainConfig, reporter: Reporter, processes: int, backend) -> dict | None:
    """The run once this process is in its group (one process: no group)."""
    if not is_main():
        reporter = distributed.Silent()
    name = distributed.same_on_all(cfg.name or default_name(cfg))
    rd = RunDir.create(cfg.runs_dir, name, resume=cfg.resume)
    checkpoint, damaged = check_resume(cfg, rd, processes) if cfg.resume else (None, [])
    system = text_or_file(cfg.system)
    inputs = load_inputs(cfg.data, system=system, seed=cfg.seed)  # PATH:W weights mixed, seeded
    val_inputs = load_inputs([cfg.val_file], system=system) if cfg.val_file else Inputs()
    with distributed.main_first():  # rank 0 builds a model cache first (and every rank has checked the run dir)
        from ..models import resolve_model

        resolve_model(cfg.model, reporter)
    model, tok, setup = backend.load(cfg, reporter)

    tok_args = dict(max_len=cfg.max_len, train_on=cfg.train_on, chunk_size=cfg.chunk_tokens,
                    chunk_overlap=cfg.chunk_overlap, text_header=cfg.text_header)
    examples = tokenize_inputs(tok, inputs, **tok_args)
    empty = [e for e in examples if not e.trainable]
    examples = [e for e in examples if e.trainable]
    val_from_file = bool(val_inputs.conversations or val_inputs.documents)
    if val_from_file:
        train, val = examples, [e for e in tokenize_inputs(tok, val_inputs, **tok_args) if e.trainable]
    else:
        train, val = split_val(examples, cfg.held_out_share, cfg.seed)
    train, no_system = drop_system(tok, train, cfg.system_dropout, cfg.seed, max_len=cfg.max_len,
                                   train_on=cfg.train_on)
    # one pass over the data's examples as trained (after --system-dropout; --val-file rows are not the
    # data's); raises if nothing is trainable
    stats = masking_stats(empty + train + ([] if val_from_file else val), setup.pad_eos.eos_id, setup.pad_eos.pad_id)
    for src in stats["empty_sources"]:
        reporter.warn(f"{src}: no trainable tokens (dropped)")
    truncation = check_truncation(stats, cfg.max_len, cfg.allow_truncation)
    if not train:
        raise TrainingError("no training examples left after the validation split")
    groups = (token_batches([len(e.input_ids) for e in train], cfg.batch_tokens, processes) if cfg.batch_tokens
              else None)
    total, eval_steps, logging_steps = schedule(cfg, len(groups) if groups else len(train), processes,
                                                 batch_size=1 if groups else cfg.batch_size)
    per_batch = len(train) / len(groups) if groups else cfg.batch_size
    effective_batch = round(per_batch * cfg.grad_accum * processes)
    pf_ok, attn = backend.padding_free_supported(model)
    padding_free = cfg.packing and pf_ok
    if groups and padding_free and not backend.varlen_attention(model):
        padding_free, pf_ok = False, False
        attn += " (no varlen kernel: a dense mask over a --batch-tokens row costs more than padding alike rows)"
    pf_text = (f"padding-free (one row per micro-batch, position ids restart per example → block-diagonal "
               f"attention, {attn})" if padding_free else
               "padded to the longest example" + ("" if cfg.packing else " (--no-packing)")
               + ("" if pf_ok or not cfg.packing else f" (padding-free is not supported with attention {attn})"))
    if groups:
        pf_text += (f" · --batch-tokens {cfg.batch_tokens}: {len(groups)} micro-batches of examples of like length, "
                    f"{per_batch:.1f} examples each on average")
    system_prompt = system if system is not None else most_common_system(inputs.conversations)

    # ---- records
    created = rd.read().get("created", now())
    rd.write_json("config.json", config_record(
        cfg, learning_rate=cfg.learning_rate, lora_alpha=cfg.lora_alpha, held_out_share=cfg.held_out_share,
        train_embeddings=cfg.embeddings_trained, total_steps=total, eval_steps=eval_steps,
        logging_steps=logging_steps, padding_free=padding_free, optimizer=setup.optimizer, dtype=setup.dtype,
        gradient_checkpointing=setup.gradient_checkpointing, world_size=processes,
        effective_batch_size=effective_batch, micro_batches_per_epoch=len(groups) if groups else None))
    rd.write_json("data.json", {"files": inputs.files, "val_files": val_inputs.files, **stats,
                                "train_rows": len(train), "val_rows": len(val),
                                "train_rows_without_system": no_system})
    if val:
        rd.write_heldout([e.row for e in val])
    pe = setup.pad_eos
    rd.update(name=name, status="running", created=created, started=now(), base_model=setup.base_model,
              base_model_arg=cfg.model, trust_remote_code=cfg.trust_remote_code, method=cfg.method, backend=backend.__name__.rsplit("_", 1)[-1],
              chat_template=setup.template, system_prompt=system_prompt, eos_token=pe.eos_token,
              pad_token=pe.pad_token, end_of_turn=pe.end_of_turn, added_tokens=setup.added_tokens,
              learning_rate=cfg.learning_rate, lora_alpha=None if cfg.method == "full" else cfg.lora_alpha,
              train_rows=len(train), val_rows=len(val), total_steps=total, best_checkpoint=None,
              best_eval_loss=None, global_step=0, versions=library_versions(), world_size=processes,
              distributed=("fsdp" if cfg.fsdp else "ddp") if processes > 1 else None,
              per_device_batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, effective_batch_size=effective_batch,
              eos_lost_examples=stats["eos_lost_examples"], thinking=cfg.thinking)
    print_setup(reporter, cfg, setup, stats, name=name, path=rd.path, total=total, eval_steps=eval_steps,
                n_train=len(train), n_val=len(val), padding_free=pf_text, system=system_prompt, processes=processes,
                no_system=no_system, effective_batch=effective_batch)
    if truncation:
        reporter.warn(truncation)  # after the setup block, where it is not scrolled away

    # ---- train
    as_rows = lambda xs: [{"input_ids": e.input_ids, "labels": e.labels} for e in xs]  # noqa: E731
    train_rows = as_rows(train)
    if groups:
        train_rows = [{"group": [train_rows[i] for i in g]} for g in groups]
    cbs = ft_callbacks.make(rd, reporter, total)
    trainer = backend.build_trainer(cfg, setup, model, tok, train_rows, as_rows(val),
                                    output_dir=str(rd.checkpoints), total_steps=total, eval_steps=eval_steps,
                                    logging_steps=logging_steps, padding_free=padding_free, callbacks=cbs)
    if checkpoint is not None:
        step = int(checkpoint.name.split("-")[-1])
        rd.trim_metrics(step)
        for line in damaged:
            reporter.warn(f"{line}: resuming from {checkpoint.name} instead")
        reporter.info(f"  resuming   from {checkpoint} (step {step})")
    t0 = time.perf_counter()
    try:
        with backend.training_kernels(setup.device, len({len(e.input_ids) for e in train + val}) > 1):
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except KeyboardInterrupt:
        last = rd.last_checkpoint()
        rd.update(status="stopped", global_step=trainer.state.global_step, ended=now(),
                  last_checkpoint=str(last) if last else None)
        if last:
            reporter.warn(f"stopped; continue with --resume --name {name} (from {last.name})")
        raise
    except Exception as e:  # a non-finite loss too (callbacks.py)
        last = rd.last_checkpoint()
        rd.update(status="failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  global_step=trainer.state.global_step, ended=now(), last_checkpoint=str(last) if last else None)
        raise
    finally:
        for cb in cbs:  # the progress bar and metrics file, also when training did not end normally
            if hasattr(cb, "stack"):
                cb.stack.close()
    seconds = time.perf_counter() - t0

    # ---- save (the best checkpoint's weights are loaded back when eval is on)
    out = rd.model if cfg.method == "full" else rd.adapter
    trainer.save_model(str(out))  # on every rank: FSDP gathers the weights from all of them; rank 0 writes
    if not is_main():
        del trainer, model
        distributed.leave()
        return None  # rank 0 writes the records and prints the result
    tok.save_pretrained(str(out))
    (out / "training_args.bin").unlink(missing_ok=True)  # the Trainer's pickle: config.json has the options
    umask_modes(out)  # safetensors writes 0600
    state = trainer.state
    best = state.best_model_checkpoint
    metrics = rd.metrics()
    train_losses = [r["loss"] for r in metrics if r.get("loss") is not None]
    tps = [r["tokens_per_s"] for r in metrics if r.get("tokens_per_s")]
    steps_run = state.global_step - (int(checkpoint.name.split("-")[-1]) if checkpoint else 0)
    final = rd.update(status="completed", ended=now(), global_step=state.global_step,
                      best_checkpoint=str(Path(best).relative_to(rd.path)) if best else None,
                      best_eval_loss=state.best_metric if best else None,
                      first_loss=train_losses[0] if train_losses else None,
                      final_loss=train_losses[-1] if train_losses else None,
                      train_loss=result.training_loss, train_seconds=round(seconds, 2),
                      seconds_per_step=round(seconds / steps_run, 4) if steps_run else None,
                      tokens_per_s=round(sum(tps) / len(tps), 1) if tps else None,
                      peak_mem_gib=ft_callbacks.peak_mem_gib(), output=str(out.relative_to(rd.path)))
    plot = rd.plot_loss()

    # ---- cleanup
    del trainer, model
    distributed.leave()
    best_text = f" · best eval loss {final['best_eval_loss']:.4f} ({final['best_checkpoint']})" if best else ""
    reporter.result(f"trained {name}: {state.global_step} steps in {seconds:.1f}s · loss "
                    f"{final['first_loss']:.4f} → {final['final_loss']:.4f}{best_text} → {out}")
    return {"run": str(rd.path), "output": str(out), "loss_png": str(plot) if plot else None,
            **{k: final.get(k) for k in ("status", "global_step", "first_loss", "final_loss", "best_eval_loss",
                                         "best_checkpoint", "tokens_per_s", "seconds_per_step", "train_rows",
                                         "val_rows")},
            "masking": {k: stats[k] for k in ("trainable_share", "empty_examples", "eos_trained_examples",
                                              "chat_examples", "truncated_examples", "eos_lost_examples")},
            "pad_token": pe.pad_token, "eos_token": pe.eos_token, "world_size": processes,
            "effective_batch_size": effective_batch}
