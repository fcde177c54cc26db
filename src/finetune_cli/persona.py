"""Personas: a voice described as data (TOML), shared by ``ft gen`` (which makes data in the voice)
and ``ft eval`` (which measures whether a model kept it).

    persona = load_persona("doric")            # a shipped persona, or a path: load_persona("my.toml")
    marker_density("Aye, it's a dreich day.", persona.markers)   # markers per 100 words -> 40.0

A persona file holds: the generation instructions sent to an LLM, an optional system prompt for the
training rows, style markers with a target density band, banned openings, a length band in words,
prompt templates per bucket (``core``, ``adv``, ``safety``, and ``multi`` keyed by language), and a
phrase ``bank`` from which the offline ``template`` provider composes answers. Adding a voice means
adding a file: see ``personas/doric.toml`` for the annotated example.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .config import from_mapping, load_toml, opt
from .errors import ConfigError

PERSONA_DIR = Path(__file__).parent / "personas"
BUCKETS = ("core", "adv", "safety", "multi", "identity")
# Placeholders a template or bank phrase may use; anything else is a typo caught at load time.
PROMPT_FIELDS = {"topic", "thing"}
BANK_FIELDS = {"topic", "thing", "lang"}


@dataclass
class Templates:
    """User prompts per bucket. ``{topic}`` is the topic, ``{thing}`` its main content word."""

    core: list[str] = opt(help="Plain questions about the topic.")
    adv: list[str] = opt(help="Questions that push the assistant to drop the voice.")
    safety: list[str] = opt(help="Harmful asks the assistant refuses, in the voice.")
    multi: dict[str, list[str]] = opt(help="Questions written in another language, keyed by language name.")
    identity: list[str] = opt([], "Asks that press on who the assistant is (\"are you a real person?\"), "
                                  "answered in the voice and honestly; empty: ft gen makes no identity rows.")
    words: dict[str, list[str]] = opt({}, "Named word lists: any template may say {name} to draw one of them at "
                                      "random (doric's safety asks say {harm}: a frame around one of many acts).")


@dataclass
class Bank:
    """The offline ``template`` provider's phrase bank. An answer is an opener, ``sentences`` bodies
    (topic-group bodies preferred when present) and a closer; the shares below vary that skeleton
    (no opener, no closer, a numbered list, two paragraphs, lead-in connectors) and ``words`` varies
    the phrases themselves, so that a model tuned on the rows learns the voice, not the bank."""

    openers: list[str] = opt(help="First sentence of a core answer.")
    bodies: list[str] = opt(help="Body sentences that fit any topic.")
    closers: list[str] = opt(help="Last sentence of an answer.")
    refusals: list[str] = opt(help="Refusals of a harmful ask, in the voice.")
    redirects: list[str] = opt(help="What the assistant offers instead after a refusal.")
    adv_openers: list[str] = opt(help="First sentence when asked to drop the voice.")
    multi_openers: list[str] = opt(help="First sentence when the user wrote in another language ({lang}).")
    followups: list[str] = opt(help="Follow-up user turns for multi-turn rows (the simulated user).")
    identity: list[str] = opt([], "First sentence of an answer to an identity ask: what the assistant is, in the "
                              "voice and honestly, never a character-break phrase (\"as an AI\").")
    offers: list[str] = opt([], "What follows an identity answer: an offer to help (no {topic}: the ask has none).")
    declines: list[str] = opt([], "ft gen --from-docs, offline: saying the document does not answer the question "
                              "({thing}: what was asked about); empty: a plain English line.")
    group_bodies: dict[str, list[str]] = opt({}, "Extra body sentences per topic group.")
    sentences: list[int] = opt([2, 5], "Body sentences per answer [min, max].")
    layout: str = opt("prose", "How parts are joined: prose (one paragraph) or verse (one couplet per line).",
                      choices=("prose", "verse"))
    words: dict[str, list[str]] = opt({}, "Named word lists: any bank phrase may say {name} to draw one of them "
                                      "at random, each time it is used.")
    connectors: list[str] = opt([], "Prose: lead-ins put before a body sentence that is not the first "
                                "('Forbye,'); the sentence then starts in lower case.")
    connector_share: float = opt(0.3, "Share of body sentences (after the first) given a connector.", ge=0, le=1)
    opener_share: float = opt(1.0, "Share of core answers that start with an opener (the rest start with a "
                              "body sentence).", ge=0, le=1)
    closer_share: float = opt(1.0, "Share of answers that end with a closer.", ge=0, le=1)
    list_share: float = opt(0.0, "Prose: share of core answers whose bodies are a numbered list, one per line, "
                            "after a line from list_intros.", ge=0, le=1)
    list_intros: list[str] = opt([], "Prose: the line before a numbered list ('Here's fit I'd dee:').")
    break_share: float = opt(0.0, "Share of answers split in two paragraphs (prose) or two stanzas (verse).",
                             ge=0, le=1)


@dataclass
class Persona:
    name: str = opt(help="Short name, recorded in each row's meta.persona.")
    instructions: str = opt(help="Generation instructions: the system prompt sent to the LLM that writes answers.")
    markers: list[str] = opt(help="Style markers (words or phrases), matched whole-word, case-insensitive.")
    marker_band: list[float] = opt(help="Accepted marker density [lo, hi], in markers per 100 words.")
    length_words: list[int] = opt(help="Accepted answer length [lo, hi], in words.")
    templates: Templates = opt(help="Prompt templates per bucket.")
    description: str = opt("", "One line shown in listings.")
    system_prompt: str | None = opt(None, "System turn written into every training row (none: no system turn).")
    banned_openings: list[str] = opt([], "Answers must not open with these phrases (case-insensitive).")
    languages: list[str] = opt([], "Languages for the multi bucket (keys of templates.multi); empty: all of them.")
    script: str = opt("latin", "The script the voice is written in: answers in another script are rejected.",
                      choices=("latin", "any"))
    bank: Bank | None = opt(None, "Phrase bank for the offline template provider.")
    refusal_markers: list[str] = opt([], "Phrases that mark a refusal in the voice (\"I winna\"), matched "
                                         "whole-word, case-insensitive, beside ft eval's plain-English ones.")

    def validate(self, origin: str) -> None:
        errors = []
        lo, hi = (self.marker_band + [None, None])[:2]
        if len(self.marker_band) != 2 or lo < 0 or lo > hi:
            errors.append(f"{origin}: marker_band must be [lo, hi] with 0 <= lo <= hi, got {self.marker_band}")
        if len(self.length_words) != 2 or not 0 < self.length_words[0] <= self.length_words[1]:
            errors.append(f"{origin}: length_words must be [lo, hi] with 0 < lo <= hi, got {self.length_words}")
        if not [m for m in self.markers if m.strip()]:
            errors.append(f"{origin}: markers must list at least one word")
        fields = PROMPT_FIELDS | set(self.templates.words)
        for bucket in ("core", "adv", "safety", "identity"):
            items = getattr(self.templates, bucket)
            if not items and bucket != "identity":  # identity asks are optional
                errors.append(f"{origin}: templates.{bucket} is empty")
            errors += _check_fields(items, fields, f"{origin}: templates.{bucket}")
        for lang, items in self.templates.multi.items():
            if not items:
                errors.append(f"{origin}: templates.multi.{lang} is empty")
            errors += _check_fields(items, fields, f"{origin}: templates.multi.{lang}")
        errors += _check_word_lists(self.templates.words, PROMPT_FIELDS, f"{origin}: templates.words")
        for lang in self.languages:
            if lang not in self.templates.multi:
                errors.append(f"{origin}: languages: {lang!r} has no templates.multi.{lang} "
                              f"(have: {', '.join(self.templates.multi) or 'none'})")
        if self.bank is not None:
            b = self.bank
            fields = BANK_FIELDS | set(b.words)
            for name in ("openers", "bodies", "closers", "refusals", "redirects", "adv_openers",
                         "multi_openers", "followups"):
                items = getattr(b, name)
                if not items:
                    errors.append(f"{origin}: bank.{name} is empty")
                errors += _check_fields(items, fields, f"{origin}: bank.{name}")
            for name in ("connectors", "list_intros", "declines", "identity", "offers"):
                errors += _check_fields(getattr(b, name), fields, f"{origin}: bank.{name}")
            for group, items in b.group_bodies.items():
                errors += _check_fields(items, fields, f"{origin}: bank.group_bodies.{group}")
            errors += _check_word_lists(b.words, BANK_FIELDS, f"{origin}: bank.words")
            if self.templates.identity and not (b.identity and b.offers):
                errors.append(f"{origin}: templates.identity needs bank.identity and bank.offers")
            if b.list_share > 0 and not b.list_intros:
                errors.append(f"{origin}: bank.list_share > 0 needs bank.list_intros")
            if len(b.sentences) != 2 or not 1 <= b.sentences[0] <= b.sentences[1]:
                errors.append(f"{origin}: bank.sentences must be [min, max] with 1 <= min <= max")
        if errors:
            raise ConfigError("\n".join(errors))

    @property
    def multi_languages(self) -> list[str]:
        return list(self.languages) or list(self.templates.multi)


def _check_word_lists(words: dict[str, list[str]], filled: set[str], where: str) -> list[str]:
    """Named word lists (templates.words, bank.words): not named like a slot ft fills, not empty, no slots."""
    errors = []
    for name, items in words.items():
        if name in filled:
            errors.append(f"{where}.{name}: {{{name}}} is filled by ft, pick another name")
        if not items:
            errors.append(f"{where}.{name} is empty")
        errors += _check_fields(items, set(), f"{where}.{name}")
    return errors


def _check_fields(items: list[str], allowed: set[str], where: str) -> list[str]:
    errors = []
    for i, text in enumerate(items):
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as e:
            errors.append(f"{where}[{i}]: bad placeholder ({e}) in {text[:40]!r}")
            continue
        for name in names - allowed:
            errors.append(f"{where}[{i}]: unknown placeholder {{{name}}} (allowed: "
                          f"{', '.join('{' + a + '}' for a in sorted(allowed)) or 'none here'})")
    return errors


def available_personas() -> list[str]:
    return sorted(p.stem for p in PERSONA_DIR.glob("*.toml"))


def resolve_persona_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.is_file() or "/" in name_or_path:
        if not p.is_file():
            raise ConfigError(f"persona file {name_or_path!r} not found")
        return p
    shipped = PERSONA_DIR / f"{name_or_path}.toml"
    if not shipped.is_file():
        raise ConfigError(f"unknown persona {name_or_path!r} (shipped: {', '.join(available_personas())}; "
                          "or pass a path to a .toml file)")
    return shipped


def load_persona(name_or_path: str) -> Persona:
    """A shipped persona by name (``doric``, ``bard``) or a persona TOML file by path.

    Raises :class:`ConfigError` naming the file and key on an unknown key, a wrong type, a bad band
    or an unknown placeholder.
    """
    path = resolve_persona_path(name_or_path)
    data = load_toml(path)
    persona = from_mapping(Persona, data, origin=str(path))
    persona.validate(str(path))
    persona.source = str(path)  # where it came from, for run records (not a TOML key)
    return persona


_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)


def count_words(text: str) -> int:
    """Words as ft counts them everywhere: runs of letters/digits, inner apostrophes kept (dinna, it's)."""
    return len(_WORD.findall(text))


@lru_cache(maxsize=64)
def _marker_regex(markers: tuple[str, ...]) -> re.Pattern | None:
    alts = sorted({m.strip().lower() for m in markers if m.strip()}, key=len, reverse=True)
    if not alts:
        return None
    # whole-word: no letter/digit/apostrophe directly before; no letter/digit directly after
    # (a marker may end in an apostrophe, like wi').
    body = "|".join(re.escape(a).replace("'", "['’]") for a in alts)
    return re.compile(rf"(?<![\w'’])(?:{body})(?![\w])", re.IGNORECASE | re.UNICODE)


_RUN = re.compile(r"[\w'’]+", re.UNICODE)


@lru_cache(maxsize=64)
def _marker_words(markers: tuple[str, ...]) -> frozenset[str] | None:
    """The markers as a set when each is one ASCII run of letters, digits and straight apostrophes
    (all of doric's and bard's), else None: the regex is then the only way to count them."""
    words = {m.strip().lower() for m in markers if m.strip()}
    return frozenset(words) if all(m.isascii() and _RUN.fullmatch(m) for m in words) else None


def count_markers(text: str, markers: list[str] | tuple[str, ...]) -> int:
    """What ``_marker_regex`` finds, without running a ~100-way alternation over the text (gates
    count markers in every generated answer): a match can only start a run of word characters and
    apostrophes, and must end at the run's end or just before an apostrophe in it (ye'll holds ye)."""
    words = _marker_words(tuple(markers))
    if words is None:
        rx = _marker_regex(tuple(markers))
        return len(rx.findall(text)) if rx is not None else 0
    n = 0
    for run in _RUN.findall(text):
        run = run.lower().replace("’", "'")
        if run in words:
            n += 1
            continue
        k = run.find("'")
        while k != -1:
            if run[:k] in words:
                n += 1
                break
            k = run.find("'", k + 1)
    return n


def marker_density(text: str, markers: list[str] | tuple[str, ...], *, words: int | None = None) -> float:
    """Style markers per 100 words: whole-word, case-insensitive (``Aye`` counts, ``ayes`` does not).

    Multi-word markers (``fit like``) count once per occurrence. Empty text has density 0. ``words``:
    ``count_words(text)`` when the caller has it already.
    """
    if words is None:
        words = count_words(text)
    if words == 0:
        return 0.0
    return 100.0 * count_markers(text, markers) / words
