"""Benchmark: ft eval's generation and ft chat's first token, beside plain transformers (and vLLM), in one run.

    PYTHONPATH=src python bench/eval_generate.py --tiny                      # CPU smoke check, < 1 min
    # the GPU run (torch 2.11, transformers 5.17, peft; one H100), from the repo root:
    PYTHONPATH=src python bench/eval_generate.py --device cuda --out bench/results/eval_generate-h100

For each shape (SmolLM2-135M: Llama, hidden 576, 30 layers, 9 heads, 3 KV heads, intermediate 1536, vocab 49152;
Llama-3.2-1B: hidden 2048, 16 layers, 32 heads, 8 KV heads, intermediate 8192, vocab 128256), random weights
built on the device (bf16 on CUDA, fp32 on CPU), once bare and once under a LoRA r16 adapter on every linear
layer (B random, so the adapter changes the answers):

- baseline: a plain ``model.generate`` loop at eval's old settings — batches of 16 in length order, the
  adapter unmerged, dynamic cache (what ft eval did before issue 21), on ``--baseline-prompts`` prompts;
- ft eager: ``evaluate.generate.generate`` as ft eval --compile off calls it (adapter merged in memory when
  exact, the batch sized from the prompt count), on ``--prompts`` prompts;
- ft default: the same as ft eval calls it by default (--compile auto: on CUDA, a static cache and CUDA
  graphs for this many prompts), timed twice: cold (its first run, compiling included: what one generate
  call of a fresh ft eval pays) and warm (its second run: every later call of the same eval);
- ttft: ft chat's ``TokenStream`` time to first token vs a bare ``TextIteratorStreamer`` around
  ``model.generate`` on the same model object and prompt (median of 5, prompt already tokenized);
- vllm: ``vllm.LLM`` on the same weights (saved to a temporary folder; the adapter as a LoRARequest) when
  vllm is importable, else a line saying it is not.

Random weights never emit EOS: every reply runs to --max-new-tokens in every path, so tokens/s compares
like with like but is the best case for big batches (in a real eval a batch runs until its longest reply
ends). Writes OUT.json and OUT.md (a table with ratios) and prints the table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192,
                         tie_word_embeddings=True),
    "llama-3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=8192, vocab_size=128256, max_position_embeddings=8192,
                         tie_word_embeddings=True, rope_theta=500000.0),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=1024, max_position_embeddings=2048, tie_word_embeddings=True),
}
TOPICS = ["the harbour at dawn", "mending nets", "a winter storm", "the price of fish", "your first boat",
          "the lighthouse keeper", "a wedding in the village", "learning to swim", "the old kirk", "herring",
          "the railway coming north", "a lost dog", "the fair in summer", "potatoes", "a ghost story", "the war"]


def prompts(n: int) -> list[list[dict]]:
    from finetune_cli.evaluate.prompts import PROBES

    asks = [f"Tell me about {t}, in a few sentences." for t in TOPICS] + [text for _, _, text in PROBES]
    return [[{"role": "user", "content": asks[i % len(asks)] + ("" if i < len(asks) else f" ({i})")}]
            for i in range(n)]


def build(shape: str, device, dtype, adapter: bool, tok):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES[shape], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    if not adapter:
        return model
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model.eval()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(model, tok, ps, eos, max_new, batch=16):
    """Eval before issue 21: length-sorted batches of 16, left padding, ``model.generate`` greedy."""
    import torch

    device = next(model.parameters()).device
    texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in ps]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out: list[list[int]] = [[] for _ in ids]
    for b in range(0, len(order), batch):
        idx = order[b: b + batch]
        enc = tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt", padding=True).to(device)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=max_new, do_sample=False, eos_token_id=eos,
                                 pad_token_id=tok.pad_token_id)
        for i, row in zip(idx, gen[:, enc["input_ids"].shape[1]:].tolist()):
            cut = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
            out[i] = row[:cut]
    return out


def timed(device, fn):
    sync(device)
    t0 = time.perf_counter()
    r = fn()
    sync(device)
    return r, time.perf_counter() - t0


def ttft_bare(model, tok, messages, max_new) -> float:
    import threading

    import torch
    from transformers import TextIteratorStreamer

    device = next(model.parameters()).device
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = tok(text, add_special_tokens=False, return_tensors="pt").to(device)
    first: list[float] = []

    class Timed(TextIteratorStreamer):
        def put(self, value):
            if not self.next_tokens_are_prompt and not first:
                first.append(time.perf_counter())
            super().put(value)

    streamer = Timed(tok, skip_prompt=True)
    t0 = time.perf_counter()

    def work():
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=max_new, do_sample=False, streamer=streamer,
                           pad_token_id=tok.pad_token_id)

    th = threading.Thread(target=work)
    th.start()
    for _ in streamer:
        pass
    th.join()
    return first[0] - t0


def ttft_chat(model, tok, messages, eos, max_new) -> float:
    from finetune_cli.evaluate.generate import TokenStream

    s = TokenStream(model, tok, messages, eos_ids=eos, max_new_tokens=max_new)
    for _ in s:
        pass
    return s.first_token_s


def median_of(n, fn) -> float:
    fn()  # warm-up
    return statistics.median(fn() for _ in range(n))


def run_vllm(shape, model, tok, ps, eos, max_new, adapter) -> dict:
    if importlib.util.find_spec("vllm") is None:
        return {"skipped": "vllm is not installed here"}
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        d = Path(tempfile.mkdtemp(prefix=f"vllm-{shape}-"))
        base = model.get_base_model() if adapter else model
        if adapter:
            model.save_pretrained(d / "adapter")
        base.save_pretrained(d / "model")
        tok.save_pretrained(d / "model")
        llm = LLM(model=str(d / "model"), dtype="bfloat16", enable_lora=adapter, max_lora_rank=16,
                  gpu_memory_utilization=0.35, max_model_len=2048, seed=0)
        sp = SamplingParams(temperature=0.0, max_tokens=max_new, stop_token_ids=eos)
        lora = LoRARequest("a", 1, str(d / "adapter")) if adapter else None
        msgs = [p for p in ps]
        llm.chat(msgs[:2], sp, lora_request=lora, use_tqdm=False)
        t0 = time.perf_counter()
        outs = llm.chat(msgs, sp, lora_request=lora, use_tqdm=False)
        secs = time.perf_counter() - t0
        n = sum(len(o.outputs[0].token_ids) for o in outs)
        del llm
        return {"tokens": n, "seconds": round(secs, 3), "tokens_per_s": round(n / secs, 1)}
    except Exception as e:  # a bench reports what failed and goes on
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def bench_one(shape, adapter, args, device, dtype, tok) -> dict:
    import gc

    import torch

    from finetune_cli.evaluate.generate import Decoding, generate, merge_lora_for_inference

    eos = list(dict.fromkeys([tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]))
    model = build(shape, device, dtype, adapter, tok)
    ps = prompts(args.prompts)
    row: dict = {"shape": shape, "adapter": "lora r16" if adapter else None, "device": str(device),
                 "dtype": str(dtype).replace("torch.", ""), "prompts": len(ps), "max_new_tokens": args.max_new_tokens,
                 "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
    base_ps = ps[: args.baseline_prompts]
    plain_loop(model, tok, base_ps[:2], eos, 4)  # warm-up
    old, secs = timed(device, lambda: plain_loop(model, tok, base_ps, eos, args.max_new_tokens))
    n = sum(map(len, old))
    row["baseline"] = {"prompts": len(base_ps), "tokens": n, "seconds": round(secs, 3),
                       "tokens_per_s": round(n / secs, 1)}

    merged, info = merge_lora_for_inference(model) if adapter else (model, {"adapter": None})
    row["generation_path"] = info
    msg = [{"role": "user", "content": "Tell me about the harbour at dawn, in a few sentences."}]
    row["ttft_ms"] = {
        "bare_streamer": round(1000 * median_of(5, lambda: ttft_bare(merged, tok, msg, args.ttft_tokens)), 2),
        "ft_chat": round(1000 * median_of(5, lambda: ttft_chat(merged, tok, msg, eos, args.ttft_tokens)), 2)}
    row["ttft_ms"]["ratio"] = round(row["ttft_ms"]["ft_chat"] / row["ttft_ms"]["bare_streamer"], 2)

    kw = dict(eos_ids=eos, max_new_tokens=args.max_new_tokens, batch_size=0)
    generate(merged, tok, ps[:2], **{**kw, "max_new_tokens": 4})  # warm-up
    gens, secs = timed(device, lambda: generate(merged, tok, ps, **kw))
    n = sum(g.n_tokens for g in gens)
    row["ft"] = {"tokens": n, "seconds": round(secs, 3), "tokens_per_s": round(n / secs, 1)}
    old_text = [tok.decode(ids[:-1] if ids and ids[-1] in eos else ids, skip_special_tokens=True).strip()
                for ids in old]
    row["ft"]["identical_to_baseline"] = f"{sum(a == g.text for a, g in zip(old_text, gens))}/{len(old_text)}"
    decode = Decoding("auto", warn=lambda line: print(line, file=sys.stderr))
    for when in ("cold", "warm"):  # cold: the first call compiles and captures the graphs
        gens, secs = timed(device, lambda: generate(merged, tok, ps, **kw, decode=decode))
        n = sum(g.n_tokens for g in gens)
        row[f"ft_default_{when}"] = {"tokens": n, "seconds": round(secs, 3), "tokens_per_s": round(n / secs, 1),
                                     **decode.record}
    if device.type == "cuda" and not args.no_vllm:
        row["vllm"] = run_vllm(shape, model if not adapter else merged, tok, ps, eos, args.max_new_tokens, False)
    else:
        row["vllm"] = {"skipped": "vllm is not installed here" if importlib.util.find_spec("vllm") is None
                       else "CPU run"}
    del model, merged
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def table(rows: list[dict]) -> str:
    def rate(r, k):
        v = r.get(k, {})
        return f"{v['tokens_per_s']:,.0f}" if "tokens_per_s" in v else "–"

    lines = ["| shape | adapter | path | baseline tok/s | ft eager tok/s | × | ft default cold tok/s | "
             "ft default warm tok/s | × | decode | vLLM tok/s | TTFT bare ms | TTFT chat ms | chat/bare |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        b = r["baseline"]["tokens_per_s"]
        warm = r["ft_default_warm"]
        lines.append(
            f"| {r['shape']} ({r['dtype']}, {r['device']}) | {r['adapter'] or 'none'} | "
            f"{r['generation_path']['adapter'] or 'base'} | {b:,.0f} | {rate(r, 'ft')} | "
            f"{r['ft']['tokens_per_s'] / b:.1f} | {rate(r, 'ft_default_cold')} | {rate(r, 'ft_default_warm')} | "
            f"{warm['tokens_per_s'] / b:.1f} | {warm['decode']} | "
            f"{rate(r, 'vllm')} | {r['ttft_ms']['bare_streamer']} | {r['ttft_ms']['ft_chat']} | "
            f"{r['ttft_ms']['ratio']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="smoke check: a 2-layer 64-wide model, 8 prompts, 16 "
                                                        "tokens (add --shapes tiny,smollm2-135m for SmolLM2's "
                                                        "shape: ~5 min on 2 CPU cores)")
    ap.add_argument("--shapes", default=None, help="comma-separated, from " + ", ".join(SHAPES)
                    + "; default smollm2-135m,llama-3.2-1b (--tiny: tiny)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--prompts", type=int, default=None, help="prompts in ft's batch (default 128; --tiny 8)")
    ap.add_argument("--baseline-prompts", type=int, default=None,
                    help="prompts for the old path, timed per batch of 16 (default 32; --tiny 8)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="tokens per reply (default 256, "
                                                                      "ft eval's; --tiny 16)")
    ap.add_argument("--ttft-tokens", type=int, default=8, help="tokens per reply in the TTFT runs")
    ap.add_argument("--no-vllm", action="store_true", help="skip vLLM even when installed")
    ap.add_argument("--out", default=None, help="OUT.json and OUT.md (default bench/results/eval_generate-DEVICE)")
    args = ap.parse_args()
    args.prompts = args.prompts or (8 if args.tiny else 128)
    args.baseline_prompts = min(args.prompts, args.baseline_prompts or (8 if args.tiny else 32))
    args.max_new_tokens = args.max_new_tokens or (16 if args.tiny else 256)
    shapes = (args.shapes or ("tiny" if args.tiny else "smollm2-135m,llama-3.2-1b")).split(",")

    import torch

    from finetune_cli.models import _prepare_tokenizer
    from finetune_cli.tiny import make_tokenizer

    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tok = make_tokenizer("chatml")
    _prepare_tokenizer(tok)
    rows = []
    for shape in shapes:
        for adapter in (False, True):
            t0 = time.perf_counter()
            rows.append(bench_one(shape, adapter, args, device, dtype, tok))
            print(f"{shape} {'lora' if adapter else 'base'}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    doc = {"command": " ".join(sys.argv), "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "rows": rows}
    out = Path(args.out or f"bench/results/eval_generate-{device.type}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    md = table(rows)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
