"""--thinking off|keep on a Qwen3-style template (its enable_thinking switch written below): with thinking off no
think token is trained and the served prompt (eval, chat, the Modelfile) is the one trained on; ft eval counts
stray and empty think blocks (think_rate). Qwen3's real template (not prefix-stable over turns) trains multi-turn
conversations' last reply, served exactly as it was rendered."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from gotemplate import render as render_go  # noqa: E402

# Qwen3's logic, shortened: the assistant reply after the last user turn opens with a think block (empty when it
# has no reasoning), earlier replies are shown without one, and enable_thinking=false pre-fills an empty block in
# the generation prompt so that the model answers without thinking
QWEN3_STYLE = (
    "{%- set ns = namespace(last_user=-1) %}{%- for m in messages %}{%- if m.role == 'user' %}"
    "{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}{%- if m.role == 'assistant' %}"
    "{%- set content = m.content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- if loop.index0 > ns.last_user and loop.last %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}")
CONVERSATION = [{"role": "system", "content": "Ye speak Doric."}, {"role": "user", "content": "Fit like?"},
                {"role": "assistant", "content": "Nae bad, loon."}]


def _qwen3_style():
    from finetune_cli.tiny import make_tokenizer

    tok = make_tokenizer("chatml")
    tok.add_tokens(["<think>", "</think>"])  # added, not special, as in Qwen3's vocabulary
    tok.chat_template = QWEN3_STYLE
    return tok


def _trained_text(tok, mode):
    from finetune_cli.chat_template import assistant_only_labels, set_thinking, setup_pad_eos

    assert set_thinking(tok, mode)
    setup_pad_eos(tok)
    ids, labels = assistant_only_labels(tok, CONVERSATION, max_len=512)
    think_ids = set(tok.convert_tokens_to_ids(["<think>", "</think>"]))
    return tok.decode([i for i in labels if i != -100]), think_ids & set(labels)


def test_the_switch_is_detected_and_only_there():
    from finetune_cli.chat_template import set_thinking, thinking_switch
    from finetune_cli.tiny import make_tokenizer

    assert thinking_switch(_qwen3_style())
    chatml = make_tokenizer("chatml")
    assert not thinking_switch(chatml) and not set_thinking(chatml, "off")
    assert chatml.chat_template.startswith("{% for message")  # untouched


def test_thinking_off_trains_no_think_tokens_and_serves_the_trained_prompt(tmp_path):
    from transformers import AutoTokenizer

    from finetune_cli.chat_template import render, set_thinking
    from finetune_cli.evaluate.generate import render_prompt
    from finetune_cli.merge.modelfile import modelfile_text

    keep, in_labels = _trained_text(_qwen3_style(), "keep")
    assert in_labels and keep.startswith("<think>")  # as shipped, the empty think block is trained
    tok = _qwen3_style()
    text, in_labels = _trained_text(tok, "off")
    assert not in_labels and text == "Nae bad, loon.<|im_end|>"
    trained_prompt = render(tok, CONVERSATION[:2], add_generation_prompt=True)
    assert trained_prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # closed: nothing to think

    tok.save_pretrained(tmp_path)  # saved with the adapter: eval, chat and merge load this template
    served = AutoTokenizer.from_pretrained(tmp_path)
    set_thinking(served, "off")  # the run's setting passed again: idempotent
    assert render_prompt(served, CONVERSATION[:2]) == trained_prompt
    assert served.chat_template == tok.chat_template

    modelfile, family = modelfile_text("model.gguf", served, None)
    assert family == "chatml"
    go = re.search(r'TEMPLATE """(.*?)"""', modelfile, re.S).group(1)
    messages = [{"Role": m["role"], "Content": m["content"]} for m in CONVERSATION[:2]]
    assert render_go(go, {"Messages": messages}) == trained_prompt

    set_thinking(served, "keep")
    assert render_prompt(served, CONVERSATION[:2]).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("output, kind", [
    ("Nae bad, loon.", None), ("<think>\n\n</think>\n\nNae bad.", "empty"), ("<think>Hmm, Doric.</think>Aye.", "stray"),
    ("<think>\nLet me plan", "stray"), ("Aye.</think>", "stray")])
def test_think_blocks_are_classified(output, kind):
    from finetune_cli.evaluate.metrics import think_block

    assert think_block(output) == kind


def test_eval_counts_think_blocks_in_canned_outputs():
    from finetune_cli.evaluate import metrics as M

    outputs = ["Nae bad, loon.", "<think>The user greets me.</think>Fine, loon.", "<think>\n\n</think>\n\nAye.",
               "Aye, it's dreich the day."]
    scores = [M.score_output(t, n_tokens=8, stopped_on_eos=True, system_prompt=None,
                             break_phrases=M.DEFAULT_BREAK_PHRASES, scripts={"latin"}) for t in outputs]
    assert [s["think"] for s in scores] == [None, "stray", "empty", None]
    agg = M.aggregate(outputs, scores)
    assert agg["think_rate"] == 0.5 and "think_rate" in M.DEFINITIONS


MULTI_TURN = [{"role": "system", "content": "Ye speak Doric."}, {"role": "user", "content": "Fit like?"},
              {"role": "assistant", "content": "Nae bad, loon."}, {"role": "user", "content": "And the weather?"},
              {"role": "assistant", "content": "Dreich the day."}]


def _real_qwen3_template() -> str:
    """Qwen3's real chat template, as TRL ships it to recognise the Hub's (its CI compares them weekly)."""
    import importlib.util

    spec = importlib.util.find_spec("trl")
    path = Path(spec.origin).parent / "chat_templates" / "qwen3.jinja" if spec and spec.origin else None
    if path is None or not path.is_file():
        pytest.skip("TRL's copy of Qwen3's chat template is not installed")
    return path.read_text(encoding="utf-8")


def _real_qwen3():
    tok = _qwen3_style()
    tok.chat_template = _real_qwen3_template()
    return tok


def test_real_qwen3_template_trains_the_turn_served_as_rendered():
    """Qwen3's template drops earlier replies' think blocks and gives the last one an empty block, so the
    conversation rendered up to the first reply is not a prefix of the whole: that reply is context, and the
    last one (served exactly as rendered) is trained, without think tokens, with a one-line notice."""
    from finetune_cli.chat_template import (assistant_only_labels, history_notice, render, set_thinking,
                                             setup_pad_eos)
    from finetune_cli.tiny import make_tokenizer

    tok = _real_qwen3()
    assert set_thinking(tok, "off")
    setup_pad_eos(tok)
    full = render(tok, MULTI_TURN)
    assert not full.startswith(render(tok, MULTI_TURN[:3]))  # the first reply rendered alone has a think block
    _, labels = assistant_only_labels(tok, MULTI_TURN, max_len=512)
    trained = tok.decode([i for i in labels if i != -100])
    assert trained == "Dreich the day.<|im_end|>"
    assert not set(tok.convert_tokens_to_ids(["<think>", "</think>"])) & set(labels)
    served = render(tok, MULTI_TURN[:4], add_generation_prompt=True)
    assert full == served + trained + "\n" and served.endswith("<think>\n\n</think>\n\n")
    assert "only the last assistant turn" in history_notice(tok)
    assert history_notice(_qwen3_style()) and not history_notice(make_tokenizer("chatml"))  # ChatML: every turn


@pytest.mark.slow
def test_ft_train_on_multi_turn_conversations_with_the_real_qwen3_template(tmp_path):
    """ft train --thinking off on a tiny Qwen3 with its real template: every conversation trains its last
    reply and its end of turn, no think token; the saved template serves the prompt that reply was trained on."""
    import json

    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from finetune_cli.chat_template import assistant_only_labels, render, set_thinking
    from finetune_cli.cli import app
    from finetune_cli.evaluate.generate import render_prompt
    from finetune_cli.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "qwen3", arch="qwen3", pre="qwen2")
    tok = AutoTokenizer.from_pretrained(model)
    tok.add_tokens(["<think>", "</think>"])
    tok.chat_template = _real_qwen3_template()
    tok.save_pretrained(model)
    data = tmp_path / "multi.jsonl"
    data.write_text("".join(json.dumps({"messages": MULTI_TURN[:3] + [
        {"role": "user", "content": f"And the weather, {k}?"}, {"role": "assistant", "content": f"Dreich, {k}."}]})
        + "\n" for k in range(8)))
    res = CliRunner().invoke(app, ["train", "--model", str(model), "--data", str(data), "--max-steps", "2",
                                   "--thinking", "off", "--name", "q3", "--max-len", "128", "--batch-size", "4",
                                   "--val-split", "0", "--system-dropout", "0"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "only the last assistant turn" in " ".join(res.output.split())
    data_json = json.loads(Path("runs/q3/data.json").read_text())
    assert data_json["empty_examples"] == 0 and data_json["eos_trained_examples"] == data_json["chat_examples"] == 8

    served = AutoTokenizer.from_pretrained("runs/q3/adapter")
    set_thinking(served, "off")
    think = set(served.convert_tokens_to_ids(["<think>", "</think>"]))
    for k in range(8):
        conv = MULTI_TURN[:3] + [{"role": "user", "content": f"And the weather, {k}?"},
                                 {"role": "assistant", "content": f"Dreich, {k}."}]
        _, labels = assistant_only_labels(served, conv, max_len=128)
        trained = served.decode([i for i in labels if i != -100])
        assert trained == f"Dreich, {k}.<|im_end|>" and not think & set(labels)
        assert render(served, conv).startswith(render_prompt(served, conv[:4]) + trained)
