"""ft's one JSONL layer: streaming reads with line-numbered errors, atomic and resumable writes.

    for line, row in read_rows("data.jsonl.gz", on_error="skip", stats=stats): ...
    write_rows_atomic("out.jsonl", rows)          # temp file + fsync + rename: never a torn file
    with AppendWriter("gen.jsonl") as w: w.write(row)   # resumable producers, fsync in batches

``-`` reads stdin / writes stdout. Files ending in ``.gz`` are gzip-compressed.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from .errors import DataError

OnError = Literal["fail", "skip"]
UTF8_BOM = b"\xef\xbb\xbf"  # Windows editors start files with one; ft reads past it
_DUMP_OPTS = orjson.OPT_APPEND_NEWLINE


def dumps(row: Any) -> bytes:
    """One JSONL line (UTF-8, newline-terminated)."""
    return orjson.dumps(row, option=_DUMP_OPTS)


@dataclass
class ReadStats:
    """What a read saw: rows yielded, and rows skipped under ``on_error="skip"`` with why."""

    rows: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first few "file:line: reason"

    def skip(self, err: DataError) -> None:
        self.skipped += 1
        self.reasons[err.reason.split(":")[0]] += 1
        if len(self.examples) < 5:
            self.examples.append(str(err))


def _open_read(path: str | Path) -> IO[bytes]:
    if str(path) == "-":
        return sys.stdin.buffer
    p = Path(path)
    if not p.exists():
        raise DataError("no such file", path=str(p), hint="check the path")
    if p.is_dir():
        raise DataError("is a directory, expected a .jsonl file", path=str(p))
    if p.suffix == ".gz":
        return gzip.open(p, "rb")
    return open(p, "rb", buffering=1 << 20)


def _line_error(raw: bytes, err: Exception) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as ue:
        return f"invalid UTF-8 at byte {ue.start}"
    return f"malformed JSON ({err})"


def read_rows(path: str | Path, *, on_error: OnError = "fail",
              stats: ReadStats | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, row)`` for each JSON object in a JSONL file, streaming.

    Blank lines are ignored. A malformed line, a line that is not an object, or invalid UTF-8
    raises :class:`DataError` naming ``file:line`` — or, with ``on_error="skip"``, is counted in
    ``stats`` and skipped.
    """
    stats = stats if stats is not None else ReadStats()
    name = "<stdin>" if str(path) == "-" else str(path)
    f = _open_read(path)
    try:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]  # a BOM (Windows editors write one) is not part of the first row
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                if not raw.strip():
                    continue
                err = DataError(_line_error(raw, e), path=name, line=lineno)
                if on_error == "fail":
                    raise err from None
                stats.skip(err)
                continue
            except (EOFError, OSError) as e:  # a truncated .gz stream
                raise DataError(f"cannot read: {e}", path=name, line=lineno) from None
            if type(obj) is not dict:
                err = DataError(f"expected a JSON object, got {type(obj).__name__}",
                                path=name, line=lineno)
                if on_error == "fail":
                    raise err
                stats.skip(err)
                continue
            stats.rows += 1
            yield lineno, obj
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot read: {e}", path=name) from None
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def read_json(path: str | Path) -> Any:
    """Read one whole JSON document with a clear error on failure."""
    p = Path(path)
    if not p.is_file():
        raise DataError("no such file", path=str(p))
    data = p.read_bytes().removeprefix(UTF8_BOM)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        line = data[: e.pos].count(b"\n") + 1 if getattr(e, "pos", None) is not None else None
        raise DataError(f"malformed JSON ({e.msg})", path=str(p), line=line) from None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicWriter:
    """Write a whole file so that readers see the old file or the complete new one, never a part.

    Rows go to a temp file beside the target; on a clean exit it is fsynced and renamed over the
    target. On any exception (Ctrl-C included) the temp file is removed and the target untouched.
    """

    def __init__(self, path: str | Path, *, stdout: IO[bytes] | None = None):
        self.path = Path(path)
        self.count = 0
        self._stdout = str(path) == "-"
        self._stream = stdout  # where ``-`` writes (default: sys.stdout's buffer when entered)

    def __enter__(self) -> AtomicWriter:
        if self._stdout:
            self._raw = None
            self._f = self._stream or sys.stdout.buffer
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._raw = open(self.tmp, "wb", buffering=1 << 20)
        self._f = (gzip.GzipFile(filename="", fileobj=self._raw, mode="wb", mtime=0)
                   if self.path.suffix == ".gz" else self._raw)
        return self

    def write(self, row: Any) -> None:
        self._f.write(dumps(row))
        self.count += 1

    def write_bytes(self, data: bytes) -> None:
        self._f.write(data)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._stdout:
            if exc_type is None:  # after a BrokenPipeError, flushing would only raise it again
                self._f.flush()
            return
        try:
            if self._f is not self._raw:
                self._f.close()
            if exc_type is None:
                self._raw.flush()
                os.fsync(self._raw.fileno())
            self._raw.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
                _fsync_dir(self.path.parent)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()


def write_rows_atomic(path: str | Path, rows: Iterable[Any]) -> int:
    """Write all rows to ``path`` atomically; returns the number written."""
    with AtomicWriter(path) as w:
        for row in rows:
            w.write(row)
    return w.count


def write_text_atomic(path: str | Path, text: str | bytes) -> None:
    """Write a text (or bytes) file atomically."""
    data = text.encode() if isinstance(text, str) else text
    with AtomicWriter(path) as w:
        w.write_bytes(data)


def write_json_atomic(path: str | Path, obj: Any, *, indent: bool = True) -> None:
    opts = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE if indent else orjson.OPT_APPEND_NEWLINE
    write_text_atomic(path, orjson.dumps(obj, option=opts))


def repair_tail(path: Path) -> int:
    """Cut a torn last line (a process killed mid-write) so appends start on a clean line.

    Returns the number of bytes removed.
    """
    if not path.exists() or path.suffix == ".gz":
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(-1, io.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        # walk back to the last newline
        block = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                f.truncate(keep)
                return size - keep
            pos = start
        f.truncate(0)
        return size


class AppendWriter:
    """Append rows to a JSONL file for resumable producers.

    Each row is flushed to the OS at once; ``fsync`` runs every ``fsync_every`` rows or
    ``fsync_seconds``, whichever comes first, and on close. A torn last line left by a killed
    process is cut on open, so a resumed run never reads half a row.
    """

    def __init__(self, path: str | Path, *, fsync_every: int = 64, fsync_seconds: float = 1.0):
        self.path = Path(path)
        self.fsync_every = fsync_every
        self.fsync_seconds = fsync_seconds
        self.count = 0
        self._pending = 0
        self._last_sync = time.monotonic()
        self._f: IO[bytes] | None = None

    def __enter__(self) -> AppendWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_bytes = repair_tail(self.path)
        self._f = open(self.path, "ab")
        return self

    def write(self, row: Any) -> None:
        assert self._f is not None, "use AppendWriter as a context manager"
        self._f.write(dumps(row))
        self._f.flush()
        self.count += 1
        self._pending += 1
        now = time.monotonic()
        if self._pending >= self.fsync_every or now - self._last_sync >= self.fsync_seconds:
            self.sync()

    def sync(self) -> None:
        if self._f is not None and self._pending:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._pending = 0
            self._last_sync = time.monotonic()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._f is not None:
            self.sync()
            self._f.close()
            self._f = None
