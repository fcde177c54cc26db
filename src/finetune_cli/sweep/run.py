"""``ft sweep``: train every variant, evaluate them alike, rank them on one leaderboard.

    ft model tiny runs/tiny-model
    ft sweep --name smoke --grid "method=lora,dora;lr=1e-4,2e-4" --model runs/tiny-model \\
        --data data/doric.jsonl --max-len 128 --max-steps 20 --max-prompts 8 --max-new-tokens 32
    ft sweep --name doric --grid "lr=1e-5..1e-3:log;r=8,16,32" --random 6 ...    # 6 draws
    ft runs --sweep smoke

The recipe: variants (grid.py) → train each (on CPU in this process; on a GPU an `ft train` subprocess
per variant, one per card at once) → ft eval of the base and every finished variant on the same prompts, seed and decodings → judge arena
(optional, arena.py) → leaderboard (leaderboard.py). Every step is resumable: a finished run is
skipped, an interrupted one resumed from its last checkpoint (one that died before its first
checkpoint is moved aside to runs/.<name>.interrupted-N and started again), an existing run with
other options is never touched, an unchanged eval is reused and arena verdicts are cached.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path

from ..config import to_dict
from ..errors import TrainingError
from ..jsonl import read_json, write_json_atomic
from ..train.config import TrainConfig
from ..train.plan import RESUME_FREE
from ..rundir import RunDir, now
from ..ui import Reporter
from . import grid as G
from .config import train_options



def variants(cfg) -> list[G.Variant]:
    spec = G.parse_grid(cfg.grid)
    return G.sample(spec, cfg.random, cfg.name, cfg.random_seed) if cfg.random else G.expand(spec, cfg.name)


def train_config(cfg, v: G.Variant, *, resume: bool = False) -> TrainConfig:
    tc = TrainConfig(**{**train_options(cfg), **v.values, "name": v.name, "resume": resume})
    tc.validate()
    return tc


def plan_run(tc: TrainConfig) -> tuple[str, str]:
    """What to do with a variant's run directory: (new|done|resume|restart|conflict, why)."""
    rd = RunDir(Path(tc.runs_dir) / tc.name)
    if not rd.path.exists() or not any(rd.path.iterdir()):
        return "new", ""
    if not rd.run_json.is_file():
        return "conflict", f"{rd.path} exists and is not a run (no run.json)"
    saved = read_json(rd.path / "config.json").get("config", {}) if (rd.path / "config.json").is_file() else {}
    want = to_dict(tc)
    diff = [k for k in want if k not in RESUME_FREE and k in saved and saved[k] != want[k]]
    if diff:
        return "conflict", (f"{rd.path} was trained with other options ({', '.join(diff)}); never overwritten: "
                            "remove it or pick another --name")
    status = rd.read().get("status")
    if status == "completed":
        return "done", ""
    ckpt, _ = rd.intact_checkpoint()
    return ("resume", f"{status} at {ckpt.name}") if ckpt else ("restart", f"{status} before its first checkpoint")


def _move_aside(path: Path) -> Path:
    n = 1
    while (dest := path.with_name(f".{path.name}.interrupted-{n}")).exists():
        n += 1
    path.rename(dest)
    return dest


def train_argv(tc: TrainConfig) -> list[str]:
    """``ft train`` flags that rebuild ``tc`` (for a subprocess on its own GPU)."""
    argv = []
    for f in fields(TrainConfig):
        v = getattr(tc, f.name)
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        if v is None or v == default:
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            argv.append(flag if v else f"--no-{flag[2:]}")
        elif isinstance(v, list):
            for item in v:
                argv += [flag, str(item)]
        else:
            argv += [flag, repr(v) if isinstance(v, float) else str(v)]
    return argv


class Ledger:
    """sweeps/<name>/sweep.json: the variants, their status, and what was evaluated."""

    def __init__(self, path: Path, cfg, vs: list[G.Variant]):
        self.path = path
        old = read_json(path) if path.is_file() else {}
        rows = {r["name"]: r for r in old.get("variants", [])}
        self.doc = {"ft_sweep": 1, "name": cfg.name, "created": old.get("created", now()), "grid": cfg.grid,
                    "random": cfg.random, "runs_dir": cfg.runs_dir, "base": cfg.model,
                    "variants": [{**rows.get(v.name, {"status": "pending"}), "name": v.name, "values": v.shown}
                                 for v in vs],
                    "eval": old.get("eval")}

    def row(self, name: str) -> dict:
        return next(r for r in self.doc["variants"] if r["name"] == name)

    def set(self, name: str, **kw) -> None:
        self.row(name).update(kw)
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.doc)


def _record(ledger: Ledger, tc: TrainConfig, seconds: float, err: BaseException | None) -> None:
    rec = RunDir(Path(tc.runs_dir) / tc.name).read()
    if err is None and rec.get("status") == "completed":
        ledger.set(tc.name, status="completed", error=None, seconds=round(seconds, 2), ended=now())
    else:
        why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}" if err else \
            f"run.json status {rec.get('status')!r} ({rec.get('error') or 'see the log'})"
        ledger.set(tc.name, status="failed", error=why, seconds=round(seconds, 2), ended=now())


def _prepare(cfg, v: G.Variant, ledger: Ledger, reporter: Reporter) -> TrainConfig | None:
    """The variant's TrainConfig to train (resume set when it was interrupted), or None: finished or not
    ours to touch (recorded)."""
    tc = train_config(cfg, v)
    action, why = plan_run(tc)
    if action == "done":
        if ledger.row(v.name).get("status") != "completed":
            ledger.set(v.name, status="completed", error=None)
        reporter.info(f"sweep: {v.name}: finished earlier, skipped")
        return None
    if action == "conflict":
        ledger.set(v.name, status="failed", error=why)
        reporter.warn(f"sweep: {v.name}: {why}")
        return None
    if action == "restart":
        dest = _move_aside(Path(tc.runs_dir) / tc.name)
        reporter.warn(f"sweep: {v.name}: {why}; the partial run was moved to {dest}, starting again")
    if action == "resume":
        reporter.info(f"sweep: {v.name}: {why}, resuming")
        tc.resume = True
    ledger.set(v.name, status="running", error=None, started=now())
    return tc


def train_in_process(cfg, todo: list[G.Variant], ledger: Ledger, reporter: Reporter) -> None:
    from ..train.run import run as train_run

    for i, v in enumerate(todo, 1):
        tc = _prepare(cfg, v, ledger, reporter)
        if tc is None:
            continue
        reporter.info(f"sweep: training {v.name} ({i}/{len(todo)})")
        t0, err = time.perf_counter(), None
        try:
            train_run(tc, reporter)
        except KeyboardInterrupt:
            ledger.set(v.name, status="stopped")
            raise
        except Exception as e:  # noqa: BLE001 - a failing variant is recorded; the sweep goes on
            err = e
        _record(ledger, tc, time.perf_counter() - t0, err)
        gc.collect()
        if err is not None:
            reporter.warn(f"sweep: {v.name} failed: {ledger.row(v.name)['error']}")
            if cfg.fail_fast:
                raise TrainingError(f"sweep {cfg.name}: variant {v.name} failed (--fail-fast): "
                                    f"{ledger.row(v.name)['error']}") from None


def gpu_slots(gpus: int) -> list[str]:
    """What each subprocess gets as CUDA_VISIBLE_DEVICES: this process's own entries where it has them (a
    sweep started with CUDA_VISIBLE_DEVICES=2,3 trains on cards 2 and 3, not 0 and 1), else 0..gpus-1."""
    own = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return own[:gpus] if len(own) >= gpus else [str(i) for i in range(gpus)]


def train_on_gpus(cfg, todo: list[G.Variant], ledger: Ledger, reporter: Reporter, gpus: int) -> None:
    """One ``ft train`` subprocess per GPU (CUDA_VISIBLE_DEVICES), the next variant as one finishes. On one
    card the subprocess writes to this terminal (its progress shows, as when training in process); on several
    each writes to sweeps/<name>/logs/<variant>.log, where interleaved output would be unreadable."""
    devices = gpu_slots(gpus)
    shared = gpus == 1  # the terminal, not a log: stdout to our stderr (a --json summary stays alone on stdout)
    logs = ledger.path.parent / "logs"
    if not shared:
        logs.mkdir(parents=True, exist_ok=True)
    queue = list(todo)
    running: dict[int, tuple[subprocess.Popen, TrainConfig, float, object]] = {}
    stop = False
    try:
        while queue or running:
            while queue and len(running) < gpus and not stop:
                v = queue.pop(0)
                tc = _prepare(cfg, v, ledger, reporter)
                if tc is None:
                    continue
                slot = next(i for i in range(gpus) if i not in running)
                log = None if shared else open(logs / f"{v.name}.log", "ab")
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": devices[slot]}
                quiet = ["--quiet"] if reporter.quiet or not shared else []
                argv = [sys.executable, "-m", "finetune_cli", "train", *train_argv(tc), *quiet]
                if shared:
                    p = subprocess.Popen(argv, stdout=2, env=env)
                else:
                    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
                reporter.info(f"sweep: training {v.name} on GPU {devices[slot]}"
                              + ("" if shared else f" (log {logs / (v.name + '.log')})"))
                running[slot] = (p, tc, time.perf_counter(), log)
            if not running:
                break
            time.sleep(0.5)
            for slot, (p, tc, t0, log) in list(running.items()):
                if p.poll() is None:
                    continue
                if log:
                    log.close()
                del running[slot]
                err = None if p.returncode == 0 else TrainingError(
                    f"ft train exited {p.returncode} "
                    + ("(its messages are above)" if shared else f"(log {logs / (tc.name + '.log')})"))
                _record(ledger, tc, time.perf_counter() - t0, err)
                if err is not None:
                    reporter.warn(f"sweep: {tc.name} failed: {ledger.row(tc.name)['error']}")
                    stop = stop or cfg.fail_fast
        if stop:
            raise TrainingError(f"sweep {cfg.name}: a variant failed (--fail-fast)")
    except BaseException:
        for p, tc, _, log in running.values():
            p.terminate()
            p.wait()
            if log:
                log.close()
            ledger.set(tc.name, status="stopped")
        raise


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def evaluate(cfg, ledger: Ledger, names: list[str], reporter: Reporter) -> Path:
    """ft eval of the base and ``names`` into sweeps/<name>/eval, reused while nothing it read changed
    (the gates are the leaderboard's: a new --fail-if does not generate again)."""
    from ..evaluate.config import EvalConfig
    from ..evaluate.run import run as eval_run

    out = ledger.path.parent / "eval"
    options = dict(base=cfg.model, adapter=[str(Path(cfg.runs_dir) / n) for n in names],
                   trust_remote_code=cfg.trust_remote_code, prompts=cfg.prompts, max_prompts=cfg.max_prompts,
                   probes=cfg.probes, general=cfg.general, max_new_tokens=cfg.max_new_tokens,
                   temperature=cfg.temperature, seed=cfg.eval_seed, out=str(out),
                   decoding=["greedy"] if cfg.temperature == 0 else None, retention=cfg.retention,
                   lm_eval=cfg.lm_eval, lm_eval_include=cfg.lm_eval_include, lm_eval_limit=cfg.lm_eval_limit)
    known = {f.name for f in fields(EvalConfig)}  # ft eval's options as this version has them
    ecfg = EvalConfig(**{k: v for k, v in options.items() if k in known and v is not None})
    ecfg.validate()
    fingerprint = {"config": to_dict(ecfg),
                   "runs": {n: RunDir(Path(cfg.runs_dir) / n).read().get("ended") for n in names}}
    prev = ledger.doc.get("eval") or {}
    if prev.get("fingerprint") == fingerprint and (out / "results.json").is_file():
        reporter.info(f"sweep: eval unchanged since {prev.get('ended')}, reused ({out})")
        return out
    reporter.info(f"sweep: evaluating the base and {len(names)} variant(s) → {out}")
    eval_run(ecfg, reporter)
    ledger.doc["eval"] = {"fingerprint": fingerprint, "dir": str(out), "ended": now()}
    ledger.save()
    return out


def run(cfg, reporter: Reporter) -> dict:
    from . import leaderboard

    vs = variants(cfg)
    for v in vs:  # every variant's options checked before the first one trains
        train_config(cfg, v)
    sweep_dir = Path(cfg.sweeps_dir) / cfg.name
    ledger = Ledger(sweep_dir / "sweep.json", cfg, vs)
    ledger.save()
    reporter.info(f"ft sweep {cfg.name}: {len(vs)} variant(s) under {cfg.runs_dir}/ · record {ledger.path}")
    cards = visible_gpus()
    gpus = cfg.parallel_gpus or cards
    # On a GPU every variant trains in its own `ft train` process, even one at a time: Unsloth patches
    # transformers' model classes for the whole process it is imported in (the sweep's ft eval of a freshly
    # loaded base then failed on an H100: "'LlamaForCausalLM' object has no attribute 'max_seq_length'"),
    # and a process that ends gives all its GPU memory back before the next variant loads.
    if gpus > 1 or cards:
        train_on_gpus(cfg, vs, ledger, reporter, max(gpus, 1))
    else:
        train_in_process(cfg, vs, ledger, reporter)

    done = [r["name"] for r in ledger.doc["variants"] if r.get("status") == "completed"]
    if not done:
        raise TrainingError(f"sweep {cfg.name}: no variant finished", hint=f"see {ledger.path}")
    eval_dir = arena = None
    if cfg.eval:
        eval_dir = evaluate(cfg, ledger, done, reporter)
        if cfg.judge != "none":
            from .arena import arena_from_eval

            arena = arena_from_eval(cfg, eval_dir, sweep_dir / "arena.jsonl", reporter)
    board = leaderboard.build(cfg, ledger.doc, eval_dir, arena)
    paths = leaderboard.write(sweep_dir, board)
    leaderboard.print_board(reporter, board)
    best = board["best"]
    reporter.result(f"sweep {cfg.name}: best {best['run'] if best else 'none'} · leaderboard {paths['html']}")
    failed_gates = bool(best and best.get("gates_failed"))
    return {"sweep": str(sweep_dir), "files": paths, "best": best["run"] if best else None,
            "rows": board["rows"], "exit_code": 1 if failed_gates else 0}

