"""Markdown table of gpu/schedule_result.sh's runs: one row per (rows, lr, epochs), the base per size.

    python gpu/schedule_table.py OUT [MODEL_LABEL]

Columns: training rows, steps, train seconds, held-out loss on the shared validation rows (ft eval), then ft eval's
greedy answers with the system prompt: EOS and loops on the validation prompts and on ft eval's general prompts
(outside any training topic), general relevance, distinct-2 over all answers. The base is evaluated once per size
on the same prompts and shown once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def pct(x):
    return "–" if x is None else f"{100 * x:.0f}%"


def f3(x):
    return "–" if x is None else f"{x:.3f}"


def main(out: Path, label: str) -> None:
    print("| model | rows | lr | epochs | steps | train s | held-out loss | held-out EOS | held-out loops "
          "| general EOS | general loops | general relevance | distinct-2 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base_done = False  # every size evaluates the base on the same prompts: one row
    for ev in sorted(out.glob("eval-*/results.json"), key=lambda p: -int(p.parent.name.split("-")[1])):
        r = json.loads(ev.read_text())
        n = ev.parent.name.split("-")[1]
        data = out / f"data-{n}.jsonl"
        rows = sum(1 for _ in data.open()) if data.is_file() else "?"
        for cand in r["by_source"]:
            src = r["by_source"][cand]["system"]
            res = r["results"][cand]["system"]
            g, h = src["general"], src["file"]
            if cand == "base":
                if base_done:
                    continue
                base_done, shown, lr, ep, steps, secs = True, "–", "–", "–", "–", "–"
            else:  # the rate and epochs the run itself recorded
                shown = rows
                t = json.loads((out / f"train-{cand}.json").read_text())
                rec = json.loads((out / "runs" / cand / "config.json").read_text())
                lr = f"{rec['resolved']['learning_rate']:.0e}".replace("e-0", "e-")
                ep = f"{rec['config']['epochs']:g}"
                steps = t["global_step"]
                secs = f"{t['global_step'] * t['seconds_per_step']:.0f}"
            print(f"| {label}{', base' if cand == 'base' else ''} | {shown} | {lr} | {ep} | {steps} | {secs} "
                  f"| {f3(res.get('heldout_loss'))} | {pct(h['eos_rate'])} | {pct(h['loop_rate'])} "
                  f"| {pct(g['eos_rate'])} | {pct(g['loop_rate'])} "
                  f"| {f3(g.get('relevance_mean'))} | {f3(res.get('distinct_2'))} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "model")
