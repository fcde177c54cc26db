"""Near-copies of training answers: is an output (almost) a training answer said again?

"Near-copy" = rapidfuzz ``token_sort_ratio ≥ 90`` (case-insensitive) to some training answer.
Comparing every output with every training answer is quadratic in practice (100,000 answers ×
hundreds of outputs), so the search is blocked two ways before rapidfuzz scores anything:

* **rare words**: an inverted index maps each word to the answers containing it; an output is only
  compared with answers that share one of its rarest words (its 8 rarest, plus one more per 4
  distinct words in long outputs). An answer ≥ 90% similar shares nearly all words, so it shares one
  of these unless the output differs from it in every one of them.
* **length**: the Indel similarity behind ``token_sort_ratio`` is at most ``1 - |a-b|/(a+b)``,
  so only answers whose processed length is within [0.818, 1.222] × the output's can reach 90.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable


class NearCopyIndex:
    """Index training answers once; :meth:`best` finds an output's closest near-copy."""

    def __init__(self, answers: Iterable[str], *, threshold: float = 90.0):
        from rapidfuzz.utils import default_process

        self._process = default_process
        self.threshold = threshold
        self.sorted_texts: list[str] = []
        self.postings: dict[str, list[int]] = defaultdict(list)
        for i, a in enumerate(answers):
            toks = default_process(a).split()
            self.sorted_texts.append(" ".join(sorted(toks)))
            for w in set(toks):
                self.postings[w].append(i)

    def __len__(self) -> int:
        return len(self.sorted_texts)

    def candidates(self, text: str) -> tuple[str, list[int]]:
        toks = self._process(text).split()
        query = " ".join(sorted(toks))
        known = sorted({w for w in toks if w in self.postings}, key=lambda w: len(self.postings[w]))
        rare = known[: 8 + len(known) // 4]
        ids: set[int] = set()
        for w in rare:
            ids.update(self.postings[w])
        r = self.threshold / 100
        lo, hi = len(query) * r / (2 - r), len(query) * (2 - r) / r
        return query, [i for i in ids if lo <= len(self.sorted_texts[i]) <= hi]

    def best(self, text: str) -> tuple[float, int | None]:
        """``(score, index)`` of the best training answer scoring ≥ threshold, or ``(0, None)``."""
        from rapidfuzz import fuzz, process

        query, ids = self.candidates(text)
        if not query or not ids:
            return 0.0, None
        hit = process.extractOne(query, {i: self.sorted_texts[i] for i in ids}, scorer=fuzz.ratio,
                                 score_cutoff=self.threshold)
        if hit is None:
            return 0.0, None
        return float(hit[1]), int(hit[2])

    def is_near_copy(self, text: str) -> bool:
        return self.best(text)[1] is not None
