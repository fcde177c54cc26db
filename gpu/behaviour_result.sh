#!/usr/bin/env bash
# Issue 20's table: the base model, ft's SFT run (persona data + general-chat replay from `ft replay`), and SFT
# followed by ft's preference stage (on-policy pairs plus everyday prompts, DPO), evaluated on the same prompts
# (held-out rows, probes, ft eval's built-in general prompts — never trained on), greedy and sampled, with and
# without the system prompt, retention against the base.
#
#   gpu/behaviour_result.sh [MODEL] [OUT] [STAGE]    STAGE: sft, pref, eval, or all (default); sfteval: the base
#                                                    and the SFT run only (SFTEVAL_DECODING, greedy by default)
#
# Resumable: a step whose result file is already there (doric.jsonl, replay.jsonl, train-sft.json, ...) is skipped;
# an interrupted `ft train` resumes from its last checkpoint.
#
# sft: ft gen (template provider), ft replay, ft train (SFT); pref: ft pairs, ft train --method dpo; eval: ft eval.
# On a GPU `ft train` picks the Unsloth backend for SFT where Unsloth is installed; DPO runs on the hf backend.
set -euo pipefail
MODEL=${1:-smollm2-135m}
OUT=${2:-out/behaviour}
STAGE=${3:-all}
PAIR_ROWS=${PAIR_ROWS:-0}   # data rows paired (0: all; only answers with a failure become pairs)
N_PER_TOPIC=${N_PER_TOPIC:-9}  # persona rows per topic (9: 1,098 rows)
REPLAY_N=${REPLAY_N:-400}      # everyday prompts ft replay asks the base model
REPLAY_SHARE=${REPLAY_SHARE:-0.25}  # the replay file's share of the SFT data (--data FILE:SHARE)
DPO_OPTS=${DPO_OPTS:-}         # more DPO options (e.g. "--sft-weight 1")
SFT_OPTS=${SFT_OPTS:-}         # more SFT options (e.g. "--lr 1e-3")
SFTEVAL_DECODING=${SFTEVAL_DECODING:-greedy}  # sfteval's decodings (greedy,sample for the full table)
EVAL_DECODING=${EVAL_DECODING:-greedy,sample}  # eval's decodings (greedy alone halves its time: the goals are greedy)
EVAL_OPTS=${EVAL_OPTS:-}       # more ft eval options for eval and sfteval (e.g. "--max-prompts 16" on a short lease)
GEN_OPTS=${GEN_OPTS:-}         # more ft gen options (e.g. "--safety-ratio 0.12"), for a variant of the defaults
PAIR_GEN_OPTS=${PAIR_GEN_OPTS:-}  # when set, the pairs' prompts come from a second ft gen run with these options
                                  # (e.g. "--seed 7 --n-per-topic 5 --safety-ratio 0.15": prompts SFT never saw,
                                  # more harmful asks) instead of the SFT data
mkdir -p "$OUT"
ft() { python -m finetune_cli "$@"; }
# step RESULT ft ARGS...: run once; RESULT is written only when the command succeeded.
step() { local res=$1; shift; [ -s "$res" ] && return 0; "$@" > "$res.part"; mv "$res.part" "$res"; }
# train NAME ARGS...: a run interrupted after a checkpoint resumes; one without a checkpoint starts again.
train() {
    local name=$1; shift
    local more=()
    [ -s "$OUT/train-$name.json" ] && return 0
    if compgen -G "$OUT/runs/$name/checkpoints/checkpoint-*" > /dev/null; then more=(--resume)
    else rm -rf "$OUT/runs/$name"; fi
    step "$OUT/train-$name.json" ft train --model "$MODEL" "$@" --runs-dir "$OUT/runs" --name "$name" --seed 42 \
        "${more[@]}" --json
}
if [ "$STAGE" = sft ] || [ "$STAGE" = all ]; then
    [ -s "$OUT/doric.jsonl" ] || ft gen --topics-json topics.json --out "$OUT/doric.jsonl" --persona doric \
        --provider template --n-per-topic "$N_PER_TOPIC" --seed 42 --quiet $GEN_OPTS
    step "$OUT/replay.json" ft replay --model "$MODEL" --persona doric --out "$OUT/replay.jsonl" --n "$REPLAY_N" --json
    train sft --data "$OUT/doric.jsonl" --data "$OUT/replay.jsonl:$REPLAY_SHARE" $SFT_OPTS
fi
if [ "$STAGE" = pref ] || [ "$STAGE" = all ]; then
    PAIR_DATA="$OUT/doric.jsonl"
    if [ -n "$PAIR_GEN_OPTS" ]; then
        PAIR_DATA="$OUT/pairdata.jsonl"
        [ -s "$PAIR_DATA" ] || ft gen --topics-json topics.json --out "$PAIR_DATA" --persona doric --provider template \
            --quiet $PAIR_GEN_OPTS
    fi
    step "$OUT/pairs.json" ft pairs --data "$PAIR_DATA" --out "$OUT/pairs.jsonl" --rejected-from policy \
        --model "$OUT/runs/sft" --general 200 --max-rows "$PAIR_ROWS" --json
    train dpo --method dpo --from "$OUT/runs/sft" --data "$OUT/pairs.jsonl" $DPO_OPTS
fi
if [ "$STAGE" = eval ] || [ "$STAGE" = all ]; then
    step "$OUT/eval.json" ft eval --base "$MODEL" --adapter "$OUT/runs/sft" --adapter "$OUT/runs/dpo" --persona doric \
        --train-data "$OUT/doric.jsonl" --decoding "$EVAL_DECODING" --retention --out "$OUT/eval" --seed 42 --json $EVAL_OPTS
fi
if [ "$STAGE" = sfteval ]; then
    step "$OUT/eval-sft.json" ft eval --base "$MODEL" --adapter "$OUT/runs/sft" --persona doric \
        --train-data "$OUT/doric.jsonl" --decoding "$SFTEVAL_DECODING" --retention --out "$OUT/eval-sft" --seed 42 --json $EVAL_OPTS
fi
