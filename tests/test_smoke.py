"""`make smoke`: the whole chain (ft gen → to-sharegpt → train → eval → merge + GGUF → eval of the export) on the
tiny model, offline, on CPU; every artifact exists and is what a user would open; make keeps finished steps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ROWS = 200
STEPS = 40
GATES = ["heldout_loss>6.85", "words_mean<1", "distinct_2<0.5"]


def make_env() -> dict[str, str]:
    """The developer's shell minus anything that would steer ft (FT_*, API keys, MODEL, an outer make)."""
    drop = {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "MODEL", "MAKEFLAGS",
            "MAKELEVEL", "MFLAGS"}
    return {k: v for k, v in os.environ.items() if not k.startswith("FT_") and k not in drop}


def make(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    venv_bin = Path(sys.executable).parent
    cmd = ["make", "--no-print-directory", "-C", str(ROOT), *args, f"FT={venv_bin / 'ft'}", f"PYTHON={sys.executable}"]
    r = subprocess.run(cmd, env=make_env(), capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, f"{' '.join(cmd)} → {r.returncode}\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}"
    return r


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    out = tmp_path_factory.mktemp("smoke") / "out"
    t0 = time.perf_counter()
    make("smoke", f"SMOKE_OUT={out}", f"SMOKE_ROWS={ROWS}")
    print(f"make smoke: {time.perf_counter() - t0:.1f} s")
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_data_and_sharegpt(smoke):
    rows = read_jsonl(smoke / "data" / "doric.jsonl")
    assert len(rows) >= ROWS
    for r in rows:
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert all(m["content"].strip() for m in r["messages"])
        assert (r["meta"]["persona"], r["meta"]["provider"]) == ("doric", "template")
    assert len({r["meta"]["id"] for r in rows}) == len(rows)
    assert not (smoke / "data" / "doric.jsonl.part").exists()

    sg = read_jsonl(smoke / "data" / "doric.sharegpt.jsonl")
    assert len(sg) == len(rows)
    for r, s in zip(rows, sg):
        assert [(t["from"], t["value"]) for t in s["conversations"]] == \
            [({"system": "system", "user": "human", "assistant": "gpt"}[m["role"]], m["content"])
             for m in r["messages"]]


def test_training_run(smoke):
    run_dir = smoke / "runs" / "smoke"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "completed" and run["global_step"] == STEPS
    assert run["base_model_arg"] == "tiny" and run["method"] == "lora"
    assert run["final_loss"] < run["first_loss"]
    assert run["eos_lost_examples"] == 0  # every assistant turn ends with a trained end-of-turn token
    data = json.loads((run_dir / "data.json").read_text())
    assert data["eos_trained_examples"] == data["chat_examples"] == data["conversations"]
    assert run["train_rows"] + run["val_rows"] >= ROWS
    assert len(read_jsonl(run_dir / "heldout.jsonl")) == run["val_rows"] > 0
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["data"] == [str(smoke / "data" / "doric.sharegpt.jsonl")]

    from safetensors.numpy import load_file

    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(abs(v).max() > 0 for v in lora_b)  # peft initialises B to zero: trained


def test_eval_both_conditions_gated(smoke):
    doc = json.loads((smoke / "eval" / "smoke" / "results.json").read_text())
    assert doc["conditions"] == ["system", "no_system"]
    assert {c["name"]: c["kind"] for c in doc["candidates"]} == {"base": "base", "smoke": "adapter"}
    assert doc["gates"]["checked"] == GATES and doc["gates"]["failed"] == []
    for cond in ("system", "no_system"):
        base, tuned = doc["results"]["base"][cond], doc["results"]["smoke"][cond]
        assert tuned["n"] == base["n"] > 0
        assert tuned["heldout_loss"] < base["heldout_loss"] - 0.1
    assert (smoke / "eval" / "smoke" / "report.html").stat().st_size > 0
    assert (smoke / "eval" / "smoke" / "outputs.jsonl").is_file()


def test_export_merged_and_gguf(smoke):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = smoke / "export" / "smoke"
    merge = json.loads((export / "ft_merge.json").read_text())
    assert merge["method"] == "lora" and merge["run"] == str(smoke / "runs" / "smoke")

    # The merged model is base+adapter (not the base), as plain transformers loads it.
    tok = AutoTokenizer.from_pretrained(export)
    row = read_jsonl(smoke / "runs" / "smoke" / "heldout.jsonl")[0]
    ids = tok.apply_chat_template(row["messages"], return_tensors="pt", return_dict=True)["input_ids"]
    base_dir = smoke / "ft-home" / "models" / "tiny"
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(export).float()(ids).logits
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        plain = base(ids).logits
        tuned = PeftModel.from_pretrained(base, smoke / "runs" / "smoke" / "adapter")(ids).logits
    assert (merged - tuned).abs().mean() < 0.2 * (plain - tuned).abs().mean()

    import gguf

    # Read back by gguf-py: llama, every tensor of the merged model, the file type asked for. (The tiny
    # model's rows are not multiples of 256, so q4_k_m falls back to Q5_0/Q8_0 blocks, as llama-quantize does.)
    n_tensors = len(merged_names(export))
    for kind, file_type, quantized in (("q8_0", gguf.LlamaFileType.MOSTLY_Q8_0, {"Q8_0"}),
                                       ("q4_k_m", gguf.LlamaFileType.MOSTLY_Q4_K_M, {"Q4_K", "Q6_K", "Q5_0", "Q8_0"})):
        reader = gguf.GGUFReader(export / "gguf" / f"model-{kind}.gguf")
        field = lambda name: reader.fields[name].parts[reader.fields[name].data[0]]  # noqa: E731
        assert bytes(field("general.architecture")).decode() == "llama"
        assert int(field("general.file_type")[0]) == file_type
        types = {t.tensor_type.name for t in reader.tensors}
        assert len(reader.tensors) == n_tensors and "F32" in types and types - {"F32"} and types - {"F32"} <= quantized
    assert "FROM ./model-q4_k_m.gguf" in (export / "gguf" / "Modelfile").read_text()

    doc = json.loads((smoke / "eval" / "export" / "results.json").read_text())
    assert [c["kind"] for c in doc["candidates"]] == ["merged"]
    assert doc["gates"]["checked"] == GATES and doc["gates"]["failed"] == []


def merged_names(export: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(export / "model.safetensors", "np") as f:
        return list(f.keys())


def test_make_keeps_finished_steps(smoke):
    args = [f"OUT={smoke}", "RUN=smoke", "MODEL=tiny"]
    assert make("-q", "export", *args, check=False).returncode == 0  # everything up to date

    os.utime(smoke / "data" / "doric.sharegpt.jsonl")  # newer training data: train, eval and export again
    plan = make("-n", "export", *args).stdout
    assert " train " in plan and " eval " in plan and " merge " in plan
    assert " gen " not in plan and " to-sharegpt " not in plan


def test_make_data_holds_back_a_short_dataset(tmp_path):
    """Fewer rows than ROWS: no dataset (the next step cannot start on it); the next make resumes ft gen."""
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    data = tmp_path / "data" / "doric.jsonl"
    short = make("data", f"OUT={tmp_path}", "ROWS=1000", "N_PER_TOPIC=1", check=False)
    assert short.returncode != 0 and "fewer than ROWS=1000" in short.stderr
    assert not data.exists() and (tmp_path / "data" / "doric.jsonl.part").is_file()

    again = make("data", f"OUT={tmp_path}", "ROWS=100", "N_PER_TOPIC=1")
    assert "jobs already finished" in again.stderr  # ft gen resumed from the .part file
    assert len(read_jsonl(data)) >= 100 and not (tmp_path / "data" / "doric.jsonl.part").exists()
    assert (tmp_path / "data" / "doric.jsonl.rejects.jsonl").is_file()
