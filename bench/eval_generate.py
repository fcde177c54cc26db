"""Benchmark: `ft eval` batched generation against one prompt at a time (same model, prompts, run).

    python bench/eval_generate.py                                   # tiny random model, CPU
    python bench/eval_generate.py --model random --hidden 512 --layers 8 --device cpu
    python bench/eval_generate.py --model smollm2-135m --device cuda --prompts 64 --batch-size 64

Both modes call ``finetune_cli.evaluate.generate.generate`` greedily with the same settings; the
one-at-a-time baseline is ``batch_size=1``. Prints generated tokens/s of each, the speed-up (goal
≥ 5× on a GPU) and how many outputs are identical between the two modes (greedy: all of them on
CPU/fp32; bf16 kernels may differ in a few). One JSON line at the end for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

TOPICS = ["the harbour at dawn", "mending nets", "a winter storm", "the price of fish", "your first boat",
          "the lighthouse keeper", "a wedding in the village", "learning to swim", "the old kirk", "herring",
          "the railway coming north", "a lost dog", "the fair in summer", "potatoes", "a ghost story", "the war"]


def prompts(n: int) -> list[list[dict]]:
    from finetune_cli.evaluate.prompts import PROBES

    asks = [f"Tell me about {t}, in a few sentences." for t in TOPICS] + [text for _, _, text in PROBES]
    return [[{"role": "user", "content": asks[i % len(asks)] + ("" if i < len(asks) else f" ({i})")}]
            for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny, random (see --hidden/--layers), a directory, "
                                                    ".gguf, alias or run/adapter dir")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                    help="auto: bf16 on a bf16 GPU, else float32")
    args = ap.parse_args()

    import torch

    from finetune_cli.evaluate.generate import generate
    from finetune_cli.models import load_for_inference

    device = None if args.device == "auto" else args.device
    src = args.model
    if src == "random":
        from finetune_cli.tiny import make_tiny_model

        src = str(make_tiny_model(tempfile.mkdtemp() + "/m", hidden=args.hidden, layers=args.layers))
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    loaded = load_for_inference(src, device=device, dtype=dtype)
    model, tok = loaded.model, loaded.tokenizer
    dev = next(model.parameters()).device
    n_params = sum(p.numel() for p in model.parameters())
    ps = prompts(args.prompts)
    kw = dict(eos_ids=loaded.eos_token_ids, max_new_tokens=args.max_new_tokens, temperature=0.0)

    def timed(batch_size: int):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs = generate(model, tok, ps, batch_size=batch_size, **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        return outs, secs, sum(o.n_tokens for o in outs)

    generate(model, tok, ps[:2], batch_size=2, **kw)  # warm-up: kernels, allocator, caches
    one, s1, t1 = timed(1)
    batched, sb, tb = timed(args.batch_size)
    same = sum(a.text == b.text for a, b in zip(one, batched))
    r1, rb = t1 / s1, tb / sb
    print(f"model {args.model} ({n_params / 1e6:.1f}M params, {next(model.parameters()).dtype}) on {dev}, "
          f"{len(ps)} prompts, "
          f"max_new_tokens {args.max_new_tokens}, greedy", file=sys.stderr)
    print(f"one at a time : {t1:6d} tokens in {s1:7.2f} s = {r1:9.1f} tokens/s", file=sys.stderr)
    print(f"batched ({args.batch_size:3d}) : {tb:6d} tokens in {sb:7.2f} s = {rb:9.1f} tokens/s", file=sys.stderr)
    print(f"speed-up      : {rb / r1:.2f}× (goal ≥ 5× on GPU); identical outputs {same}/{len(ps)}",
          file=sys.stderr)
    print(json.dumps({"model": args.model, "params_m": round(n_params / 1e6, 2), "device": str(dev),
                      "prompts": len(ps), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                      "one_tokens_per_s": round(r1, 1), "batched_tokens_per_s": round(rb, 1),
                      "speedup": round(rb / r1, 2), "identical_outputs": same}))


if __name__ == "__main__":
    main()
