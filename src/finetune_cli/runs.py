"""``ft runs``: the side-by-side table of runs users used to keep by hand. The run directory itself
(run.json, config.json, data.json, metrics.jsonl, loss.png, heldout.jsonl) is ``finetune_cli/rundir.py``.

    ft runs                       # every run under ./runs, newest first
    ft runs --sort best-eval --json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import opt
from .errors import ConfigError
from .jsonl import read_json
from .rundir import evaluated_candidate, general_figures, read_evals
from .ui import Reporter


# ---------------------------------------------------------------- ft runs

@dataclass
class RunsConfig:
    runs_dir: str = opt("runs", "Where runs are.")
    sort: str = opt("created", "Order: newest first, best eval loss first, or by name.",
                    choices=("created", "best-eval", "name"))
    sweep: str | None = opt(None, "Only the runs of this sweep: its name (under sweeps/) or directory; its "
                                  "runs directory comes from its sweep.json.")
    evals_dir: str = opt("eval", "Where ft eval writes (eval/<name>/results.json): each run's newest eval gives "
                                 "its greedy EOS and loop rates on the general prompts.")


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _row(path: Path, evals: list[tuple[Path, dict]] = ()) -> dict | None:
    try:
        run = read_json(path / "run.json")
    except Exception:  # a half-written or foreign file: list it as unreadable, do not fail the table
        return {"name": path.name, "status": "unreadable"}
    cfg = {}
    if (path / "config.json").is_file():
        try:
            cfg = read_json(path / "config.json").get("config", {})
        except Exception:
            cfg = {}
    method = run.get("method") or cfg.get("method")
    return {
        "name": run.get("name", path.name), "status": run.get("status"), "created": run.get("created"),
        "model": Path(str(run.get("base_model_arg") or run.get("base_model") or "?")).name, "method": method,
        "r_alpha": None if method == "full" else f"{cfg.get('r', '?')}/{_num(run.get('lora_alpha', cfg.get('alpha')))}",
        "lr": run.get("learning_rate", cfg.get("lr")), "scheduler": cfg.get("scheduler"),
        "train_rows": run.get("train_rows"), "val_rows": run.get("val_rows"), "steps": run.get("global_step"),
        "best_eval_loss": run.get("best_eval_loss"), "final_loss": run.get("final_loss"),
        "tokens_per_s": run.get("tokens_per_s"), **_general(path, evals),
    }


def _general(path: Path, evals: list[tuple[Path, dict]]) -> dict:
    """The run's newest ft eval (``evals``: oldest first): its answers to the general prompts (outside any
    training topic), greedy where measured (what servers use), else the primary decoding; the first condition.
    Held-out loss says how well the data was learned; these say whether the model still stops and stays on the
    question elsewhere — the under- and over-training signal users meet first in a chat."""
    for _, doc in reversed(evals):
        name = evaluated_candidate(doc, [path, path / "adapter", path / "model"])
        if name is None:
            continue
        general = general_figures(doc, name)
        if general:
            return {**general, "general_eval": doc.get("name")}
    return {}


def list_runs(runs_dir: str, sort: str = "created", evals_dir: str = "eval") -> list[dict]:
    root = Path(runs_dir)
    evals = read_evals(evals_dir) if evals_dir else []  # read once, matched to every run
    rows = [r for p in sorted(root.glob("*/run.json")) if (r := _row(p.parent, evals))]
    if sort == "best-eval":
        rows.sort(key=lambda r: (r.get("best_eval_loss") is None, r.get("best_eval_loss") or 0))
    elif sort == "name":
        rows.sort(key=lambda r: r["name"])
    else:
        rows.sort(key=lambda r: r.get("created") or "", reverse=True)
    return rows


# where the Makefile's pipeline writes its runs (make OUT=out): a user of `make train` looks for them here
MAKE_RUNS = "out/runs"


def _runs_elsewhere(runs_dir: str) -> str | None:
    other = Path(MAKE_RUNS)
    if other.is_dir() and other.resolve() != Path(runs_dir).resolve() and any(other.glob("*/run.json")):
        return f"make writes its runs to {MAKE_RUNS}/: ft runs --runs-dir {MAKE_RUNS}"
    return None


def _sweep_runs(cfg: RunsConfig) -> set[str]:
    d = Path(cfg.sweep) if Path(cfg.sweep, "sweep.json").is_file() else Path("sweeps") / cfg.sweep
    if not (d / "sweep.json").is_file():
        raise ConfigError(f"option --sweep: no sweep {cfg.sweep!r} (no {d / 'sweep.json'})",
                          hint="pass a sweep's name (sweeps/NAME) or its directory")
    doc = read_json(d / "sweep.json")
    if cfg.runs_dir == "runs":
        cfg.runs_dir = doc.get("runs_dir", "runs")
    return {v["name"] for v in doc.get("variants", [])}


def run(cfg: RunsConfig, reporter: Reporter) -> dict:
    only = _sweep_runs(cfg) if cfg.sweep else None
    where = Path(cfg.runs_dir).resolve()
    if not Path(cfg.runs_dir).is_dir():
        raise ConfigError(f"option --runs-dir: no such directory {cfg.runs_dir!r} ({where})",
                          hint=_runs_elsewhere(cfg.runs_dir)
                          or "train one with `ft train`, or point --runs-dir at your runs")
    rows = [r for r in list_runs(cfg.runs_dir, cfg.sort, cfg.evals_dir) if only is None or r["name"] in only]
    cols = ["name", "status", "model", "method", "r_alpha", "lr", "scheduler", "train_rows", "steps",
            "best_eval_loss", "general_eos_rate", "general_loop_rate", "tokens_per_s"]
    heads = ["run", "status", "model", "method", "r/α", "lr", "sched", "rows", "steps", "best eval",
             "general EOS", "general loops", "tok/s"]

    def cell(r: dict, c: str):
        v = r.get(c)
        return f"{v:.0%}" if c.startswith("general_") and isinstance(v, (int, float)) else v

    reporter.table(f"runs in {cfg.runs_dir}/", heads, [[cell(r, c) for c in cols] for r in rows])
    if any("general_eos_rate" in r for r in rows):
        reporter.info("  general EOS / loops: the newest ft eval of each run under "
                      f"{cfg.evals_dir}/, greedy, on its general prompts (outside any training topic)")
    if not rows:
        elsewhere = _runs_elsewhere(cfg.runs_dir)
        reporter.warn(f"no runs in {where}/" + (f" ({elsewhere})" if elsewhere else ""))
    return {"runs": rows}
