"""Grounding gates for ``ft gen --from-docs``: does an answer stay inside its chunk?

    gate = GroundingGate({doc.file: doc.text}, persona.markers, Bands(), schema=False)
    reason, detail, scores, prose, stored = gate(job, answer)     # reason None: grounded

Content words are a text's words of three or more letters that are neither stop words nor the
persona's style markers (``aye``, ``ken``: the voice, not the matter), lower-cased, a plural ``s``
dropped. Over distinct content words:

- precision = share of the answer's content words that occur in the chunk: low means the answer
  brings matter the chunk does not hold (invented, or off the subject) -> ``ungrounded``;
- recall = share of the chunk's content words the answer uses: below ``min_recall`` the answer
  barely touches the chunk -> ``low_recall``; above ``max_recall`` it copies the chunk -> ``copied``.

Quoted spans of three or more words ("...", “...”) must occur verbatim in the source document
(whitespace and curly apostrophes normalised) -> ``quote_not_in_source``. In the ``decline`` bucket
(questions the chunk cannot answer) the answer must say so -> ``not_declined``; its precision is not
scored. With ``--format-schema`` the answer is a JSON object ``{"answer": str, "references": [{"file",
"start", "end", "quote"}]}``: unparsable -> ``bad_json``; a quote found nowhere in the named
document -> ``bad_reference`` (wrong offsets of a quote that is there are corrected: models copy text
well and count characters badly, so every stored reference has ``quote == source[start:end]``); a
grounded answer needs at least one reference. Scores are measured on the ``answer`` text, which also
goes to ft gen's voice gates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from .template_provider import STOPWORDS, TOPICLESS

REASONS = ("ungrounded", "low_recall", "copied", "quote_not_in_source", "not_declined", "bad_json",
           "bad_reference")
QUOTE_MIN_WORDS = 3
UNGROUNDED_BUCKETS = TOPICLESS  # a refused harmful ask, who the assistant is: not about the chunk

_WORD = re.compile(r"[^\W\d_][\w'’-]*", re.UNICODE)
_QUOTED = re.compile(r"\"([^\"\n]+)\"|“([^”\n]+)”")
_NEGATION = re.compile(r"\b(not|no|nothing|never|none|doesn't|does not|don't|isn't|can't|cannot|won't|"
                       r"nae|naething|disna|dinna|canna|isna|winna|didna|wisna|nor|nowhere|silent)\b", re.I)
_SOURCE_WORD = re.compile(r"\b(say|says|said|mention|mentions|mentioned|cover|covers|covered|tell|tells|"
                          r"telt|text|passage|page|pages|document|writes|written|writ|book|chapter|here|"
                          r"lines|words)\b", re.I)


@dataclass
class Bands:
    min_precision: float = 0.6
    min_recall: float = 0.05
    max_recall: float = 0.9


def content_words(text: str, markers: frozenset[str] = frozenset()) -> set[str]:
    out = set()
    for w in _WORD.findall(text.lower().replace("’", "'")):
        w = w.strip("'-")
        if w.endswith("'s"):
            w = w[:-2]
        if len(w) < 3 or w in STOPWORDS or w in markers:
            continue
        if len(w) > 4 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.add(w)
    return out


def grounding_scores(answer: str, chunk: str, markers: frozenset[str] = frozenset()) -> dict:
    a, c = content_words(answer, markers), content_words(chunk, markers)
    shared = len(a & c)
    return {"precision": round(shared / len(a), 3) if a else 0.0,
            "recall": round(shared / len(c), 3) if c else 0.0}


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("’", "'").replace("‘", "'")).strip()


def invented_quotes(answer: str, source: str) -> list[str]:
    """Quoted spans of ≥ QUOTE_MIN_WORDS words that do not occur verbatim in ``source``."""
    src = _norm(source)
    spans = [(m.group(1) or m.group(2)).strip(" ,.;:!?") for m in _QUOTED.finditer(answer)]
    return [s for s in spans if len(s.split()) >= QUOTE_MIN_WORDS and _norm(s) not in src]


def declines(answer: str) -> bool:
    """Whether an answer says the source does not cover the question (a negation and a word for the source)."""
    return bool(_NEGATION.search(answer)) and bool(_SOURCE_WORD.search(answer))


def parse_schema_answer(text: str) -> dict | None:
    """The JSON object of a --format-schema answer (a ```json fence allowed around it), or None."""
    t = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", t, re.S)
    if fence:
        t = fence.group(1)
    try:
        obj = orjson.loads(t)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("answer"), str) or \
            not isinstance(obj.get("references"), list):
        return None
    return obj


def resolve_references(refs: list, docs: dict[str, str], near: int = 0) -> tuple[str | None, list[dict]]:
    """``(why the first bad reference is bad, or None; the references with exact offsets)``.

    A reference whose ``start``/``end`` are missing or wrong but whose quote occurs in its document gets
    the quote's offsets (the first occurrence from ``near``, the chunk's start, else from the top):
    a model copies text well and counts characters badly. A quote found nowhere is bad."""
    fixed = []
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict) or not isinstance(ref.get("quote"), str) or not ref["quote"].strip():
            return f"reference {i}: needs a quote (and file, start, end)", refs
        f, q = ref.get("file"), ref["quote"]
        if f not in docs:
            return f"reference {i}: no document {f!r}", refs
        s, e = ref.get("start"), ref.get("end")
        if not (isinstance(s, int) and isinstance(e, int) and docs[f][s:e] == q and 0 <= s < e):
            s = docs[f].find(q, near)
            s = s if s >= 0 else docs[f].find(q)
            if s < 0:
                return f"reference {i}: quote not in {f}: {q[:80]!r}", refs
            e = s + len(q)
        fixed.append({"file": f, "start": s, "end": e, "quote": q})
    return None, fixed


def check_references(refs: list, docs: dict[str, str]) -> str | None:
    """Why the first reference is bad, or None when each quote is exactly ``docs[file][start:end]``."""
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict) or not {"file", "start", "end", "quote"} <= set(ref):
            return f"reference {i}: needs file, start, end and quote"
        f, s, e, q = ref["file"], ref["start"], ref["end"], ref["quote"]
        if f not in docs:
            return f"reference {i}: no document {f!r}"
        if not (isinstance(s, int) and isinstance(e, int) and 0 <= s < e <= len(docs[f])):
            return f"reference {i}: offsets {s!r}..{e!r} outside {f} ({len(docs[f])} characters)"
        if docs[f][s:e] != q:
            return f"reference {i}: {f}[{s}:{e}] is {docs[f][s:e][:60]!r}, not the quote {str(q)[:60]!r}"
    return None


class GroundingGate:
    """The grounding check of one --from-docs run; ``meta`` is what each row records."""

    def __init__(self, docs: dict[str, str], markers: list[str], bands: Bands, *, schema: bool = False):
        self.docs = docs
        self.markers = frozenset(m.strip().lower() for m in markers if " " not in m.strip())
        self.bands = bands
        self.schema = schema

    def __call__(self, job, text: str) -> tuple[str | None, str, dict, str, str]:
        """``(reason or None, detail, scores, prose, stored)``: ``prose`` is what the voice gates read,
        ``stored`` the assistant turn written (with --format-schema: the JSON with exact offsets)."""
        prose, refs = text, None
        if self.schema and job.bucket not in UNGROUNDED_BUCKETS:
            obj = parse_schema_answer(text)
            if obj is None:
                return "bad_json", 'expected {"answer": str, "references": [...]}', {}, text, text
            prose, refs = obj["answer"], obj["references"]
        scores = grounding_scores(prose, job.chunk, self.markers)
        if job.bucket in UNGROUNDED_BUCKETS:
            return None, "", scores, prose, text
        bad = invented_quotes(prose, self.docs[job.file])
        if bad:
            return "quote_not_in_source", f"not in {job.file}: {bad[0][:120]!r}", scores, prose, text
        stored = text
        if refs is not None:
            why, refs = resolve_references(refs, self.docs, job.start)
            if why:
                return "bad_reference", why, scores, prose, text
            scores["references"] = len(refs)
            stored = orjson.dumps({"answer": prose, "references": refs}).decode()
        if job.bucket == "decline":
            reason = None if declines(prose) else "not_declined"
            return reason, "the chunk cannot answer this question" if reason else "", scores, prose, stored
        b = self.bands
        if refs is not None and not refs:
            return "bad_reference", "a grounded answer needs at least one reference", scores, prose, text
        if scores["precision"] < b.min_precision:
            return "ungrounded", f"precision {scores['precision']:.2f} < {b.min_precision:g}", scores, prose, text
        if scores["recall"] < b.min_recall:
            return "low_recall", f"recall {scores['recall']:.2f} < {b.min_recall:g}", scores, prose, text
        if scores["recall"] > b.max_recall:
            return "copied", f"recall {scores['recall']:.2f} > {b.max_recall:g}", scores, prose, text
        return None, "", scores, prose, stored

    def meta(self, job, scores: list[dict]) -> dict:
        return {"source": {"file": job.file, "chunk": job.chunk_index, "start": job.start, "end": job.end,
                           "heading": job.heading},
                "grounding": scores}
