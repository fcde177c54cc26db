"""The variants of a sweep: a grid of ``ft train`` options, or N samples from it.

    expand("method=lora,dora;lr=1e-4,2e-4", name="doric")      # 4 variants, every combination
    sample("lr=1e-5..1e-3:log;r=8,16,32", 6, name="doric")      # 6 variants drawn with a seed

A key is any ``ft train`` option (``lr``, ``r``, ``method``, ``batch_size``...). A value list is
comma-separated; a range ``LO..HI`` is drawn uniformly, ``LO..HI:log`` log-uniformly (``--random`` only);
integer options are rounded. A variant's run is named after the values that vary:
``doric-method=dora-lr=2e-4``; a key with one value is set for every variant and left out of names.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import typing
from dataclasses import dataclass, fields

from ..config import _coerce, _unwrap_optional
from ..errors import ConfigError
from ..train.config import TrainConfig

# not for the grid: the sweep names its runs and decides when to resume them
NOT_GRIDDED = {"name", "resume", "runs_dir"}
_RANGE = re.compile(r"^\s*([-+0-9.eE]+)\s*\.\.\s*([-+0-9.eE]+)\s*(?::\s*(log|lin))?\s*$")


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float
    log: bool = False


@dataclass
class Variant:
    name: str
    values: dict[str, typing.Any]  # typed, as TrainConfig takes them
    shown: dict[str, str]          # as written in the name (only the keys that vary)


def parse_grid(text: str) -> dict[str, list[str] | Range]:
    """``"method=lora,dora;lr=1e-5..1e-3:log"`` → ``{"method": ["lora", "dora"], "lr": Range(...)}``."""
    hints = typing.get_type_hints(TrainConfig)
    valid = [f.name for f in fields(TrainConfig) if f.name not in NOT_GRIDDED]
    out: dict[str, list[str] | Range] = {}
    errors = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        key, sep, vals = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not vals.strip():
            errors.append(f"option --grid: cannot read {part!r} (expected KEY=V1,V2 or KEY=LO..HI[:log])")
            continue
        if key not in valid:
            import difflib

            close = difflib.get_close_matches(key, valid, n=1)
            errors.append(f"option --grid: {key!r} is not an ft train option"
                          + (f" (did you mean {close[0]!r}?)" if close else ""))
            continue
        inner, _ = _unwrap_optional(hints[key])
        if typing.get_origin(inner) in (list, tuple):
            errors.append(f"option --grid: {key!r} takes a list; set it as a train option, not in the grid")
            continue
        if key in out:
            errors.append(f"option --grid: {key!r} appears twice")
            continue
        m = _RANGE.match(vals)
        if m:
            if inner not in (int, float):
                errors.append(f"option --grid: {key!r} is not a number: a range does not apply")
                continue
            lo, hi = float(m.group(1)), float(m.group(2))
            if not lo < hi or (m.group(3) == "log" and lo <= 0):
                errors.append(f"option --grid: {key}={vals.strip()}: need LO < HI (and LO > 0 for :log)")
                continue
            out[key] = Range(lo, hi, m.group(3) == "log")
            continue
        items = [v.strip() for v in vals.split(",") if v.strip()]
        if len(set(items)) != len(items):
            errors.append(f"option --grid: {key!r} lists a value twice")
        bad = [v for v in items if "/" in v or v.startswith(".")]
        if bad:
            errors.append(f"option --grid: {key}={bad[0]!r}: values name run directories ('/' not allowed)")
        for v in items:
            try:
                typed(key, v)
            except ConfigError as e:
                errors.append(str(e))
        out[key] = items
    if errors:
        raise ConfigError("\n".join(errors))
    if not out:
        raise ConfigError("option --grid: no KEY=VALUES given", hint='e.g. --grid "method=lora,dora;lr=1e-4,2e-4"')
    return out


def typed(key: str, value: str) -> typing.Any:
    """A grid value as ``ft train`` would read it from the environment (``"2e-4"`` → 0.0002)."""
    errors: list[str] = []
    v = _coerce(value, typing.get_type_hints(TrainConfig)[key], from_env=True,
                where=f"option --grid {key}", errors=errors)
    if errors:
        raise ConfigError("\n".join(errors))
    return v


def _name(sweep: str, shown: dict[str, str]) -> str:
    return "-".join([sweep] + [f"{k}={v}" for k, v in shown.items()])


def expand(grid: dict[str, list[str] | Range], name: str) -> list[Variant]:
    """Every combination, in the grid's order (the first key varies slowest)."""
    if any(isinstance(v, Range) for v in grid.values()):
        raise ConfigError("option --grid: ranges (LO..HI) need --random N (how many variants to draw)")
    varied = [k for k, v in grid.items() if len(v) > 1]
    out = []
    for combo in itertools.product(*grid.values()):
        raw = dict(zip(grid, combo))
        shown = {k: raw[k] for k in varied}
        out.append(Variant(_name(name, shown), {k: typed(k, v) for k, v in raw.items()}, shown))
    return out


def _draw(key: str, spec: list[str] | Range, rng: random.Random) -> tuple[typing.Any, str]:
    if isinstance(spec, list):
        v = rng.choice(spec)
        return typed(key, v), v
    x = math.exp(rng.uniform(math.log(spec.lo), math.log(spec.hi))) if spec.log else rng.uniform(spec.lo, spec.hi)
    inner, _ = _unwrap_optional(typing.get_type_hints(TrainConfig)[key])
    if inner is int:
        x = int(round(x))
        return x, str(x)
    shown = f"{x:.3g}"
    return float(shown), shown  # the value trained is the one in the name


def sample(grid: dict[str, list[str] | Range], n: int, name: str, seed: int = 0) -> list[Variant]:
    """``n`` distinct variants drawn with ``seed`` (fewer when the grid has fewer combinations)."""
    rng = random.Random(f"ft-sweep:{seed}")
    varied = [k for k, v in grid.items() if isinstance(v, Range) or len(v) > 1]
    out: dict[str, Variant] = {}
    for _ in range(n * 50):
        if len(out) == n:
            break
        values, shown = {}, {}
        for k, spec in grid.items():
            values[k], s = _draw(k, spec, rng)
            if k in varied:
                shown[k] = s
        v = Variant(_name(name, shown), values, shown)
        out.setdefault(v.name, v)
    return list(out.values())
