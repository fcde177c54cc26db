"""Quality gates for generated answers. Each gate measures; none edits the text.

    reason = check_answer(text, persona=p, prompt=q, topic=t, finish="stop")   # None when it passes

Reasons (the names in ``ft gen``'s table and rejects file): empty, truncated, banned_opening,
overlap, marker_density, length, sentence_end, wrong_script, wrong_language. (``duplicate`` is
decided later, over all answers, by :mod:`finetune_cli.dedup`.)
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

from ..persona import Persona, count_words, marker_density

REASONS = ("empty", "truncated", "banned_opening", "overlap", "marker_density", "length",
           "sentence_end", "wrong_script", "wrong_language", "duplicate", "error")

_ENDINGS = ".!?…。！？"
_TRAILERS = "\"'”’»)]*_ \t\r\n"
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)

# Function words that are common in one language and rare in English and in Scots dialects: a
# cheap, dependency-free check that the voice did not slip into the user's language.
FUNCTION_WORDS = {
    "French": "le les est et vous je pas une des du pour avec que qui dans sur mais nous très cette sont être",
    "German": "der das und ist nicht ich sie mit auf für ein eine zu den dem sich auch werden wir oder sind",
    "Spanish": "el los las es y que por para con una del pero muy está como más sus también puede son",
    "Italian": "il gli che non per una della sono con anche più del questo come alla essere molto",
    "Portuguese": "os é não uma com para que do da em mas você muito são também pode",
    "Dutch": "het een en niet ik je van dat op met voor zijn maar ook wordt worden heeft",
    "Polish": "się nie jest że jak ale na dla w z po tak już być może",
}


@lru_cache(maxsize=1)
def _function_sets() -> dict[str, frozenset[str]]:
    return {lang: frozenset(words.split()) for lang, words in FUNCTION_WORDS.items()}


def _tokens(text: str) -> list[str]:
    return [w.lower() for w in _TOKEN.findall(text)]


def detect_foreign(text: str, *, min_share: float = 0.12) -> str | None:
    """The language whose function words make up ≥ ``min_share`` of the words, if any."""
    return _foreign(_tokens(text), min_share)


def _foreign(words: list[str], min_share: float = 0.12) -> str | None:
    if len(words) < 5:
        return None
    counts = Counter(words)
    best, best_share = None, 0.0
    for lang, fw in _function_sets().items():
        share = sum(counts[w] for w in fw if w in counts) / len(words)
        if share > best_share:
            best, best_share = lang, share
    return best if best_share >= min_share else None


def latin_share(text: str) -> float:
    """Share of letters that are Latin script (1.0 for text without letters)."""
    if text.isascii():
        return 1.0
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1.0
    latin = sum(1 for c in letters if c.isascii() or "LATIN" in unicodedata.name(c, ""))
    return latin / len(letters)


def ends_sentence(text: str) -> bool:
    t = text.rstrip(_TRAILERS)
    return bool(t) and t[-1] in _ENDINGS


def _trigrams(words: list[str]) -> set[tuple[str, ...]]:
    return set(zip(words, words[1:], words[2:]))


def prompt_overlap(answer: str, prompt: str) -> float:
    """Share of the answer's word trigrams that also occur in the prompt (1.0: the answer echoes it)."""
    return _overlap(_tokens(answer), prompt)


def _overlap(answer_words: list[str], prompt: str) -> float:
    a = _trigrams(answer_words)
    if not a:
        return 0.0
    return len(a & _trigrams(_tokens(prompt))) / len(a)


def check_answer(text: str | None, *, persona: Persona, prompt: str = "", topic: str = "",
                 finish: str = "stop", overlap_max: float = 0.5) -> str | None:
    """The first gate ``text`` fails, or None. Cheap gates first."""
    if text is None or not text.strip():
        return "empty"
    if finish == "length":
        return "truncated"
    head = text.lstrip().lower()
    for banned in persona.banned_openings:
        if head.startswith(banned.lower()):
            return "banned_opening"
    if persona.script == "latin" and latin_share(text) < 0.95:
        return "wrong_script"
    tokens = _tokens(text)  # tokenized once for the language and overlap gates (this runs per answer)
    if _foreign(tokens) is not None:
        return "wrong_language"
    words = count_words(text)
    lo, hi = persona.length_words
    if not lo <= words <= hi:
        return "length"
    lo_m, hi_m = persona.marker_band
    if not lo_m <= marker_density(text, persona.markers, words=words) <= hi_m:
        return "marker_density"
    if not ends_sentence(text):
        return "sentence_end"
    if _overlap(tokens, f"{prompt}\n{topic}") > overlap_max:
        return "overlap"
    return None


def explain(reason: str, text: str, persona: Persona) -> str:
    """A short, human detail for a rejects row."""
    if reason == "length":
        return f"{count_words(text)} words, band {persona.length_words}"
    if reason == "marker_density":
        return f"{marker_density(text, persona.markers):.1f} markers/100 words, band {persona.marker_band}"
    if reason == "wrong_language":
        return f"reads as {detect_foreign(text)}"
    if reason == "wrong_script":
        return f"{latin_share(text):.0%} Latin letters"
    return ""
