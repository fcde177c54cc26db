"""``ft eval --retention``: how far tuning moved a model away from its base on neutral text.

    ref = reference_logprobs(load_for_inference("tiny"))        # the base's next-token log-probs
    retention_metrics(loaded_candidate, ref)   # {"retention_kl": ..., "retention_kl_prompts": ..., "retention_ppl": ...}

The texts are ft's own: ``retention_text.txt`` (a few paragraphs of plain encyclopedic prose) and the general
prompts as plain text (no chat template, so every candidate reads the same tokens). Both are tokenized once with
the base's tokenizer and fed to each candidate as ids: KL(base ‖ candidate) per position, averaged over positions,
is 0 for the base itself and grows as tuning moves the distribution. The base's log-probs are kept on the CPU
(positions × vocabulary floats: about 200 MB for a 50k vocabulary), so candidates load one at a time as in the
rest of ft eval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ui import NULL, Reporter


@dataclass
class Reference:
    text_ids: list[list[int]]     # the bundled text, one paragraph per entry (base tokenizer)
    prompt_ids: list[list[int]]   # the general prompts
    text_logprobs: list           # per paragraph: [len - 1, vocab] float32 CPU tensors
    prompt_logprobs: list
    vocab: int


def retention_texts() -> tuple[list[str], list[str]]:
    from importlib.resources import files

    from .prompts import general_prompts

    text = files(__package__).joinpath("retention_text.txt").read_text(encoding="utf-8")
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    return paragraphs, [p.turns[-1]["content"] for p in general_prompts()]


def _logprobs(model, ids: list[int]):
    """Next-token log-probs at every position but the last: ``[len(ids) - 1, vocab]`` float32 on the CPU."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1].float()
        return torch.log_softmax(logits, dim=-1).cpu()


def _ids(tok, text: str) -> list[int]:
    ids = tok(text)["input_ids"]
    return ids[:512]


def reference_logprobs(base) -> Reference:
    """The base model's (a ``load_for_inference`` result) log-probs on the retention texts; frees nothing."""
    paragraphs, questions = retention_texts()
    text_ids = [i for i in (_ids(base.tokenizer, p) for p in paragraphs) if len(i) > 1]
    prompt_ids = [i for i in (_ids(base.tokenizer, q) for q in questions) if len(i) > 1]
    text_lp = [_logprobs(base.model, i) for i in text_ids]
    prompt_lp = [_logprobs(base.model, i) for i in prompt_ids]
    vocab = text_lp[0].shape[-1]
    return Reference(text_ids, prompt_ids, text_lp, prompt_lp, vocab)


def mean_kl(ref_lps: list, model, ids_list: list[list[int]], vocab: int) -> float:
    """Mean over positions of KL(base ‖ model) in nats. The model's extra vocabulary (tokens added in tuning)
    is left out: its share of probability only makes the KL larger, never smaller."""

    total, n = 0.0, 0
    for ref, ids in zip(ref_lps, ids_list):
        lp = _logprobs(model, ids)[:, :vocab]
        kl = (ref.exp() * (ref - lp)).sum(-1).clamp_min(0)
        total += float(kl.sum())
        n += kl.shape[0]
    return total / n if n else 0.0


def perplexity_of(model, ids_list: list[list[int]]) -> float:
    import torch

    nll, n = 0.0, 0
    for ids in ids_list:
        lp = _logprobs(model, ids)
        target = torch.tensor(ids[1:])
        nll -= float(lp.gather(1, target[:, None]).sum())
        n += len(target)
    return math.exp(nll / n) if n else float("nan")


def retention_metrics(loaded, ref: Reference, *, reporter: Reporter = NULL, name: str = "") -> dict:
    """retention_kl, retention_kl_prompts and retention_ppl of one loaded candidate against ``ref``."""
    cand_vocab = loaded.model.get_output_embeddings().weight.shape[0] if \
        loaded.model.get_output_embeddings() is not None else ref.vocab
    if cand_vocab < ref.vocab:
        reporter.warn(f"{name}: its vocabulary ({cand_vocab}) is smaller than the base's ({ref.vocab}): "
                      "no retention metrics")
        return {"retention_kl": None, "retention_kl_prompts": None, "retention_ppl": None}
    return {"retention_kl": round(mean_kl(ref.text_logprobs, loaded.model, ref.text_ids, ref.vocab), 6),
            "retention_kl_prompts": round(mean_kl(ref.prompt_logprobs, loaded.model, ref.prompt_ids, ref.vocab), 6),
            "retention_ppl": round(perplexity_of(loaded.model, ref.text_ids), 4)}
