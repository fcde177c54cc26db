"""GGUF export beyond the Llama family: Qwen3 (q/k norms, head_dim ≠ hidden/heads), Gemma 3 text ((1+w) norms,
scaled embeddings, sliding window, a SentencePiece tokenizer), Phi-3 (fused qkv and gate_up) and Mistral with a
SentencePiece tokenizer.

Each is a tiny random-weight model built offline from its real config class (hidden 256 so K-quant blocks fit),
trained until it answers with REPLY and its template's end-of-turn token, then written at f16, q8_0 and q4_k_m;
every file must read back in the gguf package with tensors equal to the HF ones within quantization error, in
transformers' GGUF reader where transformers supports the architecture, and in llama.cpp itself (slow), which
must tokenize as training did, agree with the 16-bit model's greedy tokens and stop on the end token.
"""

from __future__ import annotations

import numpy as np
import pytest

from finetune_cli.errors import ExportError
from tests.test_gguf_llama_cpp import QUESTIONS, REPLY, needs_llama_cpp, train_to_stop

KL_GATE = {"f16": 1e-3, "q8_0": 1e-2, "q4_k_m": 0.1}
# the file type's own error bound on a weight (relative RMS): what "equal within quantization error" means
TENSOR_GATE = {"f16": 1e-3, "q8_0": 1e-2, "q4_k_m": 0.1}
ARCHS = {  # test id -> make_tiny_model arguments and the template's end-of-turn token
    "qwen3": (dict(arch="qwen3", pre="qwen2", head_dim=128), "<|im_end|>"),
    "gemma3": (dict(arch="gemma3_text", template="gemma"), "<end_of_turn>"),
    # Phi-4's shape: phi3 with a byte-level BPE. Seed 3: the tiny tokenizer is trained on ft's persona files, and
    # with doric's composed harmful asks seed 0's weights stall at loss 0.16 under lr 1e-2 ('Aye' and ' fit' never
    # learnt); seeds 1-3 reach 0.02 in 18-40 steps
    "phi3": (dict(arch="phi3", pre="gpt-2", seed=3), "<|im_end|>"),
    # Mistral v0.3: SentencePiece, [INST] control tokens. Seed 4: seed 0's weights reach the loss with one reply
    # token on a knife edge (q4_k_m moves it: KL 0.2), a property of that random model, not of the file
    "mistral": (dict(arch="mistral", template="mistral", seed=4), "</s>"),
}
GGUF_ARCH = {"qwen3": "qwen3", "gemma3": "gemma3", "phi3": "phi3", "mistral": "llama"}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def trained(request, tmp_path_factory):
    tiny, end = ARCHS[request.param]
    path = train_to_stop(tmp_path_factory.mktemp(request.param) / "model", **tiny)
    return request.param, path, end


def _chat_texts(path) -> list[str]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return [tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": REPLY}],
                                    tokenize=False) for q in QUESTIONS[:3]]


def _hf_tensors_as_gguf(path):
    """The HF weights, transformed as the GGUF stores them, by GGUF name."""
    from safetensors.numpy import load_file

    from finetune_cli.merge.gguf_write import read_model_dir, plan, tensor_shapes, transform

    config, files = read_model_dir(path)
    weights = load_file(str(path / "model.safetensors"))
    return {p.name: transform(weights[p.hf_name].astype(np.float32), p)
            for p in plan(config, tensor_shapes(files), "f16")}


def test_tensors_read_back_within_quantization_error(trained, tmp_path):
    """The gguf package reads every tensor of every file back, equal to the HF tensor (as llama.cpp lays it
    out) within the file type's error."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from finetune_cli.merge.gguf_write import write_gguf

    arch, path, _ = trained
    want = _hf_tensors_as_gguf(path)
    for kind in ("f16", "q8_0", "q4_k_m"):
        out = tmp_path / f"{kind}.gguf"
        write_gguf(path, out, kind)
        reader = GGUFReader(str(out))
        got = {t.name: dequantize(t.data, t.tensor_type).reshape(want[t.name].shape) for t in reader.tensors}
        assert set(got) == set(want)
        for name, w in want.items():
            err = np.sqrt(((got[name] - w) ** 2).mean() / max((w ** 2).mean(), 1e-12))
            assert err < TENSOR_GATE[kind], (arch, kind, name, err)


def test_every_format_reloads_in_transformers_and_matches(trained, tmp_path):
    """transformers' GGUF reader loads each file; the f16 file's greedy tokens equal the HF model's, and each
    file's KL against the 16-bit model is under the gate."""
    from finetune_cli.merge import gguf_check

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_cli.merge.gguf_write import write_gguf

    arch, path, _ = trained
    tok = AutoTokenizer.from_pretrained(path)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    texts = _chat_texts(path)
    ids = [tok(t, add_special_tokens=False, return_tensors="pt")["input_ids"][0] for t in texts]
    with torch.no_grad():
        ref_logits = [ref(input_ids=x[None]).logits[0] for x in ids]
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}], tokenize=False,
                                     add_generation_prompt=True)
    p = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = ref.generate(p, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[0].tolist()
    for kind in ("f16", "q8_0", "q4_k_m"):
        out = tmp_path / f"model-{kind}.gguf"
        write_gguf(path, out, kind)
        model = gguf_check._load_gguf(out)
        d = gguf_check.drift(ref_logits, gguf_check._hf_logits(model), ids)
        assert d["kl"] < KL_GATE[kind], (arch, kind, d)
        if kind == "f16":
            assert d["top1_agreement"] == 1.0
            with torch.no_grad():
                got = model.generate(p, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
            assert got[0].tolist() == want


@pytest.mark.slow
@needs_llama_cpp
def test_every_format_loads_and_stops_in_llama_cpp(trained, tmp_path):
    """llama.cpp loads f16, q8_0 and q4_k_m, tokenizes as training did, follows the 16-bit model's greedy
    answer token for token, answers REPLY itself and stops on the template's end-of-turn token."""
    from gguf import GGUFReader

    from finetune_cli.merge.gguf_check import export_gguf

    arch, path, end = trained
    res = export_gguf(path, tmp_path / "gguf", ["f16", "q8_0", "q4_k_m"], texts=_chat_texts(path),
                      name=f"{arch}-tiny", max_new=16)
    assert res["llama_cpp"] == "checked"
    for f in res["files"]:
        lc = f["llama_cpp"]
        assert lc["status"] == "ok", lc
        assert lc["tokenizer_agrees"], (f["type"], lc)
        assert lc["greedy_next_token_agreement"] == 1.0, (f["type"], lc)
        assert lc["stopped"] and lc["stop_token"] == end, (f["type"], lc["sample"])
        # Mistral's template puts a space before the reply: its first token is "▁Aye"
        assert lc["sample"] == (" " if arch == "mistral" else "") + REPLY + end, f["type"]
        assert lc["kl"] < KL_GATE[f["type"]], (f["type"], lc["kl"])
        assert not f["flagged"]
        fields = GGUFReader(f["path"]).fields
        assert fields["general.architecture"].contents() == GGUF_ARCH[arch]
        # llama.cpp would give a "phi3" name Phi-3's SentencePiece token attributes and abort on this vocabulary
        assert fields["general.name"].contents() == {"phi3": "phi_3-tiny"}.get(arch, f"{arch}-tiny")
    assert f'PARAMETER stop "{end}"' in (tmp_path / "gguf" / "Modelfile").read_text()


def test_an_unsupported_architecture_is_refused_in_one_line():
    from finetune_cli.merge.gguf_write import plan

    with pytest.raises(ExportError) as e:
        plan({"model_type": "gpt_neox", "num_hidden_layers": 2, "num_attention_heads": 4}, {}, "f16")
    msg = str(e.value)
    assert "\n" not in msg and "gpt_neox" in msg and "qwen3" in msg


def test_gemma3_metadata_is_what_llama_cpp_reads(tmp_path):
    """Gemma 3: norms stored as 1 + w, key length, sliding window and per-layer pattern, local rope base; its
    SentencePiece tokenizer as llama.cpp's "llama" model with scores, BYTE tokens and no space prefix."""
    from gguf import GGUFReader, TokenType

    from finetune_cli.merge.gguf_write import plan, read_model_dir, tensor_shapes, write_gguf
    from finetune_cli.tiny import make_tiny_model

    path = make_tiny_model(tmp_path / "m", template="gemma", arch="gemma3_text", hidden=256, layers=2)
    config, files = read_model_dir(path)
    shifted = {p.name for p in plan(config, tensor_shapes(files), "f16") if p.shift == 1.0}
    assert shifted == {"output_norm.weight"} | {f"blk.{i}.{n}.weight" for i in range(2) for n in (
        "attn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm")}
    write_gguf(path, tmp_path / "m.gguf", "f16")
    f = GGUFReader(str(tmp_path / "m.gguf")).fields
    assert f["gemma3.attention.key_length"].contents() == 256
    assert f["gemma3.attention.sliding_window"].contents() == 16
    assert f["gemma3.attention.sliding_window_pattern"].contents() == [True, True]  # every 6th layer is global
    assert f["gemma3.rope.freq_base"].contents() == 1e6 and f["gemma3.rope.freq_base_swa"].contents() == 1e4
    assert f["tokenizer.ggml.model"].contents() == "llama" and f["tokenizer.ggml.add_space_prefix"].contents() is False
    tokens, types = f["tokenizer.ggml.tokens"].contents(), f["tokenizer.ggml.token_type"].contents()
    assert types[tokens.index("<0x0A>")] == TokenType.BYTE and types[tokens.index("<end_of_turn>")] == TokenType.CONTROL
    assert len(f["tokenizer.ggml.scores"].contents()) == len(tokens)
    assert tokens[f["tokenizer.ggml.eot_token_id"].contents()] == "<end_of_turn>"


def test_mistral_sentencepiece_metadata_is_what_llama_cpp_needs(tmp_path):
    """Mistral v0.3's SentencePiece vocabulary as llama.cpp's "llama" model ("default" pre-tokenizer, scores,
    [INST] and [/INST] as CONTROL tokens) with add_space_prefix false: transformers (legacy: false) puts no
    space after a special token, and llama.cpp with the key true (its converter's default) would put one after
    every special token, "[INST] Hi" becoming "[INST] ▁▁Hi"."""
    from gguf import GGUFReader, TokenType

    from finetune_cli.merge.gguf_write import write_gguf
    from finetune_cli.tiny import make_tiny_model

    path = make_tiny_model(tmp_path / "m", template="mistral", arch="mistral", hidden=256, layers=1)
    info = write_gguf(path, tmp_path / "m.gguf", "f16")
    assert info["add_space_prefix"] == {"start": True, "after_special": False}
    f = GGUFReader(str(tmp_path / "m.gguf")).fields
    assert f["general.architecture"].contents() == "llama"
    assert f["tokenizer.ggml.model"].contents() == "llama" and f["tokenizer.ggml.pre"].contents() == "default"
    assert f["tokenizer.ggml.add_space_prefix"].contents() is False
    tokens, types = f["tokenizer.ggml.tokens"].contents(), f["tokenizer.ggml.token_type"].contents()
    assert tokens[:5] == ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    assert [types[i] for i in range(5)] == [TokenType.UNKNOWN] + [TokenType.CONTROL] * 4
    assert tokens[f["tokenizer.ggml.eos_token_id"].contents()] == "</s>"
