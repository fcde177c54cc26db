#!/usr/bin/env bash
# The run behind docs/results.md: Doric data from the template provider → `ft train` with ft's defaults
# → `ft eval` of the base model beside the tuned one, with and without the system prompt.
#
#   gpu/smollm2_result.sh [MODEL] [OUT]     MODEL: smollm2-135m (the smollm2 extra) or a path to its GGUF
#
# On a GPU `ft train` picks the Unsloth backend where Unsloth is installed (--backend auto).
set -euo pipefail
MODEL=${1:-smollm2-135m}
OUT=${2:-out/smollm2}
mkdir -p "$OUT"
ft() { python -m finetune_cli "$@"; }
ft gen --topics-json topics.json --out "$OUT/doric.jsonl" --persona doric --provider template \
    --n-per-topic 9 --seed 42 --quiet
ft train --model "$MODEL" --data "$OUT/doric.jsonl" --runs-dir "$OUT/runs" --name doric-smollm2 --seed 42 \
    --json > "$OUT/train.json"
ft eval --base "$MODEL" --adapter "$OUT/runs/doric-smollm2" --persona doric --train-data "$OUT/doric.jsonl" \
    --out "$OUT/eval" --seed 42 --json > "$OUT/eval.json"
