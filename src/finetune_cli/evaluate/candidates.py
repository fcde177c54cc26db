"""Which models ``ft eval`` compares, what each was trained with, and its training answers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..jsonl import read_json, read_rows
from ..rundir import RunDir
from ..sharegpt import normalize_turns
from ..ui import Reporter
from .config import EvalConfig


@dataclass
class Candidate:
    name: str
    source: str                 # what load_for_inference is given
    kind: str                   # base | adapter | merged | checkpoint (refined after loading)
    run_dir: Path | None = None

    def run_json(self) -> dict:
        """The run record; {} for a model that belongs to no run, a DataError for a broken record."""
        return RunDir(self.run_dir).record() if self.run_dir is not None else {}


def _step(p: Path) -> int:
    m = re.search(r"checkpoint-(\d+)$", p.name)
    return int(m.group(1)) if m else -1


def _display(path: str, run_dir: Path | None) -> str:
    p = Path(path)
    if run_dir is not None:
        name = run_dir.name
        if p.name.startswith("checkpoint-"):
            return f"{name}@{_step(p)}"
        return name
    return p.stem if p.suffix == ".gguf" else (p.name or path)


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    return sorted((p for p in (run_dir / "checkpoints").glob("checkpoint-*") if p.is_dir()), key=_step)


def plan(cfg: EvalConfig) -> list[Candidate]:
    """Candidates in the order given: base, adapters, merged models, then the --run sweep."""
    out: list[Candidate] = []
    if cfg.base:
        out.append(Candidate("base", cfg.base, "base"))
    for a in cfg.adapter:
        if not Path(a).exists():
            raise ConfigError(f"option --adapter: no such directory {a!r}")
        found = RunDir.find(a) if Path(a).is_dir() else None  # itself, its adapter/ or model/, a checkpoint
        rd = found.path if found else None
        out.append(Candidate(_display(a, rd), a, "checkpoint" if Path(a).name.startswith("checkpoint-")
                             else "adapter", rd))
    for m in cfg.merged:
        if not Path(m).exists():
            raise ConfigError(f"option --merged: no such file or directory {m!r}")
        out.append(Candidate(_display(m, None), m, "gguf" if m.endswith(".gguf") else "merged"))
    if cfg.run:
        rd = Path(cfg.run)
        if not (rd / "run.json").is_file():
            raise ConfigError(f"option --run: {cfg.run!r} is not a run directory (no run.json)")
        cps = checkpoint_dirs(rd)
        want = cfg.checkpoints.strip().lower()
        if want not in ("all", "final"):
            try:
                steps = {int(s) for s in want.split(",") if s.strip()}
            except ValueError:
                raise ConfigError(f"option --checkpoints: expected all, final or steps like 200,400; "
                                  f"got {cfg.checkpoints!r}") from None
            missing = steps - {_step(p) for p in cps}
            if missing:
                have = ", ".join(str(_step(p)) for p in cps) or "none"
                raise ConfigError(f"option --checkpoints: {cfg.run} has no checkpoint for step(s) "
                                  f"{', '.join(map(str, sorted(missing)))} (saved: {have})")
            cps = [p for p in cps if _step(p) in steps]
        elif want == "final":
            cps = []
        for p in cps:
            out.append(Candidate(f"{rd.name}@{_step(p)}", str(p), "checkpoint", rd))
        if want in ("all", "final") and ((rd / "adapter").is_dir() or (rd / "model").is_dir()):
            out.append(Candidate(rd.name, str(rd), "adapter" if (rd / "adapter").is_dir() else "merged", rd))
        if not cps and want != "final" and not out:
            raise ConfigError(f"option --run: {cfg.run} has no checkpoints and no final adapter yet")
    seen: dict[str, int] = {}
    for c in out:  # names key the results: make them unique
        seen[c.name] = seen.get(c.name, 0) + 1
        if seen[c.name] > 1:
            c.name = f"{c.name}#{seen[c.name]}"
    return out


def training_answers(run_dir: Path, reporter: Reporter, *, extra_files: list[str] | None = None,
                     exclude: set[str] | None = None) -> list[str] | None:
    """Every assistant turn of the run's training JSONL files (held-out answers excluded).

    Files come from ``extra_files``, else the run's data.json (resolved files), else its
    config.json ``data``. None when no file can be read.
    """
    files = list(extra_files or [])
    if not files:
        for name, key in (("data.json", "files"), ("config.json", "data")):
            try:
                doc = read_json(run_dir / name)
            except Exception:  # noqa: BLE001
                continue
            got = doc.get(key) if name == "data.json" else doc.get("config", {}).get(key)
            if got:
                files = [str(f["path"]) if isinstance(f, dict) else str(f) for f in got]
                break
    answers: list[str] = []
    read_any = False
    for f in files:
        p = Path(f)
        if not p.is_absolute() and not p.is_file():  # relative to where training ran (runs/<name>/..)
            p = run_dir.parent.parent / f
        if not p.is_file() or not (p.suffix == ".jsonl" or p.name.endswith(".jsonl.gz")):
            reporter.warn(f"near-copy: skipping training file {f} (only .jsonl files that exist are read)")
            continue
        read_any = True
        for _, row in read_rows(p, on_error="skip"):
            try:
                turns = normalize_turns(row.get("messages", row.get("conversations")))
            except ValueError:
                continue
            answers += [c for r, c in turns if r == "assistant" and c not in (exclude or ())]
    return answers if read_any else None
