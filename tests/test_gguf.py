"""GGUF export: K-quant encoders against gguf-py's decoders, the Q/K permutation against transformers' inverse,
ft merge --gguf end to end (reloaded by a real reader, generates, drift measured, Modelfile), a planted broken
quantization flagged, qwen2 without permutation, Modelfile templates."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from finetune_cli.cli import app
from finetune_cli.merge import kquants


def rel_rmse(a, b):
    return float(np.sqrt(((a - b) ** 2).mean() / (b ** 2).mean()))


def test_k_quants_round_trip_through_gguf_py_decoders():
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 512)) * 0.02).astype(np.float32)
    w[1, :256] = 0.0  # an all-zero super-block
    w[2, 256:] = 0.37  # a constant one
    q4 = quants.dequantize(kquants.quantize_q4_k(w), T.Q4_K)
    q6 = quants.dequantize(kquants.quantize_q6_k(w), T.Q6_K)
    q40 = quants.dequantize(quants.quantize(w, T.Q4_0), T.Q4_0)
    q50 = quants.dequantize(quants.quantize(w, T.Q5_0), T.Q5_0)
    assert q4.shape == q6.shape == w.shape
    assert np.all(q4[1, :256] == 0) and np.all(q6[1, :256] == 0)
    assert np.allclose(q4[2, 256:], 0.37, rtol=2e-3) and np.allclose(q6[2, 256:], 0.37, rtol=2e-3)
    # Q4_K (4.5 bits) beats Q4_0 (4.5 bits), Q6_K (6.6 bits) beats Q5_0 (5.5 bits): the formats and the search work
    body = np.r_[3:16]
    assert rel_rmse(q4[body], w[body]) < 0.9 * rel_rmse(q40[body], w[body]) and rel_rmse(q4[body], w[body]) < 0.08
    assert rel_rmse(q6[body], w[body]) < 0.5 * rel_rmse(q50[body], w[body]) and rel_rmse(q6[body], w[body]) < 0.025


def test_qk_permutation_is_what_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from finetune_cli.merge.gguf_write import permute_qk

    w = np.arange(8 * 64 * 3, dtype=np.float32).reshape(8 * 64, 3)
    for heads in (8, 2):
        p = permute_qk(w, heads)
        assert not np.array_equal(p, w)
        back = LlamaTensorProcessor()._reverse_permute_weights(p, heads, heads)
        assert np.array_equal(back, w)


@pytest.fixture(scope="module")
def tiny256(tmp_path_factory):
    """Hidden 256, so K-quant blocks fit; lm_head scaled up so logits are peaked like a trained model's."""
    import torch
    from transformers import AutoModelForCausalLM

    from finetune_cli.tiny import make_tiny_model

    path = make_tiny_model(tmp_path_factory.mktemp("tiny256") / "model", hidden=256)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.lm_head.weight.mul_(4)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def run256(tiny256, tmp_path_factory):
    from tests.test_merge import make_adapter, write_run

    root = tmp_path_factory.mktemp("run256")
    adapter = make_adapter(tiny256, root / "adapter", seed=1)
    return write_run(root, tiny256, adapter, system="Ye speak Doric.")


@pytest.mark.slow
def test_merge_gguf_end_to_end(run256, tmp_path):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    res = CliRunner().invoke(app, ["merge", "--run", str(run256), "--out", str(tmp_path / "m"),
                                   "--gguf", "f16,q8_0", "--gguf", "q4_k_m", "--samples", "3", "--json"])
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.stdout)
    files = {g["type"]: g for g in out["gguf"]["files"]}
    assert set(files) == {"f16", "q8_0", "q4_k_m"}
    for g in files.values():
        assert g["generated_tokens"] == 8 and not g["flagged"] and g["reader"].startswith("transformers")
    # f16 is the merged model (the rope permutation round-trips); drift grows as bits shrink, all sound
    assert files["f16"]["kl"] < 1e-6 and files["f16"]["top1_agreement"] == 1.0
    assert files["f16"]["kl"] < files["q8_0"]["kl"] < files["q4_k_m"]["kl"] < 0.1
    assert files["q4_k_m"]["tensor_types"]["Q4_K"] >= 10 and files["q4_k_m"]["tensor_types"]["Q6_K"] >= 2
    assert files["q4_k_m"]["bytes"] < files["q8_0"]["bytes"] < files["f16"]["bytes"]
    assert any(f["path"].endswith("model-q4_k_m.gguf") and f["bytes"] > 0 for f in out["files"])
    # the paths reported (and kept in gguf/ft_gguf.json) are where the files were published
    from pathlib import Path

    assert all(Path(g["path"]).is_file() for g in files.values()) and Path(out["gguf"]["modelfile"]).is_file()
    kept = json.loads((tmp_path / "m" / "gguf" / "ft_gguf.json").read_text())
    assert kept["files"][0]["path"].startswith(str(tmp_path / "m" / "gguf"))
    import importlib.util

    if importlib.util.find_spec("llama_cpp"):  # the real consumer agrees (tests/test_gguf_llama_cpp.py goes further)
        for g in files.values():
            lc = g["llama_cpp"]
            assert lc["status"] == "ok" and lc["tokenizer_agrees"] and lc["kl"] < 0.1, (g["type"], lc)
        assert files["f16"]["llama_cpp"]["top1_agreement"] == 1.0
    else:
        assert out["gguf"]["llama_cpp"].startswith("skipped: llama-cpp-python is not installed")

    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    r = GGUFReader(str(tmp_path / "m" / "gguf" / "model-q4_k_m.gguf"))
    field = lambda k: r.fields[k].contents()  # noqa: E731
    assert field("general.architecture") == "llama" and field("general.file_type") == 15
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    assert field("tokenizer.ggml.eos_token_id") == tok.convert_tokens_to_ids("<|im_end|>")
    assert field("tokenizer.ggml.padding_token_id") == tok.convert_tokens_to_ids("<|pad|>")
    assert field("tokenizer.chat_template") == tok.chat_template
    tokens = field("tokenizer.ggml.tokens")
    assert tokens[tok.convert_tokens_to_ids("<|im_end|>")] == "<|im_end|>" and len(tokens) == len(tok)
    assert {t.name: t.tensor_type.name for t in r.tensors}["output.weight"] == "Q6_K"

    modelfile = (tmp_path / "m" / "gguf" / "Modelfile").read_text()
    assert "FROM ./model-q4_k_m.gguf" in modelfile
    assert "<|im_start|>{{ .Role }}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """Ye speak Doric."""' in modelfile


@pytest.mark.slow
def test_planted_broken_quantization_is_flagged(run256, tmp_path, monkeypatch):
    """A Q4_K encoder that packs the 6-bit scales in the wrong order: the file loads and generates, but is wrong."""
    good = kquants.quantize_q4_k

    def scrambled_scales(w):
        raw = good(w)
        blocks = raw.reshape(-1, 144).copy()
        blocks[:, 4:16] = blocks[:, 4:16][:, ::-1]
        return blocks.reshape(raw.shape)

    monkeypatch.setattr(kquants, "quantize_q4_k", scrambled_scales)
    res = CliRunner().invoke(app, ["merge", "--run", str(run256), "--out", str(tmp_path / "m"), "--gguf",
                                   "q8_0,q4_k_m", "--samples", "3", "--no-verify", "--no-llama-cpp"])
    assert res.exit_code == 1
    assert "this q4_k_m differs badly: do not ship it" in res.stderr
    assert "llama.cpp check skipped: turned off (--no-llama-cpp)" in res.stderr
    assert "q8_0 differs" not in res.stderr
    # the files stay for inspection, but the Modelfile points at the sound one
    assert (tmp_path / "m" / "gguf" / "model-q4_k_m.gguf").is_file()
    assert "FROM ./model-q8_0.gguf" in (tmp_path / "m" / "gguf" / "Modelfile").read_text()


def test_qwen2_writes_without_permutation_and_reloads(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_cli.merge.gguf_write import write_gguf
    from finetune_cli.tiny import make_tiny_model

    path = make_tiny_model(tmp_path / "qwen", arch="qwen2")
    info = write_gguf(path, tmp_path / "q.gguf", "f16")
    # transformers loads a qwen2 model's tokenizer as Qwen2Tokenizer, which splits with Qwen2's regex whatever
    # tokenizer.json says: the name follows what training tokenized with
    assert info["tensor_types"]["F16"] >= 14 and info["tokenizer_pre"] == "qwen2"
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("Fit like? The quine gaed doon.", return_tensors="pt")["input_ids"]
    want = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    got = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="q.gguf", dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(want(ids).logits, got(ids).logits, atol=1e-3)


def test_modelfile_templates(tiny_model, tiny_llama3, tiny_base):
    from transformers import AutoTokenizer

    from finetune_cli.merge.modelfile import modelfile_text, template_family

    chatml = AutoTokenizer.from_pretrained(tiny_model)
    assert template_family(chatml) == "chatml"
    llama3 = AutoTokenizer.from_pretrained(tiny_llama3)
    text, family = modelfile_text("model-q8_0.gguf", llama3, None)
    assert family == "llama3-bos"
    assert 'TEMPLATE """<|begin_of_text|>{{- range .Messages }}<|start_header_id|>' in text
    assert 'PARAMETER stop "<|eot_id|>"' in text and "SYSTEM" not in text
    odd = AutoTokenizer.from_pretrained(tiny_model)
    odd.chat_template = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    text, family = modelfile_text("model-f16.gguf", odd, "sys")
    assert family is None and "could not translate" in text and "TEMPLATE" not in text.replace("write TEMPLATE", "")
    assert "#   {% for m in messages %}" in text
    base = AutoTokenizer.from_pretrained(tiny_base)
    assert template_family(base) is None


def test_unsupported_models_are_clear(tmp_path):
    from finetune_cli.errors import ExportError
    from finetune_cli.merge.gguf_write import plan

    with pytest.raises(ExportError, match="supports llama, mistral, qwen2, .* models; this one is 'gpt2'"):
        plan({"model_type": "gpt2"}, {}, "f16")
    cfg = json.loads('{"model_type": "llama", "num_hidden_layers": 1, "num_attention_heads": 4}')
    from finetune_cli.merge.gguf_write import _rope_keys

    class W:
        def add_rope_freq_base(self, v):
            pass

    with pytest.raises(ExportError, match="rope scaling 'yarn'"):
        _rope_keys(W(), "llama", {**cfg, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, 16)


def test_q4_k_m_recipe_follows_llama_cpp():
    """Q6_K for the output (the token embedding when tied), for attn_v/ffn_down in use_more_bits layers;
    K-quant rows that 256 does not divide fall back like llama-quantize (Q4_K→Q5_0, Q6_K→Q8_0)."""
    from finetune_cli.merge import gguf_write

    def plan_for(tied, hidden):
        names = {"model.embed_tokens.weight": (1024, hidden), "lm_head.weight": (1024, hidden),
                 "model.norm.weight": (hidden,)}
        for i in range(8):
            for proj, shape in (("self_attn.v_proj", (hidden, hidden)), ("mlp.down_proj", (hidden, 2 * hidden)),
                                ("self_attn.q_proj", (hidden, hidden))):
                names[f"model.layers.{i}.{proj}.weight"] = shape
        cfg = {"model_type": "llama", "num_hidden_layers": 8, "num_attention_heads": 4, "tie_word_embeddings": tied}
        return {p.name: p.qtype for p in gguf_write.plan(cfg, names, "q4_k_m")}

    untied = plan_for(False, 256)
    assert untied["output.weight"] == "Q6_K" and untied["token_embd.weight"] == "Q4_K"
    assert untied["output_norm.weight"] == "F32"
    # use_more_bits(i, 8): layers 0, 7 and (i - 1) % 3 == 2 → 3, 6
    assert [i for i in range(8) if untied[f"blk.{i}.attn_v.weight"] == "Q6_K"] == [0, 3, 6, 7]
    assert [i for i in range(8) if untied[f"blk.{i}.ffn_down.weight"] == "Q6_K"] == [0, 3, 6, 7]
    assert {untied[f"blk.{i}.attn_q.weight"] for i in range(8)} == {"Q4_K"}
    tied = plan_for(True, 256)
    assert "output.weight" not in tied and tied["token_embd.weight"] == "Q6_K"
    narrow = plan_for(False, 576)  # SmolLM2-135M's width
    assert narrow["blk.1.attn_q.weight"] == "Q5_0" and narrow["output.weight"] == "Q8_0"
    assert narrow["blk.0.ffn_down.weight"] == "Q8_0"  # rows of 1152 = 4.5 blocks of 256


@pytest.mark.slow
def test_an_exported_chatml_gguf_loads_as_a_model(run256, tmp_path):
    """ft merge's GGUF of a ChatML model (no BOS token) names the EOS id as BOS without adding it, as llama.cpp's
    converter does (absent, llama.cpp guesses token 11); ft must load it back as --model / --merged."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    from finetune_cli.models import resolve_model

    res = CliRunner().invoke(app, ["merge", "--run", str(run256), "--out", str(tmp_path / "m"), "--no-llama-cpp",
                                   "--gguf", "f16",
                                   "--samples", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    gguf = tmp_path / "m" / "gguf" / "model-f16.gguf"
    fields = GGUFReader(str(gguf)).fields
    assert fields["tokenizer.ggml.bos_token_id"].contents() == fields["tokenizer.ggml.eos_token_id"].contents()
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert fields["general.name"].contents() == "a"  # the run's name, not the temporary output folder's
    path = resolve_model(str(gguf))
    a = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    ids = torch.tensor([[5, 9, 17, 33, 2]])
    with torch.no_grad():
        diff = (a(input_ids=ids).logits - b(input_ids=ids).logits).abs().max().item()
    assert diff < 0.05  # bf16 cache of the f16 file vs the merged folder
