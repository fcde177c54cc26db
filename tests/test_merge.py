"""ft merge: merged 16-bit model equals base+adapter (LoRA, DoRA, rsLoRA), keeps template and EOS, reloads with
plain transformers; adapter-only export reloads with peft; verification catches a broken merge; bad inputs
are one clear line."""

from __future__ import annotations

import json

import orjson
import pytest
from typer.testing import CliRunner

from finetune_cli.cli import app

pytestmark = pytest.mark.slow
TEXT = "<|im_start|>user\nFit like? Tell me of the harbour.<|im_end|>\n<|im_start|>assistant\nAye, nae bad.<|im_end|>\n"


def make_adapter(base, out, *, method="lora", seed=0):
    """A peft adapter on ``base`` whose B weights are random (not peft's zero init), so it changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", use_dora=method == "dora",
                     use_rslora=method == "rslora")
    peft = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def logits(model, tok, text=TEXT):
    import torch

    with torch.no_grad():
        return model(input_ids=tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]).logits[0]


def reference(base, adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter)).eval(), model


def invoke(*args):
    return CliRunner().invoke(app, ["merge", *map(str, args)])


@pytest.mark.parametrize("method", ["lora", "dora", "rslora"])
def test_merge_equals_adapter_and_keeps_template_and_eos(tiny_model, tmp_path, method):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = make_adapter(tiny_model, tmp_path / "adapter", method=method)
    res = invoke("--adapter", adapter, "--base", tiny_model, "--out", tmp_path / "merged", "--json")
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.stdout)
    assert out["method"] == method and out["verify"]["merge_fp32"]["ok"] and out["verify"]["saved_bf16"]["ok"]

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # plain transformers
    assert merged.dtype == torch.bfloat16
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    peft_model, base = reference(tiny_model, adapter)
    want = logits(peft_model, tok)
    got = logits(merged.float(), tok)
    with peft_model.disable_adapter():
        plain = logits(peft_model, tok)
    # the merge reproduces the adapter far more closely than the adapter's own effect
    effect = (want - plain).abs().mean()
    assert (got - want).abs().mean() < 0.1 * effect
    assert torch.allclose(got, want, atol=0.05 * want.std().item() * 10)

    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.chat_template == AutoTokenizer.from_pretrained(tiny_model).chat_template
    assert (tmp_path / "merged" / "chat_template.jinja").is_file()
    gen = json.loads((tmp_path / "merged" / "generation_config.json").read_text())
    assert gen["eos_token_id"] in (im_end, [im_end])
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"
    info = json.loads((tmp_path / "merged" / "ft_merge.json").read_text())
    assert info["method"] == method and info["dtype"] == "bf16"


def test_fp16_and_llama3_eos_ids(tiny_llama3, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = make_adapter(tiny_llama3, tmp_path / "adapter")
    res = invoke("--adapter", adapter, "--base", tiny_llama3, "--out", tmp_path / "m", "--dtype", "fp16", "--json")
    assert res.exit_code == 0, res.output
    assert orjson.loads(res.stdout)["verify"]["saved_fp16"]["ok"]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "m").dtype == torch.float16
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    gen = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert gen["eos_token_id"] in (tok.convert_tokens_to_ids("<|eot_id|>"), [tok.convert_tokens_to_ids("<|eot_id|>")])


def test_verification_catches_a_broken_merge(tiny_model, tmp_path, monkeypatch):
    """A merge that drops the adapter (or scales it wrong) must fail loudly and write nothing."""
    adapter = make_adapter(tiny_model, tmp_path / "adapter", method="rslora")

    def wrong_scale(model, src):  # an rsLoRA adapter merged with plain LoRA's alpha/r scaling
        for mod in model.modules():
            if hasattr(mod, "scaling") and isinstance(mod.scaling, dict):
                mod.scaling = {k: v / (8 ** 0.5) for k, v in mod.scaling.items()}
        return model.merge_and_unload()

    monkeypatch.setattr("finetune_cli.merge.weights.merge", wrong_scale)
    res = invoke("--adapter", adapter, "--base", tiny_model, "--out", tmp_path / "merged")
    assert res.exit_code == 1
    assert "do not reproduce base+adapter" in res.stderr and "nothing written" in res.stderr
    assert not (tmp_path / "merged").exists()
    assert not list(tmp_path.glob(".merged.tmp*"))


def test_adapter_only_reloads_with_peft(tiny_model, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = make_adapter(tiny_model, tmp_path / "adapter")
    (adapter / "README.md").write_text("peft model card")
    (adapter / "optimizer.pt").write_bytes(b"not for serving")
    res = invoke("--adapter", adapter, "--base", tiny_model, "--out", tmp_path / "clean", "--adapter-only", "--json")
    assert res.exit_code == 0, res.output
    names = {p.name for p in (tmp_path / "clean").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja"} <= names
    assert not names & {"README.md", "optimizer.pt"}
    assert json.loads((tmp_path / "clean" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    again = PeftModel.from_pretrained(base, str(tmp_path / "clean")).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "clean")
    want, _ = reference(tiny_model, adapter)
    assert torch.allclose(logits(again, tok), logits(want, tok), atol=1e-5)


def write_run(tmp_path, base, adapter_src, *, system="Ye speak Doric."):
    """A run directory in ft train's layout (CONTRACTS.md): run.json, adapter/, heldout.jsonl."""
    import shutil

    run = tmp_path / "runs" / "a"
    shutil.copytree(adapter_src, run / "adapter")
    (run / "run.json").write_text(json.dumps({"name": "a", "status": "completed", "base_model": str(base),
                                              "base_model_arg": "tiny", "method": "lora", "system_prompt": system}))
    rows = [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"Aye, answer {i}, loon."}], "meta": {"id": i}}
            for i in range(3)]
    (run / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_run_dir_uses_heldout_rows_and_base(tiny_model, tmp_path):
    adapter = make_adapter(tiny_model, tmp_path / "adapter")
    run = write_run(tmp_path, tiny_model, adapter)
    res = invoke("--run", run, "--out", tmp_path / "merged", "--json", "--samples", "3")
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.stdout)
    assert out["base_model"] == str(tiny_model) and out["method"] == "lora"
    # three held-out rows were the sample texts, not the built-in chats
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    from finetune_cli.merge.verify import sample_texts

    texts = sample_texts(tok, run_dir=run, n=3)
    assert "answer 2, loon" in texts[2]
    assert out["verify"]["saved_bf16"]["tokens"] == sum(len(tok(t, add_special_tokens=False)["input_ids"])
                                                         for t in texts)
    assert json.loads((tmp_path / "merged" / "ft_merge.json").read_text())["system_prompt"] == "Ye speak Doric."
    # an existing output is not overwritten without --force
    res = invoke("--run", run, "--out", tmp_path / "merged")
    assert res.exit_code == 2 and "already exists" in res.stderr


def test_checkpoint_of_a_run_carries_the_runs_records(tiny_model, tmp_path):
    """`ft merge --adapter RUN/checkpoints/checkpoint-N` (the path merge's own hint suggests) finds the run:
    the merged record names its system prompt and template, and verification sampled its held-out rows."""
    import shutil

    adapter = make_adapter(tiny_model, tmp_path / "adapter")
    run = write_run(tmp_path, tiny_model, adapter)
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "status": "running", "chat_template": "chatml"}))
    shutil.rmtree(run / "adapter")  # a run still training: only checkpoints so far
    ckpt = run / "checkpoints" / "checkpoint-2"
    shutil.copytree(adapter, ckpt)
    (ckpt / "trainer_state.json").write_text("{}")
    res = invoke("--adapter", ckpt, "--out", tmp_path / "merged", "--json", "--samples", "3")
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "merged" / "ft_merge.json").read_text())
    assert info["run"] == str(run) and info["source"] == str(ckpt)
    assert info["system_prompt"] == "Ye speak Doric." and info["chat_template"] == "chatml"
    assert info["heldout_rows"] == 3 and info["heldout"] == str(run / "heldout.jsonl")
    from finetune_cli.rundir import RunDir

    assert RunDir.find(tmp_path / "merged").path == run  # and the merged model leads back to the run


def test_a_corrupt_run_record_is_one_error_naming_it(tiny_model, tmp_path):
    adapter = make_adapter(tiny_model, tmp_path / "adapter")
    run = write_run(tmp_path, tiny_model, adapter)
    (run / "run.json").write_text("{not json")
    res = invoke("--adapter", run / "adapter", "--out", tmp_path / "merged")
    assert res.exit_code == 1 and str(run / "run.json") in res.stderr, res.output


def one_line(res):
    """The error is one line (progress notices before it are fine), and no traceback."""
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    return errors[0]


def test_bad_inputs_are_one_clear_line(tiny_model, tmp_path):
    from finetune_cli.tiny import make_tiny_model

    res = invoke("--adapter", tmp_path / "nope", "--base", tiny_model, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "no such directory" in one_line(res)
    res = invoke("--adapter", tiny_model, "--base", tiny_model, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "no adapter_config.json" in one_line(res) and "full model" in res.stderr
    res = invoke("--run", tmp_path, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "not a run directory" in one_line(res)
    res = invoke("--out", tmp_path / "o")
    assert res.exit_code == 2 and "exactly one of --run" in one_line(res)
    res = invoke("--run", tmp_path, "--adapter", tmp_path, "--out", tmp_path / "o", "--gguf", "q2_k")
    assert res.exit_code == 2 and "unknown type 'q2_k'" in one_line(res)

    adapter = make_adapter(tiny_model, tmp_path / "adapter")
    wider = make_tiny_model(tmp_path / "wider", hidden=128)
    res = invoke("--adapter", adapter, "--base", wider, "--out", tmp_path / "o")
    assert res.exit_code == 2
    assert "does not fit base" in one_line(res) and "128" in res.stderr and "pass the right --base" in res.stderr
    shallower = make_tiny_model(tmp_path / "shallow", layers=1)
    res = invoke("--adapter", adapter, "--base", shallower, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "has no module model.layers.1" in one_line(res)
    assert not (tmp_path / "o").exists()


def test_help():
    res = CliRunner().invoke(app, ["merge", "--help"])
    assert res.exit_code == 0
    for flag in ("--run", "--adapter", "--base", "--out", "--dtype", "--adapter-only", "--gguf", "--max-kl"):
        assert flag in res.output


def test_merge_a_real_ft_train_run_with_added_tokens(tiny_llama3, tmp_path):
    """ft train → ft merge --run: a Llama-3 vocabulary trained with ChatML (two tokens added, embeddings trained)."""
    from transformers import AutoTokenizer

    from tests.test_train import FAST, train, write_data

    data = write_data(tmp_path / "d.jsonl", 16)
    train("--model", str(tiny_llama3), "--data", str(data), "--chat-template", "chatml", "--max-steps", "4",
          "--lr", "1e-2", "--val-split", "0.25", "--eval-steps", "4", "--name", "r", *FAST)
    res = invoke("--run", "runs/r", "--out", tmp_path / "merged", "--gguf", "q8_0", "--json")
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.stdout)
    assert out["verify"]["merge_fp32"]["ok"] and out["verify"]["saved_bf16"]["ok"]
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token.startswith("<|reserved_special_token_")
    gen = json.loads((tmp_path / "merged" / "generation_config.json").read_text())
    assert im_end in (gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]])
    g = out["gguf"]["files"][0]
    assert g["eos_token"] == "<|im_end|>" and g["generated_tokens"] == 8 and not g["flagged"]
    modelfile = (tmp_path / "merged" / "gguf" / "Modelfile").read_text()
    assert "<|im_start|>{{ .Role }}" in modelfile and 'SYSTEM """Speak Doric."""' in modelfile


def is_pickle(path) -> bool:
    """A pickle by name or by content (torch.save's zip, or a bare pickle's protocol byte)."""
    head = path.read_bytes()[:4]
    return path.suffix in {".bin", ".pt", ".pth", ".pkl"} or head == b"PK\x03\x04" or head[:1] == b"\x80"


class RunsCode:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_a_bin_adapter_is_exported_as_safetensors_and_a_code_pickle_is_refused(tiny_model, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    adapter = make_adapter(tiny_model, tmp_path / "adapter")
    tensors = load_file(adapter / "adapter_model.safetensors")
    torch.save(tensors, adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    res = invoke("--adapter", adapter, "--base", tiny_model, "--out", tmp_path / "clean", "--adapter-only")
    assert res.exit_code == 0, res.output
    files = [p for p in (tmp_path / "clean").rglob("*") if p.is_file()]
    assert not [p.name for p in files if is_pickle(p)]
    again = load_file(tmp_path / "clean" / "adapter_model.safetensors")
    assert again.keys() == tensors.keys() and all(torch.equal(again[k], tensors[k]) for k in tensors)

    torch.save({**tensors, "x": RunsCode()}, adapter / "adapter_model.bin")
    res = invoke("--adapter", adapter, "--base", tiny_model, "--out", tmp_path / "bad", "--adapter-only")
    assert res.exit_code == 2 and "adapter_model.bin: refused" in one_line(res)
    assert "unpickled code ran" not in res.output + capsys.readouterr().out
    assert not (tmp_path / "bad").exists()


def test_exported_files_are_readable_like_their_neighbours(tiny_model, tmp_path):
    """safetensors writes 0600; a merged model must not be unreadable to the server that reads its config."""
    adapter = make_adapter(tiny_model, tmp_path / "adapter")
    for flag, out in (("--adapter-only", "a"), ("--dtype", "m")):
        args = [flag] if flag == "--adapter-only" else [flag, "bf16"]
        res = invoke("--adapter", adapter, "--base", tiny_model, "--out", tmp_path / out, *args)
        assert res.exit_code == 0, res.output
        modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / out).iterdir() if p.is_file()}
        assert len(set(modes.values())) == 1, modes


def test_damaged_files_are_named_in_one_line(tiny_model, tmp_path):
    adapter = make_adapter(tiny_model, tmp_path / "adapter")
    run = write_run(tmp_path, tiny_model, adapter)
    weights = run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    res = invoke("--run", run, "--out", tmp_path / "o")
    assert res.exit_code == 1 and f"{weights}: damaged file" in one_line(res)
    (run / "run.json").write_text('{"name": "a", "status": ')
    res = invoke("--run", run, "--out", tmp_path / "o")
    assert res.exit_code == 1 and f"{run / 'run.json'}: unreadable run record" in one_line(res)

    from finetune_cli.tiny import make_tiny_model

    full = make_tiny_model(tmp_path / "full")
    (full / "adapter_model.safetensors").unlink(missing_ok=True)
    (full / "model.safetensors").write_bytes(b"\x10\x00")
    run.joinpath("run.json").write_text(json.dumps({"name": "a", "status": "completed", "method": "full"}))
    import shutil

    shutil.rmtree(run / "adapter")
    shutil.copytree(full, run / "model")
    res = invoke("--run", run, "--out", tmp_path / "o")
    assert res.exit_code == 1 and f"{run / 'model' / 'model.safetensors'}: damaged file" in one_line(res)
    assert not (tmp_path / "o").exists()
