"""An Ollama Modelfile next to the GGUF: the chat template as a Go template, stop tokens, the run's system prompt.

    cd merged/a/gguf && ollama create doric -f Modelfile && ollama run doric

Ollama does not run Jinja: the template used in training is recognised by what it renders (ChatML, Phi-4's
ChatML with ``<|im_sep|>``, Llama-3 headers, Phi-3's ``<|user|>`` turns or Gemma's ``<start_of_turn>``) and
translated. Any other template is not guessed at: the Modelfile says it could not be translated and carries
the Jinja as a comment for a human to port.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..ui import NULL, Reporter

# family -> (a turn's opening with {role}, its close): every message is open + content + close, and the
# generation prompt is the assistant's opening
TURNS = {
    "chatml": ("<|im_start|>{role}\n", "<|im_end|>\n"),
    "phi4": ("<|im_start|>{role}<|im_sep|>", "<|im_end|>"),
    "llama3": ("<|start_header_id|>{role}<|end_header_id|>\n\n", "<|eot_id|>"),
    "phi3": ("<|{role}|>\n", "<|end|>\n"),
}
# Gemma has no system role: a leading system message is folded into the first turn, and the assistant is "model"
GEMMA_GO = ('{{- $sys := "" }}{{- $first := true }}{{- range $i, $_ := .Messages }}'
            '{{ if and (eq $i 0) (eq .Role "system") }}{{ $sys = .Content }}'
            '{{ else }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
            '{{ if and $first $sys }}{{ $sys }}\n\n{{ end }}{{ $first = false }}{{ .Content }}<end_of_turn>\n'
            '{{ end }}{{ end }}<start_of_turn>model\n')
# a template with its thinking switch off (Qwen3's) opens the reply with an empty think block
_EMPTY_THINK = re.compile(r"<think>\s*</think>\s*")
_PROBE = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]


def _go_turns(family: str) -> str:
    open_, close = TURNS[family]
    return ("{{- range .Messages }}" + open_.format(role="{{ .Role }}") + "{{ .Content }}" + close + "{{ end }}"
            + open_.format(role="assistant"))


CHATML_GO = _go_turns("chatml")
LLAMA3_GO = _go_turns("llama3")


def _expected(family: str) -> tuple[str, str]:
    """What the family's template renders for the probe conversation, and its generation prompt."""
    if family == "gemma":
        return ("<start_of_turn>user\nS\n\nU<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n",
                "<start_of_turn>model\n")
    open_, close = TURNS[family]
    return "".join(open_.format(role=m["role"]) + m["content"] + close for m in _PROBE), open_.format(role="assistant")


def template_family(tok: Any) -> str | None:
    """``chatml``, ``phi4``, ``llama3``, ``phi3`` or ``gemma`` (``-bos`` added where the template writes BOS
    itself), or None: from what the template renders, not from its source text."""
    if not getattr(tok, "chat_template", None):
        return None
    try:
        text = tok.apply_chat_template(_PROBE, tokenize=False)
        gen = tok.apply_chat_template(_PROBE[:2], tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that cannot render our probe is not one we can translate
        return None
    bos, eos = tok.bos_token or "", tok.eos_token or ""
    text = _EMPTY_THINK.sub("", text)
    for family in (*TURNS, "gemma"):
        want, want_gen = _expected(family)
        # Phi-3's own template ends a conversation without a generation prompt with EOS
        for body in (want, want + eos) if eos else (want,):
            if text in (body, bos + body) and _generation_tail(gen, want_gen) is not None:
                return family + "-bos" if bos and text.startswith(bos) else family
    return None


def _generation_tail(gen: str, want_gen: str) -> str | None:
    """What the generation prompt adds after the assistant's opening: "" or an empty think block (None: other)."""
    k = gen.rfind(want_gen)
    if k < 0:
        return None
    tail = gen[k + len(want_gen):]
    return tail if not tail or _EMPTY_THINK.fullmatch(tail) else None


def _quote(s: str) -> str:
    return '"""' + s.replace('"""', '\\"\\"\\"') + '"""'


def modelfile_text(gguf_name: str, tok: Any, system: str | None) -> tuple[str, str | None]:
    from ..chat_template import eos_token_ids

    family = template_family(tok)
    lines = ["# Ollama Modelfile written by ft merge: ollama create NAME -f Modelfile", f"FROM ./{gguf_name}"]
    if family is not None:
        base = family.removesuffix("-bos")
        # llama.cpp adds BOS itself only when the tokenizer does; the training template wrote it explicitly
        adds_bos = bool(tok("a")["input_ids"]) and tok("a")["input_ids"][0] == tok.bos_token_id
        prefix = tok.bos_token if family.endswith("-bos") and not adds_bos else ""
        go = GEMMA_GO if base == "gemma" else _go_turns(base)
        gen = tok.apply_chat_template(_PROBE[:2], tokenize=False, add_generation_prompt=True)
        go += _generation_tail(gen, _expected(base)[1])  # e.g. Qwen3's empty think block under --thinking off
        lines.append(f"TEMPLATE {_quote(prefix + go)}")
    else:
        lines.append("# ft could not translate this chat template to Ollama's Go template (only ChatML, Llama-3, Phi")
        lines.append("# and Gemma turns are recognised); write TEMPLATE by hand. The Jinja template used in training was:")
        lines += ["#   " + ln for ln in (getattr(tok, "chat_template", None) or "(none)").splitlines()]
    for i in eos_token_ids(tok):
        lines.append(f"PARAMETER stop {_quote_simple(tok.convert_ids_to_tokens(i))}")
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    return "\n".join(lines) + "\n", family


def _quote_simple(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_modelfile(out_dir: Path, gguf_name: str, tok: Any, system: str | None, reporter: Reporter = NULL) -> Path:
    text, family = modelfile_text(gguf_name, tok, system)
    path = out_dir / "Modelfile"
    path.write_text(text, encoding="utf-8")
    if family is None:
        reporter.warn(f"{path}: the chat template could not be translated for Ollama: edit TEMPLATE by hand")
    return path
