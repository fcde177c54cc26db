"""What logic modules use to talk to the user: messages, progress bars and tables.

Logic takes a :class:`Reporter` and never imports rich itself. Progress bars go to stderr and are
off with ``--quiet`` or when stderr is not a terminal; ``--json`` keeps stdout for one JSON document.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterator


class Task:
    """A progress handle. ``advance`` and ``update`` are cheap no-ops when progress is off."""

    def __init__(self, progress: Any = None, task_id: Any = None):
        self._progress = progress
        self._id = task_id

    def advance(self, n: float = 1, **fields: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._id, advance=n, **fields)

    def update(self, **fields: Any) -> None:
        if self._progress is not None:
            self._progress.update(self._id, **fields)


class Reporter:
    """Messages to stderr; tables and results to stdout unless ``json_mode``."""

    def __init__(self, *, quiet: bool = False, json_mode: bool = False, force_progress: bool = False,
                 debug: bool = False):
        self.quiet = quiet
        self.debug = debug  # --debug: commands that start sub-processes pass it on
        self.json_mode = json_mode
        self._force_progress = force_progress
        self._err = None
        self._out = None
        self._stdout = sys.stdout  # the real one: --json sends what libraries print to stderr
        self.stdout_taken = False  # a command's rows went to stdout (``-o -``): the --json summary goes to stderr

    def data_stdout(self):
        """The binary stdout for a command's data rows (``-o -``); the --json summary then goes to stderr."""
        self.stdout_taken = True
        return self._stdout.buffer

    @property
    def err(self):
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, highlight=False, soft_wrap=True)
        return self._err

    @property
    def out(self):
        if self._out is None:
            from rich.console import Console

            self._out = Console(highlight=False, soft_wrap=True)
        return self._out

    @property
    def progress_enabled(self) -> bool:
        if self.quiet:
            return False
        return self._force_progress or sys.stderr.isatty()

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message, markup=False)

    def warn(self, message: str) -> None:
        self.err.print(f"warning: {message}", style="yellow", markup=False)

    def result(self, message: str) -> None:
        """A human summary line on stdout (suppressed in --json mode)."""
        if not self.json_mode:
            self.out.print(message, markup=False)

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.json_mode:
            return
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for i, c in enumerate(columns):
            numeric = rows and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)
            t.add_column(c, justify="right" if numeric else "left")
        for r in rows:
            t.add_row(*["" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in r])
        self.out.print(t)

    def emit_json(self, obj: Any) -> None:
        if self.json_mode:
            import orjson

            stream = sys.stderr if self.stdout_taken else sys.stdout
            stream.flush()
            stream.buffer.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
                                             | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
                                             default=str))
            stream.flush()

    @contextmanager
    def progress(self, description: str, total: float | None = None,
                 fields: dict[str, Any] | None = None, template: str = "") -> Iterator[Task]:
        """A progress bar; ``template`` adds text columns using ``{task.fields[name]}``."""
        if not self.progress_enabled:
            yield Task()
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)

        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
        if template:
            columns.append(TextColumn(template))
        with Progress(*columns, console=self.err, transient=False, refresh_per_second=4) as p:
            tid = p.add_task(description, total=total, **(fields or {}))
            yield Task(p, tid)


def count(n: int, noun: str) -> str:
    """``1 row``, ``2 rows``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


NULL = Reporter(quiet=True)


def human_size(n: float) -> str:
    """Bytes as a person reads them: 512 B, 3.2 MiB, 1.4 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
