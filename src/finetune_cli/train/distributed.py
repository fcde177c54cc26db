"""Several processes on one host: ``ft train`` unchanged under torchrun / accelerate launch, and ``--gpus N``.

    torchrun --nproc_per_node 2 -m finetune_cli train --model ... --data ...     # DDP, one process per GPU
    accelerate launch --num_processes 2 -m finetune_cli train --model ... --data ...
    ft train --gpus 2 --model ... --data ...           # ft starts the torchrun above for you
    ft train --gpus 4 --fsdp --method full ...         # FSDP2: each GPU holds a shard of the model

ft invents no distribution of its own: every process runs the same recipe (``run.py``) and the stock
Trainer (accelerate) gives each process its share of every batch and averages the gradients, so the
effective batch is ``--batch-size × --grad-accum × processes``. Only rank 0 writes records, checkpoints'
shared files and prints (``rundir.is_main``); the other ranks report nothing but errors. Without CUDA
the processes talk over gloo on CPU, which is how the tests run this path.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

from ..errors import ConfigError, TrainingError
from ..ui import Reporter

# config keys (any architecture) whose positive value means a step may leave experts without gradient
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
LORA_TENSORS = (".lora_A.", ".lora_B.", ".lora_magnitude_vector")


def world_size() -> int:
    """Processes in this run, as the launcher (torchrun, accelerate launch) set it; 1 when not launched."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


class Silent(Reporter):
    """The reporter of ranks other than 0: no messages, tables, results or warnings (errors still reach
    stderr through the CLI edge)."""

    def __init__(self):
        super().__init__(quiet=True, json_mode=True)

    def warn(self, message: str) -> None:
        pass


def check(cfg, *, processes: int) -> None:
    """What cannot work with this many processes, found before anything loads. ``processes`` is the
    launcher's world size, or ``--gpus`` in the process that is about to launch."""
    import torch

    cuda = torch.cuda.is_available()
    if launched() and cfg.gpus not in (1, world_size()):
        raise ConfigError(f"option --gpus {cfg.gpus}: this process was launched as one of {world_size()}",
                          hint="drop --gpus under torchrun/accelerate launch, or launch with --gpus alone")
    if cuda and not launched() and cfg.gpus > torch.cuda.device_count():
        raise ConfigError(f"option --gpus {cfg.gpus}: only {torch.cuda.device_count()} CUDA GPU(s) visible",
                          hint="check CUDA_VISIBLE_DEVICES")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise ConfigError("ft train does not configure DeepSpeed (the accelerate config asks for it)",
                          hint="launch with a DDP accelerate config, and add --fsdp to shard the model")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not cfg.fsdp:
        raise ConfigError("the accelerate config asks for FSDP, which ft sets up itself",
                          hint="add --fsdp (or launch with a DDP accelerate config)")
    if cfg.fsdp:
        if not cuda:
            raise ConfigError("option --fsdp: FSDP shards over CUDA GPUs (on CPU accelerate would quietly run "
                              "DDP instead)", hint="drop --fsdp; several CPU processes train data-parallel")
        if processes < 2:
            raise ConfigError("option --fsdp shards the model over several processes",
                              hint="add --gpus N (N ≥ 2), or launch with torchrun/accelerate launch")


def join() -> None:
    """Join the process group before the Trainer does, so ranks can agree on the run name and wait for
    rank 0 to build model caches. The Trainer reuses this group (accelerate's shared state)."""
    if world_size() <= 1:
        return
    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available()
    if cpu:
        # accelerate names the device "cpu:0" under several CPU processes, and the Trainer's resume loads the
        # optimizer with that as map_location, which torch.load refuses: name it plain "cpu"
        os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "cpu")
    # gloo on CPU, nccl on CUDA (this process's GPU = LOCAL_RANK), the group bound to that GPU: a barrier
    # without device_ids (the Trainer's at each checkpoint) then needs no guess, and torch no warning
    bound = {} if cpu else {"device_id": torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))}
    PartialState(cpu=cpu, **bound)
    from ..rundir import is_main

    if not is_main():
        import warnings

        from transformers.utils import logging as hf_logging

        warnings.simplefilter("ignore")  # library warnings are the same on every rank: rank 0 shows them
        hf_logging.set_verbosity_error()


def main_first():
    """Rank 0 runs the block first, the others after it (a cache rank 0 builds, they read)."""
    if world_size() <= 1:
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState().main_process_first()


def same_on_all(value: Any) -> Any:
    """Rank 0's value on every rank (a default run name holds the time, which may differ by a second)."""
    if world_size() <= 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def leave() -> None:
    """The end of a run in every process: the run's garbage collected (the model, the Trainer and, under
    DDP, its wrapper: reference cycles that hold memory and the process group), then the process group
    left (torch warns about a group left open at exit).

    Every process leaves together, once the first has written the run's records: a process that tore
    its group down while another still held the group open has aborted after a completed run ("terminate
    called without an active exception", rank 1, about one 2-process CPU run in ten under pytest), and
    torchrun then stops the others, rank 0 in the middle of its records."""
    import gc

    gc.collect()
    dist = _open_group()
    if dist is not None:
        import torch

        dist.barrier(device_ids=[torch.cuda.current_device()] if dist.get_backend() == "nccl" else None)
        dist.destroy_process_group()


def abandon() -> None:
    """The end of a run that failed in this process: its group is left without waiting for the others
    (they may have failed too, or be waiting in a collective until the launcher stops them); left open,
    torch warns at exit under NCCL that the group was never destroyed, after ft's one-line error."""
    dist = _open_group()
    if dist is not None:
        dist.destroy_process_group()


def _open_group():
    """``torch.distributed`` where this process is in an open group of a several-process run, else None."""
    if world_size() <= 1:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def every_trainable_in_graph(model) -> bool:
    """True where every trainable tensor gets a gradient through the autograd graph at every step."""
    config = getattr(model, "config", None)
    if any(isinstance(getattr(config, k, None), int) and getattr(config, k) > 0 for k in MOE_KEYS):
        return False  # an expert the router skips gets none
    if "unsloth" not in sys.modules:
        return True  # dense transformers models: LoRA, DoRA magnitudes, new token rows, full weights
    # Unsloth's fused loss and embedding paths may read embed/lm_head weights outside their modules'
    # forward: only plain LoRA tensors are sure (Unsloth's own rule, unsloth/models/_ddp_defaults.py)
    return all(any(m in n for m in LORA_TENSORS) and "lm_head" not in n and "embed" not in n
               for n, p in model.named_parameters() if p.requires_grad)


def ddp_args(model) -> dict:
    """TrainingArguments for several processes. transformers asks DDP to find unused parameters for any
    model that is not a PreTrainedModel (every PEFT model): a graph walk per step, and under Unsloth's
    reentrant checkpointing a crash ("marked ready twice"). It is off where every trainable tensor gets
    a gradient every step, and left to transformers (on) elsewhere.

    Evaluation takes one example per process per step (see ``exact_eval_loss``)."""
    return {"ddp_find_unused_parameters": False if every_trainable_in_graph(model) else None,
            "log_level_replica": "error", "per_device_eval_batch_size": 1}


def exact_eval_loss(trainer) -> None:
    """Make the eval loss of several processes the mean over the held-out examples, each counted once.

    accelerate gives every rank the same number of eval batches by repeating examples at the end and
    drops the repeats from the gathered losses by counting examples; that needs one example per batch
    (a padding-free batch is one row whatever it holds) and each rank's loss on its own tokens. With
    ``average_tokens_across_devices`` (transformers 5.17) a rank's eval loss is its token sum over the
    token count of all ranks times the rank count, right only as a mean over all ranks of a step, so
    the dropped repeat skewed the last step (measured: 6.48 reported for a true 6.77). Training keeps
    the cross-rank token average: it makes 2 × batch 4 the same gradient as 1 × batch 8.
    """
    predict = trainer.prediction_step

    def prediction_step(*args, **kwargs):
        trainer.args.average_tokens_across_devices = False
        try:
            return predict(*args, **kwargs)
        finally:
            trainer.args.average_tokens_across_devices = True

    trainer.prediction_step = prediction_step


def fsdp_args(model, *, activation_checkpointing: bool) -> dict:
    """TrainingArguments for FSDP2 full shard, one FSDP unit per decoder layer (the classes the model
    names as never to be split), weights gathered into one full state dict when saved (so the adapter
    is a plain PEFT adapter). Activation checkpointing goes through FSDP: the Trainer's own would add an
    all-gather per layer in the backward."""
    layers = sorted(set(getattr(model, "_no_split_modules", None) or []))
    if not layers:
        raise ConfigError(f"option --fsdp: {type(model).__name__} names no decoder layer class to shard by")
    return {"fsdp": True, "fsdp_config": {
        "version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "transformer_layer_cls_to_wrap": layers,
        "reshard_after_forward": True, "state_dict_type": "FULL_STATE_DICT",
        "activation_checkpointing": activation_checkpointing}}


# ---------------------------------------------------------------- ft train --gpus N

def config_toml(cfg) -> str:
    """The resolved config as the ``[train]`` table of a TOML file (None = the field's default)."""
    from ..config import to_dict

    # JSON scalars, strings and string arrays are valid TOML values
    lines = [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in to_dict(cfg).items() if v is not None]
    return "[train]\n" + "\n".join(lines) + "\n"


def launch(cfg, reporter: Reporter, *, run_dir: str) -> None:
    """Run this training in ``cfg.gpus`` processes through torch.distributed.run and wait for them.

    The workers get the resolved config as a TOML file, not this command line, so a value that came
    from a flag, a file or the environment means the same there; ``FT_TRAIN_*`` variables are dropped
    from their environment because the file already holds what they resolved to.
    """
    import subprocess
    import tempfile
    from dataclasses import fields

    from ..config import env_names

    with tempfile.TemporaryDirectory(prefix="ft-train-") as tmp:
        path = os.path.join(tmp, "train.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(config_toml(cfg))
        drop = {"FT_CONFIG"} | {name for f in fields(cfg) for name in env_names("train", f)}
        env = {k: v for k, v in os.environ.items() if k not in drop}
        # torchrun sets 1 thread per process when unset; CPU runs (tests) use their share of the cores
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.gpus)))
        cmd = [sys.executable, "-m", "finetune_cli.train.distributed", "--standalone", "--nproc_per_node",
               str(cfg.gpus), "-m", "finetune_cli", "train", "--config", path]
        if reporter.json_mode:
            cmd.append("--json")
        elif reporter.quiet:
            cmd.append("--quiet")
        if reporter.debug:
            cmd.append("--debug")
        reporter.info(f"ft train: {cfg.gpus} processes (torch.distributed.run) → {run_dir}")
        code = subprocess.run(cmd, env=env).returncode
    if code == 130:
        raise KeyboardInterrupt
    if code:
        err = TrainingError(f"training in {cfg.gpus} processes failed (exit code {code}; the error is above)")
        err.exit_code = code  # the worker's own: 2 for a config error, 1 for a data or runtime error
        raise err


def torchrun(argv: list[str]) -> int:
    """``python -m torch.distributed.run ARGV`` that exits with the first failed worker's own exit code
    (torchrun exits 1 for any failure and adds a traceback of its own below the worker's error line)."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the workers print their errors
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode >= 0:
            return failure.exitcode or 1
        print(f"error: rank {rank} was killed by signal {-failure.exitcode}"
              + (" (out of memory?)" if failure.exitcode == -9 else ""), file=sys.stderr)
        return 130 if failure.exitcode == -2 else 1
    except (KeyboardInterrupt, SignalException):
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(torchrun(sys.argv[1:]))
