"""GPU check (not CI): `ft train --backend unsloth` for LoRA, DoRA and QLoRA on a small random-weight
model, then the adapter reloaded with plain transformers + peft must give Unsloth's logits.

    python gpu/check_unsloth.py OUT_DIR [lora,dora,qlora]   # on a CUDA machine with the unsloth extra

Each training runs in its own process (Unsloth must be imported before transformers); the plain-peft
reload runs in a process that never imports Unsloth. Writes OUT_DIR/unsloth_check.json.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

METHODS = ["lora", "dora", "qlora"]
MARGIN_NOISE = 0.03  # bf16 logits of this model differ by up to ~0.02 between two correct kernels
PROMPTS = ["Fit like the day?", "Tell me about the harbour in winter.", "Write two lines about rain."]


def make_data(path: Path, n: int = 400) -> None:
    rng = random.Random(0)
    subjects = ["the harbour", "the weather", "the bairns", "the fishing", "the kirk", "the market", "the hills"]
    openers = ["Aye, weel,", "Och,", "Ken this,", "Fit a question!", "Nae bother,"]
    rows = []
    for i in range(n):
        s = rng.choice(subjects)
        rows.append({"messages": [
            {"role": "system", "content": "Ye speak Doric Scots."},
            {"role": "user", "content": f"Tell me about {s} ({i})."},
            {"role": "assistant", "content": f"{rng.choice(openers)} {s} is fine the day, dinna fash. "
                                             f"It's a dreich mornin but the loons are happy."}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def sh(args: list[str], **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(args), flush=True)
    return subprocess.run(args, text=True, capture_output=True, **kw)


def logits_script(kind: str, adapter: str, base: str, out: str) -> str:
    return f"""
import json, torch
kind, adapter, base = {kind!r}, {adapter!r}, {base!r}
if kind == "unsloth":
    import unsloth
    from unsloth import FastLanguageModel
    q = json.load(open(adapter + "/../run.json"))["method"] == "qlora"
    model, tok = FastLanguageModel.from_pretrained(adapter, dtype=torch.bfloat16, load_in_4bit=q, fix_tokenizer=False)
    FastLanguageModel.for_inference(model)
else:
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from peft import PeftModel
    q = json.load(open(adapter + "/../run.json"))["method"] == "qlora"
    kw = dict(dtype=torch.bfloat16, device_map={{"": 0}})
    if q:
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(base, **kw)
    tok = AutoTokenizer.from_pretrained(adapter)
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    model = PeftModel.from_pretrained(model, adapter)
    assert "unsloth" not in __import__("sys").modules
model.eval()
res = []
with torch.no_grad():
    for p in {PROMPTS!r}:
        ids = tok.apply_chat_template([{{"role": "user", "content": p}}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"].to("cuda")
        res.append(model(input_ids=ids).logits[0].float().cpu().tolist())
json.dump(res, open({out!r}, "w"))
"""


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/ft-gpu-check")
    work.mkdir(exist_ok=True)
    base = work / "model"
    sh([sys.executable, "-c", "from finetune_cli.tiny import make_tiny_model as m; "
        f"m({str(base)!r}, hidden=512, layers=4, template='chatml')"]).check_returncode()
    data = work / "data.jsonl"
    make_data(data)
    report = json.loads((out / "unsloth_check.json").read_text()) if (out / "unsloth_check.json").is_file() else {}
    for method in (sys.argv[2].split(",") if len(sys.argv) > 2 else METHODS):
        name = f"unsloth-{method}"
        p = sh([sys.executable, "-m", "finetune_cli", "train", "--model", str(base), "--data", str(data),
                "--backend", "unsloth", "--method", method, "--max-steps", "40", "--batch-size", "8",
                "--grad-accum", "1", "--max-len", "256", "--lr", "1e-3", "--name", name,
                "--runs-dir", str(work / "runs"), "--json"])
        (out / f"train_{method}.log").write_text(p.stdout + "\n---\n" + p.stderr)
        entry = {"train_rc": p.returncode}
        if p.returncode == 0:
            res = json.loads(p.stdout)
            entry.update({k: res.get(k) for k in ("first_loss", "final_loss", "tokens_per_s", "masking",
                                                  "pad_token", "eos_token", "best_eval_loss")})
            adapter = str(work / "runs" / name / "adapter")
            files = sorted(os.listdir(adapter))
            entry["adapter_files"] = files
            lg = {}
            for kind in ("unsloth", "peft"):
                f = str(work / f"logits_{method}_{kind}.json")
                q = sh([sys.executable, "-c", logits_script(kind, adapter, str(base), f)])
                entry[f"{kind}_rc"] = q.returncode
                if q.returncode:
                    entry[f"{kind}_err"] = q.stderr[-3000:]
                else:
                    lg[kind] = json.load(open(f))
            if len(lg) == 2:
                import numpy as np

                diffs, agree, decisive, scale = [], [], [], []
                for a, b in zip(lg["unsloth"], lg["peft"]):
                    a, b = np.array(a), np.array(b)
                    diffs.append(float(np.abs(a - b).max()))
                    scale.append(float(np.abs(a).max()))
                    same = a.argmax(-1) == b.argmax(-1)
                    agree.append(float(same.mean()))
                    # positions whose top-2 margin exceeds bf16 noise must agree; near-ties may flip
                    top2 = np.sort(b, axis=-1)[:, -2:]
                    clear = (top2[:, 1] - top2[:, 0]) > 4 * MARGIN_NOISE
                    decisive.append(float(same[clear].mean()) if clear.any() else 1.0)
                entry.update(max_abs_diff=max(diffs), logit_scale=max(scale), argmax_agreement=min(agree),
                             decisive_argmax_agreement=min(decisive),
                             ok=max(diffs) / max(scale) < 0.05 and min(decisive) == 1.0)
        report[method] = entry
        print(method, json.dumps(entry)[:2000], flush=True)
        (out / "unsloth_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
