"""``ft eval --lm-eval TASKS``: benchmark tasks of EleutherAI's lm-evaluation-harness (the ``lmeval`` extra) on
every candidate, as ft loaded it (the adapter applied, in memory), beside ft's own metrics.

Only where a task's data is already on this machine: the Hub and ``datasets`` are switched offline while the
tasks load, so a task whose data is missing is one line naming it, never a download. Your own tasks (a YAML and a
local JSON/CSV file, ``dataset_path: json`` + ``dataset_kwargs.data_files``) come in with ``--lm-eval-include``.

Each task's metrics land in results.json as ``lm_<task>_<metric>`` (``lm_arc_easy_acc``), the same for every
condition and decoding (a benchmark prompt is the task's own, not the persona's), and gate like any metric:
``--fail-if "lm_arc_easy_acc<base-0.02"``.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager

from ..errors import ConfigError

HINT_INSTALL = "install the lmeval extra: uv sync --extra lmeval (or pip install 'finetune-cli[lmeval]')"
HINT_DATA = ("run the task once where the Hub is reachable (it lands in the datasets cache), or give ft a local "
             "task (a YAML with dataset_path: json and data_files) with --lm-eval-include DIR")


def metric_name(task: str, metric: str) -> str:
    """``lm_<task>_<metric>`` in the gate language's alphabet (lower-case letters, digits, underscores)."""
    return "lm_" + re.sub(r"[^a-z0-9]+", "_", f"{task}_{metric}".lower()).strip("_")


@contextmanager
def offline():
    """The Hub and datasets offline for the duration, whatever was imported before: no task downloads."""
    import datasets.config as dc
    import huggingface_hub.constants as hc

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    saved = (hc.HF_HUB_OFFLINE, dc.HF_HUB_OFFLINE, dc.HF_DATASETS_OFFLINE)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    hc.HF_HUB_OFFLINE = dc.HF_HUB_OFFLINE = dc.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE, dc.HF_HUB_OFFLINE, dc.HF_DATASETS_OFFLINE = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _quiet() -> None:
    import logging

    for name in ("lm-eval", "lm_eval", "lm_eval.evaluator", "lm_eval.tasks", "datasets", "evaluate"):
        logging.getLogger(name).setLevel(logging.ERROR)


class Harness:
    """The tasks, checked and loaded once (before any generation: a missing task fails the eval at start)."""

    def __init__(self, tasks: list[str], include: str | None = None, limit: int = 0, batch_size: int = 8):
        try:
            with offline():
                from lm_eval.tasks import TaskManager
        except ImportError as e:
            raise ConfigError(f"option --lm-eval: lm-evaluation-harness is not installed ({e.name or e})",
                              hint=HINT_INSTALL) from None
        _quiet()
        if include and not os.path.isdir(include):
            raise ConfigError(f"option --lm-eval-include: {include}: no such directory")
        self.tasks, self.limit, self.batch_size = list(tasks), limit, batch_size
        self.manager = TaskManager(include_path=include) if include else TaskManager()
        known = set(self.manager.all_tasks)
        for t in self.tasks:
            if t not in known:
                import difflib

                close = difflib.get_close_matches(t, sorted(known), n=1)
                raise ConfigError(f"option --lm-eval: no lm-eval task {t!r}"
                                  + (f" (did you mean {close[0]!r}?)" if close else ""),
                                  hint="lm-eval --tasks list shows them; your own YAMLs need --lm-eval-include")
        self.definitions: dict[str, str] = {}  # what each lm_ metric is, for results.json
        for t in self.tasks:  # a check only: simple_evaluate builds (and configures) its own task objects per call
            try:
                with offline():
                    self.manager.load([t])  # builds the task: its dataset loads here
            except Exception as e:  # noqa: BLE001 - datasets/hub raise many kinds; each means "not here"
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise ConfigError(f"option --lm-eval: task {t!r}: its data is not on this machine and ft never "
                                  f"downloads it ({type(e).__name__}: {first})", hint=HINT_DATA) from None

    def run(self, model, tokenizer) -> dict[str, float]:
        """``lm_<task>_<metric>`` for one loaded candidate (standard errors left out)."""
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        import lm_eval.evaluator as ev

        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size, device=str(model.device))
        # lm-eval's own run record (a `git describe` in the working directory, which prints "fatal: not a git
        # repository" to the user's terminal, and torch's environment report) is not kept by ft: skipped
        saved = ev.get_git_commit_hash, ev.add_env_info
        ev.get_git_commit_hash, ev.add_env_info = (lambda: None), (lambda storage: None)
        try:
            with offline():
                res = simple_evaluate(model=lm, tasks=self.tasks, task_manager=self.manager,
                                      limit=self.limit or None, log_samples=False, bootstrap_iters=0)
        finally:
            ev.get_git_commit_hash, ev.add_env_info = saved
        out: dict[str, float] = {}
        for task, metrics in (res or {}).get("results", {}).items():
            for key, value in metrics.items():
                if "," not in key:  # "metric,filter" are the scores; alias, sample_len are not
                    continue
                metric = key.split(",")[0]
                if isinstance(value, (int, float)) and not isinstance(value, bool) and "stderr" not in metric:
                    name = metric_name(task, metric)
                    out[name] = float(value)
                    self.definitions[name] = (
                        f"lm-evaluation-harness task {task}, metric {metric}"
                        + (f", its first {self.limit} examples" if self.limit else ""))
        return out
