"""GPU probe: what does ft's Trainer cost per step against the plain Unsloth loop, in one process?

    python bench/unsloth_overhead.py MODEL_DIR [B] [L] [STEPS] [OUT.json]   # MODEL_DIR from train_throughput.make
    python bench/unsloth_overhead.py MODEL_DIR B L STEPS OUT.json --hf   # transformers + peft instead of Unsloth

Loads one Unsloth LoRA model (as bench/train_throughput.py's raw loop does) and times, on that same model
and the same batches, alternately:
  raw            the plain loop: forward with labels, backward, AdamW step, no host sync
  ft             ft's Trainer (backend_unsloth.build_trainer) as `ft train` builds it, logging every 5 steps
  ft_log1        ... logging every step (a loss/grad-norm read every step)
  +nan_filter    ... with transformers' logging_nan_inf_filter back on (a loss read per step)
  +token_item    ... with transformers' include_num_input_tokens_seen back on (a count read per step)
  +blocking_copy ... with the batch copied to the GPU blocking (accelerate's default)
  stock          all three stock habits, logging every step (what ft did before 2026-11-25)
and, for ft and stock, counts the host syncs per step with torch.cuda.set_sync_debug_mode. Prints one
line per measurement and RESULT <json>; the run order interleaves raw between Trainer variants so drift
on the machine shows up in raw's spread.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
WARMUP = 5


def main() -> None:
    hf = "--hf" in sys.argv
    argv = [a for a in sys.argv if a != "--hf"]
    if not hf:
        import unsloth  # noqa: F401  (before transformers)
    import torch
    from transformers import TrainerCallback

    from finetune_cli.train import backend_hf, backend_unsloth
    from finetune_cli.train.backend_hf import Setup
    from finetune_cli.train.config import TrainConfig
    from train_throughput import raw_model

    path = argv[1]
    B, L, steps = (int(x) for x in (argv[2:5] + ["4", "2048", "10"][len(argv[2:5]):]))
    out_path = Path(argv[5]) if len(argv) > 5 and argv[5] != "-" else None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device == "cuda"
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    model, tok = raw_model("hf" if hf else "unsloth", path, L)
    model.to(device).train()
    torch.manual_seed(0)
    batches = [torch.randint(4, model.config.vocab_size, (B, L), device=device) for _ in range(4)]
    rows = [{"input_ids": r, "labels": r} for b in batches for r in b.tolist()]

    tables = out_path.with_suffix(".profiles.txt") if out_path else None

    def profiler():
        from torch.profiler import ProfilerActivity, profile

        return profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))

    def summarize(name: str, prof, wall: float) -> dict:
        """GPU busy share of the wall time and the host-sync-like calls in the window."""
        ka = prof.key_averages()
        busy = sum(getattr(k, "self_device_time_total", 0) for k in ka) / 1e6
        sync = {k.key: k.count for k in ka if any(x in k.key for x in (
            "Synchronize", "_local_scalar_dense", "aten::item", "aten::is_nonzero", "cudaMemcpy"))}
        if tables:
            with open(tables, "a") as f:
                f.write(f"\n=== {name}: wall {wall:.3f}s, GPU busy {busy:.3f}s\n")
                f.write(ka.table(sort_by="self_cpu_time_total", row_limit=25))
        return {"wall_s": round(wall, 3), "gpu_busy_share": round(busy / wall, 3), "sync_like_calls": sync}

    def raw(profile: bool = False) -> dict:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        n = 5 if profile else steps
        prof = None
        for i in range(WARMUP + n):
            if i == WARMUP:
                synchronize()
                t0 = time.perf_counter()
                if profile:
                    prof = profiler().__enter__()
            ids = batches[i % 4]
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        synchronize()
        wall = time.perf_counter() - t0
        res = {"tokens_per_s": round(B * L * n / wall)}
        if prof is not None:
            prof.__exit__(None, None, None)
            res.update(summarize("raw", prof, wall))
        print("raw", json.dumps(res), flush=True)
        return res

    class Timer(TrainerCallback):
        def __init__(self, count_syncs: bool, n: int, profile: bool):
            self.t0 = self.t1 = None
            self.count_syncs = count_syncs
            self.caught = None
            self.ctx = None
            self.n = n
            self.profile = profile
            self.prof = None

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == WARMUP:
                synchronize()
                self.t0 = time.perf_counter()
                if self.profile:
                    self.prof = profiler().__enter__()
                if self.count_syncs:
                    self.ctx = warnings.catch_warnings(record=True)
                    self.caught = self.ctx.__enter__()
                    warnings.simplefilter("always")
                    if cuda:
                        torch.cuda.set_sync_debug_mode("warn")

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == WARMUP + self.n:
                if self.ctx is not None:
                    if cuda:
                        torch.cuda.set_sync_debug_mode("default")
                    self.ctx.__exit__(None, None, None)
                synchronize()
                self.t1 = time.perf_counter()
                if self.prof is not None:
                    self.prof.__exit__(None, None, None)

    def trainer(name: str, *, logging_steps: int = 5, nan_filter=False, token_item=False, blocking=False,
                count_syncs=False, profile=False) -> dict:
        n = 5 if profile else steps
        cfg = TrainConfig(model=path, data=["-"], lr=1e-4, optimizer="adamw_torch", batch_size=B, grad_accum=1,
                          max_len=L, packing=False)
        setup = Setup(base_model=path, device=device, dtype="bfloat16" if cuda else "float32", template="-",
                      pad_eos=None, optimizer="adamw_torch", gradient_checkpointing=cuda)
        timer = Timer(count_syncs, n, profile)
        with tempfile.TemporaryDirectory() as tmp:
            t = (backend_hf if hf else backend_unsloth).build_trainer(cfg, setup, model, tok, rows, [], output_dir=tmp,
                                              total_steps=WARMUP + n, eval_steps=10**6,
                                              logging_steps=logging_steps, padding_free=False, callbacks=[timer])
            t.args.logging_nan_inf_filter = nan_filter
            if token_item:
                t.args.include_num_input_tokens_seen = "non_padding"
            if blocking:
                t.accelerator.dataloader_config.non_blocking = False
            t.train()
        res = {"tokens_per_s": round(B * L * n / (timer.t1 - timer.t0))}
        if timer.prof is not None:
            res.update(summarize(name, timer.prof, timer.t1 - timer.t0))
        if count_syncs:
            syncs = [str(w.message).splitlines()[0][:120] for w in timer.caught or []]
            res["syncs_per_step"] = round(len(syncs) / steps, 2)
            res["sync_kinds"] = sorted(set(syncs))[:8]
        print(name, json.dumps(res), flush=True)
        return res

    stock = dict(logging_steps=1, nan_filter=True, token_item=True, blocking=True)
    plan = [("raw", raw), ("ft", lambda: trainer("ft")), ("stock", lambda: trainer("stock", **stock))] * 3 + [
        ("ft_log1", lambda: trainer("ft_log1", logging_steps=1)),
        ("+nan_filter", lambda: trainer("+nan_filter", nan_filter=True)),
        ("+token_item", lambda: trainer("+token_item", token_item=True)),
        ("+blocking_copy", lambda: trainer("+blocking_copy", blocking=True)),
        ("raw_profile", lambda: raw(profile=True)),
        ("ft_profile", lambda: trainer("ft_profile", profile=True)),
        ("stock_profile", lambda: trainer("stock_profile", profile=True, **stock)),
        ("ft_syncs", lambda: trainer("ft_syncs", count_syncs=True)),
        ("stock_syncs", lambda: trainer("stock_syncs", count_syncs=True, **stock)),
    ]
    out: dict[str, list] = {}
    for name, fn in plan:
        out.setdefault(name, []).append(fn())
        if out_path:
            out_path.write_text(json.dumps(out, indent=1))
    print("RESULT", json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
