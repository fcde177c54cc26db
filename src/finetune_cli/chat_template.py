"""Chat template, pad/EOS and assistant-only labels: the three places persona tunes silently break.

    name, added = choose_template(tok, "auto")          # the model's own, else ChatML (tokens added)
    info = setup_pad_eos(tok)                          # eos = the template's end of turn; pad ≠ eos
    ids, labels = assistant_only_labels(tok, messages, max_len=2048)

Labels come from the rendered text, not from guessing token patterns: for each assistant turn we
render the conversation up to it with ``add_generation_prompt=True`` (the prompt) and up to and
including it (prompt + turn). The difference is the turn; it is trained up to and including the
template's end-of-turn token, and nothing after it (ChatML's trailing newline is not a label).

Some templates render an assistant turn in the history differently from how it was served: Qwen3's drops
earlier turns' think blocks and gives only the last reply one. Such a turn's served prompt is not a prefix of
the whole conversation, so it is context, not trained; the turns that are (Qwen3's last reply) are trained
exactly as they are served, and ``prepare_model_and_tokenizer`` says so in one line. A conversation with no
such turn is an error, never a silent full mask (Mistral v0.3's template renders the system message only in
a prompt that ends with the user's turn, so a conversation with one is refused).

Thinking models (Qwen3's ``enable_thinking``): ``set_thinking(tok, "off")`` pins the switch off in the
template itself, so training, eval, chat, merge, the GGUF and the Modelfile all render what serving renders.

Only the tokenizer is needed here: the tests run without torch models. Train, eval, merge/verify, GGUF,
the Modelfile and ft model tiny all read templates through this module (a shared layer: it imports no
command).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, TrainingError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# name -> (jinja, special tokens the template needs)
# Gemma's own chat template (google/gemma-3-*-it), text parts only (a system message folds into the first user
# turn); a Gemma GGUF made from a base model has none
GEMMA_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

TEMPLATES = {
    "chatml": (CHATML_TEMPLATE, ["<|im_start|>", "<|im_end|>"]),
    "llama3": (LLAMA3_TEMPLATE, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "gemma": (GEMMA_TEMPLATE, ["<start_of_turn>", "<end_of_turn>"]),
}
_MARK = "\u2063ftMARK\u2063"
# put in front of a template with a thinking switch by --thinking off (a top-level set shadows the caller's value)
THINKING_OFF = "{%- set enable_thinking = false %}"
# tokens a vocabulary reserves for later use: a pad token can take one without resizing embeddings
_PAD_NAMES = re.compile(r"pad", re.I)
_RESERVED_NAMES = re.compile(r"reserved|unused", re.I)


def render(tok, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
    try:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja errors, raise_exception() in templates
        raise TrainingError(f"the chat template failed to render a conversation: {e}") from None


def end_of_turn(tok) -> tuple[str, int] | None:
    """The special token the template puts right after an assistant turn's text, if any."""
    if not getattr(tok, "chat_template", None):
        return None
    text = render(tok, [{"role": "user", "content": "ping"}, {"role": "assistant", "content": _MARK}])
    if _MARK not in text:
        return None
    suffix = text.split(_MARK, 1)[1]
    if not suffix:
        return None
    ids = tok(suffix, add_special_tokens=False)["input_ids"]
    if not ids:
        return None
    first = ids[0]
    token = tok.convert_ids_to_tokens(first)
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    if first not in special or not suffix.startswith(token):
        return None
    return token, first


def eos_token_ids(tok) -> list[int]:
    """Ids that end a reply: the template's end of turn, then the tokenizer's EOS."""
    ids = []
    eot = end_of_turn(tok)
    if eot:
        ids.append(eot[1])
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    return ids


def thinking_switch(tok) -> bool:
    """Does the template have a thinking switch: does ``enable_thinking`` change the generation prompt, with a
    ``<think>`` in one of the two renderings? (True for a template pinned off by :func:`set_thinking`.)"""
    template = getattr(tok, "chat_template", None)
    if not isinstance(template, str):
        return False
    if template.startswith(THINKING_OFF):
        return True
    probe = [{"role": "user", "content": "ping"}]
    try:
        on, off = (tok.apply_chat_template(probe, tokenize=False, add_generation_prompt=True, enable_thinking=v)
                   for v in (True, False))
    except Exception:  # noqa: BLE001 - a template that cannot render the probe has no switch we can use
        return False
    return on != off and ("<think>" in on or "<think>" in off)


def set_thinking(tok, mode: str | None) -> bool:
    """``off``: pin the template's thinking switch off (every rendering as with ``enable_thinking=False``);
    ``keep``: the template as the model ships it; None: leave it. Idempotent; returns whether the template has
    a thinking switch."""
    if not thinking_switch(tok):
        return False
    pinned = tok.chat_template.startswith(THINKING_OFF)
    if mode == "off" and not pinned:
        tok.chat_template = THINKING_OFF + tok.chat_template
    elif mode == "keep" and pinned:
        tok.chat_template = tok.chat_template[len(THINKING_OFF):]
    return True


def choose_template(tok, choice: str = "auto") -> tuple[str, list[str]]:
    """Install the chat template to train with; returns (name, special tokens added to the vocabulary).

    ``auto``: the model's own template, else ChatML. ``model``: the model's own (an error if none).
    ``chatml``/``llama3``/``gemma``: a built-in one. ``@file``: a Jinja file.
    """
    if choice in ("auto", "model"):
        if getattr(tok, "chat_template", None):
            return "model", []
        if choice == "model":
            raise ConfigError("option --chat-template model: this model has no chat template",
                              hint="use --chat-template chatml or @template.jinja")
        choice = "chatml"
    if choice.startswith("@"):
        p = Path(choice[1:])
        if not p.is_file():
            raise ConfigError(f"option --chat-template: no such file {str(p)!r}")
        tok.chat_template = p.read_text(encoding="utf-8")
        return p.name, []
    if choice not in TEMPLATES:
        raise ConfigError(f"option --chat-template: unknown template {choice!r}",
                          hint="auto, model, chatml, llama3, gemma or @file.jinja")
    jinja, needed = TEMPLATES[choice]
    vocab = tok.get_vocab()
    missing = [t for t in needed if t not in vocab]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    tok.chat_template = jinja
    return choice, missing


@dataclass
class PadEos:
    """What ``setup_pad_eos`` found and changed (printed at start, saved in run.json)."""

    eos_token: str
    eos_id: int
    pad_token: str
    pad_id: int
    end_of_turn: str | None
    changes: list[str] = field(default_factory=list)
    added_tokens: list[str] = field(default_factory=list)


def prepare_model_and_tokenizer(model, tok, choice: str = "auto", thinking: str = "off"
                                ) -> tuple[str, list[str], PadEos]:
    """What both backends do to a model they loaded: the chat template (its thinking switch set) and pad ≠ eos
    set on the tokenizer, the embeddings grown for the tokens that added (new rows at the mean of the old), and
    the model's config and generation config told the pad and EOS ids. Returns (template, tokens
    added, pad/EOS)."""
    template, added = choose_template(tok, choice)
    set_thinking(tok, thinking)
    pad_eos = setup_pad_eos(tok)
    notice = history_notice(tok)
    if notice:
        pad_eos.changes.append(notice)
    added = added + pad_eos.added_tokens
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok), mean_resizing=True)
    model.config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.eos_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = [tok.eos_token_id]
    return template, added, pad_eos


def _free_reserved_token(tok, taken: set[int]) -> tuple[str, int] | None:
    """An existing special token the template never emits, preferably one named like a pad."""
    specials = [(t.content, i) for i, t in sorted(tok.added_tokens_decoder.items()) if t.special]
    free = [(t, i) for t, i in specials if i not in taken]
    for pattern in (_PAD_NAMES, _RESERVED_NAMES):
        for t, i in free:
            if pattern.search(t):
                return t, i
    return None


def setup_pad_eos(tok) -> PadEos:
    """Make EOS the template's end-of-turn token and give the tokenizer a pad distinct from both.

    Pad == EOS is the classic "never stops" bug: collators mask pad ids out of the labels, so EOS
    is never learned. We pick an unused reserved token where the vocabulary has one, else add one.
    """
    changes: list[str] = []
    added: list[str] = []
    eot = end_of_turn(tok)
    if eot is not None and tok.eos_token_id != eot[1]:
        changes.append(f"eos {tok.eos_token!r} → {eot[0]!r} (the template's end of turn)")
        tok.eos_token = eot[0]
    if tok.eos_token_id is None:
        raise TrainingError("the tokenizer has no EOS token and the chat template has no end-of-turn token",
                            hint="use --chat-template chatml")
    stop_ids = set(eos_token_ids(tok))
    if tok.pad_token_id is None or tok.pad_token_id in stop_ids:
        old = tok.pad_token
        template_ids = set()
        if getattr(tok, "chat_template", None):
            sample = render(tok, [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                  {"role": "assistant", "content": "a"}], add_generation_prompt=False)
            template_ids = set(tok(sample, add_special_tokens=False)["input_ids"])
        taken = stop_ids | template_ids | {tok.bos_token_id, tok.unk_token_id}
        found = _free_reserved_token(tok, taken)
        if found is None:
            tok.add_special_tokens({"pad_token": "<|ft_pad|>"})
            added.append("<|ft_pad|>")
            how = "a new token"
        else:
            tok.pad_token = found[0]
            how = "an unused reserved token"
        why = "missing" if old is None else f"{old!r} equals EOS"
        changes.append(f"pad {why} → {tok.pad_token!r} (id {tok.pad_token_id}, {how})")
    return PadEos(eos_token=tok.eos_token, eos_id=tok.eos_token_id, pad_token=tok.pad_token,
                  pad_id=tok.pad_token_id, end_of_turn=eot[0] if eot else None, changes=changes,
                  added_tokens=added)


_HISTORY_PROBE = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                  {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
                  {"role": "assistant", "content": "A2"}]


def history_notice(tok) -> str | None:
    """One line when the template renders an assistant turn in the history differently from how it was
    served (so in multi-turn conversations only the turns served as rendered are trained), else None."""
    if not getattr(tok, "chat_template", None):
        return None
    eot = end_of_turn(tok)
    try:
        full = render(tok, _HISTORY_PROBE)
        spans = _trained_spans(tok, _HISTORY_PROBE, full, eot[0] if eot else None)
    except TrainingError:
        return None  # a template that cannot render the probe fails, with its reason, on the data itself
    if len(spans) == 2:
        return None
    return ("multi-turn: this chat template renders earlier assistant turns differently in the history than "
            "when they were served (as Qwen3's drops their think blocks), so only the last assistant turn of a "
            "conversation is trained; the earlier ones are context (one row per turn trains each)")


def _trained_spans(tok, messages: list[dict], full: str, eot: str | None) -> list[tuple[int, int]]:
    """Character spans of ``full`` to train on: each assistant turn through its end-of-turn token, where the
    turn's served prompt and the turn are a prefix of ``full`` (the turn as it was served)."""
    spans, history = [], []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(tok, messages[:i], add_generation_prompt=True)
        upto = render(tok, messages[:i + 1])
        if not upto.startswith(prompt) or not full.startswith(upto):
            history.append(i)  # rendered otherwise in the history than when served: context only
            continue
        start = len(prompt)
        turn = upto[start:]
        if eot is not None:
            k = turn.rfind(eot)
            if k < 0:
                raise TrainingError(f"the chat template does not end assistant message {i} with {eot!r}")
            end = start + k + len(eot)
        else:  # no end-of-turn token in the template: EOS is appended by the caller
            end = len(upto)
        spans.append((start, end))
    if history and not spans:
        raise TrainingError(
            f"the chat template breaks the prefix property at message {history[0]}: the rendered prompt is not "
            "a prefix of the rendered conversation, so assistant tokens cannot be located",
            hint="use --chat-template chatml, or --train-on all")
    return spans


def assistant_only_labels(tok, messages: list[dict], *, max_len: int, train_on: str = "assistant"
                          ) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for one conversation; labels are -100 except the trained tokens.

    ``train_on="assistant"``: assistant turns and their end-of-turn token. ``"all"``: every token.
    Truncated to ``max_len`` tokens.
    """
    eot = end_of_turn(tok)
    full = render(tok, messages)
    spans = _trained_spans(tok, messages, full, eot[0] if eot else None) if train_on == "assistant" else \
        [(0, len(full))]
    if eot is None:  # a template without an end-of-turn token: end the conversation with EOS
        full += tok.eos_token
        spans[-1] = (spans[-1][0], len(full))
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [-100] * len(ids)
    s = 0
    for j, (a, _b) in enumerate(offsets):
        while s < len(spans) and a >= spans[s][1]:
            s += 1
        if s < len(spans) and spans[s][0] <= a < spans[s][1]:
            labels[j] = ids[j]
    return ids[:max_len], labels[:max_len]

