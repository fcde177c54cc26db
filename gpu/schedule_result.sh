#!/usr/bin/env bash
# Issue 20's schedule table: ft train's learning rate and epochs against the size of the data (300–5,000 template
# rows), on one model, every run scored on the same validation rows and evaluated alike (ft eval, greedy, held-out
# rows + ft eval's general prompts, with the system prompt).
#
#   gpu/schedule_result.sh [MODEL] [OUT]
#
# SIZES: conversations per topic (topics.json has 122 leaves: 3 ≈ 370 rows, 8 ≈ 980, 20 ≈ 2,440, 41 ≈ 5,000);
# VARIANTS: "lr:epochs" pairs. Every training runs at once (a small model leaves one GPU mostly idle); each size is
# evaluated as soon as its own trainings end.
# Resumable: finished trainings (train-NAME.json) and evals (eval-SIZE.json) are skipped.
set -uo pipefail
MODEL=${1:-smollm2-135m}
OUT=${2:-out/schedule}
SIZES=${SIZES:-41 20 8 3}
VARIANTS=${VARIANTS:-2e-4:3 1e-3:3 1e-3:1}
MAX_PROMPTS=${MAX_PROMPTS:-24}
TRAIN_OPTS=${TRAIN_OPTS:-}  # more ft train options (e.g. "--backend hf")
mkdir -p "$OUT"
ft() { python -m finetune_cli "$@"; }
# a GGUF converts once, before parallel trainings would race on its cache
python -c "import sys; from finetune_cli.models import resolve_model; print(resolve_model(sys.argv[1]))" "$MODEL" || exit 1
# the same validation rows for every size (another seed, so other answers)
[ -s "$OUT/val.jsonl" ] || ft gen --topics-json topics.json --out "$OUT/val.jsonl" --persona doric --provider template \
    --n-per-topic 2 --seed 7 --quiet || exit 1
for n in $SIZES; do
    [ -s "$OUT/data-$n.jsonl" ] || ft gen --topics-json topics.json --out "$OUT/data-$n.jsonl" --persona doric \
        --provider template --n-per-topic "$n" --seed 42 --quiet || exit 1
done
vname() { echo "n$1-lr${2%%:*}-e${2##*:}"; }  # vname N LR:EPOCHS: the variant's run name
one() {  # one N LR:EPOCHS: train a variant unless it finished; an interrupted one starts again
    local n=$1 name
    name=$(vname "$1" "$2")
    [ -s "$OUT/train-$name.json" ] && return 0
    rm -rf "$OUT/runs/$name"
    ft train --model "$MODEL" --data "$OUT/data-$n.jsonl" --val-file "$OUT/val.jsonl" \
        --lr "${2%%:*}" --epochs "${2##*:}" --runs-dir "$OUT/runs" --name "$name" --seed 42 $TRAIN_OPTS --quiet --json \
        > "$OUT/train-$name.json.part" 2> "$OUT/train-$name.log" \
        && mv "$OUT/train-$name.json.part" "$OUT/train-$name.json"
    echo "$name rc $?"
}
size() {  # size N: that size's variants side by side, then one eval of the base and them on the same prompts
    local n=$1 v name adapters=()
    for v in $VARIANTS; do one "$n" "$v" & done
    wait
    [ -s "$OUT/eval-$n.json" ] && return 0
    for v in $VARIANTS; do
        name=$(vname "$n" "$v")
        [ -s "$OUT/train-$name.json" ] && adapters+=(--adapter "$OUT/runs/$name")
    done
    [ ${#adapters[@]} -gt 0 ] || return 0
    ft eval --base "$MODEL" "${adapters[@]}" --persona doric --prompts "$OUT/val.jsonl" --heldout "$OUT/val.jsonl" \
        --max-prompts "$MAX_PROMPTS" --no-probes --decoding greedy --conditions system --out "$OUT/eval-$n" \
        --seed 42 --quiet --json > "$OUT/eval-$n.json.part" 2> "$OUT/eval-$n.log" \
        && mv "$OUT/eval-$n.json.part" "$OUT/eval-$n.json"
    echo "eval $n rc $?"
}
for n in $SIZES; do size "$n" & done  # every size at once: a 135M model leaves the card mostly idle
wait
