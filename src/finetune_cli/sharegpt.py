"""``ft to-sharegpt``: OpenAI messages JSONL ⇄ ShareGPT conversations JSONL.

    ft to-sharegpt --input datasets/doric.jsonl --output datasets/doric.sharegpt.jsonl
    ft to-sharegpt --input sg.jsonl --output msgs.jsonl --reverse --system @system.txt

Accepts role/content and from/value turns and the usual role aliases (user/human/input,
assistant/gpt/output, system), as Unsloth's ``standardize_sharegpt`` does. A conversation with an
unknown role, empty content, two turns of one role in a row, or no final assistant turn is an error
naming ``file:line`` (or is skipped and counted with ``--on-error skip``). Output order is input order.
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


@dataclass
class ToShareGPTConfig:
    input: str = opt(help="Input JSONL (.jsonl or .jsonl.gz; - for stdin).", short="-i", required=True)
    output: str = opt(help="Output JSONL, written atomically (- for stdout).", short="-o", required=True)
    reverse: bool = opt(False, "Convert ShareGPT conversations back to OpenAI messages.")
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


def with_system(turns: list[tuple[str, str]], system: str | None) -> list[tuple[str, str]]:
    if system is None:
        return turns
    if turns[0][0] == "system":
        return [("system", system)] + turns[1:]
    return [("system", system)] + turns


def convert_row(row: dict, *, reverse: bool, drop_meta: bool, system: str | None) -> dict:
    src_key, dst_key = ("conversations", "messages") if reverse else ("messages", "conversations")
    turns = row.get(src_key)
    if turns is None:
        other = "messages" if reverse else "conversations"
        if other in row:
            hint = " (it has 'conversations': did you mean --reverse?)" if not reverse else \
                " (it has 'messages': drop --reverse?)"
            raise ValueError(f"missing {src_key!r}{hint}")
        raise ValueError(f"missing {src_key!r}")
    turns = with_system(normalize_turns(turns, src_key), system)
    if reverse:
        conv = [{"role": r, "content": c} for r, c in turns]
    else:
        conv = [{"from": TO_SHAREGPT[r], "value": c} for r, c in turns]
    out = {dst_key: conv}
    for k, v in row.items():
        if k == src_key or (drop_meta and k == "meta"):
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
