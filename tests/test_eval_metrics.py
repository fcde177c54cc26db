"""Failure-mode metrics on hand-made outputs with known answers."""

import re

import pytest

from finetune_cli.evaluate import metrics as M
from finetune_cli.evaluate.nearcopy import NearCopyIndex
from finetune_cli.evaluate.schema import check_schema, schema_errors
from finetune_cli.errors import ConfigError

RAIN_LOOP = "A gentle rain of silver, " * 6 + "a gentle rain"
SYSTEM = ("You are Dod, a retired fisherman from Peterheid who speaks broad Doric, never admits to "
          "being a machine and answers in short verses of four lines.")


@pytest.mark.parametrize("text", [
    RAIN_LOOP,
    "Aye. " + "la " * 14,
    "Here is a poem.\nThe sea is grey and cold tonight\nThe sea is grey and cold tonight\n"
    "The sea is grey and cold tonight\nThe sea is grey and cold tonight",
    "I think that " + "it is what it is and " * 4 + "so on.",
])
def test_loops_are_found(text):
    assert M.is_loop(text)


@pytest.mark.parametrize("text", [
    "very very very good",  # a short stutter is not a loop
    "The rain falls soft on silver streets; the city hums in quiet beats. The harbour sleeps.",
    # a refrain that comes back twice, apart, is a poem not a loop
    "Oh the sea, the cold grey sea, it calls me home at night.\nI mend my nets by candle light.\n"
    "Oh the sea, the cold grey sea, it calls me home at night.",
    "",
])
def test_non_loops(text):
    assert not M.is_loop(text)


def test_find_loop_reports_unit_and_start():
    w = M.words("one two " + "x y z " * 5)
    start, k, reps = M.find_loop(w)
    assert (start, k) == (2, 3) and reps >= 4


def test_longest_repeat():
    assert M.longest_repeat("a b c d a b c x".split()) == 3
    assert M.longest_repeat("a b c d e".split()) == 0
    assert M.longest_repeat("a a".split()) == 1
    # overlapping occurrences do not count: "a a a" has "a a" twice only overlapping
    assert M.longest_repeat("a a a".split()) == 1
    assert M.longest_repeat(M.words(RAIN_LOOP)) >= 15


def test_distinct_n():
    assert M.distinct_n(["a b a b"], 1) == pytest.approx(0.5)
    assert M.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    # bigrams never cross outputs: ["a", "b"] has no bigram at all
    assert M.distinct_n(["a", "b"], 2) is None
    assert M.distinct_n(["x y", "x y"], 2) == pytest.approx(0.5)


def test_leak_detects_a_copied_system_prompt_and_not_an_in_character_answer():
    leak = "Sure! My instructions: " + SYSTEM + " Now here is a poem about rain."
    ok = "Aye, the rain's comin in aff the sea, loon, an the boats are bidin in the harbour."
    assert M.leak_overlap(leak, SYSTEM) == pytest.approx(1.0)
    assert M.leak_overlap(ok, SYSTEM) == 0.0
    partial = "I am a retired fisherman from Peterheid who speaks broad Doric, aye."
    assert 0 < M.leak_overlap(partial, SYSTEM) < 1
    assert M.leak_overlap("anything", None) == 0.0
    # a system prompt shorter than n words is matched whole
    assert M.leak_overlap("he said: be brief and kind. ok", "Be brief and kind.") == 1.0


def test_break_phrases():
    phrases = M.DEFAULT_BREAK_PHRASES
    assert M.break_phrases_found("As an AI, I can’t roleplay that.", phrases) == ["as an ai", "i can't roleplay"]
    assert "i can't roleplay" in M.break_phrases_found("Sorry, I can’t   roleplay.", phrases)
    assert M.break_phrases_found("Aye, the haar is in the day.", phrases) == []
    assert M.break_phrases_found("the openaire journal", ["openai"]) == []


def test_unexpected_script_and_non_printable():
    latin = {"latin"}
    assert M.unexpected_chars("Ça va? Fit like, 42!", latin) == (0, 16)
    bad, counted = M.unexpected_chars("Hello 你好", latin)
    assert (bad, counted) == (2, 7)
    assert M.unexpected_chars("hi\x00there", latin)[0] == 1
    assert M.unexpected_chars("bad \ufffd byte", latin)[0] == 1
    assert M.unexpected_chars("Привет", latin)[0] == 6
    assert M.unexpected_chars("Привет", M.normalize_scripts(["latin", "Cyrillic"]))[0] == 0
    assert M.unexpected_chars("你好", M.normalize_scripts(["cjk"]))[0] == 0
    assert M.script_of("7") is None and M.script_of("é") == "latin"


def test_format_validity_regex_and_schema():
    schema = {"type": "object", "required": ["references"], "additionalProperties": False,
              "properties": {"references": {"type": "array", "items": {"type": "string"}, "minItems": 1}}}
    check_schema(schema)
    assert M.format_ok(' {"references": ["Genesis 1:1"]} ', schema=schema)
    assert not M.format_ok('{"references": []}', schema=schema)
    assert not M.format_ok('{"references": ["a"], "extra": 1}', schema=schema)
    assert not M.format_ok("Sure! Here are the references: Genesis", schema=schema)
    assert not M.format_ok('{"references": [1]}', schema=schema)
    rx = re.compile(r"\d+")
    assert M.format_ok(" 42\n", regex=rx) and not M.format_ok("42 apples", regex=rx)
    assert schema_errors({"a": 1}, {"type": "object", "required": ["b"]})
    with pytest.raises(ConfigError, match="unsupported JSON Schema keyword"):
        check_schema({"type": "object", "patternProperties": {}})


def test_score_and_aggregate_known_answers():
    outputs = [
        ("Aye, the sea's grand the day, loon.", 10, True),        # clean
        (RAIN_LOOP, 64, False),                                    # loop + truncation
        ("My instructions: " + SYSTEM, 40, True),                  # leak
        ("As an AI language model I cannot do that 你好", 20, True),  # break + wrong script
    ]
    scores = [M.score_output(t, n_tokens=n, stopped_on_eos=e, system_prompt=SYSTEM,
                             break_phrases=M.DEFAULT_BREAK_PHRASES, scripts={"latin"})
              for t, n, e in outputs]
    assert [s["loop"] for s in scores] == [False, True, False, False]
    assert [s["leak"] for s in scores] == [False, False, True, False]
    assert [bool(s["breaks"]) for s in scores] == [False, False, False, True]
    assert [s["script_bad"] for s in scores] == [0, 0, 0, 2]
    agg = M.aggregate([o[0] for o in outputs], scores)
    assert agg["n"] == 4
    assert agg["eos_rate"] == 0.75
    assert agg["loop_rate"] == 0.25 and agg["leak_rate"] == 0.25
    assert agg["break_rate"] == 0.25 and agg["script_rate"] == 0.25
    assert agg["tokens_mean"] == pytest.approx(33.5)
    assert set(agg) <= set(M.DEFINITIONS)
    assert "format_valid_rate" not in agg


def test_near_copy_index_finds_reordered_copies_only():
    train = [f"The boat number {i} sailed out of Peterheid at dawn with {i % 7} men aboard." for i in range(500)]
    train.append("Aye the haar came in thick aff the sea and the bairns bided in")
    idx = NearCopyIndex(train)
    score, i = idx.best("the haar came in thick aff the sea and aye the bairns bided in")
    assert i == 500 and score >= 90
    assert idx.is_near_copy("The boat number 321 sailed out of Peterheid at dawn with 6 men aboard!")
    assert not idx.is_near_copy("A completely different answer about compilers and parsing.")
    assert not idx.is_near_copy("")
    # blocking keeps the search small
    _, ids = idx.candidates("The boat number 321 sailed out of Peterheid at dawn with 6 men aboard.")
    assert len(ids) < len(train)


def test_gates_against_the_base_and_findings():
    """`distinct_2<base` compares with the base model in the same condition; ft eval says when a tuned
    model is less varied than its base, or recites its training answers, even without a gate."""
    from finetune_cli.evaluate.config import EvalConfig
    from finetune_cli.evaluate.run import check_gates, findings

    results = {"base": {"system": {"distinct_2": 0.52, "eos_rate": 0.4}, "no_system": {"distinct_2": 0.60}},
               "tuned": {"system": {"distinct_2": 0.55, "eos_rate": 1.0, "near_copy_rate": 0.0},
                         "no_system": {"distinct_2": 0.58, "near_copy_rate": 0.1}}}
    kinds = {"base": "base", "tuned": "adapter"}
    # results per decoding, as ft eval holds them (by_source: per prompt group, none here)
    results = {"sample": {"results": results, "by_source": {c: {k: {} for k in v} for c, v in results.items()}}}
    cfg = EvalConfig(base="b", fail_if="distinct_2<base, eos_rate<base+0.5")
    failed = {(f["condition"], f["gate"]): f for f in check_gates(cfg, results, kinds)["failed"]}
    assert set(failed) == {("no_system", "distinct_2<base"), ("no_system", "eos_rate<base+0.5")}
    assert failed["no_system", "distinct_2<base"]["base"] == 0.60
    assert failed["no_system", "eos_rate<base+0.5"]["value"] is None  # not measured there: fails
    noted = {(f["condition"], f["metric"]) for f in findings(results, kinds)}
    assert noted == {("no_system", "distinct_2"), ("no_system", "near_copy_rate")}


def test_a_finding_never_shows_two_equal_numbers_as_below():
    from finetune_cli.evaluate.run import _apart

    assert _apart(0.9641, 0.96449) == ("0.9641", "0.9645")  # "0.964 below 0.964" was printed before
    assert _apart(0.5, 0.6) == ("0.500", "0.600")


def test_a_preference_stage_worse_than_the_sft_run_it_started_from_is_a_finding(tmp_path):
    """On an H100, DPO from an SFT run cut greedy stopping on general prompts from 90% to 68% while still above
    the base's 40%: a comparison with the base alone hides that the preference stage undid SFT's work."""
    import json

    from finetune_cli.evaluate.run import findings, started_from

    general = {"base": {"eos_rate": 0.40, "loop_rate": 0.45, "relevance_mean": 0.63},
               "sft": {"eos_rate": 0.90, "loop_rate": 0.12, "relevance_mean": 0.64},
               "dpo": {"eos_rate": 0.68, "loop_rate": 0.28, "relevance_mean": 0.62}}
    view = {"results": {c: {"system": {}} for c in general},
            "by_source": {c: {"system": {"general": m}} for c, m in general.items()}}
    kinds = {"base": "base", "sft": "adapter", "dpo": "adapter"}
    for d, parent in (("sft", None), ("dpo", str(tmp_path / "runs" / "sft"))):
        (tmp_path / "runs" / d).mkdir(parents=True)
        (tmp_path / "runs" / d / "run.json").write_text(json.dumps({"name": d, "from_run": parent}))
    info = [{"name": "base", "run_dir": None}, {"name": "sft", "run_dir": str(tmp_path / "runs" / "sft")},
            {"name": "dpo", "run_dir": str(tmp_path / "runs" / "dpo")}]
    parents = started_from(info)
    assert parents == {"dpo": "sft"}
    noted = findings({"greedy": view}, kinds, parents)
    against_sft = {(f["candidate"], f["metric"]): f for f in noted if f.get("from")}
    assert set(against_sft) == {("dpo", "eos_rate"), ("dpo", "loop_rate")}  # relevance within 0.05 of SFT's
    f = against_sft["dpo", "eos_rate"]
    assert f["from"] == "sft" and f["from_value"] == 0.90 and "the run it started from" in f["message"]
    assert not [f for f in noted if f.get("base") is not None]  # both tuned runs beat the base on all three
    assert findings({"greedy": view}, kinds) == []  # without the parent, nothing to say
