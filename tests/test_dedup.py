"""Fuzzy dedup: MinHash-LSH blocking + rapidfuzz verification finds what the all-pairs
token_sort_ratio loop finds (planted near-duplicates), keeps distinct and merely similar answers,
and decides in input order against *kept* answers only."""

from __future__ import annotations

import random

import pytest
from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

from finetune_cli.dedup import find_duplicates, find_duplicates_all_pairs, normalize
from finetune_cli.persona import load_persona
from finetune_cli.gen.template_provider import compose_answer


def tsr(a: str, b: str) -> float:
    return fuzz.token_sort_ratio(a, b, processor=default_process)


def vocabulary(rng: random.Random, n: int = 3000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return sorted({"".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(n)})


def sentence(rng: random.Random, vocab: list[str], words: int) -> str:
    return " ".join(rng.choice(vocab) for _ in range(words)).capitalize() + "."


def near_copy(text: str, rng: random.Random) -> str:
    """A paraphrase that stays at token_sort_ratio ≥ 90: one word swapped, order and case changed."""
    words = text.rstrip(".").split()
    i = rng.randrange(len(words))
    words[i] = words[i][:-1] + "s" if len(words[i]) > 3 else words[i] + "s"
    rng.shuffle(words)
    return " ".join(words).upper() + "!"


def far_copy(text: str, rng: random.Random, vocab: list[str]) -> str:
    """Same subject, a fifth of the words replaced: similar, but not a duplicate (ratio < 90)."""
    words = text.rstrip(".").split()
    for i in rng.sample(range(len(words)), k=len(words) // 5 + 1):
        words[i] = rng.choice(vocab)
    return " ".join(words) + "."


@pytest.fixture(scope="module")
def planted():
    """300 distinct answers, 40 planted near-copies of earlier ones and 30 similar-but-distinct ones."""
    rng = random.Random(5)
    vocab = vocabulary(rng)
    texts = [sentence(rng, vocab, rng.randint(25, 80)) for _ in range(300)]
    expect: dict[int, int] = {}
    for _ in range(40):
        src = rng.randrange(300)
        expect[len(texts)] = src
        texts.append(near_copy(texts[src], rng))
    far = []
    for _ in range(30):
        far.append(len(texts))
        texts.append(far_copy(texts[rng.randrange(300)], rng, vocab))
    return texts, expect, far


def test_planted_near_duplicates_found_distinct_kept(planted):
    texts, expect, far = planted
    for i, src in expect.items():  # the fixture plants what it claims to
        assert tsr(texts[i], texts[src]) >= 90
    for i in far:
        assert max(tsr(texts[i], t) for j, t in enumerate(texts) if j != i) < 90
    dup_of = find_duplicates(texts, 0.9)
    assert {i: d for i, d in enumerate(dup_of) if d is not None} == expect
    assert all(dup_of[i] is None for i in far)


def test_agrees_with_all_pairs_on_random_and_template_answers(planted):
    texts, _, _ = planted
    assert find_duplicates(texts, 0.9) == find_duplicates_all_pairs(texts, 0.9)
    # real template answers (formulaic text, one topic), plus a few with one word changed
    persona = load_persona("doric")
    rng = random.Random(11)
    answers = [compose_answer(persona, rng.choice(["core", "adv", "multi", "safety"]), "keeping a flat warm",
                              "daily_life", "French", rng) for _ in range(300)]
    for k in range(0, 300, 30):
        words = answers[k].split()
        words[len(words) // 2] = "braw"
        answers.append(" ".join(words))
    expected = find_duplicates_all_pairs(answers, 0.9)
    assert find_duplicates(answers, 0.9) == expected
    assert sum(d is not None for d in expected) >= 10  # the comparison covered duplicates too


def test_threshold_is_a_token_sort_ratio():
    a = "Aye, ye'll need a muckle pot an a wee bit o' patience for the soup tae come richt."
    b = "Aye, ye'll need a muckle pot an a wee bit o' patience for the stew tae come richt."
    score = tsr(a, b)
    assert 90 <= score < 97
    assert find_duplicates([a, b], 0.9) == [None, 0]
    assert find_duplicates([a, b], 0.97) == [None, None]


def test_exact_copies_after_normalization():
    texts = ["Aye, it's a dreich day!", "aye IT S a dreich day", "", "!!!", "day dreich a s it aye"]
    assert normalize(texts[0]) == normalize(texts[1])
    assert find_duplicates(texts) == [None, 0, None, 2, 0]
    assert find_duplicates([]) == []


def test_decides_against_kept_answers_only():
    # b ≈ a and c ≈ b, but c is not ≈ a: b is dropped, so c has nothing kept to repeat and stays
    words = [f"word{i:02d}" for i in range(30)]
    a = " ".join(words)
    b = " ".join(words[:-2] + ["other1", "other2"])
    c = " ".join(words[:-4] + ["other1", "other2", "other3", "other4"])
    assert tsr(a, b) >= 90 and tsr(b, c) >= 90 and tsr(a, c) < 90
    assert find_duplicates([a, b, c], 0.9) == find_duplicates_all_pairs([a, b, c], 0.9) == [None, 0, None]


def test_big_cluster_of_copies_all_point_at_the_first():
    # more copies than the LSH bucket window: every one must still meet the kept original
    rng = random.Random(3)
    vocab = vocabulary(rng, 500)
    base = sentence(rng, vocab, 60)
    others = [sentence(rng, vocab, 60) for _ in range(20)]
    texts = others[:10] + [base] + [near_copy(base, rng) for _ in range(60)] + others[10:]
    dup_of = find_duplicates(texts, 0.9)
    assert dup_of == find_duplicates_all_pairs(texts, 0.9)
    assert dup_of[11:71] == [10] * 60 and dup_of[:11] == [None] * 11 and dup_of[71:] == [None] * 10


def test_deterministic_across_calls(planted):
    texts, _, _ = planted
    assert find_duplicates(texts, 0.9, workers=1) == find_duplicates(texts, 0.9, workers=-1)
