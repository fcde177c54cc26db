"""Fuzzy deduplication that scales: MinHash-LSH blocking, then rapidfuzz verification.

    dup_of = find_duplicates(answers, threshold=0.9)   # dup_of[i] = index of the kept answer i repeats, or None

Semantics (the same as the all-pairs loop it replaces, :func:`find_duplicates_all_pairs`): answers are
taken in order; an answer is a duplicate when its ``token_sort_ratio`` (after rapidfuzz's
``default_process``: lower case, punctuation to spaces) with an earlier *kept* answer is ≥ threshold.

Comparing every pair is O(n²) — about a day for 100k answers. Instead each answer's token set gets
a MinHash signature (``bands × rows`` minima of seeded random token permutations); answers that
agree on every row of some band land in one bucket and become candidate pairs. Candidates whose
signatures agree on fewer than ``min_agreement`` of all rows (an estimate of their token Jaccard) or
whose lengths rule the threshold out are dropped; the rest are verified in C++ on all cores
(``rapidfuzz.process.cpdist``). The chance that a pair with token Jaccard J becomes a candidate is
1 − (1 − J^rows)^bands: ≥ 0.999 at J = 0.8 and 0.98 at J = 0.7 with the defaults (paraphrases above
a 0.9 token_sort_ratio share most of their tokens; a pair that changed most of its words by a letter
each can score 0.9 with a low Jaccard, and is the kind this method can miss). Every token counts:
leaving common words out of the signatures is faster, but makes near-copies that differ in rarer
words look less alike and lost planted duplicates. Everything is seeded: the same input gives the
same result in any process.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np

def sorted_tokens(text: str) -> list[str]:
    from rapidfuzz.utils import default_process

    return sorted(default_process(text).split())


def normalize(text: str) -> str:
    """The string token_sort_ratio compares: processed tokens, sorted, joined by spaces."""
    return " ".join(sorted_tokens(text))


def _signatures(flat: np.ndarray, offsets: np.ndarray, vocab_size: int, k: int, seed: int) -> np.ndarray:
    """MinHash signatures (n, k) uint32: per permutation, the minimum random rank of a doc's tokens.

    ``flat`` holds every doc's token ids back to back, doc d at ``flat[offsets[d]:offsets[d+1]]``
    (never empty)."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, 2**32 - 1, size=(vocab_size, k), dtype=np.uint32)
    n = len(offsets) - 1
    sig = np.empty((n, k), dtype=np.uint32)
    step = max(1, 262_144 // k)  # tokens per chunk: the gathered (tokens, k) block stays ~1 MB, in cache
    a = 0
    while a < n:
        b = int(np.searchsorted(offsets, offsets[a] + step, side="right")) - 1
        b = min(n, max(b, a + 1))
        lo, hi = offsets[a], offsets[b]
        sig[a:b] = np.minimum.reduceat(table[flat[lo:hi]], offsets[a:b] - lo, axis=0)
        a = b
    return sig


def _band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (doc, band): a polynomial hash of the band's rows (wraps mod 2^64)."""
    n = sig.shape[0]
    keys = np.zeros((n, bands), dtype=np.uint64)
    mult = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for r in range(rows):
            keys = keys * mult + sig[:, r::rows][:, :bands].astype(np.uint64)
            keys ^= keys >> np.uint64(29)
    return keys


def candidate_pairs(keys: np.ndarray, *, window: int = 16) -> np.ndarray:
    """Pairs (i, j) with j < i that share a bucket in some band, as an (m, 2) int64 array.

    In a bucket, each member pairs with up to ``window`` members before it and with the bucket's
    first ``window`` members (so a big cluster of copies still meets its first, kept, answer).
    """
    n, bands = keys.shape
    out = []
    for b in range(bands):
        col = keys[:, b]
        order = np.argsort(col, kind="stable")  # within a bucket: ascending doc index
        sk = col[order]
        new = np.empty(n, dtype=bool)
        new[:1] = True
        new[1:] = sk[1:] != sk[:-1]
        start = np.maximum.accumulate(np.where(new, np.arange(n), 0))  # bucket start in sorted order
        pos = np.arange(n) - start                                     # rank inside the bucket
        if not (pos > 0).any():
            continue
        for d in range(1, window + 1):
            # previous d-th member in the bucket
            m = pos >= d
            if not m.any():
                break
            idx = np.nonzero(m)[0]
            out.append(np.stack([order[idx], order[idx - d]], axis=1))
        for f in range(window):
            # f-th member of the bucket, for members farther than the window
            m = pos > window + f
            if not m.any():
                break
            idx = np.nonzero(m)[0]
            out.append(np.stack([order[idx], order[start[idx] + f]], axis=1))
    if not out:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(out).astype(np.int64)
    code = np.sort(pairs[:, 0] * n + pairs[:, 1])  # sort-based unique: far faster than np.unique here
    code = code[np.concatenate(([True], code[1:] != code[:-1]))]
    return np.stack([code // n, code % n], axis=1)


def _agreement(sig: np.ndarray, pairs: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Share of signature rows two texts agree on: an unbiased estimate of their token Jaccard."""
    out = np.empty(len(pairs), dtype=np.float32)
    for a in range(0, len(pairs), chunk):
        p = pairs[a:a + chunk]
        out[a:a + chunk] = (sig[p[:, 0]] == sig[p[:, 1]]).mean(axis=1)
    return out


def find_duplicates(texts: Sequence[str], threshold: float = 0.9, *, bands: int = 20, rows: int = 5,
                    seed: int = 0, workers: int = -1, min_agreement: float = 0.3) -> list[int | None]:
    """For each text, the index of the earlier kept text it near-duplicates, or None (kept).

    ``threshold`` is a token_sort_ratio in [0, 1]. See the module docstring for the method.
    """
    from rapidfuzz import fuzz, process
    from rapidfuzz.utils import default_process

    if len(texts) == 0:
        return []
    processed = list(map(default_process, texts))
    # identical processed texts are settled by a dict; only distinct strings go to LSH
    first: dict[str, int] = {}
    copy_of = [first.setdefault(s, i) for i, s in enumerate(processed)]
    uniq = list(first.values())
    n = len(uniq)
    toks = [processed[i].split() or ["\0"] for i in uniq]  # "\0": the one empty text still gets a signature
    # token ids in first-seen order over the input: the same in every process
    vocab = {t: i for i, t in enumerate(dict.fromkeys(chain.from_iterable(toks)))}
    lens = np.fromiter(map(len, toks), dtype=np.int64, count=n)
    flat = np.fromiter(map(vocab.__getitem__, chain.from_iterable(toks)), dtype=np.int64, count=int(lens.sum()))
    offsets = np.concatenate(([0], np.cumsum(lens)))
    sig = _signatures(flat, offsets, len(vocab), bands * rows, seed)
    pairs = candidate_pairs(_band_keys(sig, bands, rows))
    if len(pairs) and min_agreement > 0:
        # most candidates come from big buckets of common words and agree on few rows; a pair at
        # Jaccard 0.5 (which banding finds only half the time anyway) falls below 0.3 once in ~10⁴
        pairs = pairs[_agreement(sig, pairs) >= min_agreement]

    cutoff = threshold * 100.0
    if len(pairs):
        # length of token_sort_ratio's string (tokens joined by single spaces), without building it
        chars = np.fromiter((len(processed[i]) - processed[i].count(" ") + len(t) - 1 for i, t in zip(uniq, toks)),
                            dtype=np.int64, count=n)
        li, lj = chars[pairs[:, 0]], chars[pairs[:, 1]]
        # ratio = 1 - indel/(li+lj) and indel ≥ |li-lj|: a cheap bound before the real score
        pairs = pairs[np.abs(li - lj) <= (1.0 - threshold) * (li + lj) + 1e-9]
    # token_sort_ratio's string, built only for texts left in a candidate pair
    norm = {i: " ".join(sorted(toks[i])) if toks[i] != ["\0"] else "" for i in np.unique(pairs).tolist()}
    edges: dict[int, list[int]] = {}
    if len(pairs):
        scores = process.cpdist([norm[i] for i in pairs[:, 0].tolist()], [norm[j] for j in pairs[:, 1].tolist()],
                                scorer=fuzz.ratio, score_cutoff=cutoff, workers=workers)
        for (i, j) in pairs[scores >= cutoff].tolist():
            edges.setdefault(i, []).append(j)
    # decide in input order: a text is a duplicate of the first earlier *kept* text it matches
    edges_by_text = {uniq[i]: sorted(uniq[j] for j in js) for i, js in edges.items()}
    dup_of: list[int | None] = [None] * len(texts)
    for i, j0 in enumerate(copy_of):
        if j0 != i:
            # an exact copy: its first occurrence, or what that one duplicates
            dup_of[i] = j0 if dup_of[j0] is None else dup_of[j0]
            continue
        for j in edges_by_text.get(i, ()):
            if dup_of[j] is None:
                dup_of[i] = j
                break
    return dup_of


def find_duplicates_all_pairs(texts: Sequence[str], threshold: float = 0.9) -> list[int | None]:
    """The O(n²) reference: each text against every earlier kept text (what ft replaces)."""
    from rapidfuzz import fuzz
    from rapidfuzz.utils import default_process

    cutoff = threshold * 100.0
    kept: list[tuple[int, str]] = []
    out: list[int | None] = []
    for i, t in enumerate(texts):
        hit = None
        for j, k in kept:
            if fuzz.token_sort_ratio(t, k, processor=default_process, score_cutoff=cutoff) >= cutoff:
                hit = j
                break
        out.append(hit)
        if hit is None:
            kept.append((i, t))
    return out
