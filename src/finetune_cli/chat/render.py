"""How answers look: streamed plain text, a status line per answer, several answers in columns.

Plain text goes straight to stdout as it comes (also when stdout is a pipe or a file); colour and columns
only when stdout is a terminal (rich decides). Columns need about 40 characters per model, else the answers
are stacked under a header each.
"""

from __future__ import annotations

import sys

COLUMN_MIN = 40


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def status(stream, *, stopped: bool = False) -> tuple[str, str]:
    """(text, style) of the line under an answer: tokens, speed, and how it ended."""
    speed = f"{stream.n_tokens} tokens · {stream.tokens_per_s:.1f} tokens/s"
    if stream.prompt_truncated:
        speed += " · prompt cut at its start to fit the context"
    if stopped:
        return f"{speed} · stopped (Ctrl-C)", "yellow"
    if stream.stopped_on_eos:
        return f"{speed} · stopped on EOS", "dim"
    return f"{speed} · HIT THE {stream.max_new_tokens}-TOKEN LIMIT without an end-of-turn token", "bold yellow"


def print_status(console, stream, *, stopped: bool = False) -> None:
    text, style = status(stream, stopped=stopped)
    console.print(f"  [{text}]", style=style, markup=False, highlight=False)


def side_by_side(console, n: int) -> bool:
    return console.is_terminal and n > 1 and console.width >= COLUMN_MIN * n


def columns(names: list[str], texts: list[str], notes: list[str]):
    """A rich table: one column per model, its answer, and its status line under it."""
    from rich.table import Table
    from rich.text import Text

    t = Table(expand=True, show_lines=False)
    for name in names:
        t.add_column(name, ratio=1, overflow="fold")
    t.add_row(*[Text(x) for x in texts])
    t.add_row(*[Text(x, style="dim") for x in notes])
    return t
