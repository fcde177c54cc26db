"""GPU probe: where does a Trainer-driven Unsloth step lose time against the plain loop?

    python bench/unsloth_overhead.py MODEL_DIR [B] [L] [STEPS]     # MODEL_DIR from train_throughput.make

Loads one Unsloth LoRA model (as bench/train_throughput.py's raw loop does) and times the same step with
one Trainer habit added at a time: an all-ones attention_mask, bf16 autocast, gradient clipping, a
host sync per step (loss.item()), and all of them together. Prints one JSON line of tokens/s per variant.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time


def main() -> None:
    import unsloth  # noqa: F401  (before transformers)
    import torch
    from unsloth import FastLanguageModel

    path = sys.argv[1]
    B, L, steps = (int(x) for x in (sys.argv[2:5] + ["4", "2048", "10"][len(sys.argv[2:5]):]))
    model, _ = FastLanguageModel.from_pretrained(model_name=path, max_seq_length=L, dtype=torch.bfloat16,
                                                 load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(
        model, r=16, lora_alpha=16, lora_dropout=0, bias="none", use_gradient_checkpointing="unsloth",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        random_state=0)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    torch.manual_seed(0)
    ids = [torch.randint(4, model.config.vocab_size, (B, L), device="cuda") for _ in range(4)]
    ones = torch.ones(B, L, dtype=torch.long, device="cuda")
    variants = {
        "plain": {},
        "attention_mask": {"mask": True},
        "autocast_bf16": {"autocast": True},
        "clip_grad_norm": {"clip": True},
        "sync_per_step": {"sync": True},
        "labels_copy_from_cpu": {"cpu_batch": True},
        "all": {"mask": True, "autocast": True, "clip": True, "sync": True, "cpu_batch": True},
    }
    out = {}
    for name, v in variants.items():
        for i in range(3 + steps):
            if i == 3:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
            x = ids[i % 4]
            kw = {"attention_mask": ones} if v.get("mask") else {}
            if v.get("cpu_batch"):
                x = x.cpu().pin_memory().to("cuda", non_blocking=True)
            ctx = torch.autocast("cuda", dtype=torch.bfloat16) if v.get("autocast") else contextlib.nullcontext()
            with ctx:
                loss = model(input_ids=x, labels=x, **kw).loss
            loss.backward()
            if v.get("clip"):
                torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if v.get("sync"):
                loss.item()
        torch.cuda.synchronize()
        out[name] = round(B * L * steps / (time.perf_counter() - t0))
        print(name, out[name], flush=True)
    print("RESULT", json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
