"""ft's ``transformers.Trainer``: the stock loop without its host syncs per step, and a train loss that
survives ``--resume``. It reaches into the Trainer's private parts; :func:`check_transformers` refuses a
transformers release outside the tested range, or one that lost any of them, before a model is loaded.

Private ``transformers.Trainer`` names ft relies on (tested on 5.0–5.17), and why:

Methods overridden
- ``_clip_grad_norm``, ``_get_grad_norm``: clip and measure only the trainable parameters; the stock
  ones pass ``model.parameters()``, a walk over every parameter each step (with ``model.train()`` and
  ``zero_grad``: the Trainer's cost beside a hand-written loop went from ~7 to ~2 ms a step on a CPU,
  0.92x → 1.00x; docs/benchmarks.md, commit de4a43e).
- ``_maybe_log_save_evaluate``: a step that only logs does not wait for the GPU; its row is written a step
  later (~2% of tokens/s at a log every 5 steps on an H200; docs/benchmarks.md, commit 1bcf803).
- ``_save_checkpoint``, ``_finalize_training``: each checkpoint keeps the summed step losses
  (``ft_loss.json``) so run.json's train_loss after ``--resume`` equals the uninterrupted run's
  (commit 55dbbe8).

Methods called
- ``_get_output_dir`` (the checkpoint folder), ``_get_learning_rate`` (a deferred log's lr),
  ``_has_mixed_mesh_grads`` (where the stock clip must run).

Attributes read or written (set in ``_inner_training_loop``)
- ``_tr_loss`` (read: the loss not yet logged, for ``ft_loss.json``), ``_total_loss_scalar`` (written:
  deferred logs and the losses before a resume add to it), ``_globalstep_last_logged`` (written: a
  deferred log is a log).
"""

from __future__ import annotations

import functools
import json
import os
import time

from ..errors import ConfigError

# the range pyproject.toml's ``train`` extra allows (a test keeps them equal)
TESTED = ("5.0", "5.17.0")
PRIVATE_METHODS = ("_clip_grad_norm", "_get_grad_norm", "_maybe_log_save_evaluate", "_save_checkpoint",
                   "_finalize_training", "_get_output_dir", "_get_learning_rate", "_has_mixed_mesh_grads")
PRIVATE_ATTRIBUTES = ("_tr_loss", "_total_loss_scalar", "_globalstep_last_logged")


def check_transformers() -> None:
    """Refuse, before a model is loaded, a transformers ft's Trainer was not tested with: a renamed private
    name would otherwise fail mid-run with an AttributeError."""
    import inspect

    import transformers
    from packaging.version import Version

    low, high = TESTED
    if not Version(low) <= Version(transformers.__version__) <= Version(high):
        raise ConfigError(f"transformers {transformers.__version__} is outside the range ft train is tested "
                          f"with (>={low},<={high})", hint=f"uv sync --extra train installs transformers<={high}")
    from transformers import Trainer

    missing = [n for n in PRIVATE_METHODS if not callable(getattr(Trainer, n, None))]
    if not missing:
        source = inspect.getsource(inspect.getmodule(Trainer))
        missing = [n for n in PRIVATE_ATTRIBUTES if f"self.{n}" not in source]
    if missing:
        raise ConfigError(f"transformers {transformers.__version__}: Trainer has no {missing[0]}, which ft's "
                          f"Trainer relies on (train/trainer.py)",
                          hint=f"install transformers>={low},<={high}")


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
