"""Trainer callbacks: metrics.jsonl rows and the progress display (step, loss, eval loss, tokens/s, ETA).

Both act on the main process only. Without a terminal (CI, ``--quiet`` off) each log step is one line.
"""

from __future__ import annotations

import contextlib
import math
import time

from ..errors import TrainingError
from ..rundir import RunDir, is_main

# what TRL's DPO/ORPO trainers log per step (and, with an ``eval_`` prefix, per evaluation), by metrics.jsonl's name
PREFERENCE = {"rewards/margins": "margin", "rewards/accuracies": "accuracy", "logps/chosen": "logps_chosen",
              "logps/rejected": "logps_rejected"}


def preference_fields(logs: dict, prefix: str = "") -> dict:
    """The preference metrics in a Trainer log, named as metrics.jsonl has them (``eval_margin``, ...)."""
    return {prefix + name: float(logs[prefix + key]) for key, name in PREFERENCE.items() if prefix + key in logs}


def peak_mem_gib() -> float:
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux


def make(run_dir: RunDir, reporter, total_steps: int) -> list:
    """The callbacks ``run.py`` hands to the Trainer."""
    from transformers import TrainerCallback

    class FtCallback(TrainerCallback):
        def __init__(self):
            self.stack = contextlib.ExitStack()
            self.task = None
            self.writer = None
            self.last_t = self.last_tokens = None
            self.tokens_per_s: float | None = None
            self.fields = {"loss": "-", "eval": "-", "tps": "-"}
            self.clock = time.perf_counter  # the Trainer sets its own: when the logged step ended

        def on_train_begin(self, args, state, control, **kw):
            if not is_main():
                return
            self.writer = self.stack.enter_context(run_dir.open_metrics())
            self.task = self.stack.enter_context(reporter.progress(
                f"training {run_dir.path.name}", total=total_steps, fields=self.fields,
                template="loss {task.fields[loss]} · eval {task.fields[eval]} · {task.fields[tps]} tok/s"))
            if state.global_step:
                self.task.advance(state.global_step)
            self.last_t, self.last_tokens = self.clock(), state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kw):
            if self.task is not None:
                self.task.advance(1)

        def on_log(self, args, state, control, logs=None, **kw):
            if is_main() and logs and self.writer is not None:
                self.record(state, logs)
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                # every process logs the same (gathered) loss, so all of them stop here; run.py records
                # the failure like any other
                raise TrainingError(f"run {run_dir.path.name}: training loss became {loss} at step "
                                    f"{state.global_step}; stopped, no adapter saved",
                                    hint="lower --lr (and check --dtype: float16 overflows where bfloat16 "
                                         "does not)")

        def record(self, state, logs: dict) -> None:
            """One metrics.jsonl row and the progress display for a log."""
            row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4)}
            if "loss" in logs:
                # SFT: FtTrainer counts them; DPO: TRL logs its own running count (the prompt with each answer)
                t, tokens = self.clock(), state.num_input_tokens_seen or int(logs.get("num_tokens") or 0)
                if t > self.last_t and tokens > self.last_tokens:
                    self.tokens_per_s = round((tokens - self.last_tokens) / (t - self.last_t), 1)
                self.last_t, self.last_tokens = t, tokens
                row.update(loss=logs["loss"], lr=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                           tokens_per_s=self.tokens_per_s, tokens_seen=tokens, peak_mem_gib=peak_mem_gib(),
                           **preference_fields(logs))
                self.fields["loss"] = f"{logs['loss']:.4f}"
                self.fields["tps"] = f"{self.tokens_per_s:.0f}" if self.tokens_per_s else "-"
            elif "eval_loss" in logs:
                row.update(eval_loss=logs["eval_loss"], **preference_fields(logs, "eval_"))
                self.fields["eval"] = f"{logs['eval_loss']:.4f}"
                self.last_t = self.clock()  # eval time is not training throughput
            else:
                return  # the end-of-training summary: run.json has it
            self.writer.write(row)
            self.task.update(**self.fields)
            if not reporter.progress_enabled:
                if "eval_loss" in row:
                    margin = f" · margin {row['eval_margin']:.3f}" if "eval_margin" in row else ""
                    reporter.info(f"step {state.global_step}/{total_steps} eval loss {self.fields['eval']}{margin}")
                else:
                    lr = f" · lr {row['lr']:.3g}" if row.get("lr") is not None else ""
                    margin = f" · margin {row['margin']:.3f}" if "margin" in row else ""
                    reporter.info(f"step {state.global_step}/{total_steps} loss {self.fields['loss']}{lr}{margin} · "
                                  f"{self.fields['tps']} tok/s")

        def on_train_end(self, args, state, control, **kw):
            self.stack.close()

    return [FtCallback()]
