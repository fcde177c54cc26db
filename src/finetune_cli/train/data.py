"""Training inputs → conversations or text documents, with errors that name file:line.

    convs, docs, files = load_inputs(["data/doric.jsonl", "essays/*.txt"], system="Speak Doric.")
    chunks = chunk_tokens(ids, size=1024, overlap=128)

Accepted: ft's messages JSONL (``{"messages": [...]}``), ShareGPT JSONL (``{"conversations": [...]}``),
``{"text": ...}`` rows (completion training), the same rows in .json/.parquet/.csv through
``datasets``, and .txt/.md files (one document each, completion training).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..jsonl import read_rows
from ..sharegpt import normalize_turns, with_system

TEXT_SUFFIXES = {".txt", ".md"}
DATASETS_SUFFIXES = {".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class Conversation:
    messages: list[dict]
    source: str  # file:line
    meta: dict = field(default_factory=dict)


@dataclass
class Document:
    text: str
    source: str
    title: str | None = None


@dataclass
class Inputs:
    conversations: list[Conversation] = field(default_factory=list)
    documents: list[Document] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)  # path, sha256, rows

    def __len__(self) -> int:
        return len(self.conversations) + len(self.documents)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _add_row(out: Inputs, row: Any, *, path: str, line: int, system: str | None) -> None:
    if not isinstance(row, dict):
        raise DataError("expected an object with 'messages', 'conversations' or 'text'", path=path, line=line)
    key = "messages" if "messages" in row else "conversations"
    turns = row.get(key)
    if turns is not None:
        try:
            pairs = with_system(normalize_turns(turns, key), system)
        except ValueError as e:
            raise DataError(str(e), path=path, line=line) from None
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        out.conversations.append(Conversation([{"role": r, "content": c} for r, c in pairs],
                                              f"{path}:{line}", meta))
    elif "text" in row:
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise DataError("'text' must be a non-empty string", path=path, line=line)
        out.documents.append(Document(row["text"], f"{path}:{line}", row.get("title")))
    else:
        keys = ", ".join(sorted(row)[:6]) or "none"
        raise DataError(f"no 'messages', 'conversations' or 'text' field (keys: {keys})", path=path, line=line)


def load_inputs(paths: list[str], *, system: str | None = None) -> Inputs:
    """Read every input file in order. The first bad row stops with ``file:line: reason``."""
    out = Inputs()
    for raw in paths:
        p = Path(raw)
        if not p.is_file():
            raise DataError("no such file" if not p.exists() else "not a file", path=raw)
        before = len(out)
        suffix = p.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            try:
                text = p.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"not valid UTF-8 (byte {e.start})", path=raw) from None
            if text.strip():
                out.documents.append(Document(text, raw))
        elif suffix in DATASETS_SUFFIXES:
            for i, row in enumerate(_datasets_rows(p, DATASETS_SUFFIXES[suffix])):
                _add_row(out, row, path=raw, line=i + 1, system=system)
        else:  # .jsonl, .jsonl.gz and anything else line-oriented
            for line, row in read_rows(p):
                _add_row(out, row, path=raw, line=line, system=system)
        if len(out) == before:
            raise DataError("no training rows", path=raw)
        out.files.append({"path": raw, "sha256": _sha256(p), "rows": len(out) - before})
    return out


def _datasets_rows(p: Path, kind: str):
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(kind, data_files=str(p), split="train")
    except Exception as e:  # datasets raises many types for a malformed file
        raise DataError(f"could not read as {kind}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                        path=str(p)) from None
    for row in ds:  # datasets unifies columns across rows: a missing field comes back as None
        yield {k: v for k, v in row.items() if v is not None}


def most_common_system(convs: list[Conversation]) -> str | None:
    from collections import Counter

    counts = Counter(c.messages[0]["content"] for c in convs if c.messages[0]["role"] == "system")
    return counts.most_common(1)[0][0] if counts else None


def chunk_tokens(ids: list[int], *, size: int, overlap: int) -> list[list[int]]:
    """Windows of ``size`` tokens, consecutive windows sharing ``overlap`` tokens; the tail is kept."""
    if len(ids) <= size:
        return [ids]
    step = size - overlap
    chunks = []
    for start in range(0, len(ids), step):
        chunks.append(ids[start:start + size])
        if start + size >= len(ids):
            break
    return chunks


def document_title(doc: Document, mode: str) -> tuple[str | None, str]:
    """``(header, body)`` for a document under ``--text-header``."""
    if mode == "filename":
        return Path(doc.source.split(":")[0]).stem, doc.text
    if mode == "first-line":
        first, _, rest = doc.text.lstrip().partition("\n")
        return (doc.title or first.strip().lstrip("# ").strip()), (rest if not doc.title else doc.text)
    return None, doc.text
