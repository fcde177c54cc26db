"""Conversations and documents → token ids and labels, with the checks printed before training.

    examples = tokenize_inputs(tok, inputs, cfg)
    stats = masking_stats(examples, eos_id)      # trainable share, empty examples, EOS trained in K/K

An example with no trainable token is reported and dropped; if every example is empty the run stops
with an error that names the template problem, instead of training on nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..errors import ConfigError, TrainingError
from .data import Inputs, chunk_tokens, document_title
from ..chat_template import assistant_only_labels


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    source: str
    kind: str  # chat | text
    truncated: bool = False
    row: dict = field(default_factory=dict)  # the held-out form: {"messages", "meta"} or {"text", "meta"}
    length: int = 0  # tokens before --max-len cut it

    @property
    def trainable(self) -> int:
        return sum(1 for x in self.labels if x != -100)


def tokenize_inputs(tok, inputs: Inputs, *, max_len: int, train_on: str, chunk_size: int, chunk_overlap: int,
                    text_header: str) -> list[Example]:
    out: list[Example] = []
    for c in inputs.conversations:
        ids, labels = assistant_only_labels(tok, c.messages, max_len=10**9, train_on=train_on)
        truncated = len(ids) > max_len
        out.append(Example(ids[:max_len], labels[:max_len], c.source, "chat", truncated,
                           {"messages": c.messages, "meta": c.meta}, len(ids)))
    for d in inputs.documents:
        header, body = document_title(d, text_header)
        head = tok(header + "\n", add_special_tokens=False)["input_ids"] if header else []
        ids = tok(body, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        size = min(chunk_size, max_len) - len(head)
        if size < 8:
            raise TrainingError(f"{d.source}: the header line leaves no room in --chunk-tokens/--max-len")
        for k, chunk in enumerate(chunk_tokens(ids, size=size, overlap=min(chunk_overlap, size // 2))):
            text = tok.decode(chunk, skip_special_tokens=True)
            out.append(Example(head + chunk, [-100] * len(head) + chunk, f"{d.source}#chunk{k + 1}", "text",
                               False, {"text": text, "meta": {"source": d.source, "chunk": k + 1,
                                                              "title": header}}))
    return out


def drop_system(tok, examples: list[Example], share: float, seed: int, *, max_len: int,
                train_on: str) -> tuple[list[Example], int]:
    """Leave the system turn out of a seeded ``share`` of chat examples, so the voice is learned into the
    weights and holds when a user serves the model without the prompt. Returns (examples, how many)."""
    import random

    if share <= 0:
        return examples, 0
    rng = random.Random(f"system-dropout/{seed}")
    out, n = [], 0
    for e in examples:
        msgs = e.row.get("messages") if e.kind == "chat" else None
        if msgs and msgs[0]["role"] == "system" and len(msgs) > 2 and rng.random() < share:
            rest = msgs[1:]
            ids, labels = assistant_only_labels(tok, rest, max_len=10**9, train_on=train_on)
            e = Example(ids[:max_len], labels[:max_len], e.source, "chat", len(ids) > max_len,
                        {"messages": rest, "meta": e.row.get("meta", {})}, len(ids))
            n += 1
        out.append(e)
    return out, n


def masking_stats(examples: list[Example], eos_id: int, pad_id: int | None) -> dict:
    """What the masking did: shares, empties, EOS trained, length stats; raises if nothing is trainable."""
    lengths = sorted(len(e.input_ids) for e in examples)
    total = sum(lengths)
    trainable = sum(e.trainable for e in examples)
    empty = [e.source for e in examples if e.trainable == 0]
    chats = [e for e in examples if e.kind == "chat" and e.trainable]
    eos_trained = sum(1 for e in chats if eos_id in e.labels)
    # a conversation cut at --max-len loses its last turn's end-of-turn token: the one that teaches stopping
    cut = [e for e in examples if e.kind == "chat" and e.truncated]
    pad_in_inputs = sum(1 for e in examples if pad_id is not None and pad_id in e.input_ids)
    h = hashlib.sha256()
    for e in examples:
        h.update(repr((e.input_ids, e.labels)).encode())
    if examples and not trainable:
        raise TrainingError(
            f"every example has zero trainable tokens ({len(examples)} examples): the chat template's assistant "
            "turns were not found or were cut off by --max-len",
            hint="check --chat-template, raise --max-len, or use --train-on all")

    def pct(q: float) -> int:
        return lengths[min(len(lengths) - 1, int(q * len(lengths)))] if lengths else 0

    return {
        "examples": len(examples),
        "tokens": total,
        "trainable_tokens": trainable,
        "trainable_share": round(trainable / total, 4) if total else 0.0,
        "masked_share": round(1 - trainable / total, 4) if total else 0.0,
        "empty_examples": len(empty),
        "empty_sources": empty[:10],
        "truncated_examples": sum(e.truncated for e in examples),
        "conversations": sum(e.kind == "chat" for e in examples),
        "eos_lost_examples": len(cut),
        "longest_conversation": max((e.length for e in examples if e.kind == "chat"), default=0),
        "chat_examples": len(chats),
        "eos_trained_examples": eos_trained,
        "pad_in_inputs": pad_in_inputs,
        "length": {"min": lengths[0] if lengths else 0, "mean": round(total / len(lengths), 1) if lengths else 0,
                   "p50": pct(0.5), "p95": pct(0.95), "max": lengths[-1] if lengths else 0},
        "tokens_sha256": h.hexdigest(),
    }


def check_truncation(stats: dict, max_len: int, allow: bool) -> str | None:
    """Conversations cut at --max-len lose their final end-of-turn token, so the model learns less of when
    to stop: more than half of them cut is an error unless ``allow``; fewer is a warning (returned)."""
    lost, n, longest = stats["eos_lost_examples"], stats["conversations"], stats["longest_conversation"]
    if not lost:
        return None
    what = (f"{lost} of {n} conversations are longer than --max-len {max_len} and lose their final end-of-turn "
            f"token (the longest has {longest} tokens)")
    if 2 * lost > n and not allow:
        raise ConfigError(f"{what}: most of the data would not teach the model to stop",
                          hint=f"raise --max-len to {longest}, or pass --allow-truncation to train on them cut")
    return f"{what}: raise --max-len to {longest} to keep them whole"


def split_val(examples: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded held-out split; at least one validation example when ``share`` > 0 and data allow."""
    import random

    if share <= 0 or len(examples) < 2:
        return examples, []
    n_val = max(1, round(len(examples) * share))
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    return ([e for i, e in enumerate(examples) if i not in val_idx],
            [e for i, e in enumerate(examples) if i in val_idx])


def token_batches(lengths: list[int], budget: int, multiple: int = 1) -> list[list[int]]:
    """Indices grouped into micro-batches of at most ``budget`` tokens counted as padded (rows × the
    longest row): examples sorted by length, so a group's rows are alike and padding is small whether
    the batch is padded or padding-free. Deterministic; every index once; the Trainer shuffles the groups.
    Without varlen attention kernels this is the fast way to batch short chats on a GPU: a step's cost
    hardly grows from 2k to 16k tokens (measured on an H100, docs/benchmarks.md).

    ``multiple``: the number of processes sharing the groups. Where the count is not a multiple of it,
    the groups with the most rows are halved until it is (each half is within the budget), because
    accelerate would otherwise repeat groups so that every process steps together: some examples
    trained twice an epoch. Only where no group has two rows left does the count stay as it is."""
    groups: list[list[int]] = []
    cur: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (lengths[i], i)):
        if cur and (len(cur) + 1) * lengths[i] > budget:  # sorted: the newcomer is the longest
            groups.append(cur)
            cur = []
        cur.append(i)
    groups += [cur] if cur else []
    while len(groups) % multiple:
        k = max(range(len(groups)), key=lambda k: (len(groups[k]), -k))  # the first of the largest
        if len(groups[k]) < 2:
            break
        half = len(groups[k]) // 2
        groups[k:k + 1] = [groups[k][:half], groups[k][half:]]
    return groups
