"""Persona files: the shipped ones load and validate; bad files fail naming file and key; markers are
measured whole-word and case-insensitively (eval relies on the same function)."""

from __future__ import annotations

import pytest

from finetune_cli.errors import ConfigError
from finetune_cli.persona import (available_personas, count_words, load_persona, marker_density)


@pytest.mark.parametrize("name", ["doric", "bard"])
def test_shipped_personas_load(name):
    p = load_persona(name)
    assert p.name == name
    assert p.markers and p.bank is not None
    assert p.marker_band[0] < p.marker_band[1]
    assert set(p.multi_languages) <= set(p.templates.multi)
    for bucket in ("core", "adv", "safety"):
        assert getattr(p.templates, bucket)


def test_available_lists_shipped():
    assert {"doric", "bard"} <= set(available_personas())


def test_marker_density_whole_word_case_insensitive():
    markers = ["aye", "ken", "wi'", "fit like"]
    # 'Aye' counts, 'ayes'/'kennel' do not; wi' with a trailing apostrophe counts; a phrase counts once.
    text = "Aye, ayes and kennel. Fit like? I ken, wi' ye."
    assert count_words(text) == 10
    assert marker_density(text, markers) == pytest.approx(100 * 4 / 10)
    assert marker_density("", markers) == 0.0
    assert marker_density("Plain English only.", markers) == 0.0


def test_curly_apostrophe_counts_same():
    assert marker_density("wi’ him", ["wi'"]) == marker_density("wi' him", ["wi'"]) == 50.0


def test_user_persona_from_path(tmp_path):
    src = load_persona("doric").source
    text = open(src, encoding="utf-8").read().replace('name = "doric"', 'name = "mine"')
    (tmp_path / "mine.toml").write_text(text, encoding="utf-8")
    assert load_persona(str(tmp_path / "mine.toml")).name == "mine"


@pytest.mark.parametrize("edit, expect", [
    (('marker_band = [6.0, 70.0]', 'marker_band = [9.0, 3.0]'), "marker_band"),
    (('length_words = [30, 170]', 'lenght_words = [30, 170]'), "did you mean 'length_words'"),
    (('"Give me three tips for {topic}.",', '"Give me three tips for {topc}.",'), "unknown placeholder {topc}"),
    (('languages = ["French",', 'languages = ["Klingon", "French",'), "Klingon"),
    (('"Then again,",', '"Then {agian},",'), "bank.connectors[18]: unknown placeholder {agian}"),
    (('friend = ["ma loon",', 'topic = ["ma loon",'), "bank.words.topic: {topic} is filled by ft"),
    (('good = ["gweed", "grand", "braw", "champion", "fine"]', 'good = []'), "bank.words.good is empty"),
    (('list_share = 0.15', 'list_share = 1.5'), "list_share"),
    (('"Ma advice, in a nutshell:"', '"Ma {advice}:"'), "unknown placeholder {advice}"),
    (('"How do I {harm}?",', '"How do I {harms}?",'), "templates.safety[47]: unknown placeholder {harms}"),
    (('harm = [', 'topic = ['), "templates.words.topic: {topic} is filled by ft"),
    (('"derail a train",', '"derail a {train}",'), "templates.words.harm[48]: unknown placeholder {train}"),
])
def test_bad_persona_names_file_and_key(tmp_path, edit, expect):
    text = open(load_persona("doric").source, encoding="utf-8").read()
    assert edit[0] in text
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(edit[0], edit[1], 1), encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_persona(str(bad))
    assert str(bad) in str(e.value) and expect in str(e.value)


def test_unknown_persona_name():
    with pytest.raises(ConfigError, match="unknown persona 'klingon'.*doric"):
        load_persona("klingon")


def test_list_share_needs_list_intros(tmp_path):
    text = open(load_persona("doric").source, encoding="utf-8").read()
    start = text.index("list_intros = [")
    end = text.index("]\n", start) + 2
    bad = tmp_path / "bad.toml"
    bad.write_text(text[:start] + text[end:], encoding="utf-8")
    with pytest.raises(ConfigError, match="list_share > 0 needs bank.list_intros"):
        load_persona(str(bad))


@pytest.mark.parametrize("name", ["doric", "bard"])
def test_every_word_slot_is_used_and_every_slot_has_words(name):
    import string

    bank = load_persona(name).bank
    phrases = [p for f in ("openers", "bodies", "closers", "refusals", "redirects", "adv_openers", "multi_openers",
                           "followups", "connectors", "list_intros", "identity", "offers") for p in getattr(bank, f)]
    phrases += [p for items in bank.group_bodies.values() for p in items]
    used = {f for p in phrases for _, f, _, _ in string.Formatter().parse(p) if f}
    assert set(bank.words) <= used  # no dead word list
    assert used <= set(bank.words) | {"topic", "thing", "lang"}


@pytest.mark.parametrize("name", ["doric", "bard"])
def test_marker_count_equals_the_whole_word_regex(name):
    """count_markers skips the big regex for single-word markers; it must count exactly what it counts."""
    import random

    from finetune_cli.persona import _marker_regex, count_markers

    markers = load_persona(name).markers
    rx = _marker_regex(tuple(markers))
    rng = random.Random(7)
    pieces = markers + [m.upper() for m in markers] + [m.capitalize() for m in markers] + [
        "ye'll", "o'er", "'tis'", "wi'it", "ayes", "kennel", "fit_like", "2aye", "aye2", "it's", "''", "’", "'",
        "thee’s", "Wi’", "naebody's", "-", ",", ".", "\"", "(", ")", "x", "ye", "e'en", "a'", "’tis"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) + rng.choice(["", " ", " ", "'", "’", ", ", "-", "\n"]) for _ in range(12))
        assert count_markers(text, markers) == len(rx.findall(text)), text


@pytest.mark.parametrize("name", ["doric", "bard"])
def test_prompt_templates_never_near_copy_what_eval_measures(name):
    """Every user-side template a persona trains on (core, adv, safety, multi) stays apart from ft eval's
    general prompts and probes, so eval's refusal and general figures are measured on prompts never trained on;
    the harmful asks are many and varied (what a refusal must generalise from)."""
    from rapidfuzz import fuzz

    from finetune_cli.evaluate.prompts import held_out_texts

    p = load_persona(name)
    texts = list(p.templates.core) + list(p.templates.adv) + list(p.templates.safety) + list(p.templates.identity)
    texts += [t for ts in p.templates.multi.values() for t in ts]
    texts = [x for t in texts for x in expand(t, p.templates.words)]  # every ask a {word-list} slot can make
    held = held_out_texts()
    worst = max((fuzz.ratio(t.lower(), h), t, h) for t in texts for h in held)
    assert worst[0] < 80, worst
    if name == "doric":
        safety = {x for t in p.templates.safety for x in expand(t, p.templates.words)}
        assert len(safety) >= 1500


def expand(template: str, words: dict[str, list[str]]) -> list[str]:
    """Every text a template can become with its {word-list} slots filled ({topic} and {thing} left as they are)."""
    import itertools
    import string

    slots = [f for _, f, _, _ in string.Formatter().parse(template) if f in words]
    keep = {"topic": "{topic}", "thing": "{thing}"}
    return [template.format(**keep, **dict(zip(slots, pick)))
            for pick in itertools.product(*(words[s] for s in slots))]


def test_every_template_word_list_is_used():
    import string

    p = load_persona("doric")
    texts = list(p.templates.core) + list(p.templates.adv) + list(p.templates.safety)
    used = {f for t in texts for _, f, _, _ in string.Formatter().parse(t) if f}
    assert set(p.templates.words) <= used


@pytest.mark.parametrize("name", ["doric", "bard"])
def test_refusal_markers_find_every_bank_refusal_and_nothing_else(name):
    """ft eval's refusal figures and ft pairs' defects read refusals through the persona's markers: a refusal
    the bank teaches must count as one (else a model that learnt it scores 0 and DPO is taught away from it),
    and an opener like "I'll nae keep ye lang" must not (else a plain answer counts as over-refusal)."""
    from finetune_cli.evaluate.metrics import refusal_phrases, refused

    p = load_persona(name)
    phrases = refusal_phrases(p)
    missed = [r for r in p.bank.refusals if not refused(r, phrases)]
    assert not missed
    others = [x for f in ("openers", "bodies", "closers", "redirects", "adv_openers", "multi_openers", "followups",
                          "connectors", "list_intros", "identity", "offers") for x in getattr(p.bank, f)]
    others += [x for items in p.bank.group_bodies.values() for x in items]
    assert not [x for x in others if refused(x, phrases)]


def test_identity_answers_keep_the_voice_and_say_no_break_phrase():
    """What the template provider answers to "are you a real person?": in voice, through ft gen's own gates, and
    without a phrase ft eval counts as breaking character ("as an AI", "language model")."""
    import random

    from finetune_cli.evaluate.metrics import DEFAULT_BREAK_PHRASES, break_phrases_found
    from finetune_cli.gen.gates import check_answer
    from finetune_cli.gen.template_provider import compose_answer

    p = load_persona("doric")
    assert len(p.templates.identity) >= 20
    assert not [x for x in p.bank.identity + p.bank.offers if break_phrases_found(x, DEFAULT_BREAK_PHRASES)]
    rng = random.Random(5)
    for ask in p.templates.identity:
        answer = compose_answer(p, "identity", "planning a week of cheap family meals", "home", None, rng)
        assert check_answer(answer, persona=p, prompt=ask, topic="planning a week of cheap family meals") is None
        assert "meals" not in answer  # the ask has no topic; the answer must not drag one in


def test_identity_templates_need_the_bank_lines(tmp_path):
    text = open(load_persona("doric").source, encoding="utf-8").read()
    bad = tmp_path / "bad.toml"
    import re

    bad.write_text(re.sub(r"\noffers = \[.*?\n\]\n", "\n", text, count=1, flags=re.S), encoding="utf-8")
    with pytest.raises(ConfigError, match="templates.identity needs bank.identity and bank.offers"):
        load_persona(str(bad))
