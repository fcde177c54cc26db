"""``ft eval`` options, and the ``--fail-if`` gate language."""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from functools import cached_property

from ..config import opt, split_list
from ..errors import ConfigError
from .metrics import DEFAULT_BREAK_PHRASES, DEFINITIONS

JUDGE_METRICS = ["judge_voice", "judge_character", "judge_coherence", "judge_engagement", "judge_length",
                 "judge_relevance", "judge_win_rate"]
GATE_METRICS = [k for k in DEFINITIONS if k != "n"] + JUDGE_METRICS
CONDITIONS = ("system", "no_system")
DECODINGS = ("greedy", "sample")
GROUPS = ("heldout", "file", "probe", "general")  # prompt groups: a prompt's source before any ':'
_OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
        "<": operator.lt, ">": operator.gt}
_UNUM = r"[0-9]*\.?[0-9]+(?:e[-+]?\d+)?"
# [DECODING.][GROUP.]METRIC OP NUMBER, or ... OP base[+-NUMBER]: compared with the base model's value in the
# same condition (and decoding, group)
_GATE = re.compile(rf"^\s*((?:[a-z_0-9]+\.){{0,2}})([a-z_0-9]+)\s*(<=|>=|==|!=|<|>)\s*(?:([-+]?{_UNUM})|base\s*(?:([-+])\s*({_UNUM}))?)\s*$")

C, G, M, J, O = "Candidates", "Generation", "Metrics", "Judge", "Output"


@dataclass
class EvalConfig:
    base: str | None = opt(None, "Base model: a directory, .gguf file, alias (tiny, smollm2-135m) or hub id. "
                                 "Evaluated as a candidate, and the base every adapter runs on (as in ft merge), "
                                 "whatever base the adapter records.", panel=C)
    adapter: list[str] = opt([], "An adapter directory, run directory or checkpoint (repeat the option for "
                                 "more).", panel=C)
    trust_remote_code: bool = opt(False, "Run a model's own Python code (auto_map in its config.json), for a "
                                         "source you trust; without it ft refuses such a model (it never "
                                         "prompts).", panel=C)
    merged: list[str] = opt([], "A merged/full model directory or a .gguf file (repeat for more).", panel=C)
    run: str | None = opt(None, "A run directory to sweep with --checkpoints.", panel=C)
    checkpoints: str = opt("all", "With --run: all (every checkpoint-N plus the final adapter), final, or "
                                  "steps such as 200,400.", panel=C)
    prompts: str | None = opt(None, "Prompt file: JSONL messages/ShareGPT rows (a final assistant turn is kept "
                                    "as the reference) or text, one prompt per line. Default: the run's "
                                    "held-out rows.", panel=C)
    max_prompts: int = opt(64, "Use at most this many prompts from the file/held-out rows (the first N); "
                               "0 = all.", ge=0, panel=C)
    probes: bool = opt(True, "Add the built-in probes: break-character attempts, prompt extraction, "
                             "language/voice switches, a harmful ask.", panel=C)
    general: bool = opt(True, "Add the built-in general prompts (group 'general'): ~40 everyday questions "
                              "outside any persona's topics (facts, arithmetic, how-to, writing, small talk).",
                        panel=C)
    system: str | None = opt(None, "System prompt of the 'system' condition: TEXT or @file. Default: each "
                                   "candidate's training system prompt (run.json), else the persona's.", panel=C)
    conditions: list[str] = opt(list(CONDITIONS), "Conditions: with the system prompt, without it.",
                                choices=CONDITIONS, panel=C)
    heldout: str | None = opt(None, "Conversations for held-out loss (JSONL); default: the first run's "
                                    "heldout.jsonl (or the prompt file's rows that have an answer).", panel=C)

    max_new_tokens: int = opt(256, "Tokens generated per reply at most.", ge=1, panel=G)
    temperature: float = opt(0.7, "Sampling temperature; 0 = greedy.", ge=0, panel=G)
    top_p: float = opt(0.9, "Nucleus sampling: keep the smallest token set with this much probability.",
                       gt=0, le=1, panel=G)
    repetition_penalty: float = opt(1.0, "Repetition penalty (1 = off).", gt=0, panel=G)
    seed: int = opt(0, "Sampling seed (the same for every candidate).", panel=G)
    decoding: list[str] = opt(list(DECODINGS), "Decodings, each generated for every candidate × condition: "
                                               "greedy (what most servers and chat UIs default to), sample "
                                               "(--temperature, --top-p, --seed). Comma-separated or repeated: "
                                               "greedy,sample.", panel=G)
    batch_size: int = opt(0, "Prompts generated together (left-padded); 0: auto (every prompt of a candidate × "
                             "condition × decoding at once on CUDA, as far as half the free memory holds; 16 "
                             "on CPU).", ge=0, panel=G)
    merge_adapter: bool = opt(True, "Fold a LoRA adapter into its (unquantized) base in memory for generation, "
                                    "when the merged logits equal the adapter's within float rounding; "
                                    "--no-merge-adapter runs peft's unmerged layers.", panel=G)
    # str | bool: `compile = true` in a config file from before auto (a bool then) still loads, as on
    compile: str | bool = opt("auto", "Decode with a static KV cache and torch.compile (reduce-overhead, CUDA "
                                      "graphs): auto (on CUDA when the model takes a static cache and a "
                                      "generation has at least 64 prompts × 256 tokens (16,384): less does "
                                      "not repay the ~20-40 s warm-up; eager when compiling fails, with a warning), "
                                      "on (an error where it cannot run or fails), off.", panel=G)
    device: str = opt("auto", "Where to run: auto (CUDA when present), cpu, cuda.",
                      choices=("auto", "cpu", "cuda"), panel=G)

    persona: str | None = opt(None, "Persona (name or .toml) for marker density against its band; default: "
                                    "the held-out rows' meta.persona when it is a known persona.", panel=M)
    scripts: list[str] = opt(["latin"], "Expected scripts (Unicode names: latin, greek, cyrillic, han, ...); "
                                        "letters in others count as unexpected.", panel=M)
    break_phrases: list[str] = opt(list(DEFAULT_BREAK_PHRASES), "Character-break phrases (case-insensitive, "
                                                                 "whole words).", panel=M)
    leak_ngram: int = opt(8, "Word n-gram size for system-prompt leakage.", ge=2, panel=M)
    leak_threshold: float = opt(0.1, "An output leaks when it repeats at least this share of the system "
                                     "prompt's n-grams.", gt=0, le=1, panel=M)
    format_regex: str | None = opt(None, "Replies must fully match this regex (format_valid_rate).", panel=M)
    format_schema: str | None = opt(None, "Replies must be JSON valid under this JSON Schema file.", panel=M)
    retention: bool = opt(False, "Compare each candidate's next-token distributions with the base's on neutral "
                                 "text (a bundled encyclopedic text and the general prompts): retention_kl, "
                                 "retention_kl_prompts, retention_ppl. Needs --base.", panel=M)
    lm_eval: list[str] = opt([], "Benchmark tasks of lm-evaluation-harness (the lmeval extra) on every candidate, "
                                 "e.g. arc_easy (repeat or comma-separate): only where a task's data is already "
                                 "on this machine, never a download. Metrics lm_<task>_<metric>, gateable.",
                             panel=M)
    lm_eval_include: str | None = opt(None, "A directory of your own lm-eval task YAMLs (local data files) for "
                                            "--lm-eval.", panel=M)
    lm_eval_limit: int = opt(0, "Examples per --lm-eval task at most (the first N); 0 = all.", ge=0, panel=M)
    near_copy: bool = opt(True, "Score near-copies of training answers for candidates from a run.", panel=M)
    train_data: list[str] = opt([], "Training JSONL for the near-copy metric; default: the run's --data "
                                    "files (config.json).", panel=M)

    judge: str = opt("none", "LLM judge: none, openai or anthropic (keys from OPENAI_API_KEY / "
                             "ANTHROPIC_API_KEY).", choices=("none", "openai", "anthropic"), panel=J)
    judge_model: str | None = opt(None, "Judge model; default gpt-4o-mini / claude-haiku-4-5.",
                                  env=("FT_JUDGE_MODEL",), panel=J)
    judge_base_url: str | None = opt(None, "Judge API base URL (an OpenAI-compatible server, a proxy).",
                                     env=("FT_JUDGE_BASE_URL",), panel=J)
    judge_prompts: int = opt(24, "Prompts the judge scores per candidate × condition (the first N).", ge=1,
                             panel=J)
    judge_pairwise: bool = opt(True, "Blind pairwise A/B between candidates, both orders.", panel=J)
    judge_workers: int = opt(4, "Judge requests in flight.", ge=1, le=64, panel=J)
    judge_optional: bool = opt(False, "Go on without the judge when it cannot run (no key, provider errors): "
                                      "a warning and judge_error in results.json, exit 0. Default: exit 1.",
                               panel=J)

    fail_if: str | None = opt(None, "Gates: comma-separated failure conditions such as "
                                    "\"eos_rate<0.9,loop_rate>0.05\"; any that holds for a candidate × "
                                    "condition exits 1. Base models are exempt when other candidates exist. "
                                    "Qualify with a decoding and/or prompt group: greedy.eos_rate<0.95, "
                                    "greedy.general.loop_rate>0.02, general.relevance_mean<base; unqualified: "
                                    "the sample decoding (else the only one), all prompts.",
                              panel=O)
    out: str | None = opt(None, "Output directory; default eval/<first candidate>-<time>.", short="-o", panel=O)
    save_outputs: bool = opt(True, "Write outputs.jsonl (every prompt × candidate × condition).", panel=O)

    @cached_property
    def gates(self) -> list[Gate]:
        """``--fail-if`` parsed, once: validate() reads it first, so a gate that does not parse fails at start."""
        return parse_gates(self.fail_if)

    @property
    def compile_mode(self) -> str:
        """--compile as auto, on or off (a bool from an older config file reads as on/off)."""
        return compile_mode(self.compile)

    @property
    def lm_eval_tasks(self) -> list[str]:
        """--lm-eval split on commas, each once, in order."""
        return split_list(self.lm_eval)

    @property
    def decodings(self) -> list[str]:
        """--decoding split on commas, each once, in order."""
        return split_list(self.decoding)

    def validate(self) -> None:
        """Checks; never changes a value (what follows from values is a property)."""
        self.compile_mode  # noqa: B018 - an unknown --compile value fails here, at start
        if not (self.base or self.adapter or self.merged or self.run):
            raise ConfigError("ft eval: no candidate; pass --base, --adapter, --merged or --run")
        if any(g.relative for g in self.gates) and not self.base:
            raise ConfigError("option --fail-if: a gate against `base` needs the base model evaluated too",
                              hint="add --base MODEL")
        if self.format_regex is not None:
            try:
                re.compile(self.format_regex)
            except re.error as e:
                raise ConfigError(f"option --format-regex: not a valid regex ({e})") from None
        decodings = self.decodings
        if not decodings or any(d not in DECODINGS for d in decodings):
            raise ConfigError(f"option --decoding: {','.join(decodings) or 'nothing'}: pick from greedy, sample",
                              hint="e.g. --decoding greedy,sample")
        for g in self.gates:
            if g.decoding and g.decoding not in decodings:
                raise ConfigError(f"option --fail-if: {g} names decoding {g.decoding!r}, which is not measured",
                                  hint=f"add it to --decoding (now {','.join(decodings)})")
            if g.metric.startswith("retention_") and not self.retention:
                raise ConfigError(f"option --fail-if: {g} needs --retention")
            if g.metric.startswith("lm_") and not self.lm_eval_tasks:
                raise ConfigError(f"option --fail-if: {g} needs --lm-eval TASK")
        if self.lm_eval_include and not self.lm_eval_tasks:
            raise ConfigError("option --lm-eval-include: names task files for --lm-eval, which is not set",
                              hint="add --lm-eval TASK")
        if self.retention and not self.base:
            raise ConfigError("option --retention: compares candidates with the base model", hint="add --base MODEL")
        if not self.conditions:
            raise ConfigError("option --conditions: pick at least one of system, no_system")
        if self.judge == "none" and any(g.metric.startswith("judge_") for g in self.gates):
            raise ConfigError("option --fail-if: judge_* gates need --judge openai|anthropic")


COMPILE_MODES = ("auto", "on", "off")  # --compile (ft eval, ft pairs)


def compile_mode(value: str | bool) -> str:
    """``--compile``'s value: auto, on or off; a bool or true/false/1/0 (older configs) read as on/off."""
    if isinstance(value, bool):
        return "on" if value else "off"
    v = str(value).strip().lower()
    v = {"true": "on", "yes": "on", "1": "on", "false": "off", "no": "off", "0": "off"}.get(v, v)
    if v not in COMPILE_MODES:
        raise ConfigError(f"option --compile: {value!r} is not one of auto, on, off")
    return v


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    value: float  # the threshold, or the offset from the base model's value when ``relative``
    relative: bool = False
    decoding: str | None = None  # None: the primary decoding (sample when measured)
    group: str | None = None     # None: all prompts

    def __str__(self) -> str:
        name = ".".join(x for x in (self.decoding, self.group, self.metric) if x)
        if self.relative:
            return f"{name}{self.op}base" + (f"{self.value:+g}" if self.value else "")
        return f"{name}{self.op}{self.value:g}"

    def threshold(self, base: float | None) -> float | None:
        if not self.relative:
            return self.value
        return None if base is None else base + self.value

    def fails(self, measured: float | None, base: float | None = None) -> bool:
        """True when the failure condition holds, or cannot be checked: a gate on a metric that was not
        measured (here or, for a ``base`` gate, on the base model) fails rather than passing silently."""
        limit = self.threshold(base)
        return measured is None or limit is None or _OPS[self.op](measured, limit)


def parse_gates(text: str | None) -> list[Gate]:
    """``"eos_rate<0.9, loop_rate>0.05"`` → gates; each is a condition that FAILS the run."""
    if not text:
        return []
    gates = []
    for part in text.split(","):
        if not part.strip():
            continue
        m = _GATE.match(part)
        if not m:
            raise ConfigError(f"option --fail-if: cannot read {part.strip()!r} (expected "
                              "[DECODING.][GROUP.]METRIC<NUMBER or ...<base, e.g. eos_rate<0.9, distinct_2<base, "
                              "greedy.general.eos_rate<0.95)")
        prefix, metric, op, value, sign, offset = m.groups()
        quals = [q for q in prefix.split(".") if q]
        decoding = quals.pop(0) if quals and quals[0] in DECODINGS else None
        group = quals.pop(0) if quals else None
        if quals or (group is not None and group not in GROUPS):
            raise ConfigError(f"option --fail-if: {part.strip()!r}: unknown qualifier "
                              f"{(quals or [group])[0]!r} (decodings: {', '.join(DECODINGS)}; prompt groups: "
                              f"{', '.join(GROUPS)})")
        if metric not in GATE_METRICS and not metric.startswith("lm_"):  # lm_<task>_<metric>: --lm-eval
            import difflib

            close = difflib.get_close_matches(metric, GATE_METRICS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (metrics: {', '.join(GATE_METRICS)})"
            raise ConfigError(f"option --fail-if: unknown metric {metric!r}{hint}")
        if value is not None:
            gates.append(Gate(metric, op, float(value), decoding=decoding, group=group))
        else:
            gates.append(Gate(metric, op, float(offset or 0) * (-1 if sign == "-" else 1), relative=True,
                              decoding=decoding, group=group))
    return gates
