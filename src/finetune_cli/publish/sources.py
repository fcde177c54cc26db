"""What a path holds, read from the records ft wrote: a run, a merged/exported model, GGUFs, a dataset.

    src = read_source("runs/doric", eval_dir=None)   # run.json, config.json, data.json, metrics, eval results

Nothing here loads a model: a card and a push plan are built from JSON records and file listings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError, DataError
from ..rundir import RunDir

PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _json(path: Path) -> dict:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        raise DataError(f"unreadable record ({e})", path=str(path)) from None


@dataclass
class Source:
    """Everything ft recorded about one thing to publish. ``kind``: run, merged, gguf or dataset."""

    path: Path
    kind: str
    run_dir: Path | None = None
    run: dict = field(default_factory=dict)              # run.json
    config: dict = field(default_factory=dict)           # config.json: config, sources, resolved
    data: dict = field(default_factory=dict)             # data.json
    merge: dict = field(default_factory=dict)            # ft_merge.json
    model_dir: Path | None = None                        # merged safetensors
    adapter_dir: Path | None = None
    gguf_dir: Path | None = None
    gguf: dict = field(default_factory=dict)             # ft_gguf.json: drift per file
    eval: dict | None = None                             # ft eval's results.json
    eval_path: Path | None = None
    dataset: Path | None = None                          # an ft gen JSONL

    @property
    def name(self) -> str:
        if self.kind == "dataset":
            return self.path.stem
        return self.run.get("name") or self.path.name

    def gguf_files(self) -> list[Path]:
        return sorted(self.gguf_dir.glob("*.gguf")) if self.gguf_dir else []

    def gates_failed(self) -> list[dict]:
        return list(((self.eval or {}).get("gates") or {}).get("failed") or [])


def read_source(path: str, eval_dir: str | None = None) -> Source:
    p = Path(path)
    if p.is_file() and p.suffix == ".jsonl":
        return Source(path=p, kind="dataset", dataset=p)
    if not p.is_dir():
        raise ConfigError(f"{path}: no such run, model directory or .jsonl dataset")
    src = Source(path=p, kind="run")
    if (p / "run.json").is_file():
        src.run_dir = p
    elif (p / "ft_merge.json").is_file():
        src.kind = "merged"
        src.merge = _json(p / "ft_merge.json")
        src.model_dir = p if (p / "config.json").is_file() else None
        rd = RunDir.find(p)  # the run ft_merge.json names, when it is still there
        src.run_dir = rd.path if rd else None
    elif (p / "gguf").is_dir() or any(p.glob("*.gguf")):
        src.kind = "gguf"
    elif (p / "adapter_config.json").is_file():
        src.kind = "merged"  # an `ft merge --adapter-only` export: an adapter folder
    else:
        raise ConfigError(f"{path}: not something ft wrote",
                          hint="a run has run.json, a merged model ft_merge.json, an export gguf/*.gguf")
    if src.run_dir:
        rd = src.run_dir
        src.run = RunDir(rd).record()
        src.config = _json(rd / "config.json") if (rd / "config.json").is_file() else {}
        src.data = _json(rd / "data.json") if (rd / "data.json").is_file() else {}
        if src.kind == "run" and (rd / "adapter" / "adapter_config.json").is_file():
            src.adapter_dir = rd / "adapter"
        if src.kind == "run" and (rd / "model" / "config.json").is_file():
            src.model_dir = rd / "model"
    if src.kind == "merged" and (p / "adapter_config.json").is_file():
        src.adapter_dir, src.model_dir = p, None
    for g in (p / "gguf", p):
        if any(g.glob("*.gguf")):
            src.gguf_dir = g
            break
    if src.gguf_dir and (src.gguf_dir / "ft_gguf.json").is_file():
        src.gguf = _json(src.gguf_dir / "ft_gguf.json")
    src.eval_path, src.eval = find_eval(src, eval_dir)
    return src


def find_eval(src: Source, eval_dir: str | None) -> tuple[Path | None, dict | None]:
    """``--eval DIR``: DIR/results.json, else the newest DIR/*/results.json that evaluated this source.
    Without --eval, ./eval is searched the same way (ft eval's default output); nothing found is not an error."""
    from ..rundir import evals_of

    if src.kind == "dataset":
        return None, None
    root = Path(eval_dir) if eval_dir else Path("eval")
    if eval_dir and not root.exists():
        raise ConfigError(f"option --eval: no such directory {eval_dir!r}")
    if eval_dir and (root / "results.json").is_file():
        return root / "results.json", _json(root / "results.json")
    found = evals_of([src.path, src.run_dir], root)
    if not found:
        if eval_dir:
            raise ConfigError(f"option --eval: no results.json under {eval_dir} that evaluated {src.path}",
                              hint="ft eval --adapter RUN writes eval/<name>-<time>/results.json")
        return None, None
    return found[-1]


def read_dataset(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError as e:
            raise DataError(f"not JSON ({e})", path=str(path), line=i) from None
    return rows


def jsonable(v: Any) -> Any:
    return orjson.loads(orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS, default=str))
