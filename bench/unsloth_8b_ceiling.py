"""GPU probe: how far the raw Unsloth LoRA step at Llama-3.1-8B shapes is from what the GPU can do, and which
levers are left (issue 5: ft's unsloth backend matches the raw Unsloth loop at 8B; both are short of 1.9x
transformers+peft, so ft could pass it only by doing something faster than Unsloth itself).

    python bench/unsloth_8b_ceiling.py micro OUT.json
    python bench/unsloth_8b_ceiling.py step MODEL_DIR B OUT.jsonl [--gc unsloth|true|hf] [--fp8] [--profile]

``micro`` (no model): the attention of one 8B layer (2 × 2048 tokens, 32 query and 8 key/value heads of 128)
forward and backward with each SDPA backend, and which one torch picks by itself; the base-weight GEMMs of one
layer at 4096 tokens, q/k/v and gate/up as separate products (as Unsloth's LoRA kernels run them) and fused into
one, summed over a step (forward, checkpoint recompute, input gradient).

``step``: the raw loop of bench/train_throughput.py (forward with labels, backward, AdamW) on MODEL_DIR from
``train_throughput.make``, two windows of 10 steps after 3 warm-up steps, tokens/s and peak memory, appended to
OUT.jsonl. ``--gc``: Unsloth's offloading checkpointer (``unsloth``, what ft uses), Unsloth without offloading
(``true``) or the transformers+peft loop (``hf``). ``--fp8`` (Unsloth only): ``load_in_fp8=True``, reporting the
base weights' dtype and whether the first loss differs from the bf16 load's. ``--profile``: 2 more steps under
torch.profiler, device time per kernel family (GEMM, attention, copies, Triton, other) and the top kernels. Run
the step variants as separate processes, alternating, to see the machine's spread.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

FAMILIES = (("attention", ("flash", "fmha", "sdpa", "attn")), ("gemm", ("gemm", "xmma", "cutlass", "nvjet")),
            ("copy", ("Memcpy", "memcpy", "copy_")), ("triton", ("triton",)))


def _ms(fn, n: int = 30) -> float:
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e3


def micro(out: Path) -> dict:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    torch.manual_seed(0)
    B, H, KV, L, D = 2, 32, 8, 2048, 128
    q, k, v = (torch.randn(B, h, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for h in (H, KV, KV))
    res: dict = {"device": torch.cuda.get_device_name(),
                 "sdpa_default": SDPBackend(int(torch._fused_sdp_choice(q, k, v, is_causal=True, enable_gqa=True))).name}
    ref = None
    for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        def step():
            o = sdpa(q, k, v, is_causal=True, enable_gqa=True) if be != SDPBackend.EFFICIENT_ATTENTION else \
                sdpa(q, k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1), is_causal=True)
            o.backward(torch.ones_like(o))
            return o
        with sdpa_kernel([be]):
            o = step().detach().float()
            ref = o if ref is None else ref
            res[f"sdpa_{be.name}"] = {"ms_fwd_bwd": round(_ms(step), 3), "max_diff": (o - ref).abs().max().item()}

    M = B * L
    x = torch.randn(M, 4096, device="cuda", dtype=torch.bfloat16)
    h = torch.randn(M, 14336, device="cuda", dtype=torch.bfloat16)
    w = {n: torch.randn(n, 4096, device="cuda", dtype=torch.bfloat16) for n in (1024, 4096, 6144, 14336, 28672)}
    down = torch.randn(4096, 14336, device="cuda", dtype=torch.bfloat16)
    fwd = {n: _ms(lambda n=n: x @ w[n].t()) for n in w}
    bwd = {n: _ms(lambda n=n, g=torch.randn(M, n, device="cuda", dtype=torch.bfloat16): g @ w[n]) for n in w}
    g4 = torch.randn(M, 4096, device="cuda", dtype=torch.bfloat16)
    down_f, down_b = _ms(lambda: h @ down.t()), _ms(lambda: g4 @ down)

    def layer(qkv_f, qkv_b, mlp_f, mlp_b):  # forward twice (checkpoint recompute), input gradient once
        return 2 * (qkv_f + fwd[4096] + mlp_f + down_f) + qkv_b + bwd[4096] + mlp_b + down_b
    sep = layer(fwd[4096] + 2 * fwd[1024], bwd[4096] + 2 * bwd[1024], 2 * fwd[14336], 2 * bwd[14336])
    fused = layer(fwd[6144], bwd[6144], fwd[28672], bwd[28672])
    flops = 3 * 2 * M * 32 * 4096 * (2 * 4096 + 2 * 1024 + 3 * 14336)
    res["base_gemm"] = {"ms_per_step_separate": round(32 * sep, 1), "ms_per_step_fused": round(32 * fused, 1),
                        "tflops_separate": round(flops / (32 * sep / 1e3) / 1e12),
                        "fwd_4096x4096x4096_tflops": round(2 * M * 4096 * 4096 / (fwd[4096] / 1e3) / 1e12)}
    out.write_text(json.dumps(res, indent=1))
    return res


def family(name: str) -> str:
    return next((f for f, keys in FAMILIES if any(s in name for s in keys)), "other")


def step(path: str, B: int, out: Path, gc: str, fp8: bool, prof: bool) -> dict:
    if gc != "hf":
        import unsloth  # noqa: F401  (before transformers)
    import torch

    from train_throughput import raw_setup, timed_steps

    unsloth = {} if gc == "hf" else {"gc": True if gc == "true" else "unsloth"}
    if fp8:
        unsloth["load_in_fp8"] = True
    model, opt, batches = raw_setup("hf" if gc == "hf" else "unsloth", path, B, 2048, **unsloth)
    res: dict = {"gc": gc, "fp8": fp8, "batch": B, "device": torch.cuda.get_device_name()}
    if fp8:
        base = next(m for n, m in model.named_modules() if n.endswith("q_proj.base_layer"))
        res["base_weight"] = f"{type(base.weight).__name__} {base.weight.dtype}"
    with torch.no_grad():
        res["first_loss"] = model(input_ids=batches[0], labels=batches[0]).loss.item()
    torch.cuda.reset_peak_memory_stats()
    res["tokens_per_s"] = [round(B * 2048 * 10 / timed_steps(model, opt, batches, 10, warmup=3 if w == 0 else 0))
                           for w in range(2)]
    res["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    if prof:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as p:
            wall = timed_steps(model, opt, batches, 2)
        kernels = [k for k in p.key_averages() if getattr(k, "self_device_time_total", 0) > 0]
        fam: dict = {}
        for k in kernels:
            fam[family(k.key)] = fam.get(family(k.key), 0.0) + k.self_device_time_total / 2e3
        res["profile"] = {"wall_ms_per_step": round(wall / 2 * 1e3, 1),
                          "ms_per_step": {f: round(v, 1) for f, v in sorted(fam.items(), key=lambda kv: -kv[1])},
                          "top": [{"name": k.key[:100], "ms": round(k.self_device_time_total / 2e3, 2),
                                   "calls": round(k.count / 2)}
                                  for k in sorted(kernels, key=lambda k: -k.self_device_time_total)[:15]]}
    with out.open("a") as f:
        f.write(json.dumps(res) + "\n")
    return res


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["micro"]:
        print("RESULT", json.dumps(micro(Path(argv[1]))), flush=True)
        return
    flags = {a for a in argv if a in ("--fp8", "--profile")}
    argv = [a for a in argv if a not in flags]
    gc = "unsloth"
    if "--gc" in argv:
        i = argv.index("--gc")
        gc = argv[i + 1]
        del argv[i:i + 2]
    assert argv[0] == "step" and gc in ("unsloth", "true", "hf") and not ("--fp8" in flags and gc == "hf"), __doc__
    res = step(argv[1], int(argv[2]), Path(argv[3]), gc, "--fp8" in flags, "--profile" in flags)
    print("RESULT", json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
