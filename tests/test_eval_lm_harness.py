"""``ft eval --lm-eval``: lm-evaluation-harness tasks on every candidate, only on data already on the machine.

Checked against the real consumer: the same task run by lm-eval itself, loading the model (and the adapter, through
its own ``peft=``) its own way, gives the numbers ft records. A task whose data is not here is one line, exit 2, and
nothing written; an unknown task names the nearest one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_cli.cli import app
from tests.lm_tasks import LL, TASK, write_tasks

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    return write_tasks(tmp_path_factory.mktemp("lm-tasks"))


def plain_lm_eval(model_args: str, task_dir: Path) -> dict[str, float]:
    """lm-eval on its own: its `hf` model loads the weights (and a `peft=` adapter) itself."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    res = simple_evaluate(model="hf", model_args=model_args + ",dtype=float32", tasks=[TASK, LL],
                          task_manager=TaskManager(include_path=str(task_dir)), log_samples=False,
                          bootstrap_iters=0, batch_size=8, device="cpu")
    return {f"lm_{TASK}_acc": res["results"][TASK]["acc,none"],
            f"lm_{LL}_perplexity": res["results"][LL]["perplexity,none"]}


def test_a_local_task_scores_base_and_adapter_as_lm_eval_itself_does(tiny_model, task_dir, tmp_path):
    from tests.test_eval_cli import _adapter

    adapter = tmp_path / "adapter"
    _adapter(tiny_model, adapter, 3)
    (tmp_path / "p.txt").write_text("Tell me about boats.\n")
    r = runner.invoke(app, ["eval", "--base", str(tiny_model), "--adapter", str(adapter), "--lm-eval", f"{TASK},{LL}",
                            "--lm-eval-include", str(task_dir), "--decoding", "greedy", "--no-general",
                            "--no-probes", "--prompts", str(tmp_path / "p.txt"), "--max-new-tokens", "4",
                            "-o", "out", "--json", "-q",
                            "--fail-if", f"lm_{TASK}_acc<base-1"])
    assert r.exit_code == 0, r.output
    doc = json.loads(Path("out/results.json").read_text())
    metrics = [f"lm_{TASK}_acc", f"lm_{LL}_perplexity"]
    for m in metrics:
        assert m in doc["definitions"] and m[3:].rsplit("_", 1)[0] in doc["definitions"][m]
    ours = {cand: {m: doc["results"][cand]["no_system"][m] for m in metrics} for cand in ("base", "adapter")}
    assert ours["base"][metrics[1]] != ours["adapter"][metrics[1]]  # the adapter is applied
    assert ours["base"] == pytest.approx(plain_lm_eval(f"pretrained={tiny_model}", task_dir), rel=1e-4)
    assert ours["adapter"] == pytest.approx(plain_lm_eval(f"pretrained={tiny_model},peft={adapter}", task_dir),
                                            rel=1e-4)
    assert doc["gates"]["checked"] == [f"{metrics[0]}<base-1"] and not doc["gates"]["failed"]


def test_a_task_whose_data_is_not_here_is_one_line_and_nothing_written(tiny_model, tmp_path):
    out = tmp_path / "out"
    r = runner.invoke(app, ["eval", "--base", str(tiny_model), "--lm-eval", "arc_easy", "--no-general", "-o", str(out),
                            "-q"])
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "task 'arc_easy': its data is not on this machine" in errors[0], r.stderr
    assert "never downloads" in errors[0] and not out.exists()


def test_an_unknown_task_names_the_nearest_and_lm_gates_need_the_option(tiny_model):
    r = runner.invoke(app, ["eval", "--base", str(tiny_model), "--lm-eval", "arc_eassy", "-q"])
    assert r.exit_code == 2 and "no lm-eval task 'arc_eassy' (did you mean 'arc_easy'?)" in r.stderr
    r = runner.invoke(app, ["eval", "--base", str(tiny_model), "--fail-if", "lm_arc_easy_acc<0.3", "-q"])
    assert r.exit_code == 2 and "needs --lm-eval TASK" in r.stderr
