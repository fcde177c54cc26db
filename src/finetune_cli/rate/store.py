"""The pairs ft rate shows (from ft eval's outputs) and the verdicts people give (ratings.jsonl).

A pair is one prompt in one condition answered by two different candidates. Its id is a hash, so the
page never learns who answered. Which pairs a rater sees, in which order, and which answer is shown
on the left are fixed by the seed and the rater's name: a restart shows the same rater the same
sequence, minus what they already answered.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import DataError
from ..jsonl import _fsync_dir, dumps, read_json, read_rows, repair_tail

CHOICES = ("A", "B", "tie", "both_bad", "skip")
RATINGS = "ratings.jsonl"


@dataclass(frozen=True)
class Pair:
    id: str
    condition: str
    prompt_id: str
    turns: tuple  # the conversation before the answers: ({"role", "content"}, ...)
    a: str        # candidates in results.json order
    b: str
    text_a: str
    text_b: str


def pair_id(condition: str, prompt_id: str, a: str, b: str) -> str:
    return hashlib.sha256("\0".join((condition, prompt_id, a, b)).encode()).hexdigest()[:16]


def load_pairs(eval_dir: str | Path) -> tuple[list[Pair], dict]:
    """Every pair of different candidates per prompt and condition, and results.json."""
    d = Path(eval_dir)
    if not d.is_dir():
        raise DataError("no such eval directory", path=str(d), hint="pass the folder ft eval wrote (--out)")
    doc = read_json(d / "results.json")
    if not (d / "outputs.jsonl").is_file():
        raise DataError("no outputs.jsonl: ft eval ran with --no-save-outputs", path=str(d),
                        hint="run ft eval again without --no-save-outputs")
    order = [c["name"] for c in doc.get("candidates", [])]
    turns = {p["id"]: tuple(p.get("turns") or ()) for p in doc.get("prompts", [])}
    texts: dict[tuple[str, str], dict[str, str]] = {}
    # ft eval answers each prompt once per decoding (greedy, sample): people rate the primary decoding's answers,
    # the ones the LLM judge rated, so the two can be compared
    primary = doc.get("primary_decoding")
    for line, row in read_rows(d / "outputs.jsonl"):
        if primary and row.get("decoding", primary) != primary:
            continue
        try:
            texts.setdefault((row["condition"], row["prompt_id"]), {})[row["candidate"]] = str(row["text"])
        except KeyError as e:
            raise DataError(f"an output row without {e}", path=str(d / "outputs.jsonl"), line=line) from None
        if row["candidate"] not in order:
            order.append(row["candidate"])
    pairs = []
    for (cond, pid), by_cand in texts.items():
        if pid not in turns:
            raise DataError(f"prompt {pid!r} of outputs.jsonl is not in results.json", path=str(d))
        for a, b in itertools.combinations([c for c in order if c in by_cand], 2):
            pairs.append(Pair(pair_id(cond, pid, a, b), cond, pid, turns[pid], a, b, by_cand[a], by_cand[b]))
    if not pairs:
        raise DataError("nothing to rate: no prompt was answered by two candidates", path=str(d),
                        hint="evaluate at least two candidates (--base and --adapter)")
    return pairs, doc


class Schedule:
    """Which pairs each rater sees, in which order, and which side each answer is on.

    With ``limit`` N every rater gets the same N pairs (chosen by the seed), so raters overlap and
    their agreement can be measured; the order and the sides differ per rater."""

    def __init__(self, pairs: list[Pair], *, seed: int = 0, limit: int = 0):
        chosen = list(pairs)
        random.Random(f"ft-rate:{seed}").shuffle(chosen)
        self.pairs = chosen[:limit] if limit else chosen
        self.by_id = {p.id: p for p in self.pairs}
        self.seed = seed

    def order(self, rater: str) -> list[Pair]:
        seq = list(self.pairs)
        random.Random(f"ft-rate:{self.seed}:{rater}").shuffle(seq)
        return seq

    def swapped(self, rater: str, pid: str) -> bool:
        """True when the pair's second candidate is shown as A (on the left)."""
        return hashlib.sha256(f"{self.seed}\0{rater}\0{pid}".encode()).digest()[0] & 1 == 1

    def shown(self, rater: str, pair: Pair) -> tuple[str, str]:
        return (pair.b, pair.a) if self.swapped(rater, pair.id) else (pair.a, pair.b)


class RatingStore:
    """ratings.jsonl: one verdict a line, each flushed and fsynced before ``add`` returns."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.rows: list[dict] = []
        self.done: dict[str, set[str]] = {}
        repair_tail(self.path)  # a torn last line from a killed server
        if self.path.is_file():
            for _, row in read_rows(self.path, on_error="skip"):
                if isinstance(row.get("rater"), str) and isinstance(row.get("pair"), str):
                    self.rows.append(row)
                    self.done.setdefault(row["rater"], set()).add(row["pair"])
        new = not self.path.exists()
        self._f = open(self.path, "ab")
        if new:
            _fsync_dir(self.path.parent)  # the file's name survives a crash, not only its bytes

    def has(self, rater: str, pid: str) -> bool:
        return pid in self.done.get(rater, ())

    def add(self, row: dict) -> bool:
        """Append ``row`` durably; False (nothing written) when this rater already judged this pair."""
        with self._lock:
            if self.has(row["rater"], row["pair"]):
                return False
            self._f.write(dumps(row))
            self._f.flush()
            os.fsync(self._f.fileno())
            self.rows.append(row)
            self.done.setdefault(row["rater"], set()).add(row["pair"])
            return True

    def close(self) -> None:
        self._f.close()


def verdict_row(rater: str, pair: Pair, shown: tuple[str, str], choice: str, reason: str) -> dict:
    winner = shown[0] if choice == "A" else shown[1] if choice == "B" else None
    return {"rater": rater, "pair": pair.id, "condition": pair.condition, "prompt_id": pair.prompt_id,
            "candidates": [pair.a, pair.b], "shown": list(shown), "choice": choice, "winner": winner,
            "reason": reason, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
