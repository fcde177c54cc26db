"""``ft train`` options. Each field's help is its documentation; defaults suit a 1–8B persona tune.

Why these defaults: LoRA r=16 on all linear layers with alpha=2r is the setting that matches full
fine-tuning on style/persona data in the LoRA-vs-full studies and is what Unsloth/Axolotl ship;
rsLoRA scales by alpha/sqrt(r), so alpha=r there. Dropout 0 (Unsloth's measured default: faster,
no loss in quality for short tunes). lr 2e-4 with cosine decay and 3 % warmup is the QLoRA-paper
recipe; full fine-tuning uses 2e-5. 3 epochs over a few thousand conversations; an effective batch
of 16 (8 × 2 accumulation) keeps steps stable without drowning small data sets. 2048 tokens covers
multi-turn persona conversations. Gradient checkpointing only on GPU (on CPU the tiny models do not
need it and it costs a third more time). 5 % held out for eval loss, best checkpoint kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import opt
from ..errors import ConfigError

METHODS = ("lora", "dora", "rslora", "qlora", "full", "dpo", "orpo")
# --report-to choices and the packages each needs (any one of them)
TRACKERS = {"none": (), "tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",),
            "trackio": ("trackio",), "mlflow": ("mlflow",)}


def report_to_missing(tracker: str) -> str | None:
    """One line when --report-to's package is not installed (found without importing it)."""
    import importlib.util

    pkgs = TRACKERS.get(tracker, ())
    if not pkgs or any(importlib.util.find_spec(p) is not None for p in pkgs):
        return None
    return (f"option --report-to {tracker}: the {pkgs[0]} package is not installed (uv pip install {pkgs[0]}, "
            "or --report-to none)")


PREFERENCE = ("dpo", "orpo")


@dataclass
class TrainConfig:
    # Model
    model: str | None = opt(None, "Base model: a local directory, a .gguf file, a Hugging Face id, `tiny` (random "
                                  "weights, for smoke runs) or `smollm2-135m`. Required, except with --from, whose "
                                  "run names its base.", short="-m", panel="Model")
    method: str = opt("lora", "Fine-tuning method: LoRA, DoRA (weight-decomposed), rsLoRA (rank-stabilized), "
                              "QLoRA (4-bit base, CUDA only), full fine-tuning, or a preference stage on "
                              "ft pairs' data: DPO or ORPO (on a --adapter lora/dora, see --from).", choices=METHODS, panel="Model")
    adapter: str = opt("lora", "--method dpo/orpo: the adapter trained (LoRA or DoRA).", choices=("lora", "dora"),
                       panel="Model")
    from_run: str | None = opt(None, "--method dpo/orpo: start from this SFT run's adapter (its base model, chat "
                                     "template and tokenizer) instead of a fresh one.", flag="--from", panel="Model")
    beta: float = opt(0.1, "--method dpo/orpo: DPO's beta (how far from the reference the policy may move; "
                           "higher = closer) or ORPO's odds-ratio weight (lambda).", gt=0, panel="Model")
    sft_weight: float = opt(0.0, "--method dpo: weight of a language-model loss on the chosen answers beside "
                                 "DPO's (RPO; TRL loss_type sigmoid+sft), which keeps DPO from lowering the "
                                 "chosen answers' own likelihood along with the rejected ones'; 0 = plain DPO.",
                            ge=0, panel="Model")
    backend: str = opt("auto", "Training backend: hf (transformers + peft, any device); unsloth (CUDA, also under "
                               "DDP); auto = unsloth where a CUDA GPU and the unsloth package are present and one "
                               "process trains, else hf.", choices=("auto", "hf", "unsloth"), panel="Model")
    chat_template: str = opt("auto", "Chat template: auto (the model's own, else ChatML), model, chatml, llama3, "
                                     "gemma or @file.jinja. Saved with the adapter.", panel="Model")
    thinking: str = opt("off", "A chat template with a thinking switch (Qwen3's enable_thinking): off renders it "
                               "with thinking off for training and serving (no <think> to learn, persona data has "
                               "none); keep leaves the template as shipped. Recorded in run.json; other templates "
                               "ignore it.", choices=("off", "keep"), panel="Model")
    train_embeddings: str = opt("new", "When tokens are added (ChatML on a base model, a new pad): train only the "
                                       "new tokens' embedding and output rows, all of embed/lm_head, or none.",
                                choices=("new", "all", "none"), panel="Model")
    dtype: str = opt("auto", "Weights dtype: auto (bf16 on a bf16 GPU, else float32).",
                     choices=("auto", "float32", "bfloat16", "float16"), panel="Model")
    trust_remote_code: bool = opt(False, "Run the model's own Python code (auto_map in its config.json), for a "
                                         "source you trust; without it ft refuses such a model (it never "
                                         "prompts). Recorded in run.json.", panel="Model")

    # Data
    data: list[str] = opt(help="Training files: messages, ShareGPT or alpaca JSONL, .json/.parquet/.csv "
                               "(datasets), .txt/.md raw text for completion training. Repeat or "
                               "comma-separate. PATH:W makes a file the share W of the mixture (general.jsonl:0.2 = "
                               "20% of the training rows, seeded sample; unweighted files keep all their rows). With "
                               "--method dpo/orpo: ft pairs' preference pairs.",
                          short="-d", required=True, panel="Data")
    system: str | None = opt(None, "System prompt baked into every conversation (replaces theirs): TEXT or @file.",
                             panel="Data")
    system_dropout: float = opt(0.25, "Share of training conversations (not held-out ones) trained without their "
                                      "system prompt, so the voice holds when the model is served without it; "
                                      "0 keeps it everywhere.", ge=0, le=1, panel="Data")
    train_on: str = opt("assistant", "Which tokens carry loss: assistant turns (with their end-of-turn token) or "
                                     "all tokens.", choices=("assistant", "all"), panel="Data")
    max_len: int = opt(2048, "Maximum sequence length in tokens; longer examples are truncated (and counted).",
                       ge=16, panel="Data")
    allow_truncation: bool = opt(False, "Train even when more than half of the conversations are longer than "
                                        "--max-len (each loses its final end-of-turn token, so the model learns "
                                        "less of when to stop); without it that is an error.", panel="Data")
    packing: bool = opt(True, "Padding-free batching: a micro-batch is one row of concatenated examples with "
                              "position ids restarting per example, so attention never crosses examples.",
                        panel="Data")
    chunk_tokens: int = opt(1024, "Raw text: tokens per chunk (capped by --max-len).", ge=16, panel="Data")
    chunk_overlap: int = opt(128, "Raw text: tokens shared by consecutive chunks.", ge=0, panel="Data")
    text_header: str = opt("none", "Raw text: a header line in front of every chunk (not trained): none, the "
                                   "file name, or the document's first line (its title).",
                           choices=("none", "filename", "first-line"), panel="Data")

    # LoRA
    r: int = opt(16, "LoRA rank.", ge=1, panel="LoRA")
    alpha: float | None = opt(None, "LoRA alpha; none = 2·r (r for rsLoRA).", gt=0, panel="LoRA")
    dropout: float = opt(0.0, "LoRA dropout.", ge=0, lt=1, panel="LoRA")
    target_modules: list[str] = opt(["all-linear"], "Modules to adapt: all-linear, or names such as "
                                                    "q_proj,v_proj.", panel="LoRA")

    # Optimization
    lr: float | None = opt(None, "Peak learning rate; none = 2e-4 (LoRA family) or 2e-5 (full).", gt=0,
                           panel="Optimization")
    scheduler: str = opt("cosine", "Learning-rate schedule after warmup.", choices=("cosine", "linear", "constant"),
                         panel="Optimization")
    warmup_ratio: float = opt(0.03, "Share of steps spent warming up.", ge=0, lt=1, panel="Optimization")
    epochs: float = opt(3.0, "Passes over the training data (ignored when --max-steps > 0).", gt=0,
                        panel="Optimization")
    max_steps: int = opt(0, "Optimizer steps to run; 0 = use --epochs.", ge=0, panel="Optimization")
    batch_size: int = opt(8, "Examples per micro-batch (per device); see --batch-tokens.", ge=1, panel="Optimization")
    grad_accum: int = opt(2, "Micro-batches per optimizer step.", ge=1, panel="Optimization")
    batch_tokens: int = opt(0, "Token budget per micro-batch (e.g. 16384), instead of --batch-size examples: "
                               "examples of like length are grouped until the batch, padded, would exceed it. Far "
                               "faster on short chats (a GPU step costs about the same for 2k or 16k tokens), with "
                               "fewer, larger steps per epoch. 0 = off.", ge=0, panel="Optimization")
    weight_decay: float = opt(0.0, "AdamW weight decay.", ge=0, panel="Optimization")
    max_grad_norm: float = opt(1.0, "Gradient clipping norm; 0 = off.", ge=0, panel="Optimization")
    optimizer: str = opt("auto", "Optimizer: auto = adamw_8bit on CUDA with bitsandbytes, else adamw_torch.",
                         choices=("auto", "adamw_torch", "adamw_torch_fused", "adamw_8bit", "adafactor", "sgd"),
                         panel="Optimization")
    gradient_checkpointing: str = opt("auto", "Recompute activations to save memory: auto = on for GPU.",
                                      choices=("auto", "on", "off"), panel="Optimization")
    seed: int = opt(42, "Seed for weights init, data order and the validation split.", panel="Optimization")

    # Eval
    val_split: float = opt(0.05, "Share of rows held out for eval loss (saved as heldout.jsonl); 0 = none.",
                           ge=0, lt=1, panel="Eval")
    val_file: str | None = opt(None, "A separate validation file (instead of --val-split).", panel="Eval")
    eval_steps: int = opt(0, "Evaluate and checkpoint every N optimizer steps; 0 = about 10 times per run.",
                          ge=0, panel="Eval")
    early_stopping: int = opt(0, "Stop after N evaluations without a better eval loss; 0 = off.", ge=0,
                              panel="Eval")
    save_total_limit: int = opt(3, "Checkpoints kept (the best one is always kept).", ge=1, panel="Eval")
    logging_steps: int = opt(0, "Log loss every N optimizer steps; 0 = about 50 times per run (at most every "
                                "10 steps).", ge=0, panel="Eval")

    # Devices
    gpus: int = opt(1, "Processes to train with on this host, one per GPU (data-parallel, effective batch = "
                       "batch × accum × N): N > 1 relaunches this command under torch.distributed.run; without "
                       "CUDA it starts N CPU processes on gloo (for tests). 1 = this process, or the processes "
                       "torchrun / accelerate launch started.", ge=1, panel="Devices")
    fsdp: bool = opt(False, "Shard weights, gradients and optimizer state over the GPUs (FSDP2 full shard, one unit "
                            "per decoder layer) for models that do not fit one GPU; each process loads the model in "
                            "CPU memory first. hf backend, CUDA, 2+ processes, not QLoRA. Off = DDP (a full copy "
                            "per GPU).", panel="Devices")

    # Output
    name: str | None = opt(None, "Run name (a directory under --runs-dir); none = <model>-<method>-<time>.",
                           panel="Output")
    runs_dir: str = opt("runs", "Where runs are written.", panel="Output")
    resume: bool = opt(False, "Continue the run --name from its last checkpoint (model, optimizer, scheduler, "
                              "RNG and data position).", panel="Output")
    report_to: str = opt("none", "Experiment tracker the Trainer logs to (its report_to): tensorboard (offline, "
                                 "events in runs/<name>/tensorboard), wandb, trackio, mlflow, or none. Each "
                                 "needs its own package.", choices=tuple(TRACKERS), panel="Output")

    def validate(self) -> None:
        errors = []
        if not self.model and not self.from_run:
            errors.append("train: missing required option --model")
        missing = report_to_missing(self.report_to)
        if missing:
            errors.append(missing)
        if self.resume and not self.name:
            errors.append("option --resume needs --name (the run to continue)")
        if self.early_stopping and not (self.val_file or self.val_split):
            errors.append("option --early-stopping needs validation data (--val-split or --val-file)")
        if self.fsdp and self.method == "qlora":
            errors.append("option --fsdp does not shard 4-bit QLoRA weights (bitsandbytes): use --method lora, "
                          "or QLoRA without --fsdp (DDP)")
        if self.fsdp and self.backend == "unsloth":
            errors.append("option --fsdp needs --backend hf (ft's Unsloth backend trains under DDP)")
        if self.batch_tokens and self.batch_tokens < self.max_len:
            errors.append(f"option --batch-tokens {self.batch_tokens} is below --max-len {self.max_len}: a batch must "
                          "hold the longest example")
        if self.chunk_overlap >= self.chunk_tokens:
            errors.append("option --chunk-overlap must be smaller than --chunk-tokens")
        if self.from_run and self.method not in PREFERENCE:
            errors.append("option --from needs --method dpo or orpo")
        if self.sft_weight and self.method != "dpo":
            errors.append(f"option --sft-weight applies to --method dpo (ORPO has its own language-model loss), "
                          f"not --method {self.method}")
        if self.method in PREFERENCE and self.gpus > 1:
            errors.append(f"option --method {self.method} trains in one process for now (--gpus 1)")
        if errors:
            raise ConfigError("\n".join(errors))

    # derived values: computed, never written back, so config.json's values are what the user set

    @property
    def held_out_share(self) -> float:
        """--val-split, or 0 with --val-file (a file wins; the split default would otherwise drop training rows)."""
        return 0.0 if self.val_file else self.val_split

    @property
    def embeddings_trained(self) -> str:
        """--train-embeddings; full fine-tuning trains every row anyway ("new" means "all" there)."""
        return "all" if self.method == "full" and self.train_embeddings == "new" else self.train_embeddings

    @property
    def lora_alpha(self) -> float:
        if self.alpha is not None:
            return self.alpha
        return float(self.r if self.method == "rslora" else 2 * self.r)

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.method in PREFERENCE:
            return 5e-6 if self.method == "dpo" else 8e-6  # TRL's DPO/ORPO defaults: a nudge, not a new voice
        return 2e-5 if self.method == "full" else 2e-4
