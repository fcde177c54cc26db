"""The offline ``template`` provider: answers composed from a persona's phrase bank.

An answer is an opener (per bucket), 2–5 body sentences (the topic group's own bodies weighted up)
and a closer — or, for ``safety``, a refusal, one or two redirects and a closer — with the topic and
one of its content words woven in. Compositions are re-drawn until the answer lands inside the
persona's length and marker bands, so template rows pass ft's own gates. All randomness comes from
a ``random.Random`` seeded per job and turn: the same seed gives the same answer.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .persona import Persona, count_words, marker_density

STOPWORDS = frozenset("""a an the and or but if of to in on at by for with from into onto over under about
after before between through during without within as than then so such that this these those there
here it its is are was were be been being do does did done have has had having can could should would
will shall may might must not no nor too very just only also even still yet your you yours my mine our
ours their them they he she his her we i me us what which who whom whose when where why how all any
both each few more most other some own same up down out off again further once why really actually
one two three first new old without get gets getting make makes making keep keeping way ways""".split())

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


@dataclass
class Completion:
    text: str
    finish: str = "stop"  # "stop" or "length" (truncated)
    tokens_in: int = 0
    tokens_out: int = 0


def compose_answer(persona: Persona, bucket: str, topic: str, group: str, lang: str | None,
                   rng: random.Random, *, max_tries: int = 40) -> str:
    """One answer in the persona's voice for ``bucket`` ('core', 'adv', 'safety', 'multi')."""
    bank = persona.bank
    assert bank is not None, "persona has no phrase bank"
    fill = {"topic": topic_phrase(topic), "lang": lang or "another language"}
    things = topic_things(topic)
    lo_w, hi_w = persona.length_words
    lo_m, hi_m = persona.marker_band
    pool = bank.bodies + bank.group_bodies.get(group, []) * 3
    first = {"core": bank.openers, "adv": bank.adv_openers, "multi": bank.multi_openers}
    joiner = "\n" if bank.layout == "verse" else " "
    text = ""
    for _ in range(max_tries):
        if bucket == "safety":
            parts = [rng.choice(bank.refusals)] + rng.sample(bank.redirects, k=min(len(bank.redirects),
                                                                                   rng.randint(1, 2)))
        else:
            k = min(len(pool), rng.randint(*bank.sentences))
            # distinct bodies: sample indices, then drop repeats of a weighted group body
            bodies = list(dict.fromkeys(rng.sample(pool, k=k)))
            parts = [rng.choice(first.get(bucket, bank.openers))] + bodies
        parts.append(rng.choice(bank.closers))
        fill["thing"] = rng.choice(things)
        text = joiner.join(_cap(p.format(**fill)) for p in parts)
        words = count_words(text)
        if lo_w <= words <= hi_w and lo_m <= marker_density(text, persona.markers) <= hi_m:
            return text
    return text  # the gates will say what is wrong with it


def compose_followup(persona: Persona, topic: str, rng: random.Random) -> str:
    """A follow-up user turn for multi-turn rows."""
    assert persona.bank is not None
    return _cap(rng.choice(persona.bank.followups).format(topic=topic_phrase(topic),
                                                         thing=rng.choice(topic_things(topic))))


class TemplateProvider:
    """Offline answers from the persona's bank. Same interface as the LLM providers."""

    name = "template"

    def __init__(self, persona: Persona, seed: int):
        if persona.bank is None:
            from .errors import ConfigError

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
