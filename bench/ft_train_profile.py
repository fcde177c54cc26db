"""GPU probe: the same steps timed and profiled inside `ft train --backend unsloth` and in the raw Unsloth loop,
in one process, to find what ft does per step that the raw loop does not (issue 5: ft at 0.89x of the raw
loop at 1B, medians of 3 alternating runs each).

    python bench/ft_train_profile.py MODEL_DIR TEXT B L OUT.json

Runs the real CLI (`ft train ...` as bench/train_throughput.py's ft_train does) in this process with one
extra Trainer callback that times steps 10-20 and profiles steps 20-25, then the raw loop of
bench/train_throughput.py on a fresh Unsloth model, timing 10 steps and profiling 5. Writes per-step wall
time, GPU busy time, kernel launches, the kernels whose time per step differs most between the two, the
host ops that take the most CPU time, and the calls that make the host wait (OUT.json, and the profiler
tables beside it).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
SYNC = ("Synchronize", "_local_scalar_dense", "aten::item", "aten::is_nonzero", "cudaMemcpy", "cudaStreamWait")


def summarize(name: str, prof, wall: float, n: int, tables: Path) -> dict:
    ka = prof.key_averages()
    kernels = {k.key: (k.self_device_time_total / 1e3 / n, k.count / n) for k in ka
               if getattr(k, "self_device_time_total", 0) > 0}
    busy = sum(ms for ms, _ in kernels.values())
    cpu = sorted(ka, key=lambda k: -k.self_cpu_time_total)[:25]
    with open(tables, "a") as f:
        f.write(f"\n=== {name}: {wall / n * 1e3:.1f} ms/step wall, GPU busy {busy:.1f} ms/step\n")
        f.write(ka.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=80))
        f.write(ka.table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=80))
    return {"ms_per_step": round(wall / n * 1e3, 2), "gpu_busy_ms_per_step": round(busy, 2),
            "kernels_per_step": round(sum(c for _, c in kernels.values()), 1),
            "sync_like": {k.key: round(k.count / n, 2) for k in ka if any(s in k.key for s in SYNC)},
            "top_cpu": [(k.key[:70], round(k.self_cpu_time_total / 1e3 / n, 2), round(k.count / n, 1)) for k in cpu],
            "kernels": kernels}


def main() -> None:
    path, text, B, L, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
    tables = out.with_suffix(".tables.txt")
    tables.write_text("")
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    stack = "unsloth" if cuda else "hf"  # on a CPU: the hf backend, only to check this script runs
    if cuda:
        import unsloth  # noqa: F401  (before transformers)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    acts = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    from transformers import TrainerCallback

    from train_throughput import ft_argv, ft_in_process, raw_setup, timed_steps

    res: dict = {}
    prof_box: dict = {}

    class Probe(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step in (10, 20):
                sync()
                prof_box[state.global_step] = time.perf_counter()
                if state.global_step == 20:
                    prof_box["prof"] = profile(activities=acts).__enter__()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step in (20, 25):
                sync()
                t = time.perf_counter()
                if state.global_step == 20:
                    res["ft_timed"] = {"ms_per_step": round((t - prof_box[10]) / 10 * 1e3, 2),
                                       "tokens_per_s": round(B * L * 10 / (t - prof_box[10]))}
                else:
                    p = prof_box.pop("prof")
                    p.__exit__(None, None, None)
                    res["ft_profiled"] = summarize("ft", p, t - prof_box[20], 5, tables)

    with tempfile.TemporaryDirectory() as tmp:
        ft_in_process(ft_argv(stack, path, text, tmp, B=B, L=L, max_steps=30, packing=False, name="probe",
                              checkpointing=cuda), Probe())
    out.write_text(json.dumps(res, indent=1))
    if cuda:
        torch.cuda.empty_cache()

    model, opt, batches = raw_setup(stack, path, B, L)
    dt = timed_steps(model, opt, batches, 10, warmup=10)  # steps 10-20, as in ft's run
    res["raw_timed"] = {"ms_per_step": round(dt / 10 * 1e3, 2), "tokens_per_s": round(B * L * 10 / dt)}
    with profile(activities=acts) as p:
        wall = timed_steps(model, opt, batches, 5)  # steps 20-25
    res["raw_profiled"] = summarize("raw", p, wall, 5, tables)
    ft_k, raw_k = res["ft_profiled"].pop("kernels"), res["raw_profiled"].pop("kernels")
    diff = {k: (round(ft_k.get(k, (0, 0))[0] - raw_k.get(k, (0, 0))[0], 3),
                ft_k.get(k, (0, 0))[1], raw_k.get(k, (0, 0))[1]) for k in set(ft_k) | set(raw_k)}
    res["kernel_diff_ms_per_step"] = sorted(([k[:90], *v] for k, v in diff.items()), key=lambda x: -abs(x[1]))[:30]
    out.write_text(json.dumps(res, indent=1))
    print("RESULT", json.dumps({k: res[k] for k in ("ft_timed", "raw_timed")}), flush=True)


if __name__ == "__main__":
    main()
