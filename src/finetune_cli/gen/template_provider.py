"""The offline ``template`` provider: answers composed from a persona's phrase bank.

An answer is an opener (per bucket), body sentences (the topic group's own bodies weighted up) and a
closer — or, for ``safety``, a refusal and one or two redirects — with the topic and
one of its content words woven in. The bank's shares vary that skeleton (core answers without an
opener, answers without a closer, a numbered list, two paragraphs or stanzas, lead-in connectors) and
its ``words`` fill {slots} afresh at each use, so rows differ in shape, length and wording: a model
tuned on them should learn the voice, not recite the bank. Compositions are re-drawn until the
answer lands inside the persona's length and marker bands, so template rows pass ft's own gates.
All randomness comes from a ``random.Random`` seeded per job and turn: the same seed gives the
same answer.
"""

from __future__ import annotations

import random
import re
import string
from functools import lru_cache

from ..persona import Persona, count_words, marker_density
from ..providers import Completion

STOPWORDS = frozenset("""a an the and or but if of to in on at by for with from into onto over under about
after before between through during without within as than then so such that this these those there
here it its is are was were be been being do does did done have has had having can could should would
will shall may might must not no nor too very just only also even still yet your you yours my mine our
ours their them they he she his her we i me us what which who whom whose when where why how all any
both each few more most other some own same up down out off again further once why really actually
one two three first new old without get gets getting make makes making keep keeping way ways""".split())

# buckets whose answers are not about the row's topic: a refused harmful ask, who the assistant is
TOPICLESS = ("safety", "identity")

_WORDS = re.compile(r"[A-Za-z][A-Za-z'-]+")


def topic_phrase(topic: str) -> str:
    """The topic as it reads mid-sentence: no trailing punctuation, first letter lower-cased
    unless it starts an acronym or a proper noun like 'I'."""
    t = topic.strip().rstrip(".?!:;").strip()
    if len(t) > 1 and t[0].isupper() and not t[1].isupper() and not t.startswith("I "):
        t = t[0].lower() + t[1:]
    return t


def topic_things(topic: str) -> list[str]:
    """Content words of a topic that read well alone ('meals', 'radiators'), in order."""
    words = [w.strip("'-") for w in _WORDS.findall(topic)]
    good = [w for w in words if w.lower() not in STOPWORDS and len(w) >= 4
            and not w.lower().endswith(("ing", "ly"))]
    return good or [w for w in words if w.lower() not in STOPWORDS] or [topic_phrase(topic)]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


@lru_cache(maxsize=4096)
def _slots(phrase: str) -> tuple[str, ...]:
    return tuple(f for _, f, _, _ in string.Formatter().parse(phrase) if f)


def _say(phrase: str, fill: dict, words: dict[str, list[str]], rng: random.Random) -> str:
    """``phrase`` with its placeholders filled; each {word-list} slot is drawn afresh."""
    drawn = {k: rng.choice(words[k]) for k in _slots(phrase) if k in words}
    return _cap(phrase.format(**fill, **drawn))


def _uncap(text: str) -> str:
    """A sentence as it reads after a lead-in: first letter lower-cased, except 'I' and acronyms."""
    first = text.split(" ", 1)[0]
    if first == "I" or first.startswith(("I'", "I’")) or (len(first) > 1 and first[1].isupper()):
        return text
    return text[:1].lower() + text[1:]


def compose_prompt(persona: Persona, bucket: str, topic: str, lang: str | None, rng: random.Random) -> str:
    """A user ask for ``bucket`` (a template of the persona's, or of its ``lang`` for multi) about ``topic``:
    {topic} and {thing} filled from it, any {word-list} slot drawn from the persona's ``templates.words``."""
    pool = persona.templates.multi[lang] if lang else getattr(persona.templates, bucket)
    template = rng.choice(pool)
    fill = {"topic": topic_phrase(topic), "thing": rng.choice(topic_things(topic))}
    return _say(template, fill, persona.templates.words, rng)


def compose_answer(persona: Persona, bucket: str, topic: str, group: str, lang: str | None,
                   rng: random.Random, *, max_tries: int = 40) -> str:
    """One answer in the persona's voice for ``bucket`` ('core', 'adv', 'safety', 'multi', 'identity')."""
    bank = persona.bank
    assert bank is not None, "persona has no phrase bank"
    base = {"topic": topic_phrase(topic), "lang": lang or "another language"}
    things = topic_things(topic)
    lo_w, hi_w = persona.length_words
    lo_m, hi_m = persona.marker_band
    pool = bank.bodies + bank.group_bodies.get(group, []) * 3
    first = {"core": bank.openers, "adv": bank.adv_openers, "multi": bank.multi_openers}
    # a refusal or an identity answer is not about the row's topic: no lead-in that names it
    conns = bank.connectors if bucket not in TOPICLESS else \
        [c for c in bank.connectors if not {"topic", "thing"} & set(_slots(c))]
    text = ""
    for _ in range(max_tries):
        fill = dict(base, thing=rng.choice(things))

        def say(phrases: list[str]) -> str:
            return _say(rng.choice(phrases), fill, bank.words, rng)

        if bucket in TOPICLESS:  # a refusal and redirects; who the assistant is and offers of help
            head = [say(bank.refusals if bucket == "safety" else bank.identity)]
            rest = bank.redirects if bucket == "safety" else bank.offers
            body = [_say(p, fill, bank.words, rng) for p in rng.sample(rest, k=min(len(rest), rng.randint(1, 2)))]
        else:
            k = min(len(pool), rng.randint(*bank.sentences))
            # distinct bodies: sample indices, then drop repeats of a weighted group body
            body = [_say(p, fill, bank.words, rng) for p in dict.fromkeys(rng.sample(pool, k=k))]
            # adv and multi answers always open by answering the request; core ones may dive straight in
            head = [say(first[bucket])] if bucket != "core" or rng.random() < bank.opener_share else []
        # closers wish the asker luck with the task: never after refusing it
        tail = [say(bank.closers)] if bucket not in TOPICLESS and rng.random() < bank.closer_share else []
        if bank.layout == "verse":
            lines = head + body + tail
            cut = rng.randint(2, len(lines) - 2) if len(lines) >= 4 and rng.random() < bank.break_share else 0
            text = "\n".join(lines[:cut]) + "\n\n" + "\n".join(lines[cut:]) if cut else "\n".join(lines)
        elif bucket == "core" and len(body) >= 2 and rng.random() < bank.list_share:
            items = "\n".join(f"{i}. {b}" for i, b in enumerate(body, 1))
            text = "\n".join([" ".join(head + [say(bank.list_intros)]), items] + [" ".join(tail)] * bool(tail))
        else:
            if conns:
                body = [say(conns) + " " + _uncap(b)
                        if (i or head) and rng.random() < bank.connector_share else b for i, b in enumerate(body)]
            sents = head + body + tail
            cut = rng.randint(2, len(sents) - 2) if len(sents) >= 4 and rng.random() < bank.break_share else 0
            text = " ".join(sents[:cut]) + "\n\n" + " ".join(sents[cut:]) if cut else " ".join(sents)
        words = count_words(text)
        if lo_w <= words <= hi_w and lo_m <= marker_density(text, persona.markers, words=words) <= hi_m:
            return text
    return text  # the gates will say what is wrong with it


def compose_followup(persona: Persona, topic: str, rng: random.Random) -> str:
    """A follow-up user turn for multi-turn rows."""
    assert persona.bank is not None
    fill = {"topic": topic_phrase(topic), "thing": rng.choice(topic_things(topic)), "lang": "English"}
    return _say(rng.choice(persona.bank.followups), fill, persona.bank.words, rng)


class TemplateProvider:
    """Offline answers from the persona's bank. Same interface as the LLM providers."""

    name = "template"

    def __init__(self, persona: Persona, seed: int):
        if persona.bank is None:
            from ..errors import ConfigError

            raise ConfigError(f"persona {persona.name!r} has no [bank]: the template provider needs one "
                              "(or use --provider openai/anthropic)")
        self.persona = persona
        self.seed = seed
        self.model = f"template-{persona.name}"

    def _rng(self, job_id: str, turn: int, attempt: int, what: str) -> random.Random:
        return random.Random(f"{self.seed}:{job_id}:{turn}:{attempt}:{what}")

    async def answer(self, job, messages: list[dict], turn: int, attempt: int) -> Completion:
        bucket = job.bucket if turn == 0 else "core"
        text = compose_answer(self.persona, bucket, job.topic, job.group, job.lang,
                              self._rng(job.id, turn, attempt, "answer"))
        return Completion(text, "stop", 0, 0)

    async def user_turn(self, job, messages: list[dict], turn: int, attempt: int) -> Completion:
        return Completion(compose_followup(self.persona, job.topic, self._rng(job.id, turn, attempt, "user")))

    async def close(self) -> None:
        return None
