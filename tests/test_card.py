"""ft card: every figure on the card is the one in the run's records (run.json, config.json, data.json,
ft_merge.json, gguf/ft_gguf.json, ft eval's results.json, a dataset's rows and rejects); the card parses
with huggingface_hub's card tools; the loss plot travels with the card."""

from __future__ import annotations

import json
import re
from pathlib import Path

import orjson
from typer.testing import CliRunner

from finetune_cli.cli import app
from tests.test_merge import write_run

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
                    "0000000d4944415478da63f8ffff3f0005fe02fea7d6a4e80000000049454e44ae426082")


def make_records(tmp_path: Path, *, gates_failed: bool = False) -> dict:
    """A finished run in ft train's layout (write_run from test_merge, plus the records train writes), a merged
    export with GGUFs, and an eval of the run. Fake weights: a card and a push read records, never tensors."""
    from safetensors.numpy import save_file
    import numpy as np

    ad = tmp_path / "adapter-src"
    ad.mkdir()
    save_file({"w": np.arange(64, dtype=np.float32)}, str(ad / "adapter_model.safetensors"))
    (ad / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "peft_type": "LORA"}))
    (ad / "tokenizer.json").write_text("{}")
    (ad / "training_args.bin").write_bytes(b"\x80\x04pickle")
    data = tmp_path / "doric.jsonl"
    rows = [{"messages": [{"role": "system", "content": "Ye speak Doric."}, {"role": "user", "content": f"Q{i}?"},
                          {"role": "assistant", "content": f"Aye {i}."}],
             "meta": {"id": f"j{i}", "topic": f"t{i % 3}", "group": "g", "bucket": "adv" if i % 4 == 0 else "core",
                      "lang": "English", "persona": "doric", "provider": "template", "model": "phrase-bank",
                      "seed": 42}} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    Path(f"{data}.rejects.jsonl").write_text("".join(json.dumps({"id": f"x{i}", "reason": reason, "final": True}) + "\n"
                                                     for i, reason in enumerate(["too_short", "too_short", "leak"])))
    from finetune_cli.files import sha256_file as sha256

    run = write_run(tmp_path, tmp_path / "no-such-base", ad)
    record = json.loads((run / "run.json").read_text())
    record.update(base_model_arg="smollm2-135m", backend="hf", global_step=12, total_steps=12, train_seconds=7.25,
                  seconds_per_step=0.6042, tokens_per_s=1234.5, first_loss=3.25, final_loss=1.125,
                  best_eval_loss=1.5, best_checkpoint="checkpoints/checkpoint-12", world_size=1, train_rows=6,
                  val_rows=2, eos_lost_examples=1, versions={"torch": "2.9.0", "peft": "0.17.1"})
    (run / "run.json").write_text(json.dumps(record))
    (run / "config.json").write_text(json.dumps({
        "config": {"method": "lora", "r": 8, "alpha": None, "lr": 0.0002, "epochs": 3, "batch_size": 2, "seed": 42},
        "sources": {"method": "default", "r": "set", "lr": "set", "epochs": "default", "batch_size": "default",
                    "seed": "default"},
        "resolved": {"learning_rate": 0.0002, "lora_alpha": 16, "optimizer": "adamw_torch", "dtype": "float32"}}))
    (run / "data.json").write_text(json.dumps({
        "files": [{"path": str(data), "sha256": sha256(data), "rows": 8}], "train_rows": 6, "val_rows": 2,
        "trainable_share": 0.4375, "tokens_sha256": "ab" * 32, "eos_lost_examples": 1}))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 3.25}\n{"step": 12, "loss": 1.125}\n')
    (run / "loss.png").write_bytes(PNG)
    ev = tmp_path / "eval" / "a-20250101"
    ev.mkdir(parents=True)
    failed = [{"candidate": "a", "condition": "system", "gate": "eos_rate<0.9", "metric": "eos_rate", "value": 0.5}]
    (ev / "results.json").write_text(json.dumps({
        "ft_eval": 1, "name": ev.name, "created": "2025-01-01T00:00:00+00:00", "persona": "doric",
        "generation": "temperature 0.7, top_p 0.9, repetition_penalty 1.0, max_new_tokens 64, seed 0",
        "candidates": [{"name": "base", "kind": "base", "source": "tiny", "run_dir": None},
                       {"name": "a", "kind": "adapter", "source": str(run / "adapter"), "run_dir": str(run)}],
        "conditions": ["system", "none"],
        "results": {"base": {"system": {"eos_rate": 0.25, "distinct_2": 0.8125}, "none": {"eos_rate": 0.125}},
                    "a": {"system": {"eos_rate": 0.9375, "distinct_2": 0.6875}, "none": {"eos_rate": 0.875}}},
        "definitions": {"eos_rate": "share of answers that ended on an end token"},
        "gates": {"checked": ["eos_rate<0.9"], "targets": [], "failed": failed if gates_failed else []},
        "findings": [{"candidate": "a", "condition": "system", "metric": "distinct_2", "value": 0.6875,
                      "message": "distinct-2 0.688 is below the base model's 0.812"}]}))
    merged = tmp_path / "merged"
    (merged / "gguf").mkdir(parents=True)
    save_file({"w": np.ones(32, dtype=np.float32)}, str(merged / "model.safetensors"))
    (merged / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (merged / "tokenizer.json").write_text("{}")
    (merged / "ft_merge.json").write_text(json.dumps({"base_model": "smollm2-135m", "run": str(run), "method": "lora",
                                                      "dtype": "bf16", "system_prompt": "Ye speak Doric."}))
    for kind in ("f16", "q4_k_m"):
        (merged / "gguf" / f"model-{kind}.gguf").write_bytes(b"GGUF" + bytes(100 if kind == "f16" else 40))
    (merged / "gguf" / "Modelfile").write_text("FROM ./model-q4_k_m.gguf\n")
    (merged / "gguf" / "ft_gguf.json").write_text(json.dumps({"max_kl": 0.1, "llama_cpp": "checked", "files": [
        {"path": "/tmp/x/gguf/model-f16.gguf", "type": "f16", "kl": 0.000125, "top1_agreement": 1.0,
         "ppl_gguf": 12.5, "ppl_16bit": 12.25, "flagged": False, "llama_cpp": {"status": "ok"}},
        {"path": "/tmp/x/gguf/model-q4_k_m.gguf", "type": "q4_k_m", "kl": 0.375, "top1_agreement": 0.625,
         "ppl_gguf": 30.5, "ppl_16bit": 12.25, "flagged": True, "llama_cpp": {"status": "ok"}}]}))
    return {"run": run, "eval": ev, "merged": merged, "data": data}


def card(*args):
    return CliRunner().invoke(app, ["card", *map(str, args)])


def section(text: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"no section {title!r}"
    return m.group(1)


def table_row(text: str, key: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == key:
            return cells[1:]
    raise AssertionError(f"no row {key!r}")


def test_run_card_values_come_from_the_records(tmp_path):
    from huggingface_hub import ModelCard, metadata_load

    r = make_records(tmp_path)
    res = card(r["run"], "--eval", r["eval"], "--repo", "me/doric", "--json")
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.stdout)
    readme = Path(out["card"])
    assert readme == r["run"] / "README.md" and out["eval"] == str(r["eval"] / "results.json")
    text = readme.read_text()
    meta = metadata_load(readme)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert {"ft", "lora", "persona-doric"} <= set(meta["tags"])
    parsed = ModelCard(text)
    assert parsed.data.base_model == meta["base_model"] and "# a" in parsed.text

    assert "**doric**" in section(text, "What it is for") and "Ye speak Doric." in section(text, "What it is for")
    tr = section(text, "Training")
    assert table_row(tr, "steps") == ["12 of 12"] and table_row(tr, "train time") == ["7.25 s"]
    assert table_row(tr, "tokens/s") == ["1234.5"] and table_row(tr, "loss first → final") == ["3.25 → 1.125"]
    assert table_row(tr, "best eval loss") == ["1.5 (checkpoints/checkpoint-12)"]
    assert table_row(tr, "r") == ["8", "set"] and table_row(tr, "epochs") == ["3", "default"]
    assert table_row(tr, "lr") == ["0.0002", "set"] and "alpha" not in [ln.split("|")[1].strip() for ln in
                                                                         tr.splitlines() if ln.count("|") > 2]
    assert "LoRA alpha 16" in tr and "torch 2.9.0" in tr
    data = section(text, "Data")
    assert table_row(data, "training rows") == ["6"] and table_row(data, "share of tokens trained") == ["0.4375"]
    assert table_row(data, "token fingerprint (sha256)") == ["ab" * 32]
    from finetune_cli.files import sha256_file as sha256

    assert table_row(data, str(r["data"])) == ["8", sha256(r["data"])]
    assert "core 6, adv 2" in data and "too_short 2, leak 1" in data
    ev = section(text, "Evaluation")
    assert table_row(ev, "a")[:2] == ["system", "0.9375"] and table_row(ev, "base")[:2] == ["system", "0.25"]
    assert "temperature 0.7, top_p 0.9" in ev and "eos_rate<0.9: all held." in ev
    assert "![training and eval loss](loss.png)" in section(text, "Loss")
    lim = section(text, "Limitations")
    assert "distinct-2 0.688 is below" in lim and "1 training example(s) lost their end-of-turn" in lim
    usage = section(text, "How to run it")
    assert "from_pretrained('me/doric')" in usage and "--enable-lora --lora-modules doric=me/doric" in usage


def test_merged_card_has_gguf_drift_and_copies_the_loss_plot(tmp_path):
    from huggingface_hub import metadata_load

    r = make_records(tmp_path)
    out = tmp_path / "cards" / "README.md"
    res = card(r["merged"], "--out", out, "--repo", "me/doric")  # eval found under ./eval (cwd is tmp_path)
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert (tmp_path / "cards" / "loss.png").read_bytes() == PNG
    meta = metadata_load(out)
    assert meta["library_name"] == "transformers" and "gguf" in meta["tags"]
    g = section(text, "GGUF files")
    assert table_row(g, "model-f16.gguf") == ["104 B", "0.000125", "1", "12.5", "12.25", "llama.cpp ok", "ok"]
    assert table_row(g, "model-q4_k_m.gguf")[1:3] == ["0.375", "0.625"]
    assert table_row(g, "model-q4_k_m.gguf")[-1] == "DO NOT SHIP" and "--max-kl 0.1" in g
    assert "model-q4_k_m.gguf drifts too far" in section(text, "Limitations")
    assert "table_row" not in text and "ollama create doric -f Modelfile" in section(text, "How to run it")
    assert table_row(section(text, "Training"), "merged dtype") == ["bf16"]
    assert "0.9375" in section(text, "Evaluation")


def test_dataset_card_counts_rows_buckets_and_rejects(tmp_path):
    from huggingface_hub import DatasetCard, metadata_load

    r = make_records(tmp_path)
    res = card(r["data"], "--repo", "me/doric-chats")
    assert res.exit_code == 0, res.output
    path = tmp_path / "doric.README.md"
    text = path.read_text()
    meta = metadata_load(path)
    assert meta["size_categories"] == ["n<1K"] and "persona-doric" in meta["tags"]
    assert meta["configs"][0]["data_files"][0]["path"] == "doric.jsonl"
    assert DatasetCard(text).data.task_categories == ["text-generation"]
    c = section(text, "Contents")
    from finetune_cli.files import sha256_file as sha256

    assert table_row(c, "rows") == ["8"] and table_row(c, "sha256") == [sha256(r["data"])]
    assert table_row(c, "topics") == ["3"] and table_row(c, "core") == ["6"] and table_row(c, "adv") == ["2"]
    assert table_row(c, "too_short") == ["2"] and table_row(c, "leak") == ["1"]
    assert "load_dataset('me/doric-chats'" in text


def test_card_without_records_says_so_and_bad_paths_are_one_line(tmp_path):
    res = card(tmp_path / "nothing")
    assert res.exit_code == 2 and res.stderr.count("error:") == 1
    (tmp_path / "junk").mkdir()
    res = card(tmp_path / "junk")
    assert res.exit_code == 2 and "not something ft wrote" in res.stderr
    r = make_records(tmp_path)
    res = card(r["run"], "--eval", tmp_path / "nope")
    assert res.exit_code == 2 and "--eval" in res.stderr
    res = card(r["run"], "--out", "-")
    assert res.exit_code == 0 and res.stdout.startswith("---\n") and "## Training" in res.stdout
