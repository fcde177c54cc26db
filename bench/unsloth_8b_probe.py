"""GPU probe: where does a raw Unsloth LoRA step spend its time, and what would make it faster at the same
memory? (Issue 5: ft's unsloth backend matches the raw Unsloth loop at 8B, and both are short of 1.9x
transformers+peft; ft can only pass that by doing something the raw loop does not.)

    python bench/unsloth_8b_probe.py MODEL_DIR B L STEPS OUT.json [--gc unsloth|true]

MODEL_DIR from train_throughput.make. Loads one Unsloth LoRA model with the given gradient checkpointing
(``unsloth``: Unsloth's offloading checkpointer, what ft and the raw loop use; ``true``: the same without
offloading the saved layer inputs to host memory), then on the same batches, alternately:
  foreach   the raw loop with torch AdamW (foreach), as bench/train_throughput.py times it
  fused     the same with AdamW(fused=True)
each with its tokens/s and peak memory; then profiles 3 steps and writes the GPU kernels that take the
most device time (OUT with suffix .kernels.txt) and the GPU busy share of the wall time. Prints RESULT <json>.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
WARMUP = 3


def main() -> None:
    argv = [a for a in sys.argv[1:]]
    gc: str | bool = "unsloth"
    if "--gc" in argv:
        i = argv.index("--gc")
        gc = {"true": True, "unsloth": "unsloth"}[argv[i + 1]]
        del argv[i:i + 2]
    path, B, L, steps, out = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), Path(argv[4])
    import unsloth  # noqa: F401  (before transformers)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from train_throughput import raw_model, timed_steps

    model, _ = raw_model("unsloth", path, L, gc=gc)
    model.train()
    torch.manual_seed(0)
    batches = [torch.randint(4, model.config.vocab_size, (B, L), device="cuda") for _ in range(4)]
    params = [p for p in model.parameters() if p.requires_grad]
    res: dict = {"gc": str(gc), "batch": B, "length": L, "steps": steps}

    for rep in range(2):
        for name, kw in (("foreach", {}), ("fused", {"fused": True})):
            opt = torch.optim.AdamW(params, lr=1e-4, **kw)
            torch.cuda.reset_peak_memory_stats()
            dt = timed_steps(model, opt, batches, steps, warmup=WARMUP)
            got = {"tokens_per_s": round(B * L * steps / dt),
                   "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
            res.setdefault(name, []).append(got)
            print(name, rep, got, flush=True)
            del opt
            out.write_text(json.dumps(res, indent=1))
    opt = torch.optim.AdamW(params, lr=1e-4)
    timed_steps(model, opt, batches, 1, warmup=WARMUP)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall = timed_steps(model, opt, batches, 3)
    ka = prof.key_averages()
    kernels = [k for k in ka if getattr(k, "self_device_time_total", 0) > 0]
    busy = sum(k.self_device_time_total for k in kernels) / 1e6
    res["profile"] = {"wall_s": round(wall, 3), "gpu_busy_s": round(busy, 3), "gpu_busy_share": round(busy / wall, 3),
                      "top": [{"name": k.key[:90], "ms_per_step": round(k.self_device_time_total / 1e3 / 3, 2),
                               "count_per_step": round(k.count / 3, 1)}
                              for k in sorted(kernels, key=lambda k: -k.self_device_time_total)[:30]]}
    out.with_suffix(".kernels.txt").write_text(ka.table(sort_by="self_device_time_total", row_limit=60, max_name_column_width=90))
    out.write_text(json.dumps(res, indent=1))
    print("RESULT", json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
