"""Documents for ``ft gen --from-docs``: read them, split them into token-budgeted chunks.

    docs = read_documents(["essays/", "notes.md"])          # [Document(file, text)], sorted by file
    chunks = chunk_document(docs[0], budget=350, overlap=50)  # chunk.text == doc.text[chunk.start:chunk.end]

Formats: .txt, .md/.markdown; .html/.htm (text through the standard library's HTML parser: no
scripts or styles, headings kept as ``#`` lines); .pdf through pypdf (the ``docs`` extra), pages
joined by blank lines. Offsets always index the text as ft reads it (the extracted text, for .pdf
and .html), so a reference's quote is ``text[start:end]`` exactly.

Tokens are approximated as words × 4/3 (English BPE tokenizers average about 0.75 words a token):
no tokenizer is loaded, and the budget is a size, not a hard model limit. Chunks break at headings
(a markdown ``#`` line always starts a new chunk once the current one has body text) and at blank
lines; a paragraph longer than the budget is split at sentence ends. Consecutive chunks of one
section share their last paragraphs up to ``overlap`` tokens, so a question that spans a boundary
still has its context. Chunks with fewer than ``MIN_WORDS`` words (a lone heading, a signature) are
dropped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from ..errors import ConfigError, DataError

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")
MIN_WORDS = 20
_HEADING = re.compile(r"#{1,6}\s+\S")
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")


@dataclass
class Document:
    file: str   # the path as given (a directory's files: DIR/relative path), recorded in each row
    text: str


@dataclass
class Chunk:
    file: str
    index: int    # position among the document's chunks
    start: int    # character offsets into the document's text: text[start:end]
    end: int
    text: str
    heading: str  # the heading the chunk sits under ("" before the first one)


def approx_tokens(text: str) -> int:
    return math.ceil(len(text.split()) * 4 / 3)


def find_documents(paths: list[str]) -> list[Path]:
    """The files named, and the readable files under the directories named, sorted within each."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise DataError(f"cannot read {p.suffix or 'extension-less'} files (ft reads "
                                f"{', '.join(SUFFIXES)})", path=raw)
            found.append(p)
        else:
            raise DataError("no such file or directory", path=raw, hint="check --from-docs")
    if not found:
        raise DataError(f"no {', '.join(SUFFIXES)} files", path=", ".join(paths), hint="check --from-docs")
    return list(dict.fromkeys(found))


def read_documents(paths: list[str]) -> list[Document]:
    docs = [Document(str(p), read_text(p)) for p in find_documents(paths)]
    return [d for d in docs if d.text.strip()]


def read_text(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return _read_pdf(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not valid UTF-8 (byte {e.start})", path=str(path)) from None
    text = text.replace("\r\n", "\n")
    return _html_text(text) if suffix in (".html", ".htm") else text


def _read_pdf(path: Path) -> str:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise ConfigError(f"{path}: reading .pdf files needs pypdf",
                          hint="install ft's docs extra: pip install 'finetune-cli[docs]'") from None
    try:
        pages = [page.extract_text() or "" for page in PdfReader(str(path)).pages]
    except Exception as e:  # pypdf raises many kinds of errors for a damaged file
        raise DataError(f"cannot read this PDF ({type(e).__name__}: {e})", path=str(path)) from None
    return "\n\n".join(p.strip() for p in pages if p.strip())


class _TextOfHTML(HTMLParser):
    BLOCKS = {"p", "div", "br", "li", "tr", "section", "article", "blockquote", "pre", "ul", "ol", "table"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs) -> None:
        if tag in ("script", "style", "head"):
            self.skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag) -> None:
        if tag in ("script", "style", "head"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS or re.fullmatch(r"h[1-6]", tag):
            self.parts.append("\n\n")

    def handle_data(self, data) -> None:
        if not self.skip:
            self.parts.append(re.sub(r"\s+", " ", data))


def _html_text(html: str) -> str:
    parser = _TextOfHTML()
    parser.feed(html)
    parser.close()
    paragraphs = (re.sub(r"[ \t]+", " ", p).strip() for p in re.split(r"\n\s*\n", "".join(parser.parts)))
    return "\n\n".join(p for p in paragraphs if p and p.strip("# "))


@dataclass
class _Block:
    start: int
    end: int
    heading: bool
    under: str  # the heading in force


def _blocks(text: str, budget: int) -> list[_Block]:
    """Headings and paragraphs (a paragraph over ``budget`` tokens split at sentence ends), with offsets."""
    blocks: list[_Block] = []
    heading = ""
    for m in re.finditer(r"[^\n]+(?:\n[^\n]*\S[^\n]*)*", text):  # runs of non-blank lines
        start = m.start()
        for line in re.finditer(r"[^\n]+", m.group()):  # a heading line is a block of its own
            if _HEADING.match(line.group().lstrip()):
                if line.start() > 0:
                    blocks += _paragraph(text, start, m.start() + line.start(), budget, heading)
                heading = line.group().strip().lstrip("#").strip()
                blocks.append(_Block(m.start() + line.start(), m.start() + line.end(), True, heading))
                start = m.start() + line.end() + 1
        if start < m.end():
            blocks += _paragraph(text, start, m.end(), budget, heading)
    return blocks


def _paragraph(text: str, start: int, end: int, budget: int, heading: str) -> list[_Block]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start >= end:
        return []
    if approx_tokens(text[start:end]) <= budget:
        return [_Block(start, end, False, heading)]
    out, piece = [], start
    cuts = [start + m.end() for m in _SENTENCE_END.finditer(text[start:end])] + [end]
    last = start
    for cut in cuts:
        if approx_tokens(text[piece:cut]) > budget and last > piece:
            out.append(_Block(piece, _rstrip(text, last), False, heading))
            piece = last
        last = cut
    out.append(_Block(piece, end, False, heading))
    return out


def _rstrip(text: str, end: int) -> int:
    while end > 0 and text[end - 1].isspace():
        end -= 1
    return end


def chunk_document(doc: Document, *, budget: int = 350, overlap: int = 50) -> list[Chunk]:
    """The document's chunks in order; see the module docstring for the rules."""
    text = doc.text
    spans: list[tuple[int, int, str]] = []
    cur: list[_Block] = []

    def tokens(blocks: list[_Block]) -> int:
        return sum(approx_tokens(text[b.start:b.end]) for b in blocks)

    def flush() -> None:
        body = [b for b in cur if not b.heading]
        if body and sum(len(text[b.start:b.end].split()) for b in body) >= MIN_WORDS:
            spans.append((cur[0].start, cur[-1].end, cur[0].under))

    for block in _blocks(text, budget):
        if block.heading:
            if any(not b.heading for b in cur):
                flush()
                cur = []
            cur.append(block)
            continue
        if cur and any(not b.heading for b in cur) and tokens(cur) + tokens([block]) > budget:
            flush()
            tail: list[_Block] = []
            for b in reversed(cur[1:]):  # never the whole chunk again
                if b.heading or tokens(tail) + tokens([b]) > overlap:
                    break
                tail.insert(0, b)
            cur = tail
        cur.append(block)
    flush()
    return [Chunk(doc.file, i, s, e, text[s:e], h) for i, (s, e, h) in enumerate(spans)]
