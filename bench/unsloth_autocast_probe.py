"""GPU probe: does the Trainer's bf16 autocast cost an Unsloth step host time? (issue 5: `ft train --backend
unsloth` at 0.89x of the raw Unsloth loop at 1B; same kernels, the GPU waiting on the host.)

    python bench/unsloth_autocast_probe.py MODEL_DIR TEXT B L OUT.json [ROUNDS] [amp|log]

In one process: `ft train` (the real CLI, as bench/train_throughput.py times it) in two variants, alternating
ROUNDS times (default 2): `amp` (default), the Trainer's autocast as configured and with accelerate's autocast
wrapper off; `log`, logging every 5 steps (as the benchmark does) and only at the end. Then the raw
Unsloth loop of bench/train_throughput.py without and with `torch.autocast(bf16)` around the forward (as
accelerate wraps it), alternating 3 times. Each timing is wall seconds and the main thread's CPU seconds per
step over 20 steps (ft: steps 10-30) - a host-bound step has CPU time close to its wall time.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    path, text, B, L, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
    rounds = int(sys.argv[6]) if len(sys.argv) > 6 else 2
    vary = sys.argv[7] if len(sys.argv) > 7 else "amp"
    import torch

    cuda = torch.cuda.is_available()
    stack = "unsloth" if cuda else "hf"  # on a CPU: the hf backend, only to check this script runs
    if cuda:
        import unsloth  # noqa: F401  (before transformers)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    from transformers import TrainerCallback

    from finetune_cli.train import backend_hf, backend_unsloth
    from train_throughput import ft_argv, ft_in_process, raw_setup, timed_steps

    res: dict = {"B": B, "L": L, "ft": [], "raw": []}
    box: dict = {}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 10:
                sync()
                box["t"], box["cpu"] = time.perf_counter(), time.thread_time()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 30:
                sync()
                box["wall"], box["cpu"] = time.perf_counter() - box["t"], time.thread_time() - box["cpu"]

    backend = backend_unsloth if cuda else backend_hf
    build = backend.build_trainer

    def ft(amp: bool, log_steps: int) -> dict:
        def build_without_amp(*a, **k):
            trainer = build(*a, **k)
            trainer.accelerator.native_amp = False  # accelerate's prepare() then wraps no autocast
            return trainer

        backend.build_trainer = build if amp else build_without_amp
        with tempfile.TemporaryDirectory() as tmp:
            ft_in_process([*ft_argv(stack, path, text, tmp, B=B, L=L, max_steps=31, packing=False, name="probe",
                                    checkpointing=cuda), "--logging-steps", str(log_steps)], Clock())
        backend.build_trainer = build
        if cuda:
            torch.cuda.empty_cache()
        return {"autocast": amp, "logging_steps": log_steps, "ms_per_step": round(box["wall"] / 20 * 1e3, 2),
                "cpu_ms_per_step": round(box["cpu"] / 20 * 1e3, 2), "tokens_per_s": round(B * L * 20 / box["wall"])}

    for _ in range(rounds):
        for amp, log_steps in ((True, 5), (False, 5)) if vary == "amp" else ((True, 5), (True, 1000)):
            res["ft"].append(ft(amp, log_steps))
            print("FT", json.dumps(res["ft"][-1]), flush=True)
            out.write_text(json.dumps(res, indent=1))

    model, opt, batches = raw_setup(stack, path, B, L)

    def steps(n: int, amp: bool) -> tuple[float, float]:
        c = time.thread_time()
        wall = timed_steps(model, opt, batches, n, autocast=amp)
        return wall, time.thread_time() - c

    steps(10, False)
    steps(3, True)
    for _ in range(3):
        for amp in (False, True):
            wall, cpu = steps(20, amp)
            res["raw"].append({"autocast": amp, "ms_per_step": round(wall / 20 * 1e3, 2),
                               "cpu_ms_per_step": round(cpu / 20 * 1e3, 2), "tokens_per_s": round(B * L * 20 / wall)})
            print("RAW", json.dumps(res["raw"][-1]), flush=True)
            out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
