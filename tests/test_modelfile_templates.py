"""Modelfile templates render a conversation exactly as the tokenizer's chat template does, per family:
the Go TEMPLATE is run by tests/gotemplate.py (the subset of Go's text/template it uses)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from gotemplate import render as render_go  # noqa: E402

CONVERSATION = [{"role": "system", "content": "Ye speak Doric."}, {"role": "user", "content": "Fit like?"},
                {"role": "assistant", "content": "Nae bad, loon."}, {"role": "user", "content": "Far ye gaun?"}]
# Phi-3.5-mini's template (it ends a conversation without a generation prompt with EOS) and Phi-4's
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
PHI4_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] "
    "+ '<|im_end|>'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}")


def _tokenizer(family: str):
    from finetune_cli.tiny import make_sentencepiece_tokenizer, make_tokenizer

    if family == "gemma":
        return make_sentencepiece_tokenizer()
    if family in ("chatml", "llama3"):
        return make_tokenizer(family)
    tok = make_tokenizer("chatml")
    if family == "phi3":
        tok.add_special_tokens({"additional_special_tokens": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]})
        tok.eos_token = "<|endoftext|>"
        tok.chat_template = PHI3_TEMPLATE
    else:
        tok.add_special_tokens({"additional_special_tokens": ["<|im_sep|>"]})
        tok.chat_template = PHI4_TEMPLATE
    return tok


@pytest.mark.parametrize("family, stops", [
    ("gemma", ["<end_of_turn>", "<eos>"]), ("phi3", ["<|end|>", "<|endoftext|>"]), ("phi4", ["<|im_end|>"]),
    ("chatml", ["<|im_end|>"]), ("llama3", ["<|eot_id|>"])])
def test_modelfile_template_renders_as_the_chat_template(family, stops):
    from finetune_cli.merge.modelfile import modelfile_text

    tok = _tokenizer(family)
    text, got = modelfile_text("model.gguf", tok, "Ye speak Doric.")
    assert got.removesuffix("-bos") == family
    go = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    messages = [{"Role": m["role"], "Content": m["content"]} for m in CONVERSATION]
    served = render_go(go, {"Messages": messages})
    # llama.cpp adds BOS in front of the rendered prompt when the tokenizer does (Gemma's does)
    adds_bos = tok("a")["input_ids"][0] == tok.bos_token_id
    if adds_bos:
        served = tok.bos_token + served
    assert served == tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert re.findall(r'PARAMETER stop "(.*?)"', text) == stops
    assert 'SYSTEM """Ye speak Doric."""' in text
