#!/usr/bin/env bash
# Issue 22's GPU result: `ft sweep` on SmolLM2-135M, LoRA vs DoRA × two learning rates, ft's defaults otherwise,
# every variant and the base evaluated on the same prompts (held-out rows, probes, general prompts; greedy and
# sampled), one leaderboard (sweeps/<name>/leaderboard.{md,html,json}).
#
#   gpu/sweep_result.sh [MODEL] [OUT] [N_PER_TOPIC] [ft sweep options...]
#
# Resumable: run it again after an interruption and finished variants are skipped.
set -euo pipefail
MODEL=${1:-smollm2-135m}
OUT=${2:-out/sweep}
N=${3:-4}
mkdir -p "$OUT"
ft() { python -m finetune_cli "$@"; }
[ -s "$OUT/doric.jsonl" ] || ft gen --topics-json topics.json --out "$OUT/doric.jsonl" --persona doric \
    --provider template --n-per-topic "$N" --seed 42 --quiet
ft sweep --name doric --grid "method=lora,dora;lr=1e-4,2e-4" --model "$MODEL" --data "$OUT/doric.jsonl" \
    --runs-dir "$OUT/runs" --sweeps-dir "$OUT/sweeps" --seed 42 "${@:4}" --json > "$OUT/sweep.json"
