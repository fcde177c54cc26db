#!/usr/bin/env bash
# Issues 20 and 22 on one lent GPU, in as few calls as the device time allows: the SmolLM2 sweep
# (gpu/sweep_result.sh) and the behaviour chain (gpu/behaviour_result.sh) run side by side on the one card
# (a 135M model leaves it mostly idle), detached, so that a call that ends at its time limit leaves them
# running; the next call picks them up. Both scripts are resumable if the jobs die with the machine.
#
#   gpu/drive.sh WAIT_S
#
# Expects the bundle in /tmp/site, the SmolLM2 GGUF at /tmp/smol/s.gguf and this tree copied to /tmp/ft (the
# call's own tree is replaced by the next call). Waits until both jobs end or WAIT_S seconds pass, then packs
# their small results (no weights) into $OUT/results.tar.gz.
set -uo pipefail
WAIT=${1:-540}
W=/tmp/work
mkdir -p "$W"
export PYTHONPATH=/tmp/site:/tmp/ft/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 FT_SMOLLM2_GGUF=/tmp/smol/s.gguf \
    FT_HOME=/tmp/fthome TOKENIZERS_PARALLELISM=false
cd /tmp/ft
t0=$(date +%s)
# The GGUF → transformers conversion, once, before two jobs would race on its cache.
[ -f "$W/convert.done" ] || { python -c "from finetune_cli.models import resolve_model; print(resolve_model('smollm2-135m'))" \
    > "$W/convert.log" 2>&1 && touch "$W/convert.done"; } || { tail -20 "$W/convert.log"; exit 1; }
start() {  # start NAME CMD...: unless it finished or is running
    local name=$1; shift
    [ -f "$W/$name.rc" ] && return 0
    if [ -f "$W/$name.pid" ] && kill -0 "$(cat "$W/$name.pid")" 2>/dev/null; then return 0; fi
    setsid nohup bash -c "{ $*; } >> $W/$name.log 2>&1; echo \$? > $W/$name.rc" > /dev/null 2>&1 < /dev/null &
    echo $! > "$W/$name.pid"
    echo "started $name"
}
JOBS=${JOBS:-sweep beh}  # which jobs to run: sweep, beh, beh2, beh3, sched, schedg (SWEEP_OPTS: ft sweep options)
[[ " $JOBS " == *" sweep "* ]] && start sweep bash gpu/sweep_result.sh smollm2-135m "$W/sweep" 3 "${SWEEP_OPTS:---max-prompts 16}"
# BEH_STAGES: the behaviour chain's stages, in order (default all; "sft sfteval" when device time is short)
chain() {  # chain DIR [ENV=VALUE...]: the behaviour stages in order, one command line
    local dir=$1; shift
    local stages=""
    for st in ${BEH_STAGES:-all}; do stages="$stages $* bash gpu/behaviour_result.sh smollm2-135m $W/$dir $st &&"; done
    echo "${stages% &&}"
}
[[ " $JOBS " == *" beh "* ]] && start beh "$(chain beh)"
# beh2: the same chain with other settings, BEH2 (env assignments for gpu/behaviour_result.sh); by default twice
# the share of refused harmful asks in the SFT data. E.g. BEH2="DPO_OPTS='--sft-weight 1'" for DPO with RPO's loss;
# its stages BEH2_STAGES (e.g. "sft sfteval")
[[ " $JOBS " == *" beh2 "* ]] && start beh2 "$(BEH_STAGES=${BEH2_STAGES:-${BEH_STAGES:-all}} chain beh2 "${BEH2:-GEN_OPTS='--safety-ratio 0.1'}")"
# beh3: a third chain, BEH3 likewise (e.g. REPLAY_SHARE=0.4), its stages BEH3_STAGES (e.g. "sft sfteval")
[[ " $JOBS " == *" beh3 "* ]] && start beh3 "$(BEH_STAGES=${BEH3_STAGES:-${BEH_STAGES:-all}} chain beh3 "${BEH3:-REPLAY_SHARE=0.4}")"
# sched: the schedule table on SmolLM2 (gpu/schedule_result.sh); schedg: on Gemma 3 270M where its GGUF is at
# /tmp/gemma/g.gguf (SCHED, SCHEDG: env assignments for the script, e.g. SIZES, VARIANTS, TRAIN_OPTS)
[[ " $JOBS " == *" sched "* ]] && start sched "${SCHED:-} bash gpu/schedule_result.sh smollm2-135m $W/sched"
[[ " $JOBS " == *" schedg "* ]] && start schedg "${SCHEDG:-} bash gpu/schedule_result.sh /tmp/gemma/g.gguf $W/schedg"
while [ $(( $(date +%s) - t0 )) -lt "$WAIT" ]; do
    done_all=1
    for j in $JOBS; do [ -f "$W/$j.rc" ] || done_all=0; done
    [ "$done_all" = 1 ] && break
    sleep 5
done
for j in $JOBS; do
    echo "== $j: rc $(cat "$W/$j.rc" 2>/dev/null || echo running)"; tail -4 "$W/$j.log" 2>/dev/null
done
ls "$W"/beh* "$W/sweep/runs" "$W"/sched*/train-*.json 2>/dev/null
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
cd "$W" && tar czf "$OUT/results.tar.gz" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' \
    --exclude='*.pth' --exclude='checkpoint-*' --exclude='*.gguf' --exclude='tokenizer*' . 2>/dev/null
ls -la "$OUT"
