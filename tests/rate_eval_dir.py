"""A fake ft eval folder for ft rate's tests: results.json and outputs.jsonl as ft eval writes them
(evaluate/run.py, report.py, judge.py), with no model run.

    make_eval_dir(tmp_path / "eval", candidates=["base", "tuned"], prompts=3)
"""

from __future__ import annotations

import json
from pathlib import Path

XSS = ['<script>window.__pwned = 1</script>hello', '<img src=x onerror="window.__pwned = 1">']


def make_eval_dir(out: Path, *, candidates=("base", "tuned"), prompts: int = 3,
                  conditions=("system", "no_system"), judge_items: list[dict] | None = None,
                  text=None) -> Path:
    """``text(candidate, condition, prompt_index)`` gives each answer (default: a plain sentence)."""
    out.mkdir(parents=True, exist_ok=True)
    text = text or (lambda c, cond, i: f"answer of {c} to prompt {i} ({cond})")
    ps = [{"id": f"p{i}", "source": "file", "turns": [{"role": "user", "content": f"Question number {i}?"}],
           "reference": None} for i in range(prompts)]
    outputs = [{"candidate": c, "condition": cond, "prompt_id": p["id"], "source": "file",
                "text": text(c, cond, i), "n_tokens": 9, "stopped_on_eos": True}
               for c in candidates for cond in conditions for i, p in enumerate(ps)]
    judge = None
    if judge_items is not None:
        judge = {"provider": "openai", "model": "judge-model", "scores": {}, "items": [], "pairs": [],
                 "pair_items": judge_items, "usage": {}}
    doc = {"ft_eval": 1, "name": out.name, "candidates": [{"name": c, "kind": "adapter"} for c in candidates],
           "conditions": list(conditions), "results": {}, "judge": judge, "prompts": ps}
    (out / "results.json").write_text(json.dumps(doc))
    (out / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in outputs))
    return out
