"""Can a model's own representation tell a harmful ask from an everyday one? A linear probe on the base model's
hidden state at the end of the chat-formatted prompt, trained on ft's training-side prompts (the persona bank's
composed harmful asks from ft gen's safety rows, against ft replay's everyday prompts and ft gen's in-topic user
turns) and tested on what ft eval measures with and never trains on (its 7 harmful probes against its 40 general
prompts). High test accuracy: the model separates the two and refusing the right ones is a training-signal
problem; chance: it cannot, and no data mix will teach a model this size to refuse only harmful asks.

    python gpu/harm_probe.py MODEL DATA.jsonl [LAYERS]   (DATA: ft gen output with safety rows; CPU is fine)
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune_cli.evaluate.prompts import general_prompts, probe_prompts
from finetune_cli.models import resolve_model
from finetune_cli.replay import replay_prompts


def states(model, tok, texts: list[str], layers: list[int]) -> dict[int, np.ndarray]:
    out = {li: [] for li in layers}
    with torch.no_grad():
        for t in texts:
            ids = tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
            hs = model(**ids, output_hidden_states=True).hidden_states
            for li in layers:
                out[li].append(hs[li][0, -1].float().numpy())
    return {li: np.stack(v) for li, v in out.items()}


def main(model_arg: str, data: str, layers_arg: str = "") -> None:
    path = resolve_model(model_arg)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    n_layers = model.config.num_hidden_layers
    layers = [int(x) for x in layers_arg.split(",")] if layers_arg else sorted({n_layers // 4, n_layers // 2,
                                                                               3 * n_layers // 4, n_layers})
    rows = [json.loads(line) for line in open(data)]
    user = lambda r: next(m["content"] for m in r["messages"] if m["role"] == "user")  # noqa: E731
    harmful = sorted({user(r) for r in rows if r["meta"]["bucket"] == "safety"})
    benign = sorted({p["prompt"] for p in replay_prompts(400, 0)}
                    | {user(r) for r in rows if r["meta"]["bucket"] == "core"})  # all of them: a cut would bias
    test_h = [p.turns[0]["content"] for p in probe_prompts() if p.source == "probe:harmful"]
    test_b = [p.turns[0]["content"] for p in general_prompts()]
    print(f"train: {len(harmful)} harmful, {len(benign)} benign; test: {len(test_h)} harmful probes, "
          f"{len(test_b)} general prompts; layers {layers} of {n_layers}")
    tr = states(model, tok, harmful + benign, layers)
    te = states(model, tok, test_h + test_b, layers)
    y_tr = np.array([1] * len(harmful) + [0] * len(benign))
    y_te = np.array([1] * len(test_h) + [0] * len(test_b))
    shuffled = np.random.default_rng(0).permutation(y_tr)  # the control: the same probe on shuffled labels
    for li in layers:
        mu, sd = tr[li].mean(0), tr[li].std(0) + 1e-6
        for name, y in (("", y_tr), (" (shuffled labels)", shuffled)):
            clf = LogisticRegression(max_iter=2000, C=0.1, class_weight="balanced").fit((tr[li] - mu) / sd, y)
            p = clf.predict((te[li] - mu) / sd)
            print(f"layer {li:>2}{name}: harmful probes flagged {int(p[y_te == 1].sum())}/{len(test_h)} "
                  f"({p[y_te == 1].mean():.0%}), general prompts flagged {int(p[y_te == 0].sum())}/{len(test_b)} "
                  f"({p[y_te == 0].mean():.0%})"
                  + ("" if name else "; flagged: " + "; ".join(repr(t[:50]) for t, q in zip(test_b, p[len(test_h):])
                                                              if q)))


if __name__ == "__main__":
    main(*sys.argv[1:])
