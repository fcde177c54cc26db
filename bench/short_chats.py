"""GPU probe: why short-chat batches train slowly, and which batching fixes it (one process per stack).

    python bench/short_chats.py STACK MODEL_DIR OUT.json [--steps 20]      STACK: hf | unsloth

Chat rows of 50–600 tokens (uniform, as bench/train_throughput.py --packing), LoRA r16 on all linear
layers, gradient checkpointing, AdamW; effective (non-pad) tokens/s of each way to batch them, timed
over ``--steps`` steps after 5 warm-up steps, in one process on one model:

  padded        8 rows padded to the longest (what ft does without padding-free)
  padded64      8 rows padded to the longest, rounded up to a multiple of 64
  free          8 rows in one padding-free row (position ids restart; Unsloth: packed_seq_lengths)
  budget        rows sorted by length into batches of at most 16,384 tokens padded (length-grouped)
  budget_free   rows packed into padding-free rows of at most 16,384 tokens

each with SDPA's default kernel choice and (``…/nocudnn``) with its cuDNN backend excluded — cuDNN builds
a new plan for every new sequence length (see evaluate/generate.py). Writes OUT.json.
"""

from __future__ import annotations

import json
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def rows(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(50, 600) for _ in range(n)]


def batches(kind: str, lengths: list[int], budget: int = 16384) -> list[list[int]]:
    from finetune_cli.train.examples import token_batches

    if kind in ("padded", "padded64", "free"):
        return [lengths[i:i + 8] for i in range(0, len(lengths) - 7, 8)]
    if kind == "budget":  # length-grouped, as `ft train --batch-tokens` groups them
        return [[lengths[i] for i in g] for g in token_batches(lengths, budget)]
    out, cur = [], []  # budget_free: first fit in order
    for n in lengths:
        if sum(cur) + n > budget:
            out.append(cur)
            cur = []
        cur.append(n)
    return out + ([cur] if cur else [])


def tensors(kind: str, lens: list[int], vocab: int, pad: int, device: str) -> tuple[dict, int]:
    import torch

    g = torch.Generator().manual_seed(sum(lens))
    seqs = [torch.randint(4, vocab, (n,), generator=g) for n in lens]
    if kind in ("free", "budget_free"):
        ids = torch.cat(seqs)[None]
        pos = torch.cat([torch.arange(n) for n in lens])[None]
        labels = ids.clone()
        starts = torch.tensor([0] + list(lens[:-1])).cumsum(0)
        labels[0, starts] = -100
        out = {"input_ids": ids, "labels": labels, "position_ids": pos, "use_cache": False,
               "packed_seq_lengths": torch.tensor(lens, dtype=torch.int32)}
        return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in out.items()}, sum(lens)
    n = max(lens)
    if kind == "padded64":
        n = -(-n // 64) * 64
    ids = torch.full((len(lens), n), pad)
    mask = torch.zeros((len(lens), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    out = {"input_ids": ids, "labels": labels, "attention_mask": mask, "use_cache": False}
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in out.items()}, sum(lens)


def main() -> None:
    stack, path, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 20
    import train_throughput as tt

    model, tok = tt.raw_model(stack, path, 2048)
    import torch

    from finetune_cli.train.backend_hf import training_kernels

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.config.vocab_size
    lengths = rows(4000)
    results = json.loads(out.read_text()) if out.is_file() else {}
    for kind in ("padded", "padded64", "free", "budget", "budget_free"):
        plan = batches(kind, lengths)
        for cudnn in (True, False):
            key = f"{stack}/{kind}" + ("" if cudnn else "/nocudnn")
            ctx = nullcontext() if cudnn else training_kernels(device, varying_lengths=True)  # what ft does
            rng = random.Random(1)
            order = list(range(len(plan)))
            rng.shuffle(order)
            try:
                with ctx:
                    tokens, t0 = 0, None
                    for i in range(5 + steps):
                        if i == 5:
                            if cuda:
                                torch.cuda.synchronize()
                            t0 = time.perf_counter()
                        inputs, n = tensors(kind, plan[order[i % len(order)]], vocab, tok.pad_token_id or 0, device)
                        if stack == "hf":
                            inputs.pop("packed_seq_lengths", None)
                        model(**inputs).loss.backward()
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                        if i >= 5:
                            tokens += n
                    if cuda:
                        torch.cuda.synchronize()
                    dt = time.perf_counter() - t0
                results[key] = {"effective_tokens_per_s": round(tokens / dt), "s_per_step": round(dt / steps, 4),
                                "tokens_per_step": round(tokens / steps)}
            except Exception as e:  # noqa: BLE001  (a probe: record and go on)
                results[key] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            print(key, results[key], flush=True)
            out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
