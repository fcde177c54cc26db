"""GPU benchmark: training tokens/s and peak memory of ft's backends beside raw loops, in one run.

    python bench/train_throughput.py run OUT [--shapes 1b,8b|none] [--steps 10] [--packing]
                                             [--packing-backends unsloth,hf] [--scaling 2 [--scaling-shapes 1b]]
                                             [--parts ft_unsloth,raw_unsloth,raw_hf,ft_hf] [--repeat 3]

For random-weight Llama-3.2-1B shapes (batch 4 × 2048) and Llama-3.1-8B shapes (2 × 2048), LoRA r16
on all linear layers, gradient checkpointing, AdamW:
  (a) `ft train --backend unsloth`   (b) a raw Unsloth loop
  (c) a raw transformers+peft loop   (d) `ft train --backend hf`
and, with --packing, effective (non-pad) tokens/s on chat rows of 50–600 tokens: ft's padded batches of
8 rows, padding-free batches of 8 rows, and token-budget batches (--batch-tokens 16384); with --scaling N, `ft train --backend hf` on 1 GPU and
on N GPUs (`--gpus N`, DDP) at the same per-GPU batch: tokens/s of all GPUs together, the speed-up and
the scaling efficiency (speed-up / N), NVLink multicast off (NCCL_NVLS_ENABLE=0). Every part runs in
its own process (fresh CUDA memory statistics; Unsloth imported first where it is used). Writes
OUT/throughput.json and OUT/benchmarks.md. Weights are random: throughput and memory do not depend on
their values.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

PRESETS = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
}
BATCH = {"1b": 4, "8b": 2}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }} {{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant {% endif %}")
WARMUP = 3  # raw loops: steps before the clock starts
BATCH_TOKENS = 16384  # --packing: the token budget of the `ft train --batch-tokens` runs
FT_LOG = 5  # ft runs: log every 5 steps; the clock starts at the log of step 5


def make(path: str, preset: str) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    cfg = LlamaConfig(max_position_embeddings=8192, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                      **PRESETS[preset])
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    specials = ["<s>", "</s>", "<pad>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"t{i}": i for i in range(len(specials), cfg.vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.chat_template = TEMPLATE
    fast.save_pretrained(path)


def raw_model(kind: str, path: str, L: int, gc: str | bool = "unsloth", **load):
    """(model, tokenizer) as a hand-written loop builds them: Unsloth's LoRA (``gc``: Unsloth's
    ``use_gradient_checkpointing``, by default its offloading checkpointer; ``load``: more arguments for
    its ``from_pretrained``), or transformers + peft with SDPA and non-reentrant checkpointing (on CPU, for
    checking a script: float32, no checkpointing)."""
    import torch

    if kind == "unsloth":
        import unsloth  # noqa: F401  (before transformers)
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(model_name=path, max_seq_length=L, dtype=torch.bfloat16,
                                                       load_in_4bit=False, **load)
        return FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0, bias="none",
                                                target_modules=TARGETS, use_gradient_checkpointing=gc,
                                                random_state=0), tok
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation="sdpa", device_map={"": 0} if cuda else None)
    if cuda:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                                             task_type="CAUSAL_LM"))
    return model, AutoTokenizer.from_pretrained(path)


def raw_setup(kind: str, path: str, B: int, L: int, **model_args):
    """(model in training mode, AdamW over its trainable parameters, 4 random batches of B × L) for a
    hand-written loop (on the GPU where there is one); ``model_args`` go to raw_model."""
    import torch

    model, _ = raw_model(kind, path, L, **model_args)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model, opt, [torch.randint(4, model.config.vocab_size, (B, L), device=device) for _ in range(4)]


def timed_steps(model, opt, batches: list, n: int, *, warmup: int = 0, autocast: bool = False) -> float:
    """Seconds for ``n`` plain steps (forward with labels, backward, AdamW step, no host sync), timed after
    ``warmup`` untimed ones, going round ``batches``; ``autocast``: the forward under bf16 autocast, as
    accelerate wraps it in a Trainer."""
    import contextlib

    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for i in range(warmup + n):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        ids = batches[i % len(batches)]
        with torch.autocast(device, dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    return time.perf_counter() - t0


def ft_in_process(argv: list[str], *callbacks) -> None:
    """`ft ARGV --quiet` in this process with extra Trainer callbacks (probes that time or profile steps of
    the real CLI); a non-zero exit raises."""
    from finetune_cli import cli
    from finetune_cli.train import callbacks as ft_callbacks

    make = ft_callbacks.make
    ft_callbacks.make = lambda *a, **k: make(*a, **k) + list(callbacks)
    sys.argv = ["ft", *argv, "--quiet"]
    try:
        cli.main()
    except SystemExit as e:
        if e.code:
            raise
    finally:
        ft_callbacks.make = make


def raw_loop(kind: str, path: str, B: int, L: int, steps: int) -> dict:
    """The plain loop users write by hand: forward with labels, backward, AdamW step."""
    import torch

    model, opt, batches = raw_setup(kind, path, B, L)
    torch.cuda.reset_peak_memory_stats()
    dt = timed_steps(model, opt, batches, steps, warmup=WARMUP)
    return {"tokens_per_s": round(B * L * steps / dt), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def write_text(path: Path, n_tokens: int, vocab: int) -> None:
    """One document of ``n_tokens`` tokens with ft's EOS (one word = one token): a multiple of the chunk
    length gives only full chunks. One token more would leave a 1-token tail chunk that pads a batch
    and times a padded step the raw loops never run (measured: the 8B hf window holding it ran at 0.46x)."""
    rng = random.Random(0)
    path.write_text(" ".join(f"t{rng.randrange(4, vocab)}" for _ in range(n_tokens - 1)) + "\n")


def write_chats(path: Path, n: int, vocab: int) -> float:
    """Chat rows whose token length is uniform in 50–600 (one word = one token); returns the mean."""
    rng = random.Random(0)
    rows, total = [], 0
    for _ in range(n):
        length = rng.randint(50, 600)
        u = rng.randint(10, min(60, length // 2))
        words = lambda k: " ".join(f"t{rng.randrange(4, vocab)}" for _ in range(k))  # noqa: E731
        rows.append({"messages": [{"role": "user", "content": words(u)},
                                  {"role": "assistant", "content": words(length - u - 6)}]})
        total += length
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return total / n


def ft_argv(backend: str, model: str, data: str, runs_dir: str, *, B: int, L: int, max_steps: int, packing: bool,
            name: str, checkpointing: bool = True) -> list[str]:
    """`ft train` as the benchmark times it: LoRA r16 on chunks of L tokens, B a batch, no evaluation, AdamW
    (torch), logging every FT_LOG steps."""
    return ["train", "--model", model, "--data", data, "--backend", backend, "--method", "lora", "--r", "16",
            "--alpha", "16", "--batch-size", str(B), "--grad-accum", "1", "--max-len", str(L), "--chunk-tokens",
            str(L), "--chunk-overlap", "0", "--max-steps", str(max_steps), "--logging-steps", str(FT_LOG),
            "--val-split", "0", "--eval-steps", "100000", "--optimizer", "adamw_torch", "--gradient-checkpointing",
            "on" if checkpointing else "off", "--lr", "1e-4", "--packing" if packing else "--no-packing",
            "--name", name, "--runs-dir", runs_dir]


def ft_train(backend: str, model: str, data: str, out: Path, *, B: int, L: int, steps: int, packing: bool,
             name: str, gpus: int = 1, extra: tuple[str, ...] = ()) -> dict:
    """tokens/s: tokens over seconds from the log at step FT_LOG (the warm-up) to the last log, of all
    processes together (ft gathers every rank's token count), logging every FT_LOG steps as a real run
    does (ft's default is every 10) — a log reads the loss back from the GPU, so logging every step would
    time a host sync per step that no run pays; peak GiB: rank 0's GPU."""
    steps = -(-steps // FT_LOG) * FT_LOG
    cmd = [sys.executable, "-m", "finetune_cli", *ft_argv(backend, model, data, str(out / "runs"), B=B, L=L,
                                                          max_steps=FT_LOG + steps, packing=packing, name=name),
           "--json", "--gpus", str(gpus), *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    (out / f"{name}.log").write_text(p.stdout[-20000:] + "\n---\n" + p.stderr[-20000:])
    if p.returncode:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
    rows = [json.loads(x) for x in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if r.get("tokens_per_s") and r.get("tokens_seen")]
    timed = [(b["tokens_seen"] - a["tokens_seen"], b["tokens_per_s"]) for a, b in zip(logged, logged[1:])
             if a["step"] >= FT_LOG]
    seconds = sum(n / tps for n, tps in timed)
    peak = max(r.get("peak_mem_gib") or 0 for r in rows)
    return {"tokens_per_s": round(sum(n for n, _ in timed) / seconds) if seconds else None,
            "peak_gib": round(peak, 2)}


def median_run(runs: list[dict]) -> dict:
    """The run with the median tokens/s (the lower middle one of an even count), with the spread of all."""
    ok = sorted((x for x in runs if x.get("tokens_per_s")), key=lambda x: x["tokens_per_s"])
    if not ok:
        return runs[-1]
    return {**ok[(len(ok) - 1) // 2], "runs": len(ok), "min": ok[0]["tokens_per_s"], "max": ok[-1]["tokens_per_s"]}


def part(args: list[str]) -> None:
    """One measurement in this process; prints RESULT <json>."""
    kind, path, B, L, steps = args[0], args[1], int(args[2]), int(args[3]), int(args[4])
    print("RESULT", json.dumps(raw_loop(kind, path, B, L, steps)), flush=True)


def sub(args: list[str], log: Path) -> dict:
    p = subprocess.run([sys.executable, __file__, "part", *args], capture_output=True, text=True)
    log.write_text(p.stdout[-20000:] + "\n---\n" + p.stderr[-20000:])
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}


def main() -> None:
    if sys.argv[1] == "part":
        return part(sys.argv[2:])
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    opts = sys.argv[3:]
    shapes = opts[opts.index("--shapes") + 1].split(",") if "--shapes" in opts else ["1b", "8b"]
    shapes = [s for s in shapes if s != "none"]
    pack_backends = (opts[opts.index("--packing-backends") + 1].split(",") if "--packing-backends" in opts
                     else ["unsloth", "hf"])
    steps = int(opts[opts.index("--steps") + 1]) if "--steps" in opts else 10
    scaling = int(opts[opts.index("--scaling") + 1]) if "--scaling" in opts else 0
    scaling_shapes = opts[opts.index("--scaling-shapes") + 1].split(",") if "--scaling-shapes" in opts else ["1b"]
    parts = opts[opts.index("--parts") + 1].split(",") if "--parts" in opts else None  # re-measure some (a, b, c, d)
    repeat = int(opts[opts.index("--repeat") + 1]) if "--repeat" in opts else 1
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast off on the shared multi-GPU hosts
    work = Path(os.environ.get("BENCH_WORK", "/tmp/ft-bench"))
    work.mkdir(parents=True, exist_ok=True)
    res_path = out / "throughput.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    import torch

    results["gpu"] = torch.cuda.get_device_name(0)
    results["date"] = time.strftime("%Y-%m-%d")
    L = 2048
    for shape in shapes:
        model = work / shape
        if not (model / "config.json").is_file():
            subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                            f"import train_throughput as t; t.make({str(model)!r}, {shape!r})"], check=True)
        B = BATCH[shape]
        text = work / f"text-{shape}.txt"
        write_text(text, B * L * (FT_LOG + steps + 2), PRESETS[shape]["vocab_size"])
        r = results.setdefault(shape, {"batch": B, "length": L})
        measures = (
            ("ft_unsloth", lambda k: ft_train("unsloth", str(model), str(text), out, B=B, L=L, steps=steps,
                                              packing=False, name=f"{shape}-ft-unsloth{k}")),
            ("raw_unsloth", lambda k: sub(["unsloth", str(model), str(B), str(L), str(steps)],
                                          out / f"{shape}-raw-unsloth{k}.log")),
            ("raw_hf", lambda k: sub(["hf", str(model), str(B), str(L), str(steps)], out / f"{shape}-raw-hf{k}.log")),
            ("ft_hf", lambda k: ft_train("hf", str(model), str(text), out, B=B, L=L, steps=steps, packing=False,
                                         name=f"{shape}-ft-hf{k}")))
        for rep in range(repeat):  # parts alternate, so drift on the machine spreads over all of them
            for key, measure in measures:
                if parts is not None and key not in parts:
                    continue
                got = measure(f"-{rep + 1}" if repeat > 1 else "")
                if repeat > 1:
                    runs = r.setdefault(f"{key}_runs", [])
                    runs.append(got)
                    got = median_run(runs)
                r[key] = got
                res_path.write_text(json.dumps(results, indent=2))  # a cut-off run keeps what it measured
                (out / "benchmarks.md").write_text(render(results))
        print(shape, json.dumps(r), flush=True)
    if "--packing" in opts:
        model = work / "1b"
        chats = work / "chats.jsonl"
        # enough rows for the token-budget runs' steps (about 50 rows each)
        mean = write_chats(chats, 64 * (FT_LOG + 3 * steps), PRESETS["1b"]["vocab_size"])
        pk = results.setdefault("packing", {"batch": 8, "batch_tokens": BATCH_TOKENS, "mean_tokens": round(mean, 1),
                                            "lengths": "50-600"})
        if not (model / "config.json").is_file():
            subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                            f"import train_throughput as t; t.make({str(model)!r}, '1b')"], check=True)
        for backend in pack_backends:
            for how in ("padding_free", "padded", "batch_tokens"):
                key = f"{backend}_{how}"
                pk[key] = ft_train(backend, str(model), str(chats), out, B=8, L=L, steps=3 * steps,
                                   packing=how != "padded", name=f"pack-{key}",
                                   extra=("--batch-tokens", str(BATCH_TOKENS)) if how == "batch_tokens" else ())
                res_path.write_text(json.dumps(results, indent=2))
                (out / "benchmarks.md").write_text(render(results))
                print(key, pk[key], flush=True)
    for shape in scaling_shapes if scaling else []:
        model = work / shape
        if not (model / "config.json").is_file():
            subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                            f"import train_throughput as t; t.make({str(model)!r}, {shape!r})"], check=True)
        B = BATCH[shape]
        text = work / f"text-{shape}-x{scaling}.txt"  # enough chunks for N GPUs' batches
        write_text(text, B * L * scaling * (FT_LOG + steps + 2), PRESETS[shape]["vocab_size"])
        sc = {"gpus": scaling, "batch_per_gpu": B, "length": L}
        results.setdefault("scaling", {})[shape] = sc
        for n in (1, scaling):
            sc[f"{n}gpu"] = ft_train("hf", str(model), str(text), out, B=B, L=L, steps=steps, packing=False,
                                     name=f"{shape}-ft-hf-{n}gpu", gpus=n)
            res_path.write_text(json.dumps(results, indent=2))
        one, many = sc["1gpu"].get("tokens_per_s"), sc[f"{scaling}gpu"].get("tokens_per_s")
        if one and many:
            sc["speedup"] = round(many / one, 3)
            sc["efficiency"] = round(many / one / scaling, 3)
        res_path.write_text(json.dumps(results, indent=2))
        (out / "benchmarks.md").write_text(render(results))
        print(shape, "scaling", json.dumps(sc), flush=True)
    (out / "benchmarks.md").write_text(render(results))


def render(results: dict) -> str:
    def f(x, k):
        v = (x or {}).get(k)
        return "—" if v is None else (f"{v:,}" if isinstance(v, int) else str(v))

    lines = [f"Measured {results.get('date')} on {results.get('gpu')} by `bench/train_throughput.py`: random-weight",
             "Llama shapes, LoRA r16 on all linear layers, gradient checkpointing, AdamW (torch); raw loops "
             f"after {WARMUP} warm-up steps, ft runs from the log of step {FT_LOG} (logging every {FT_LOG}).", "",
             "| shapes | batch × length | stack | tokens/s | peak GiB | vs raw Unsloth | vs transformers+peft |",
             "|---|---|---|---|---|---|---|"]
    for shape in ("1b", "8b"):
        r = results.get(shape)
        if not r:
            continue
        ru, rh = (r.get("raw_unsloth") or {}).get("tokens_per_s"), (r.get("raw_hf") or {}).get("tokens_per_s")
        for key, label in (("ft_unsloth", "(a) ft train --backend unsloth"), ("raw_unsloth", "(b) raw Unsloth loop"),
                           ("raw_hf", "(c) raw transformers+peft loop"), ("ft_hf", "(d) ft train --backend hf")):
            x = r.get(key) or {}
            t = x.get("tokens_per_s")
            vs_u = f"{t / ru:.2f}×" if t and ru else "—"
            vs_h = f"{t / rh:.2f}×" if t and rh else "—"
            err = f" (error: {x['error']})" if x.get("error") else ""
            spread = f" (median of {x['runs']}: {x['min']:,}–{x['max']:,})" if x.get("runs") else ""
            lines.append(f"| {shape} | {r['batch']} × {r['length']} | {label}{err} | {f(x, 'tokens_per_s')}{spread} | "
                         f"{f(x, 'peak_gib')} | {vs_u} | {vs_h} |")
    scaling = results.get("scaling") or {}
    if scaling:
        lines += ["", "Data-parallel scaling of `ft train --backend hf` (DDP through `--gpus N`, NCCL_NVLS_ENABLE=0), "
                      "same per-GPU batch; tokens/s of all GPUs together:", "",
                  "| shapes | per-GPU batch × length | 1 GPU tokens/s | GPUs | N GPUs tokens/s | speed-up | "
                  "scaling efficiency | peak GiB per GPU (1 / N) |", "|---|---|---|---|---|---|---|---|"]
    for shape, sc in scaling.items():
        n = sc["gpus"]
        one, many = sc.get("1gpu") or {}, sc.get(f"{n}gpu") or {}
        err = "".join(f" (error: {x['error']})" for x in (one, many) if x.get("error"))
        speedup = f"{sc['speedup']:.2f}×" if sc.get("speedup") else "—"
        eff = f"{sc['efficiency']:.0%}" if sc.get("efficiency") else "—"
        lines.append(f"| {shape}{err} | {sc['batch_per_gpu']} × {sc['length']} | {f(one, 'tokens_per_s')} | {n} | "
                     f"{f(many, 'tokens_per_s')} | {speedup} | {eff} | {f(one, 'peak_gib')} / {f(many, 'peak_gib')} |")
    pk = results.get("packing")
    if pk:
        lines += ["", f"Effective (non-pad) tokens/s of `ft train`, 1B shapes, chat rows of {pk['lengths']} tokens "
                      f"(mean {pk['mean_tokens']}): {pk['batch']} rows per micro-batch padded to the longest or "
                      f"padding-free, or `--batch-tokens {pk.get('batch_tokens', '?')}`:", "",
                  "| backend | padded, 8 rows | padding-free, 8 rows | --batch-tokens | padding-free / padded | "
                  "batch-tokens / padded |", "|---|---|---|---|---|---|"]
        for b in ("unsloth", "hf"):
            a, p, t = (pk.get(f"{b}_padding_free") or {}, pk.get(f"{b}_padded") or {},
                       pk.get(f"{b}_batch_tokens") or {})
            if not (a or p or t):
                continue
            ratio = lambda x: (f"{x['tokens_per_s'] / p['tokens_per_s']:.2f}×"  # noqa: E731
                               if x.get("tokens_per_s") and p.get("tokens_per_s") else "—")
            lines.append(f"| {b} | {f(p, 'tokens_per_s')} | {f(a, 'tokens_per_s')} | {f(t, 'tokens_per_s')} | "
                         f"{ratio(a)} | {ratio(t)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
