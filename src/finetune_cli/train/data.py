"""Training inputs → conversations or text documents, with errors that name file:line.

    convs, docs, files = load_inputs(["data/doric.jsonl", "essays/*.txt"], system="Speak Doric.")
    chunks = chunk_tokens(ids, size=1024, overlap=128)

Accepted: ft's messages JSONL (``{"messages": [...]}``), ShareGPT JSONL (``{"conversations": [...]}``),
alpaca JSONL (``{"instruction", "input", "output", "system"}``, input and system optional; see
:func:`~finetune_cli.sharegpt.alpaca_turns`), ``{"text": ...}`` rows (completion training), the same rows in
.json/.parquet/.csv through ``datasets``, and .txt/.md files (one document each, completion training). Rows of
different shapes may share a file; one row with two conversation shapes is an error.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..files import sha256_file
from ..jsonl import read_rows
from ..sharegpt import alpaca_turns, is_alpaca, normalize_turns, with_system

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


def _add_row(out: Inputs, row: Any, *, path: str, line: int, system: str | None) -> None:
    if not isinstance(row, dict):
        raise DataError("expected an object with 'messages', 'conversations', 'instruction'/'output' (alpaca) "
                        "or 'text'", path=path, line=line)
    key = "messages" if "messages" in row else "conversations"
    turns = row.get(key)
    alpaca = is_alpaca(row)  # before 'text': alpaca exports often carry the rendered prompt as 'text' too
    if turns is not None or alpaca:
        try:
            pairs = with_system(alpaca_turns(row) if alpaca else normalize_turns(turns, key), system)
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
        raise DataError(f"no 'messages', 'conversations' or 'text' field (keys: {keys}); alpaca rows need "
                        "'instruction' and 'output'", path=path, line=line)


def split_weight(raw: str) -> tuple[str, float | None]:
    """``general.jsonl:0.2`` → (general.jsonl, 0.2); a path without a numeric ``:W`` tail has no weight."""
    path, sep, tail = raw.rpartition(":")
    if sep and path:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return raw, None


def mix(out: Inputs, spans: list[tuple[dict, list]], seed: int) -> Inputs:
    """Weighted mixing. A file given as ``PATH:W`` makes up the share W (0 < W < 1) of the training mixture;
    files without a weight keep all their rows. With U unweighted rows and weights summing to S, a weighted
    file contributes round(W / (1 - S) · U) rows: a seeded sample without replacement, or whole copies of the
    file plus a sample when it has fewer rows than that."""
    weights = [f["weight"] for f, _ in spans if f.get("weight") is not None]
    if not weights:
        return out
    total = sum(weights)
    if any(not 0 < w < 1 for w in weights) or total >= 1:
        raise ConfigError(f"option --data: weights are shares of the mixture, each between 0 and 1 and summing "
                          f"below 1 (got {', '.join(f'{w:g}' for w in weights)})",
                          hint="e.g. --data persona.jsonl --data general.jsonl:0.2")
    unweighted = sum(f["rows"] for f, _ in spans if f.get("weight") is None)
    if not unweighted:
        raise ConfigError("option --data: every file has a weight; leave the main data unweighted (all its rows)")
    mixed = Inputs(files=out.files)
    for f, items in spans:
        if f.get("weight") is not None:
            want = round(f["weight"] / (1 - total) * unweighted)
            rng = random.Random(f"{seed}:{f['path']}")
            items = items * (want // len(items)) + rng.sample(items, want % len(items))
            f["rows_read"], f["rows"] = f["rows"], len(items)
        for it in items:
            (mixed.documents if isinstance(it, Document) else mixed.conversations).append(it)
    return mixed


def load_inputs(paths: list[str], *, system: str | None = None, seed: int = 0) -> Inputs:
    """Read every input file in order (``PATH:W`` weighted, see :func:`mix`). The first bad row stops with
    ``file:line: reason``."""
    out = Inputs()
    spans = []
    for given in paths:
        raw, weight = split_weight(given)
        p = Path(raw)
        n_conv, n_doc = len(out.conversations), len(out.documents)
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
        out.files.append({"path": raw, "sha256": sha256_file(p), "rows": len(out) - before,
                          **({"weight": weight} if weight is not None else {})})
        spans.append((out.files[-1], out.conversations[n_conv:] + out.documents[n_doc:]))
    return mix(out, spans, seed)


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
