"""The offline stand-in for ``ft gen --from-docs``: extractive questions and answers, no model.

A question comes from the chunk's heading or one of its sentences; an answer is the chunk's own
sentences that share most words with the question, in document order, framed by an opener and
perhaps a closer from the persona's phrase bank (a ``decline`` answer: a line from ``bank.declines``
and what the passage does cover). It is a stand-in for tests, smoke runs and a first look at the
chunks: the answers quote the source rather than explain it, and every row says so
(``meta.provider = "extractive"``). Use an LLM provider for real grounded data.
"""

from __future__ import annotations

import random
import re

import orjson

from ..persona import Persona, count_words, marker_density
from .grounding import UNGROUNDED_BUCKETS
from .template_provider import STOPWORDS, Completion, _say, _uncap, compose_answer, compose_followup, topic_phrase

STAND_IN = ("offline extractive stand-in: questions from headings and sentences, answers are the chunk's own "
            "sentences in the persona's frame (not a model's answers)")
_SENTENCE = re.compile(r"[^.!?\n]*[A-Za-z][^.!?\n]*[.!?]+[\"'”’)]*")
_ABBREV = re.compile(r"\b(Mr|Mrs|Ms|Dr|St|Mt|Prof|Rev|Sr|Jr|No|vs|etc|e\.g|i\.e)\.$")
_CONTENT = re.compile(r"[A-Za-z][A-Za-z'-]{3,}")
OFF_SUBJECT = ["the price of bread in Paris", "the rules of cricket", "railway timetables",
               "the author's favourite music", "how to repair a bicycle", "the weather in Lisbon",
               "the population of Norway", "recipes for apple pie", "the history of the telephone"]
CORE_QUESTIONS = ["What does the text say about {x}?", "What can you tell me about {x}, from the passage?",
                  "According to the passage, what about {x}?", "How does the text describe {x}?",
                  "What happens with {x} in this part?", "Can you explain what the passage says of {x}?"]
DECLINE_QUESTIONS = ["What does the text say about {x}?", "Does the passage tell us anything about {x}?",
                     "What is said here about {x}?"]


def sentences(text: str, offset: int = 0) -> list[tuple[int, int, str]]:
    """``(start, end, sentence)`` for each sentence of ``text``, offsets shifted by ``offset``
    ("Mr. Utterson" stays one sentence)."""
    spans: list[list[int]] = []
    for m in _SENTENCE.finditer(text):
        s, e = m.start(), m.end()
        while s < e and text[s] in " \t\"'“‘":
            s += 1
        if spans and _ABBREV.search(text[spans[-1][0]:spans[-1][1]]) and text[spans[-1][1]:s].strip() == "":
            spans[-1][1] = e
        else:
            spans.append([s, e])
    return [(offset + s, offset + e, text[s:e]) for s, e in spans if len(text[s:e].split()) >= 4]


def _keywords(text: str) -> list[str]:
    return [w for w in _CONTENT.findall(text) if w.lower() not in STOPWORDS]


def make_question(chunk: str, heading: str, bucket: str, rng: random.Random) -> str:
    if bucket == "decline":
        low = chunk.lower()
        pool = [x for x in OFF_SUBJECT if not any(w.lower() in low for w in _keywords(x))] or OFF_SUBJECT
        return rng.choice(DECLINE_QUESTIONS).format(x=rng.choice(pool))
    sents = sentences(chunk)
    if heading and (rng.random() < 0.4 or not sents):
        x = topic_phrase(heading)
    else:
        words = list(dict.fromkeys(_keywords(rng.choice(sents)[2] if sents else chunk)))
        x = " and ".join(words[:2]) if words else "this part"
    return rng.choice(CORE_QUESTIONS).format(x=x)


def extract_answer(persona: Persona, chunk: str, question: str, bucket: str, rng: random.Random, *,
                   heading: str = "", start: int = 0, file: str = "", lang: str | None = None,
                   schema: bool = False) -> str:
    """The chunk's sentences that best match ``question``, in the persona's frame (see module doc)."""
    bank = persona.bank
    assert bank is not None, "persona has no phrase bank"
    sents = sentences(chunk, start)
    qwords = {w.lower() for w in _keywords(question)}
    ranked = sorted(range(len(sents)), key=lambda i: (-len(qwords & {w.lower() for w in _keywords(sents[i][2])}), i))
    thing = (_keywords(question)[-1:] or ["that"])[0] if bucket != "decline" else \
        question.split(" about ", 1)[-1].rstrip("?")
    fill = {"topic": topic_phrase(heading) if heading else thing, "thing": thing, "lang": lang or "English"}
    lo_w, hi_w = persona.length_words
    lo_m, hi_m = persona.marker_band
    text, picked = "", []
    for attempt in range(40):
        k = max(1, min(len(sents) - 1, 3 - attempt % 3))  # never every sentence: that is a copy
        picked = sorted(ranked[:k] if bucket != "decline" else ranked[attempt % max(1, len(sents)):][:1])
        body = [sents[i][2] for i in picked]
        if bucket == "decline":
            head = [_say(rng.choice(bank.declines), fill, bank.words, rng) if bank.declines else
                    f"The text does not say anything about {thing}, so I will not guess."]
            body = ["It does say this: " + body[0]] if body else []
        else:
            openers = {"adv": bank.adv_openers, "multi": bank.multi_openers}.get(bucket, bank.openers)
            head = [_say(rng.choice(openers), fill, bank.words, rng)]
        tail = [_say(rng.choice(bank.closers), fill, bank.words, rng)] if attempt % 2 or rng.random() < 0.5 else []
        if bank.connectors and body and attempt >= 6:
            body[0] = _say(rng.choice(bank.connectors), fill, bank.words, rng) + " " + _uncap(body[0])
        text = ("\n" if bank.layout == "verse" else " ").join(head + body + tail)
        words = count_words(text)
        if lo_w <= words <= hi_w and lo_m <= marker_density(text, persona.markers, words=words) <= hi_m:
            break
    if not schema:
        return text
    refs = [{"file": file, "start": sents[i][0], "end": sents[i][1], "quote": sents[i][2]} for i in picked]
    return orjson.dumps({"answer": text, "references": refs if bucket != "decline" else []}).decode()


class ExtractiveProvider:
    """Offline questions and extractive answers for --from-docs jobs (the template provider's twin)."""

    name = "extractive"

    def __init__(self, persona: Persona, seed: int, *, schema: bool = False):
        if persona.bank is None:
            from ..errors import ConfigError

            raise ConfigError(f"persona {persona.name!r} has no [bank]: the offline stand-in needs one "
                              "(or use --provider openai/anthropic)")
        self.persona = persona
        self.seed = seed
        self.schema = schema
        self.model = f"extractive-{persona.name} ({STAND_IN.split(':')[0]})"

    def _rng(self, job_id: str, turn: int, attempt: int, what: str) -> random.Random:
        return random.Random(f"{self.seed}:{job_id}:{turn}:{attempt}:{what}")

    async def user_turn(self, job, messages: list[dict], turn: int, attempt: int) -> Completion:
        rng = self._rng(job.id, turn, attempt, "user")
        if turn == 0:
            return Completion(make_question(job.chunk, job.heading, job.bucket, rng))
        return Completion(compose_followup(self.persona, job.heading or job.topic, rng))

    async def answer(self, job, messages: list[dict], turn: int, attempt: int) -> Completion:
        rng = self._rng(job.id, turn, attempt, "answer")
        if job.bucket in UNGROUNDED_BUCKETS and turn == 0:
            return Completion(compose_answer(self.persona, job.bucket, job.topic, job.group, None, rng))
        bucket = job.bucket if turn == 0 else "core"
        return Completion(extract_answer(self.persona, job.chunk, messages[-1]["content"], bucket, rng,
                                         heading=job.heading, start=job.start, file=job.file, lang=job.lang,
                                         schema=self.schema))

    async def close(self) -> None:
        return None
