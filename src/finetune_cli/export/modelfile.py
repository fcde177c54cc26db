"""An Ollama Modelfile next to the GGUF: the chat template as a Go template, stop tokens, the run's system prompt.

    cd merged/a/gguf && ollama create doric -f Modelfile && ollama run doric

Ollama does not run Jinja: the template used in training is recognised by what it renders (ChatML or
Llama-3 headers) and translated. Any other template is not guessed at: the Modelfile says it could
not be translated and carries the Jinja as a comment for a human to port.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..ui import NULL, Reporter

CHATML_GO = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
             "<|im_start|>assistant\n")
LLAMA3_GO = ("{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
             "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n")
_PROBE = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]


def template_family(tok: Any) -> str | None:
    """``chatml``, ``llama3`` or None, from what the template renders (not from its source text)."""
    if not getattr(tok, "chat_template", None):
        return None
    try:
        text = tok.apply_chat_template(_PROBE, tokenize=False)
        gen = tok.apply_chat_template(_PROBE[:2], tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that cannot render our probe is not one we can translate
        return None
    chatml = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    if text == chatml and gen.endswith("<|im_start|>assistant\n"):
        return "chatml"
    bos = tok.bos_token or ""
    llama3 = ("<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>"
              "\n\nU<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>")
    if text in (llama3, bos + llama3) and gen.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n"):
        return "llama3-bos" if bos and text.startswith(bos) else "llama3"
    return None


def _quote(s: str) -> str:
    return '"""' + s.replace('"""', '\\"\\"\\"') + '"""'


def modelfile_text(gguf_name: str, tok: Any, system: str | None) -> tuple[str, str | None]:
    from ..chat_template import eos_token_ids

    family = template_family(tok)
    lines = [f"# Ollama Modelfile written by ft merge: ollama create NAME -f Modelfile", f"FROM ./{gguf_name}"]
    if family == "chatml":
        lines.append(f"TEMPLATE {_quote(CHATML_GO)}")
    elif family in ("llama3", "llama3-bos"):
        # llama.cpp adds BOS itself only when the tokenizer does; the training template wrote it explicitly
        adds_bos = bool(tok("a")["input_ids"]) and tok("a")["input_ids"][0] == tok.bos_token_id
        prefix = tok.bos_token if family == "llama3-bos" and not adds_bos else ""
        lines.append(f"TEMPLATE {_quote(prefix + LLAMA3_GO)}")
    else:
        lines.append("# ft could not translate this chat template to Ollama's Go template (only ChatML and Llama-3")
        lines.append("# are recognised); write TEMPLATE by hand. The Jinja template used in training was:")
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
