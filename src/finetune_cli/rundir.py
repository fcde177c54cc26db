"""Run directories: the one writer and reader of ``runs/<name>/``.

    rd = RunDir.find("runs/a/checkpoints/checkpoint-40")   # a run, its adapter/, a checkpoint, or a merged dir
    rd.base_model, rd.method, rd.chat_template, rd.system_prompt
    rd.heldout_rows()                                       # [] when the run held nothing out
    rd.config()                                             # (values, sources) as ft train resolved them

What a run directory holds, and who writes each file (docs/architecture.md has the readers):

    run.json         ft train   name, status, base model, method, chat template, system prompt, tokens, results
    config.json      ft train   the resolved config, the source of each value, derived values
    data.json        ft train   the data files, row counts, token fingerprint (tokens_sha256)
    heldout.jsonl    ft train   the validation rows (eval prompts, merge/verify samples)
    metrics.jsonl    ft train   one row per logged step
    adapter/ model/  ft train   the final adapter (LoRA family) or full model
    checkpoints/checkpoint-N    the Trainer's checkpoints (an adapter plus optimizer state)

A merged or exported model records its run in ``ft_merge.json`` (``run``), so ``find`` follows it back.
A record that is missing or unreadable is a :class:`DataError` naming the file, never an empty dict.
Only the main process writes records (``is_main``) so multi-GPU launches do not race.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import orjson

from .errors import ConfigError, DataError
from .jsonl import AppendWriter, read_json, read_rows, write_json_atomic, write_rows_atomic


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


def _record(path: Path) -> dict:
    """A JSON record that must be there and must be an object."""
    if not path.is_file():
        raise DataError("missing run record", path=str(path))
    try:
        data = read_json(path)
    except DataError as e:  # half-written or hand-edited: one line naming the file, not a line number
        raise DataError(f"unreadable run record ({e.reason})", path=str(path)) from None
    if not isinstance(data, dict):
        raise DataError("unreadable run record (not a JSON object)", path=str(path))
    return data


def read_evals(root: str | Path) -> list[tuple[Path, dict]]:
    """Every ``ft eval`` results.json at ``root`` or one level under it (ft eval's default ``eval/<name>/``),
    oldest first. An unreadable one is skipped: another tool's half-written file must not break a listing."""
    root = Path(root)
    files = [root / "results.json"] if (root / "results.json").is_file() else sorted(root.glob("*/results.json"))
    found = []
    for f in files:
        try:
            doc = read_json(f)
        except DataError:
            continue
        if isinstance(doc, dict):
            found.append((str(doc.get("created") or ""), f, doc))
    return [(f, doc) for _, f, doc in sorted(found, key=lambda t: t[0])]


def evaluated_candidate(doc: dict, targets) -> str | None:
    """The name of the first candidate of an ft eval whose run or source is one of ``targets`` (runs, adapters,
    merged directories), or None."""
    mine = {Path(t).resolve() for t in targets if t}
    for c in doc.get("candidates") or []:
        if isinstance(c, dict) and any(v and Path(v).exists() and Path(v).resolve() in mine
                                       for v in (c.get("run_dir"), c.get("source"))):
            return c.get("name")
    return None


def general_figures(doc: dict, name: str, condition: str | None = None) -> dict:
    """One candidate's answers to ft eval's general prompts (outside any training topic) in an eval's
    results: greedy where measured (what servers and chat UIs use), else the primary decoding; ``condition``
    or the first one. Empty when the eval had no general prompts."""
    dec = "greedy" if "greedy" in (doc.get("decodings") or []) else doc.get("primary_decoding")
    view = (doc.get("by_decoding") or {}).get(dec) or {"by_source": doc.get("by_source") or {}}
    conds = view.get("by_source", {}).get(name) or {}
    general = (conds.get(condition) if condition else next(iter(conds.values()), None)) or {}
    general = general.get("general")
    if not general:
        return {}
    return {"general_eos_rate": general.get("eos_rate"), "general_loop_rate": general.get("loop_rate"),
            "general_relevance": general.get("relevance_mean"), "general_decoding": dec}


def evals_of(targets, root: str | Path) -> list[tuple[Path, dict]]:
    """The ft evals under ``root`` (see :func:`read_evals`) that had one of ``targets`` among their candidates,
    oldest first."""
    return [(f, doc) for f, doc in read_evals(root) if evaluated_candidate(doc, targets) is not None]


class RunDir:
    """One run's directory and its records."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    run_json = property(lambda self: self.path / "run.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    heldout_path = property(lambda self: self.path / "heldout.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    adapter = property(lambda self: self.path / "adapter")
    model = property(lambda self: self.path / "model")

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------ finding

    @classmethod
    def find(cls, path: str | Path) -> RunDir | None:
        """The run ``path`` belongs to: the run itself, its ``adapter/`` or ``model/``, a
        ``checkpoints/checkpoint-N``, or a merged/exported directory (or its ``gguf/``) whose
        ``ft_merge.json`` names the run. None when it belongs to no run (a hub id, a bare adapter)."""
        p = Path(path).expanduser()
        if p.is_file():  # a .gguf or a weights file: the directory it sits in
            p = p.parent
        if not p.is_dir():
            return None
        near = [p]
        if p.name in ("adapter", "model"):
            near.append(p.parent)
        if p.parent.name == "checkpoints":
            near.append(p.parent.parent)
        for d in near:
            if (d / "run.json").is_file():
                return cls(d)
        for d in (p, p.parent) if p.name == "gguf" else (p,):
            merge = d / "ft_merge.json"
            if merge.is_file():
                run = _record(merge).get("run")
                if run and (Path(run) / "run.json").is_file():
                    return cls(run)
        return None

    @classmethod
    def create(cls, runs_dir: str, name: str, *, resume: bool) -> RunDir:
        path = Path(runs_dir) / name
        if resume:
            if not (path / "run.json").is_file():
                raise ConfigError(f"option --resume: no run {name!r} under {runs_dir}/")
        elif path.exists() and any(path.iterdir()):
            raise ConfigError(f"run {str(path)!r} already exists", hint="pick another --name, or add --resume")
        return cls(path)  # created by the first record written: a run that fails to start leaves nothing

    # ------------------------------------------------------------ typed readers

    def record(self) -> dict:
        """run.json; a DataError naming the file when it is missing or corrupt."""
        return _record(self.run_json)

    base_model = property(lambda self: self.record().get("base_model"))
    method = property(lambda self: self.record().get("method"))
    chat_template = property(lambda self: self.record().get("chat_template"))
    system_prompt = property(lambda self: self.record().get("system_prompt"))
    name = property(lambda self: self.record().get("name") or self.path.name)

    def heldout_rows(self) -> list[dict]:
        """The held-out rows; [] when the run held none out (--val-split 0 and no --val-file)."""
        if not self.heldout_path.is_file():
            return []
        return [row for _, row in read_rows(self.heldout_path)]

    def data(self) -> dict:
        """data.json: the files trained on, row counts and the token fingerprint (``tokens_sha256``)."""
        return _record(self.path / "data.json")

    def data_fingerprint(self) -> str | None:
        return self.data().get("tokens_sha256")

    def config(self) -> tuple[dict, dict]:
        """config.json: (resolved values, the source of each: default, file:PATH, env:NAME or flag)."""
        doc = _record(self.path / "config.json")
        return doc.get("config", {}), doc.get("sources", {})

    def adapter_for(self, path: str | Path) -> Path:
        """The weights directory ``path`` names in this run: a checkpoint as is, else adapter/ or model/."""
        p = Path(path)
        if p.resolve() != self.path.resolve():
            return p
        for sub in (self.adapter, self.model):
            if sub.is_dir():
                return sub
        raise ConfigError(f"{self.path}: this run has no adapter/ or model/ yet (status: "
                          f"{self.record().get('status')})", hint="pick a checkpoint: RUN/checkpoints/checkpoint-N")

    # ------------------------------------------------------------ checkpoints

    def _checkpoints(self) -> list[Path]:
        cps = sorted(self.checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        return [p for p in cps if (p / "trainer_state.json").is_file()]  # written last by the Trainer

    def last_checkpoint(self) -> Path | None:
        cps = self._checkpoints()
        return cps[-1] if cps else None

    def intact_checkpoint(self) -> tuple[Path | None, list[str]]:
        """The newest checkpoint whose files all read back, and why each newer one was passed over (a
        disk that filled up or a copy cut short damages the newest first)."""
        from .files import unreadable

        passed = []
        for cp in reversed(self._checkpoints()):
            problems = [(f.name, why) for f in sorted(cp.iterdir()) if f.is_file() and (why := unreadable(f))]
            if not problems:
                return cp, passed
            passed.append(f"{cp.name} is damaged ({problems[0][0]}: {problems[0][1]})")
        return None, passed

    # ------------------------------------------------------------ writing (ft train)

    def read(self) -> dict:
        """run.json as written so far; {} before the first write (the writer's view, not a reader's)."""
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
            write_rows_atomic(self.heldout_path, rows)

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
