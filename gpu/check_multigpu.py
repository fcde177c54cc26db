"""GPU check (not CI): `ft train --gpus 2` (DDP, FSDP, resume, Unsloth under DDP) on a random-weight
Llama-3.2-1B-shaped model, every adapter reloaded with plain transformers + peft.

    python gpu/check_multigpu.py OUT_DIR              # a host with 2+ CUDA GPUs (NCCL_NVLS_ENABLE=0 is set)
    python gpu/check_multigpu.py OUT_DIR --smoke      # the same steps on CPU: tiny model, 2 gloo processes

Runs, each `ft train` in its own processes:
  ddp       --gpus 2, batch 4 per GPU (effective 8), eval on, checkpoints every 10 steps
  one       --gpus 1, batch 8: the same effective batch, for the adapter layout (and values) of one GPU
  resume    ddp's run with its last checkpoint removed, resumed with --gpus 2: must equal ddp
  fsdp      --gpus 2 --fsdp (FSDP2 full shard)
  unsloth   --gpus 2 --backend unsloth (DDP), where the unsloth package is installed
Each adapter must have one GPU's files and tensor names/shapes, reload with plain peft in a process that
never imports Unsloth, and lower the loss on training rows below the base model's. Writes
OUT_DIR/multigpu.json ("ok" per check and overall).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import train_throughput as bench  # noqa: E402  (the 1B shapes, tokenizer and chat rows of the benchmark)

STEPS = 30


def sh(args: list[str], log: Path) -> subprocess.CompletedProcess:
    print("$", " ".join(a if len(a) < 200 else a[:40] + "...'" for a in args), flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(args, text=True, capture_output=True)
    log.write_text(p.stdout[-30000:] + "\n---\n" + p.stderr[-30000:])
    print(f"  rc {p.returncode} in {time.perf_counter() - t0:.0f}s", flush=True)
    return p


def train(name: str, common: list[str], *extra: str, out: Path) -> dict:
    p = sh([sys.executable, "-m", "finetune_cli", "train", *common, "--name", name, *extra, "--json"],
           out / f"train_{name}.log")
    entry: dict = {"rc": p.returncode}
    if p.returncode:
        entry["error"] = (p.stderr.strip().splitlines() or ["?"])[-1][:500]
        return entry
    res = json.loads(p.stdout)
    run = json.loads((Path(res["run"]) / "run.json").read_text())
    entry.update({k: res.get(k) for k in ("first_loss", "final_loss", "best_eval_loss", "tokens_per_s",
                                          "seconds_per_step", "global_step")})
    entry.update({k: run.get(k) for k in ("world_size", "effective_batch_size", "distributed", "backend",
                                          "peak_mem_gib")})
    entry["adapter"] = res["output"]
    entry["files"] = sorted(os.listdir(res["output"]))
    return entry


def layout(adapter: str) -> dict:
    from safetensors import safe_open

    with safe_open(str(Path(adapter) / "adapter_model.safetensors"), "pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}


def max_diff(a: str, b: str) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(Path(a) / "adapter_model.safetensors")), load_file(str(Path(b) / "adapter_model.safetensors"))
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x)


RELOAD = """
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base, adapter, data, device = sys.argv[1:5]
dtype = torch.bfloat16 if device == "cuda" else torch.float32
tok = AutoTokenizer.from_pretrained(adapter)
model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device).eval()
if len(tok) > model.get_input_embeddings().weight.shape[0]:
    model.resize_token_embeddings(len(tok), mean_resizing=False)
rows = [json.loads(x) for x in open(data).read().splitlines()[:16]]
def loss(m):
    out = []
    for r in rows:
        ids = tok.apply_chat_template(r["messages"], return_tensors="pt", return_dict=True)["input_ids"][:, :512].to(device)
        with torch.no_grad():
            out.append(m(input_ids=ids, labels=ids).loss.item())
    return sum(out) / len(out)
before = loss(model)
peft = PeftModel.from_pretrained(model, adapter).eval()
after = loss(peft)
assert "unsloth" not in sys.modules
print("RESULT", json.dumps({"base_loss": before, "adapter_loss": after}))
"""


def reload(base: str, adapter: str, data: str, device: str, log: Path) -> dict:
    p = sh([sys.executable, "-c", RELOAD, base, adapter, data, device], log)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            return {**r, "ok": r["adapter_loss"] < r["base_loss"]}
    return {"ok": False, "error": (p.stderr.strip().splitlines() or ["?"])[-1][:500]}


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "multigpu-check").resolve()
    smoke = "--smoke" in sys.argv
    out.mkdir(parents=True, exist_ok=True)
    os.environ["NCCL_NVLS_ENABLE"] = "0"  # NVLink multicast off on the shared H100/H200 hosts
    work = Path("/tmp/ft-multigpu-smoke" if smoke else "/tmp/ft-multigpu")
    shutil.rmtree(work / "runs", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    import torch

    report: dict = {"date": time.strftime("%Y-%m-%d"), "smoke": smoke, "gpus": torch.cuda.device_count(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    if not smoke and torch.cuda.device_count() < 2:
        report.update(ok=False, error="needs 2 CUDA GPUs (or --smoke on CPU)")
        (out / "multigpu.json").write_text(json.dumps(report, indent=2))
        sys.exit(1)
    if smoke:
        base = work / "tiny"
        if not (base / "config.json").is_file():
            from finetune_cli.tiny import make_tiny_model

            make_tiny_model(base, template="chatml")
        vocab, length, steps, every = 1000, 128, 6, 3
    else:
        base = work / "1b"
        if not (base / "config.json").is_file():
            bench.make(str(base), "1b")
        vocab, length, steps, every = bench.PRESETS["1b"]["vocab_size"], 1024, STEPS, 10
    data = work / "chats.jsonl"
    if smoke:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.test_train import write_data

        write_data(data, 64)
    else:
        bench.write_chats(data, 8 * (steps + 10), vocab)
    common = ["--model", str(base), "--data", str(data), "--max-steps", str(steps), "--eval-steps", str(every),
              "--val-split", "0.05", "--max-len", str(length), "--grad-accum", "1", "--lr", "1e-3",
              "--runs-dir", str(work / "runs")]
    checks: dict = {}
    checks["ddp"] = train("ddp", common, "--gpus", "2", "--batch-size", "4", out=out)
    checks["one"] = train("one", common, "--gpus", "1", "--batch-size", "8", out=out)
    ddp, one = checks["ddp"], checks["one"]
    if ddp["rc"] == 0:
        ddp["ok_records"] = ddp["world_size"] == 2 and ddp["effective_batch_size"] == 8 and ddp["global_step"] == steps
        if one["rc"] == 0:
            ddp["same_layout_as_one_gpu"] = (ddp["files"] == one["files"]
                                             and layout(ddp["adapter"]) == layout(one["adapter"]))
            ddp["max_abs_diff_vs_one_gpu"] = max_diff(ddp["adapter"], one["adapter"])  # bf16: reported, not gated
        # resume: take the last checkpoint away, continue from the one before with 2 processes, and
        # compare the weights at the last step (the adapter itself may be the best earlier checkpoint)
        run = Path(ddp["adapter"]).parent
        last = run / "checkpoints" / f"checkpoint-{steps}"
        kept = work / "ddp-last-checkpoint"
        shutil.rmtree(kept, ignore_errors=True)
        shutil.move(str(last), str(kept))
        shutil.copytree(ddp["adapter"], work / "ddp-adapter", dirs_exist_ok=True)
        shutil.rmtree(ddp["adapter"])
        res = train("ddp", common, "--gpus", "2", "--batch-size", "4", "--resume", out=out)
        checks["resume"] = {**res, "from": f"checkpoint-{steps - every}"}
        if res["rc"] == 0:
            diff = max_diff(str(last), str(kept))
            checks["resume"]["max_abs_diff_vs_uninterrupted"] = diff  # bf16 on GPU: a small drift is expected
            checks["resume"]["ok"] = diff < (1e-5 if smoke else 2e-2)
            checks["resume"]["adapter"] = res["adapter"]
    if not smoke:
        checks["fsdp"] = train("fsdp", common, "--gpus", "2", "--batch-size", "4", "--fsdp", out=out)
        if importlib.util.find_spec("unsloth") is not None:
            checks["unsloth"] = train("unsloth", common, "--gpus", "2", "--batch-size", "4", "--backend", "unsloth",
                                      out=out)
    device = "cpu" if smoke else "cuda"
    for name, entry in checks.items():
        if entry.get("rc") == 0:
            entry["reload"] = reload(str(base), entry["adapter"], str(data), device, out / f"reload_{name}.log")
            if one.get("rc") == 0 and name not in ("one",):
                entry["same_layout_as_one_gpu"] = (entry["files"] == one["files"]
                                                   and layout(entry["adapter"]) == layout(one["adapter"]))
        print(name, json.dumps(entry)[:1500], flush=True)
    report["checks"] = checks
    report["ok"] = all(e.get("rc") == 0 and e["reload"]["ok"] and e.get("same_layout_as_one_gpu", True)
                       and e.get("ok", True) and e.get("ok_records", True) for e in checks.values())
    (out / "multigpu.json").write_text(json.dumps(report, indent=2))
    print("ok" if report["ok"] else "FAILED", out / "multigpu.json")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
