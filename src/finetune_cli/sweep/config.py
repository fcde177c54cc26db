"""``ft sweep`` options: the sweep's own, then every ``ft train`` option (shared by all variants).

The train options are TrainConfig's fields, copied (help, range, default) rather than retyped, so
``ft sweep --help`` lists exactly what ``ft train`` takes and a new train option is a sweep option the
day it lands. ``--name`` is the sweep's name (runs are named after it) and ``--resume`` is implied.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields
from functools import cached_property

from ..config import opt
from ..errors import ConfigError
from ..train.config import TrainConfig
from .grid import NOT_GRIDDED

S, E, J = "Sweep", "Sweep eval", "Judge arena"
TRAIN_ONLY = NOT_GRIDDED - {"runs_dir"}  # TrainConfig fields the sweep sets itself


@dataclass
class SweepOptions:
    name: str = opt(help="Sweep name: runs are runs/<name>-<key>=<value>..., the leaderboard sweeps/<name>/.",
                    required=True, panel=S)
    grid: str = opt(help="Variants: \"method=lora,dora;lr=1e-4,2e-4;r=16,32\" (every combination), or ranges "
                         "such as lr=1e-5..1e-3:log with --random. Keys are ft train options.",
                    required=True, panel=S)
    random: int = opt(0, "Draw this many variants from the grid (lists: a value each; LO..HI: uniform, "
                         ":log log-uniform) instead of every combination; 0 = the full grid.", ge=0, panel=S)
    random_seed: int = opt(0, "Seed of --random's draws.", panel=S)
    fail_fast: bool = opt(False, "Stop at the first variant that fails; default: record it and go on.",
                          panel=S)
    parallel_gpus: int = opt(0, "Variants trained at once, one per GPU (CUDA_VISIBLE_DEVICES per subprocess); "
                                "0 = every visible GPU; on a GPU each variant trains in its own ft train process, "
                                "on CPU in this one, one after another.",
                             ge=0, panel=S)
    sweeps_dir: str = opt("sweeps", "Where sweep records and leaderboards are written.", panel=S)

    eval: bool = opt(True, "Evaluate the base and every variant (ft eval) and write the leaderboard.", panel=E)
    prompts: str | None = opt(None, "Eval prompt file (JSONL or text); default: the runs' held-out rows "
                                    "(the same for every variant: one data split seed).", panel=E)
    max_prompts: int = opt(32, "Eval prompts at most (the first N); 0 = all.", ge=0, panel=E)
    probes: bool = opt(True, "Add ft eval's built-in probes (break-character, extraction...).", panel=E)
    general: bool = opt(True, "Add ft eval's built-in general prompts (outside any persona's topics).", panel=E)
    max_new_tokens: int = opt(256, "Tokens generated per eval reply at most.", ge=1, panel=E)
    temperature: float = opt(0.7, "Eval sampling temperature; 0 = greedy only (else ft eval's decodings).",
                             ge=0, panel=E)
    eval_seed: int = opt(0, "Eval sampling seed, the same for every candidate.", panel=E)
    retention: bool = opt(False, "Also measure how far each variant moved from the base on neutral text "
                                 "(ft eval --retention: retention_kl on the leaderboard).", panel=E)
    lm_eval: list[str] = opt([], "lm-evaluation-harness tasks for every candidate (ft eval --lm-eval; data "
                                 "already on this machine only): lm_<task>_<metric> on the leaderboard.", panel=E)
    lm_eval_include: str | None = opt(None, "A directory of your own lm-eval task YAMLs (ft eval "
                                            "--lm-eval-include).", panel=E)
    lm_eval_limit: int = opt(0, "Examples per --lm-eval task at most; 0 = all.", ge=0, panel=E)
    fail_if: str | None = opt(None, "Gates (ft eval's --fail-if language, e.g. \"eos_rate<0.9,loop_rate>0.05\"): "
                                    "a variant failing one ranks below those passing; exit 1 when the "
                                    "leaderboard's best fails one.", panel=E)

    judge: str = opt("none", "Judge arena: blind pairwise verdicts between candidates by an LLM (none, openai, "
                             "anthropic).", choices=("none", "openai", "anthropic"), panel=J)
    judge_model: str | None = opt(None, "Judge model; default gpt-4o-mini / claude-haiku-4-5.",
                                  env=("FT_JUDGE_MODEL",), panel=J)
    judge_base_url: str | None = opt(None, "Judge API base URL (an OpenAI-compatible server, a proxy).",
                                     env=("FT_JUDGE_BASE_URL",), panel=J)
    judge_prompts: int = opt(24, "Prompts the arena draws comparisons from (the first N).", ge=1, panel=J)
    arena_budget: int = opt(0, "Comparisons (each asked in both orders) the arena may make; 0 = (candidates "
                               "- 1) × prompts, against candidates × (candidates - 1) / 2 × prompts for "
                               "every pair on every prompt.", ge=0, panel=J)
    judge_workers: int = opt(4, "Judge requests in flight.", ge=1, le=64, panel=J)


def _copied(cls: type, skip: set[str] = frozenset()) -> list[tuple[str, typing.Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        if f.name in skip:
            continue
        kw: dict[str, typing.Any] = {"metadata": dict(f.metadata)}
        if f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kw["default_factory"] = f.default_factory
        out.append((f.name, hints[f.name], dataclasses.field(**kw)))
    return out


def _gates(self) -> list:
    """``--fail-if`` parsed, once (ft eval's gates): validate() reads it first, so a gate that does not parse
    fails before any variant trains."""
    from ..evaluate.config import parse_gates

    return parse_gates(self.fail_if)


def _validate(self) -> None:
    from .grid import parse_grid

    self.gates  # noqa: B018

    grid = parse_grid(self.grid)
    if self.random == 0 and any(not isinstance(v, list) for v in grid.values()):
        raise ConfigError("option --grid: ranges (LO..HI) need --random N (how many variants to draw)")
    if not all(c.isalnum() or c in "._-" for c in self.name):
        raise ConfigError(f"option --name: {self.name!r}: letters, digits, '.', '_' and '-' only "
                          "(it names directories)")


_own, _train = _copied(SweepOptions), _copied(TrainConfig, TRAIN_ONLY)
assert not {n for n, _, _ in _own} & {n for n, _, _ in _train}, "sweep options shadow train options"

SweepConfig = dataclasses.make_dataclass("SweepConfig", _own + _train,
                                         namespace={"validate": _validate, "gates": cached_property(_gates),
                                                    "__module__": __name__})


def train_options(cfg) -> dict[str, typing.Any]:
    """The ft train options shared by every variant."""
    return {f.name: getattr(cfg, f.name) for f in fields(TrainConfig) if f.name not in TRAIN_ONLY}
