"""``ft runs``: the side-by-side table of training runs, from run records alone (fast)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from finetune_cli.cli import app


def make_run(name: str, *, created: str, best: float | None, method: str = "lora", status: str = "completed",
             lr: float = 2e-4, r: int = 16, alpha: float = 32.0) -> Path:
    d = Path("runs") / name
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({
        "name": name, "status": status, "created": created, "base_model": "/models/SmolLM2-135M",
        "base_model_arg": "smollm2-135m", "method": method, "learning_rate": lr, "lora_alpha": alpha,
        "train_rows": 950, "val_rows": 50, "global_step": 180, "best_eval_loss": best, "tokens_per_s": 5120.5}))
    (d / "config.json").write_text(json.dumps({"config": {"method": method, "r": r, "alpha": None, "lr": None,
                                                          "scheduler": "cosine"}}))
    return d


def test_runs_lists_side_by_side_newest_first(monkeypatch):
    make_run("a-lora", created="2026-11-20T10:00:00Z", best=1.91)
    make_run("b-dora", created="2026-11-21T10:00:00Z", best=1.72, method="dora", lr=1e-4, r=32, alpha=64.0)
    make_run("c-full", created="2026-11-22T10:00:00Z", best=None, method="full", status="stopped")
    res = CliRunner().invoke(app, ["runs", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["runs"]
    assert [r["name"] for r in rows] == ["c-full", "b-dora", "a-lora"]
    dora = rows[1]
    assert (dora["model"], dora["method"], dora["r_alpha"], dora["lr"], dora["scheduler"]) == \
        ("smollm2-135m", "dora", "32/64", 1e-4, "cosine")
    assert (dora["train_rows"], dora["steps"], dora["best_eval_loss"], dora["tokens_per_s"]) == (950, 180, 1.72, 5120.5)
    assert rows[0]["r_alpha"] is None and rows[0]["status"] == "stopped"

    res = CliRunner().invoke(app, ["runs", "--sort", "best-eval", "--json"])
    assert [r["name"] for r in json.loads(res.stdout)["runs"]] == ["b-dora", "a-lora", "c-full"]

    monkeypatch.setenv("COLUMNS", "200")
    table = CliRunner().invoke(app, ["runs"]).output
    for text in ("a-lora", "b-dora", "dora", "32/64", "1.72", "best eval", "tok/s"):
        assert text in table


def test_runs_survives_a_broken_record_and_reports_missing_dir():
    make_run("ok", created="2026-11-20T10:00:00Z", best=2.0)
    bad = Path("runs/broken")
    bad.mkdir()
    (bad / "run.json").write_text("{not json")
    res = CliRunner().invoke(app, ["runs", "--json"])
    assert res.exit_code == 0
    assert {r["name"]: r["status"] for r in json.loads(res.stdout)["runs"]} == {"ok": "completed",
                                                                                "broken": "unreadable"}
    res = CliRunner().invoke(app, ["runs", "--runs-dir", "nowhere"])
    assert res.exit_code == 2 and "error: option --runs-dir: no such directory 'nowhere'" in res.output


def test_runs_points_at_the_makefiles_runs_when_it_finds_none():
    """make train writes out/runs/; ft runs looks in runs/ by default and says where to look instead."""
    res = CliRunner().invoke(app, ["runs"])
    assert res.exit_code == 2 and "no such directory 'runs'" in res.output and "out/runs" not in res.output
    make_run("doric", created="2026-11-20T10:00:00Z", best=2.0)
    Path("runs").rename("out-runs")
    Path("out").mkdir()
    Path("out-runs").rename("out/runs")
    res = CliRunner().invoke(app, ["runs"])
    assert res.exit_code == 2 and "ft runs --runs-dir out/runs" in res.output
    Path("runs").mkdir()
    res = CliRunner().invoke(app, ["runs"])
    assert res.exit_code == 0 and f"no runs in {Path('runs').resolve()}/" in res.output
    assert "ft runs --runs-dir out/runs" in res.output
    res = CliRunner().invoke(app, ["runs", "--runs-dir", "out/runs", "--json"])
    assert [r["name"] for r in json.loads(res.stdout)["runs"]] == ["doric"]
