"""Chat template, pad/EOS setup and assistant-only labels, on tokenizers alone (fast)."""

from __future__ import annotations

import pytest

from finetune_cli.errors import TrainingError
from finetune_cli.tiny import make_tokenizer
from finetune_cli.chat_template import (assistant_only_labels, choose_template, end_of_turn, render,
                                         setup_pad_eos)

CONV = [
    {"role": "system", "content": "Speak Doric."},
    {"role": "user", "content": "Fit like?"},
    {"role": "assistant", "content": "Aye, nae bad."},
    {"role": "user", "content": "And the bairns?"},
    {"role": "assistant", "content": "The bairns are fine."},
]


def _decoded_labels(tok, ids, labels):
    """The trained tokens as text, one string per contiguous run."""
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != -100:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur)); cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


@pytest.mark.parametrize("template,eot", [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>")])
def test_labels_are_exactly_the_assistant_turns_with_eot(template, eot):
    tok = make_tokenizer(template)
    choose_template(tok, "auto")
    setup_pad_eos(tok)
    ids, labels = assistant_only_labels(tok, CONV, max_len=512)
    assert _decoded_labels(tok, ids, labels) == [f"Aye, nae bad.{eot}", f"The bairns are fine.{eot}"]
    assert ids == tok(render(tok, CONV), add_special_tokens=False)["input_ids"]
    eot_id = tok.convert_tokens_to_ids(eot)
    assert labels.count(eot_id) == 2          # EOS is a trained label on every assistant turn
    assert tok.pad_token_id not in ids


def test_chatml_trailing_newline_is_not_a_label():
    tok = make_tokenizer("chatml")
    ids, labels = assistant_only_labels(tok, CONV[:3], max_len=512)
    assert tok.decode(ids[-1:]) == "\n" and labels[-1] == -100
    assert labels[-2] == tok.convert_tokens_to_ids("<|im_end|>")


def test_train_on_all_and_truncation():
    tok = make_tokenizer("chatml")
    ids, labels = assistant_only_labels(tok, CONV, max_len=512, train_on="all")
    assert labels == ids
    ids, labels = assistant_only_labels(tok, CONV, max_len=8)
    assert len(ids) == 8 and set(labels) == {-100}   # the prompt fills the window: nothing to train


def test_pad_equal_to_eos_gets_a_distinct_pad():
    tok = make_tokenizer("chatml-pad-eos")
    info = setup_pad_eos(tok)
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.pad_token == "<|pad|>"          # the unused reserved token, no new embedding row
    assert info.added_tokens == [] and any("equals EOS" in c for c in info.changes)


def test_llama3_without_pad_takes_a_reserved_token():
    tok = make_tokenizer("llama3")
    n = len(tok)
    info = setup_pad_eos(tok)
    assert tok.pad_token.startswith("<|reserved_special_token_") and len(tok) == n
    assert info.pad_id != info.eos_id == tok.convert_tokens_to_ids("<|eot_id|>")


def test_base_model_gets_chatml_tokens_and_a_new_pad():
    tok = make_tokenizer(None)
    name, added = choose_template(tok, "auto")
    assert name == "chatml" and added == []  # the tiny vocabulary already has the ChatML specials
    info = setup_pad_eos(tok)
    assert tok.eos_token == "<|im_end|>" and any("end of turn" in c for c in info.changes)
    assert tok.pad_token_id not in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_start|>"))
    ids, labels = assistant_only_labels(tok, CONV[:3], max_len=512)
    assert _decoded_labels(tok, ids, labels) == ["Aye, nae bad.<|im_end|>"]


def test_gemma_template_by_name_adds_its_turn_tokens_and_trains_the_model_turn():
    """--chat-template gemma: Gemma's own template (the one a base Gemma GGUF gets), its turn tokens added."""
    tok = make_tokenizer(None)
    n = len(tok)
    name, added = choose_template(tok, "gemma")
    assert (name, added, len(tok)) == ("gemma", ["<start_of_turn>", "<end_of_turn>"], n + 2)
    info = setup_pad_eos(tok)
    assert info.end_of_turn == "<end_of_turn>" and tok.eos_token == "<end_of_turn>"
    ids, labels = assistant_only_labels(tok, CONV[:3], max_len=512)
    assert _decoded_labels(tok, ids, labels) == ["Aye, nae bad.<end_of_turn>"]
    text = tok.apply_chat_template(CONV[:2], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<start_of_turn>model\n") and "<start_of_turn>system" not in text  # system folded in


def test_chatml_on_a_vocabulary_without_its_tokens_adds_them():
    tok = make_tokenizer("llama3")
    tok.chat_template = None
    n = len(tok)
    name, added = choose_template(tok, "auto")
    assert (name, added, len(tok)) == ("chatml", ["<|im_start|>", "<|im_end|>"], n + 2)
    setup_pad_eos(tok)
    ids, labels = assistant_only_labels(tok, CONV[:3], max_len=512)
    assert _decoded_labels(tok, ids, labels) == ["Aye, nae bad.<|im_end|>"]
    assert tok.convert_tokens_to_ids("<|im_start|>") in ids


def test_template_breaking_prefix_property_is_an_error(tmp_path):
    tok = make_tokenizer("chatml")
    # a template that renders earlier assistant turns differently from the last one
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}{% if loop.last %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                   "{% else %}[{{ m.role }}] {{ m.content }}\n{% endif %}{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    choose_template(tok, f"@{bad}")
    with pytest.raises(TrainingError, match="prefix property"):
        assistant_only_labels(tok, CONV, max_len=512)


def test_end_of_turn_detection():
    assert end_of_turn(make_tokenizer("chatml"))[0] == "<|im_end|>"
    assert end_of_turn(make_tokenizer("llama3"))[0] == "<|eot_id|>"
    assert end_of_turn(make_tokenizer(None)) is None
