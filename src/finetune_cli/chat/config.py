"""``ft chat`` options. Imported by the CLI: nothing heavy here."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import opt
from ..errors import ConfigError

M, G, S = "Models", "Generation", "Scripted use"


@dataclass
class ChatConfig:
    models: list[str] = opt([], "The model: a base id or directory, an adapter, run directory or checkpoint (its "
                                "saved template and system prompt), a merged directory, a .gguf file, tiny or "
                                "smollm2-135m. Several with --compare.", positional=True, required=True)
    compare: bool = opt(False, "Ask every model each prompt and show the answers side by side (columns on a wide "
                               "terminal, stacked otherwise), with the same seed and sampling. Adapters on one "
                               "base share one copy of it.", panel=M)
    base: str | None = opt(None, "The base every adapter runs on (as in ft eval and ft merge); default: the base "
                                 "the run or adapter records.", panel=M)
    system: str | None = opt(None, "System prompt: TEXT or @file. Default: the run's training system prompt.",
                             panel=M)
    use_system: bool = opt(True, "Start with the system prompt on (toggle in chat with /system on|off).",
                           panel=M)
    device: str = opt("auto", "Where to run: auto (CUDA when present), cpu, cuda.", choices=("auto", "cpu", "cuda"),
                      panel=M)
    trust_remote_code: bool = opt(False, "Run a model's own Python code (auto_map in its config.json), for a source "
                                         "you trust.", panel=M)
    merge_adapter: bool = opt(True, "Fold an adapter alone on its base into it in memory (unquantized bases, when "
                                    "the logits agree within float rounding); --no-merge-adapter keeps peft's "
                                    "layers.", panel=M)

    max_new_tokens: int = opt(256, "Tokens per answer at most (/max N in chat); an answer that reaches it without "
                                   "an end-of-turn token is flagged.", ge=1, panel=G)
    temperature: float = opt(0.7, "Sampling temperature (/temp X), as ft eval samples; 0 = greedy.", ge=0, panel=G)
    greedy: bool = opt(False, "Greedy decoding whatever --temperature says (/greedy toggles): the answer ft eval "
                              "gets at --temperature 0.", panel=G)
    top_p: float = opt(0.9, "Nucleus sampling: keep the smallest token set with this much probability.", gt=0,
                       le=1, panel=G)
    repetition_penalty: float = opt(1.0, "Repetition penalty (1 = off).", gt=0, panel=G)
    seed: int = opt(0, "Sampling seed, set before every answer (/seed N): the same prompt and seed give the same "
                       "answer, for every model.", panel=G)

    input: str | None = opt(None, "Prompts to answer instead of a chat: messages JSONL (each row a conversation up "
                                  "to its last user turn, as ft eval --prompts reads) or text, one prompt per line. "
                                  "Default when stdin is not a terminal: one prompt per line of stdin.", panel=S)

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("ft chat: no model; pass one (ft chat tiny) or several with --compare")
        if len(self.models) > 1 and not self.compare:
            raise ConfigError(f"ft chat: {len(self.models)} models given; pass --compare to ask them side by side",
                              hint="or give one model")
