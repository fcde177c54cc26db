"""``ft to-sharegpt``: OpenAI messages JSONL ⇄ ShareGPT conversations JSONL; alpaca rows in, either way.

    ft to-sharegpt --input datasets/doric.jsonl --output datasets/doric.sharegpt.jsonl
    ft to-sharegpt --input sg.jsonl --output msgs.jsonl --reverse --system @system.txt
    ft to-sharegpt --input alpaca.jsonl --output alpaca.sharegpt.jsonl

Accepts role/content and from/value turns and the usual role aliases (user/human/input,
assistant/gpt/output, system), as Unsloth's ``standardize_sharegpt`` does. Alpaca rows
(``{"instruction", "input", "output", "system"}``, input and system optional) become one exchange
(:func:`alpaca_turns`) and are written as ShareGPT, or as messages with ``--reverse``. A conversation with an
unknown role, empty content, two turns of one role in a row, or no final assistant turn, and an alpaca row with
a missing or mistyped field, is an error naming ``file:line`` (or is skipped and counted with
``--on-error skip``). Output order is input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import opt, text_or_file
from .errors import DataError
from .jsonl import AtomicWriter, ReadStats, read_rows
from .ui import Reporter, count

ROLE_ALIASES = {
    "system": "system",
    "user": "user", "human": "user", "input": "user",
    "assistant": "assistant", "gpt": "assistant", "output": "assistant",
}
TO_SHAREGPT = {"system": "system", "user": "human", "assistant": "gpt"}
ALPACA_KEYS = ("instruction", "input", "output", "system")


@dataclass
class ToShareGPTConfig:
    input: str = opt(help="Input JSONL: messages, ShareGPT with --reverse, or alpaca rows either way (.jsonl or "
                          ".jsonl.gz; - for stdin).", short="-i", required=True)
    output: str = opt(help="Output JSONL, written atomically (- for stdout).", short="-o", required=True)
    reverse: bool = opt(False, "Convert ShareGPT conversations (or alpaca rows) to OpenAI messages.")
    drop_meta: bool = opt(False, "Drop each row's meta object.")
    system: str | None = opt(None, "Add or replace the system turn: TEXT or @file.")
    on_error: str = opt("fail", "What a bad row does: stop with its file:line, or skip it and count it.",
                        choices=("fail", "skip"))


def normalize_turns(turns: Any, field: str | None = None) -> list[tuple[str, str]]:
    """``[(role, content), ...]`` with canonical roles (system/user/assistant), validated.

    Raises ValueError with the reason, after ``field`` (the row's key the turns came from) where given;
    the caller adds file:line.
    """
    try:
        return _normalize_turns(turns)
    except ValueError as e:
        if field is None:
            raise
        raise ValueError(f"{field}: {e}") from None


def _normalize_turns(turns: Any) -> list[tuple[str, str]]:
    if not isinstance(turns, list) or not turns:
        raise ValueError("conversation must be a non-empty list of turns")
    out: list[tuple[str, str]] = []
    prev = None
    for i, t in enumerate(turns):
        if type(t) is not dict:
            raise ValueError(f"turn {i} is not an object")
        if "role" in t:
            role, content = t["role"], t.get("content")
        elif "from" in t:
            role, content = t["from"], t.get("value")
        else:
            raise ValueError(f"turn {i} has neither role/content nor from/value")
        canon = ROLE_ALIASES.get(role) if isinstance(role, str) else None
        if canon is None:
            raise ValueError(f"turn {i}: unknown role {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"turn {i} ({role}): empty content")
        if canon == prev:
            raise ValueError(f"turns {i - 1} and {i}: two {canon} turns in a row")
        if canon == "system" and i != 0:
            raise ValueError(f"turn {i}: a system turn must come first")
        out.append((canon, content))
        prev = canon
    if prev != "assistant":
        raise ValueError("conversation does not end with an assistant turn")
    return out


def is_alpaca(row: dict) -> bool:
    """An alpaca row: it has ``instruction`` or ``output`` (``input`` and ``system`` alone say nothing)."""
    return "instruction" in row or "output" in row


def alpaca_turns(row: dict) -> list[tuple[str, str]]:
    """An alpaca row → ``[(role, content), ...]``: the system turn when ``system`` is non-empty, the user turn
    ``instruction`` (then a newline and ``input`` when that is non-empty), the assistant turn ``output``.

    The newline join is LLaMA-Factory's (``"\\n".join([instruction, input])``) and Axolotl's chat styles'
    (``{instruction}\\n{input}``). A null ``input`` or ``system`` counts as absent, as it does in .json/.parquet
    files read through ``datasets``. Raises ValueError naming the field; the caller adds file:line.
    """
    mixed = [k for k in ("messages", "conversations") if k in row]
    if mixed:
        raise ValueError(f"row mixes shapes: {mixed[0]!r} and alpaca 'instruction'/'output'; keep one per row")
    for key in ("instruction", "output"):
        if key not in row:
            raise ValueError(f"alpaca row has no {key!r}")
        if not isinstance(row[key], str) or not row[key].strip():
            raise ValueError(f"{key!r} must be a non-empty string (got {_describe(row[key])})")
    for key in ("input", "system"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise ValueError(f"{key!r} must be a string (got {_describe(row[key])})")
    user = row["instruction"]
    if (row.get("input") or "").strip():
        user += "\n" + row["input"]
    turns = [("user", user), ("assistant", row["output"])]
    if (row.get("system") or "").strip():
        turns.insert(0, ("system", row["system"]))
    return turns


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return "an empty string" if not value else "only whitespace"
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def with_system(turns: list[tuple[str, str]], system: str | None) -> list[tuple[str, str]]:
    if system is None:
        return turns
    if turns[0][0] == "system":
        return [("system", system)] + turns[1:]
    return [("system", system)] + turns


def convert_row(row: dict, *, reverse: bool, drop_meta: bool, system: str | None) -> dict:
    src_key, dst_key = ("conversations", "messages") if reverse else ("messages", "conversations")
    turns = row.get(src_key)
    if is_alpaca(row):
        src_keys = ALPACA_KEYS
        turns = with_system(alpaca_turns(row), system)
    elif turns is None:
        other = "messages" if reverse else "conversations"
        if other in row:
            hint = " (it has 'conversations': did you mean --reverse?)" if not reverse else \
                " (it has 'messages': drop --reverse?)"
            raise ValueError(f"missing {src_key!r}{hint}")
        raise ValueError(f"missing {src_key!r} (or alpaca 'instruction' and 'output')")
    else:
        src_keys = (src_key,)
        turns = with_system(normalize_turns(turns, src_key), system)
    if reverse:
        conv = [{"role": r, "content": c} for r, c in turns]
    else:
        conv = [{"from": TO_SHAREGPT[r], "value": c} for r, c in turns]
    out = {dst_key: conv}
    for k, v in row.items():
        if k in src_keys or (drop_meta and k == "meta"):
            continue
        out[k] = v
    return out


def run(cfg: ToShareGPTConfig, reporter: Reporter) -> dict:
    system = text_or_file(cfg.system)
    stats = ReadStats()
    name = "<stdin>" if cfg.input == "-" else cfg.input
    # -o -: rows on stdout (with --json, the summary then goes to stderr)
    stdout = reporter.data_stdout() if cfg.output == "-" else None
    with reporter.progress("converting", total=None) as task, AtomicWriter(cfg.output, stdout=stdout) as w:
        for lineno, row in read_rows(cfg.input, on_error=cfg.on_error, stats=stats):
            try:
                out = convert_row(row, reverse=cfg.reverse, drop_meta=cfg.drop_meta, system=system)
            except ValueError as e:
                err = DataError(str(e), path=name, line=lineno)
                if cfg.on_error == "fail":
                    raise err from None
                stats.skip(err)
                continue
            w.write(out)
            if not lineno % 4096:
                task.advance(4096)
    direction = "ShareGPT → messages" if cfg.reverse else "messages → ShareGPT"
    reporter.info(f"{direction}: wrote {count(w.count, 'row')} to {cfg.output}"
                  + (f", skipped {stats.skipped}" if stats.skipped else ""))
    for ex in stats.examples:
        reporter.warn(f"skipped {ex}")
    return {"written": w.count, "skipped": stats.skipped, "skip_reasons": dict(stats.reasons),
            "output": cfg.output}
