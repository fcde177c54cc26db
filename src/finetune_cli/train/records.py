"""Run records: ``runs/<name>/`` (run.json, config.json, data.json, metrics.jsonl, loss.png, heldout.jsonl)
and ``ft runs``, the side-by-side table users used to keep by hand.

    ft runs                       # every run under ./runs, newest first
    ft runs --sort best-eval --json

Only the main process writes records (``is_main``) so multi-GPU launches do not race.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..config import opt
from ..errors import ConfigError
from ..jsonl import AppendWriter, read_json, write_json_atomic, write_rows_atomic
from ..ui import Reporter


def is_main() -> bool:
    """True on the process that writes records (rank 0 under torchrun/accelerate)."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") in ("0", "-1")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("finetune-cli", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes",
                "unsloth"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


class RunDir:
    """One run's directory and its records."""

    def __init__(self, path: Path):
        self.path = path

    run_json = property(lambda self: self.path / "run.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    adapter = property(lambda self: self.path / "adapter")
    model = property(lambda self: self.path / "model")

    @classmethod
    def create(cls, runs_dir: str, name: str, *, resume: bool) -> RunDir:
        path = Path(runs_dir) / name
        if resume:
            if not (path / "run.json").is_file():
                raise ConfigError(f"option --resume: no run {name!r} under {runs_dir}/")
        elif path.exists() and any(path.iterdir()):
            raise ConfigError(f"run {str(path)!r} already exists", hint="pick another --name, or add --resume")
        return cls(path)  # created by the first record written: a run that fails to start leaves nothing

    def _checkpoints(self) -> list[Path]:
        cps = sorted(self.checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        return [p for p in cps if (p / "trainer_state.json").is_file()]  # written last by the Trainer

    def last_checkpoint(self) -> Path | None:
        cps = self._checkpoints()
        return cps[-1] if cps else None

    def intact_checkpoint(self) -> tuple[Path | None, list[str]]:
        """The newest checkpoint whose files all read back, and why each newer one was passed over (a
        disk that filled up or a copy cut short damages the newest first)."""
        from ..files import unreadable

        passed = []
        for cp in reversed(self._checkpoints()):
            problems = [(f.name, why) for f in sorted(cp.iterdir()) if f.is_file() and (why := unreadable(f))]
            if not problems:
                return cp, passed
            passed.append(f"{cp.name} is damaged ({problems[0][0]}: {problems[0][1]})")
        return None, passed

    def read(self) -> dict:
        return read_json(self.run_json) if self.run_json.is_file() else {}

    def update(self, **fields: Any) -> dict:
        data = {**self.read(), **fields}
        if is_main():
            write_json_atomic(self.run_json, data)
        return data

    def write_json(self, name: str, obj: Any) -> None:
        if is_main():
            write_json_atomic(self.path / name, obj)

    def write_heldout(self, rows: list[dict]) -> None:
        if is_main():
            write_rows_atomic(self.path / "heldout.jsonl", rows)

    def trim_metrics(self, step: int) -> None:
        """On resume: drop rows logged after the checkpoint (the interrupted run's tail)."""
        if not is_main() or not self.metrics_path.is_file():
            return
        rows = [orjson.loads(ln) for ln in self.metrics_path.read_bytes().splitlines() if ln.strip()]
        write_rows_atomic(self.metrics_path, [r for r in rows if r.get("step", 0) <= step])

    def metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        return [orjson.loads(ln) for ln in self.metrics_path.read_bytes().splitlines() if ln.strip()]

    def open_metrics(self) -> AppendWriter:
        return AppendWriter(self.metrics_path, fsync_every=16)

    def plot_loss(self) -> Path | None:
        rows = self.metrics()
        train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
        val = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
        if not (train or val) or not is_main():
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
        if train:
            ax.plot(*zip(*train), label="train loss", lw=1.4)
        if val:
            ax.plot(*zip(*val), "o-", label="eval loss", lw=1.4)
        best = self.read().get("best_eval_loss")
        if best is not None:
            ax.axhline(best, ls=":", c="grey", lw=1, label=f"best eval {best:.4g}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.set_title(self.path.name)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out = self.path / "loss.png"
        fig.savefig(out)
        plt.close(fig)
        return out


# ---------------------------------------------------------------- ft runs

@dataclass
class RunsConfig:
    runs_dir: str = opt("runs", "Where runs are.")
    sort: str = opt("created", "Order: newest first, best eval loss first, or by name.",
                    choices=("created", "best-eval", "name"))


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _row(path: Path) -> dict | None:
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
        "tokens_per_s": run.get("tokens_per_s"),
    }


def list_runs(runs_dir: str, sort: str = "created") -> list[dict]:
    root = Path(runs_dir)
    rows = [r for p in sorted(root.glob("*/run.json")) if (r := _row(p.parent))]
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


def run_runs(cfg: RunsConfig, reporter: Reporter) -> dict:
    where = Path(cfg.runs_dir).resolve()
    if not Path(cfg.runs_dir).is_dir():
        raise ConfigError(f"option --runs-dir: no such directory {cfg.runs_dir!r} ({where})",
                          hint=_runs_elsewhere(cfg.runs_dir)
                          or "train one with `ft train`, or point --runs-dir at your runs")
    rows = list_runs(cfg.runs_dir, cfg.sort)
    cols = ["name", "status", "model", "method", "r_alpha", "lr", "scheduler", "train_rows", "steps",
            "best_eval_loss", "tokens_per_s"]
    heads = ["run", "status", "model", "method", "r/α", "lr", "sched", "rows", "steps", "best eval", "tok/s"]
    reporter.table(f"runs in {cfg.runs_dir}/", heads, [[r.get(c) for c in cols] for r in rows])
    if not rows:
        elsewhere = _runs_elsewhere(cfg.runs_dir)
        reporter.warn(f"no runs in {where}/" + (f" ({elsewhere})" if elsewhere else ""))
    return {"runs": rows}
