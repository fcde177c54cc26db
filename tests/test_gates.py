"""Quality gates: each rejection reason on a text built to fail exactly that gate, a good answer passing
them all, and the persona deciding the bands."""

from __future__ import annotations

import pytest

from finetune_cli.gen.gates import REASONS, check_answer, detect_foreign, ends_sentence, explain, prompt_overlap
from finetune_cli.persona import load_persona

GOOD = ("Aye, ye'll manage fine wi' a wee bit o' patience. Start sma, mak a list o' fit ye need, an dinna fash "
        "if it taks a while. Ask yer freens for a hand, for fowk like tae help. Gweed luck tae ye, an let me "
        "ken foo ye get on.")
PROMPT = "Can you give me some practical advice on planning a week of cheap family meals?"
TOPIC = "planning a week of cheap family meals"
ENGLISH = ("Plan your meals for the whole week on Sunday, write a shopping list, buy staples in bulk, cook "
           "larger batches and freeze portions, and use leftovers for lunches so that nothing goes to waste "
           "and the budget holds.")
FRENCH = ("Je pense que vous pouvez planifier les repas de la semaine le dimanche, et faire une liste pour les "
          "courses. Cuisinez des plats simples avec des produits de saison, mais pas trop chers, et gardez "
          "les restes pour le lendemain.")
CYRILLIC = ("Да, планируйте меню на неделю заранее, составьте список покупок, готовьте большие порции и "
            "замораживайте их, а остатки используйте на обед, чтобы ничего не пропадало зря и бюджет "
            "сохранялся в порядке всегда.")


@pytest.fixture(scope="module")
def doric():
    return load_persona("doric")


def gate(text, persona, **kw):
    kw.setdefault("prompt", PROMPT)
    kw.setdefault("topic", TOPIC)
    return check_answer(text, persona=persona, **kw)


def test_good_answer_passes(doric):
    assert gate(GOOD, doric) is None
    assert gate(GOOD + '"', doric) is None  # a closing quote after the full stop is still an ending


@pytest.mark.parametrize("text, kw, reason", [
    (None, {}, "empty"),
    ("", {}, "empty"),
    ("  \n ", {"finish": "length"}, "empty"),
    (GOOD, {"finish": "length"}, "truncated"),
    ("Certainly! " + GOOD, {}, "banned_opening"),
    ("   as an AI, " + GOOD, {}, "banned_opening"),  # case and leading space do not hide it
    (CYRILLIC, {}, "wrong_script"),
    (FRENCH, {}, "wrong_language"),
    ("Aye, ye'll dee fine wi' it, ma loon.", {}, "length"),
    (" ".join([GOOD] * 5), {}, "length"),
    (ENGLISH, {}, "marker_density"),
    (" ".join(["Aye, nae, ken, dinna fash, ma loon, wee quine, muckle bairn."] * 5), {}, "marker_density"),
    (GOOD[:-1] + ", an mind", {}, "sentence_end"),
    (GOOD, {"prompt": GOOD}, "overlap"),
])
def test_each_reason(doric, text, kw, reason):
    assert reason in REASONS
    assert gate(text, doric, **kw) == reason


def test_overlap_threshold_is_configurable(doric):
    half = GOOD.split(". ", 2)
    prompt = half[0] + ". " + half[1] + "."  # the answer repeats its prompt for about half its length
    share = prompt_overlap(GOOD, prompt)
    assert 0.2 < share < 0.8
    assert gate(GOOD, doric, prompt=prompt, overlap_max=share - 0.01) == "overlap"
    assert gate(GOOD, doric, prompt=prompt, overlap_max=share + 0.01) is None


def test_bands_come_from_the_persona(doric):
    bard = load_persona("bard")
    plain_doric = ("Aye, it's nae bother. Mak a list o' fit the bairns like, dinna buy muckle mair than that, an "
                   "cook a big pot on a dreich Sunday. Freeze the rest in wee tubs, for it saves siller an time. "
                   "Gweed luck, an haud in aboot the hoose.")
    assert gate(plain_doric, doric) is None
    assert gate(plain_doric, bard) == "marker_density"  # no thee, thou or doth in it
    verse = ("Of meals for the week thou wouldst know the way,\nso hark, and heed what I shall say.\n"
             "Write down thy list ere market day,\nand thou shalt keep thy coin at bay.\n"
             "Cook thrice the pot and freeze the rest,\nfor leftovers oft taste the best.")
    assert gate(verse, bard) is None
    assert gate(verse, doric) == "marker_density"


def test_explain_gives_the_measurement(doric):
    assert explain("length", "Aye, fine.", doric) == "2 words, band [30, 170]"
    assert explain("marker_density", ENGLISH, doric).startswith("0.0 markers/100 words, band [6.0, 70.0]")
    assert explain("wrong_language", FRENCH, doric) == "reads as French"
    assert explain("wrong_script", CYRILLIC, doric) == "0% Latin letters"


def test_helpers():
    assert detect_foreign("le la et") is None  # too short to judge
    assert detect_foreign(ENGLISH) is None and detect_foreign(GOOD) is None
    assert ends_sentence("Done!)") and ends_sentence("Done?**") and not ends_sentence("Done,") \
        and not ends_sentence("")
    assert prompt_overlap("", PROMPT) == 0.0 and prompt_overlap(PROMPT, PROMPT) == 1.0

