#!/usr/bin/env bash
# Issue 20's table: the base model, ft's SFT run, and SFT followed by ft's preference stage (on-policy pairs, DPO),
# evaluated on the same prompts (held-out rows, probes, the built-in general prompts), greedy and sampled, with
# and without the system prompt, retention against the base.
#
#   gpu/behaviour_result.sh [MODEL] [OUT] [STAGE]    STAGE: train (gen, SFT, pairs, DPO), eval, or all (default)
#
# On a GPU `ft train` picks the Unsloth backend for SFT where Unsloth is installed; DPO runs on the hf backend.
set -euo pipefail
MODEL=${1:-smollm2-135m}
OUT=${2:-out/behaviour}
STAGE=${3:-all}
mkdir -p "$OUT"
ft() { python -m finetune_cli "$@"; }
if [ "$STAGE" != eval ]; then
    ft gen --topics-json topics.json --out "$OUT/doric.jsonl" --persona doric --provider template \
        --n-per-topic 9 --seed 42 --quiet
    ft train --model "$MODEL" --data "$OUT/doric.jsonl" --runs-dir "$OUT/runs" --name sft --seed 42 \
        --json > "$OUT/train-sft.json"
    ft pairs --data "$OUT/doric.jsonl" --out "$OUT/pairs.jsonl" --rejected-from policy --model "$OUT/runs/sft" \
        --general --json > "$OUT/pairs.json"
    ft train --model "$MODEL" --method dpo --from "$OUT/runs/sft" --data "$OUT/pairs.jsonl" --runs-dir "$OUT/runs" \
        --name dpo --seed 42 --json > "$OUT/train-dpo.json"
fi
if [ "$STAGE" != train ]; then
    ft eval --base "$MODEL" --adapter "$OUT/runs/sft" --adapter "$OUT/runs/dpo" --persona doric \
        --train-data "$OUT/doric.jsonl" --decoding greedy,sample --retention --out "$OUT/eval" --seed 42 \
        --json > "$OUT/eval.json"
fi
