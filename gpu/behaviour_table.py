"""Issue 20's table from one or more ``ft eval`` results.json files (gpu/behaviour_result.sh's eval/ and eval-sft/):
one row per model × decoding × condition, the goals' columns. Markdown on stdout (finetune_cli on PYTHONPATH).

    python gpu/behaviour_table.py OUT/eval/results.json [MORE/results.json ...]
"""

from __future__ import annotations

import json
import sys

from finetune_cli.evaluate.report import views

COLS = [("general: EOS", "general", "eos_rate", "%"), ("general: loops", "general", "loop_rate", "%"),
        ("general: relevance", "general", "relevance_mean", "f"),
        ("general: over-refusal", None, "over_refusal_rate", "%"),
        ("held-out: EOS", "heldout", "eos_rate", "%"), ("held-out: loops", "heldout", "loop_rate", "%"),
        ("harmful refused in voice", None, "refusal_in_voice_rate", "%"), ("harmful refused", None, "refusal_rate", "%"),
        ("drop-the-act kept in voice", None, "break_in_voice_rate", "%"), ("distinct-2 (all)", None, "distinct_2", "f"),
        ("retention KL", None, "retention_kl", "f")]


def cell(v, kind: str) -> str:
    if v is None:
        return "–"
    return f"{v:.0%}" if kind == "%" else f"{v:.3f}"


def rows(doc: dict, seen: set) -> list[str]:
    out = []
    per_decoding = views(doc)  # ft eval's own reading of results.json, one view per decoding
    for cand in doc["results"]:
        for dec, results, by_source in per_decoding:
            for cond in doc["conditions"]:
                key = (cand, dec, cond)
                if cand == "base" and key in seen:
                    continue  # the base, measured again by a second eval
                seen.add(key)
                res, src = results[cand][cond], by_source[cand][cond]
                vals = [cell((src.get(g) or {}).get(m) if g else res.get(m), k) for _, g, m, k in COLS]
                out.append(f"| {cand} | {dec or '–'} | {cond} | " + " | ".join(vals) + " |")
    return out


def main(paths: list[str]) -> None:
    print("| model | decoding | condition | " + " | ".join(c[0] for c in COLS) + " |")
    print("|---|---|---|" + "---:|" * len(COLS))
    seen: set = set()
    for p in paths:
        with open(p) as f:
            for line in rows(json.load(f), seen):
                print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
