"""A run's plan, shared by SFT (``run.py``) and DPO/ORPO (``preference.py``): its default name, its step
schedule, and whether ``--resume`` may continue it."""

from __future__ import annotations

import math
import time
from pathlib import Path

from ..config import to_dict
from ..errors import ConfigError, TrainingError
from ..rundir import RunDir
from .config import TrainConfig

RESUME_FREE = {"resume", "logging_steps", "save_total_limit", "runs_dir", "gpus", "report_to"}


def check_resume(cfg: TrainConfig, rd: RunDir, processes: int) -> tuple[Path, list[str]]:
    """The checkpoint to resume from, and a line for each newer, damaged one passed over."""
    saved = (rd.path / "config.json")
    if saved.is_file():
        from ..jsonl import read_json

        old = read_json(saved).get("config", {})
        now_cfg = to_dict(cfg)
        diff = [k for k in now_cfg if k not in RESUME_FREE and k in old and old[k] != now_cfg[k]]
        if diff:
            raise ConfigError("option --resume: options differ from the run being resumed: "
                              + ", ".join(f"{k} ({old[k]!r} → {now_cfg[k]!r})" for k in diff),
                              hint="resume with the run's own options (see its config.json)")
    before = rd.read().get("world_size", 1)
    if before != processes:
        raise ConfigError(f"option --resume: run {rd.path.name!r} trained in {before} process(es), this is "
                          f"{processes}: the data order, batch and per-process RNG states would not match",
                          hint=f"resume with --gpus {before}, or launch {before} processes")
    ckpt, damaged = rd.intact_checkpoint()
    if ckpt is None and damaged:
        raise TrainingError(f"option --resume: run {rd.path.name!r} has no intact checkpoint: " + "; ".join(damaged),
                            hint="start it again")
    if ckpt is None:
        raise ConfigError(f"option --resume: run {rd.path.name!r} has no checkpoint yet", hint="start it again")
    return ckpt, damaged


def schedule(cfg: TrainConfig, n_train: int, processes: int = 1, batch_size: int | None = None
              ) -> tuple[int, int, int]:
    """(total optimizer steps, eval/checkpoint interval, logging interval). Each process gets every
    ``processes``-th micro-batch (the Trainer's sharded loader), so an epoch has that many fewer steps.
    With --batch-tokens an item is a whole micro-batch (``batch_size`` 1)."""
    batch_size = batch_size or cfg.batch_size
    per_epoch = max(1, math.ceil(math.ceil(math.ceil(n_train / batch_size) / processes) / cfg.grad_accum))
    total = cfg.max_steps or max(1, math.ceil(per_epoch * cfg.epochs))
    eval_steps = cfg.eval_steps or max(1, total // 10)
    logging = cfg.logging_steps or max(1, min(10, total // 50))
    return total, eval_steps, logging


def default_name(cfg: TrainConfig) -> str:
    stem = Path(cfg.model.rstrip("/")).name.removesuffix(".gguf") or "model"
    return f"{stem}-{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
