"""GPU probe: what does ft's Trainer cost per step against the plain Unsloth loop, in one process?

    python bench/unsloth_overhead.py MODEL_DIR [B] [L] [STEPS] [OUT.json]   # MODEL_DIR from train_throughput.make
    python bench/unsloth_overhead.py MODEL_DIR 2 64 3 - --hf                 # the same plumbing on CPU, no Unsloth

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
WARMUP = 5


def load(path: str, L: int, hf: bool):
    import torch

    if hf:  # CPU check of the plumbing
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules="all-linear"))
        return model, AutoTokenizer.from_pretrained(path)
    from unsloth import FastLanguageModel

    from finetune_cli.train import backend_unsloth

    model, tok = FastLanguageModel.from_pretrained(model_name=path, max_seq_length=L, dtype=torch.bfloat16,
                                                   load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(
        model, r=16, lora_alpha=16, lora_dropout=0, bias="none", use_gradient_checkpointing="unsloth",
        target_modules=backend_unsloth.LLAMA_LINEAR, random_state=0)
    return model, tok


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

    path = argv[1]
    B, L, steps = (int(x) for x in (argv[2:5] + ["4", "2048", "10"][len(argv[2:5]):]))
    out_path = Path(argv[5]) if len(argv) > 5 and argv[5] != "-" else None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device == "cuda"
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    model, tok = load(path, L, hf)
    model.to(device).train()
    torch.manual_seed(0)
    batches = [torch.randint(4, model.config.vocab_size, (B, L), device=device) for _ in range(4)]
    rows = [{"input_ids": r, "labels": r} for b in batches for r in b.tolist()]

    def raw() -> float:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        for i in range(WARMUP + steps):
            if i == WARMUP:
                synchronize()
                t0 = time.perf_counter()
            ids = batches[i % 4]
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        synchronize()
        return B * L * steps / (time.perf_counter() - t0)

    class Timer(TrainerCallback):
        def __init__(self, count_syncs: bool):
            self.t0 = self.t1 = None
            self.count_syncs = count_syncs
            self.caught = None
            self.ctx = None

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == WARMUP:
                synchronize()
                self.t0 = time.perf_counter()
                if self.count_syncs:
                    self.ctx = warnings.catch_warnings(record=True)
                    self.caught = self.ctx.__enter__()
                    warnings.simplefilter("always")
                    if cuda:
                        torch.cuda.set_sync_debug_mode("warn")

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == WARMUP + steps:
                if self.ctx is not None:
                    if cuda:
                        torch.cuda.set_sync_debug_mode("default")
                    self.ctx.__exit__(None, None, None)
                synchronize()
                self.t1 = time.perf_counter()

    def trainer(name: str, *, logging_steps: int = 5, nan_filter=False, token_item=False, blocking=False,
                count_syncs=False) -> dict:
        cfg = TrainConfig(model=path, data=["-"], lr=1e-4, optimizer="adamw_torch", batch_size=B, grad_accum=1,
                          max_len=L, packing=False)
        setup = Setup(base_model=path, device=device, dtype="bfloat16" if cuda else "float32", template="-",
                      pad_eos=None, optimizer="adamw_torch", gradient_checkpointing=not hf)
        timer = Timer(count_syncs)
        with tempfile.TemporaryDirectory() as tmp:
            t = (backend_hf if hf else backend_unsloth).build_trainer(cfg, setup, model, tok, rows, [], output_dir=tmp,
                                              total_steps=WARMUP + steps, eval_steps=10**6,
                                              logging_steps=logging_steps, padding_free=False, callbacks=[timer])
            t.args.logging_nan_inf_filter = nan_filter
            if token_item:
                t.args.include_num_input_tokens_seen = "non_padding"
            if blocking:
                t.accelerator.dataloader_config.non_blocking = False
            t.train()
        res = {"tokens_per_s": round(B * L * steps / (timer.t1 - timer.t0))}
        if count_syncs:
            syncs = [str(w.message).splitlines()[0][:120] for w in timer.caught or []]
            res["syncs_per_step"] = round(len(syncs) / steps, 2)
            res["sync_kinds"] = sorted(set(syncs))[:8]
        print(name, json.dumps(res), flush=True)
        return res

    plan = [
        ("raw", raw), ("ft", lambda: trainer("ft")), ("raw", raw), ("stock", lambda: trainer(
            "stock", logging_steps=1, nan_filter=True, token_item=True, blocking=True)),
        ("raw", raw), ("ft", lambda: trainer("ft")),
        ("ft_log1", lambda: trainer("ft_log1", logging_steps=1)),
        ("+nan_filter", lambda: trainer("+nan_filter", nan_filter=True)),
        ("+token_item", lambda: trainer("+token_item", token_item=True)),
        ("+blocking_copy", lambda: trainer("+blocking_copy", blocking=True)),
        ("raw", raw),
        ("ft_syncs", lambda: trainer("ft_syncs", count_syncs=True)),
        ("stock_syncs", lambda: trainer("stock_syncs", logging_steps=1, nan_filter=True, token_item=True,
                                        blocking=True, count_syncs=True)),
    ]
    out: dict[str, list] = {}
    for name, fn in plan:
        r = fn()
        if name == "raw":
            r = {"tokens_per_s": round(r)}
            print("raw", r, flush=True)
        out.setdefault(name, []).append(r)
        if out_path:
            out_path.write_text(json.dumps(out, indent=1))
    print("RESULT", json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
