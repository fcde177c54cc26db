#!/usr/bin/env bash
# Issue 20's table: the base model, ft's SFT run (persona data + general-chat replay from `ft replay`), and SFT
# followed by ft's preference stage (on-policy pairs plus everyday prompts, DPO), evaluated on the same prompts
# (held-out rows, probes, ft eval's built-in general prompts — never trained on), greedy and sampled, with and
# without the system prompt, retention against the base.
#
#   gpu/behaviour_result.sh [MODEL] [OUT] [STAGE]    STAGE: sft, pref, eval, or all (default)
#
# sft: ft gen (template provider), ft replay, ft train (SFT); pref: ft pairs, ft train --method dpo; eval: ft eval.
# On a GPU `ft train` picks the Unsloth backend for SFT where Unsloth is installed; DPO runs on the hf backend.
set -euo pipefail
MODEL=${1:-smollm2-135m}
OUT=${2:-out/behaviour}
STAGE=${3:-all}
PAIR_ROWS=${PAIR_ROWS:-500}
mkdir -p "$OUT"
ft() { python -m finetune_cli "$@"; }
if [ "$STAGE" = sft ] || [ "$STAGE" = all ]; then
    ft gen --topics-json topics.json --out "$OUT/doric.jsonl" --persona doric --provider template \
        --n-per-topic 9 --seed 42 --quiet
    ft replay --model "$MODEL" --persona doric --out "$OUT/replay.jsonl" --n 400 --json > "$OUT/replay.json"
    ft train --model "$MODEL" --data "$OUT/doric.jsonl" --data "$OUT/replay.jsonl:0.25" --runs-dir "$OUT/runs" \
        --name sft --seed 42 --json > "$OUT/train-sft.json"
fi
if [ "$STAGE" = pref ] || [ "$STAGE" = all ]; then
    ft pairs --data "$OUT/doric.jsonl" --out "$OUT/pairs.jsonl" --rejected-from policy --model "$OUT/runs/sft" \
        --general 200 --max-rows "$PAIR_ROWS" --json > "$OUT/pairs.json"
    ft train --model "$MODEL" --method dpo --from "$OUT/runs/sft" --data "$OUT/pairs.jsonl" --runs-dir "$OUT/runs" \
        --name dpo --seed 42 --json > "$OUT/train-dpo.json"
fi
if [ "$STAGE" = eval ] || [ "$STAGE" = all ]; then
    ft eval --base "$MODEL" --adapter "$OUT/runs/sft" --adapter "$OUT/runs/dpo" --persona doric \
        --train-data "$OUT/doric.jsonl" --decoding greedy,sample --retention --out "$OUT/eval" --seed 42 \
        --json > "$OUT/eval.json"
fi
