"""``ft sweep`` end to end on the tiny model: a 2×2 grid trained, evaluated and ranked; a sweep killed
mid-way and run again gives the uninterrupted sweep's leaderboard; failures recorded; ft runs --sweep."""

from __future__ import annotations

import html
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_cli.cli import app
from tests.test_train import write_data

GRID = "method=lora,dora;lr=1e-2,3e-2"
NAMES = ["g-method=lora-lr=1e-2", "g-method=lora-lr=3e-2", "g-method=dora-lr=1e-2", "g-method=dora-lr=3e-2"]
TINY = ["--max-steps", "2", "--max-len", "64", "--batch-size", "4", "--grad-accum", "1", "--val-split", "0.25",
        "--max-prompts", "2", "--max-new-tokens", "8", "--no-probes", "--no-general", "--temperature", "0"]
COST = {"train_seconds", "tokens_per_s", "peak_mem_gib"}


def sweep_args(model, data, where: str, *extra: str) -> list[str]:
    return ["sweep", "--name", "g", "--grid", GRID, "--model", str(model), "--data", str(data), *TINY,
            "--runs-dir", f"{where}/runs", "--sweeps-dir", f"{where}/sweeps", *extra]


def invoke(args: list[str], code: int = 0):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == code, (res.output, res.exception)
    return res


def board(where: str) -> dict:
    return json.loads(Path(f"{where}/sweeps/g/leaderboard.json").read_text())


def comparable(b: dict) -> list[dict]:
    rows = []
    for r in b["rows"]:
        rows.append({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k not in COST})
    return rows


def kill_after_first_run(args: list[str], where: str) -> None:
    """Run the sweep in a subprocess and SIGKILL it once its first variant has finished."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    p = subprocess.Popen([sys.executable, "-m", "finetune_cli", *args, "--quiet"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = Path(f"{where}/runs/{NAMES[0]}/run.json")
    deadline = time.time() + 120
    try:
        while time.time() < deadline and p.poll() is None:
            if first.is_file() and '"completed"' in first.read_text():
                break
            time.sleep(0.05)
        assert p.poll() is None, p.stderr.read().decode()
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    assert json.loads(Path(f"{where}/sweeps/g/sweep.json").read_text())["variants"][3]["status"] == "pending"


def test_sweep_killed_and_rerun_equals_uninterrupted(tiny_model, tmp_path):
    data = write_data(tmp_path / "d.jsonl", 16)
    res = invoke(sweep_args(tiny_model, data, "whole") + ["--json"])
    out = json.loads(res.stdout)
    whole = board("whole")
    assert [r["run"] for r in out["rows"]] == [r["run"] for r in whole["rows"]]
    assert sorted(r["run"] for r in whole["rows"][:4]) == sorted(NAMES) and whole["rows"][4]["run"] == "base"
    for r in whole["rows"][:4]:
        assert r["status"] == "completed" and r["global_step"] == 2 and r["heldout_loss"] is not None
        assert r["train_seconds"] > 0 and r["eos_rate"] is not None and r["gates_failed"] == []
        assert set(r["values"]) == {"method", "lr"}
    losses = [r["heldout_loss"] for r in whole["rows"][:4]]
    assert losses == sorted(losses) and whole["best"]["run"] == whole["rows"][0]["run"] == out["best"]

    kill_after_first_run(sweep_args(tiny_model, data, "split"), "split")
    invoke(sweep_args(tiny_model, data, "split"))
    assert comparable(board("split")) == comparable(whole)
    ledger = json.loads(Path("split/sweeps/g/sweep.json").read_text())
    assert [v["status"] for v in ledger["variants"]] == ["completed"] * 4

    # a third run: nothing to train, the eval reused, the same leaderboard; nothing overwritten
    stamp = Path(f"split/runs/{NAMES[0]}/run.json").stat().st_mtime_ns
    res = invoke(sweep_args(tiny_model, data, "split"))
    assert "finished earlier, skipped" in res.output and "eval unchanged" in res.output
    assert Path(f"split/runs/{NAMES[0]}/run.json").stat().st_mtime_ns == stamp
    assert comparable(board("split")) == comparable(whole)

    md = Path("whole/sweeps/g/leaderboard.md").read_text()
    assert "| 1 |" in md and NAMES[0] in md and "Order:" in md
    page = Path("whole/sweeps/g/leaderboard.html").read_text()
    assert html.escape(NAMES[0], quote=True) in page and "<script" not in page

    res = invoke(["runs", "--runs-dir", "whole/runs", "--sweep", "whole/sweeps/g", "--json"])
    assert sorted(r["name"] for r in json.loads(res.stdout)["runs"]) == sorted(NAMES)

    # --fail-if applies to the leaderboard's best: a gate every variant fails exits 1 (no new generation)
    res = invoke(sweep_args(tiny_model, data, "whole", "--fail-if", "eos_rate>=0"), code=1)
    assert "eval unchanged" in res.output
    b = board("whole")
    assert b["best"]["gates_failed"] and b["gates"] == ["eos_rate>=0"]


def test_a_failing_variant_is_recorded_and_the_sweep_goes_on(tiny_model, tmp_path, monkeypatch):
    import finetune_cli.train.run as train_run

    data = write_data(tmp_path / "d.jsonl", 16)
    real = train_run.run

    def flaky(cfg, reporter):
        if "r=8" in cfg.name:
            raise RuntimeError("injected failure")
        return real(cfg, reporter)

    monkeypatch.setattr(train_run, "run", flaky)
    base = ["sweep", "--name", "f", "--grid", "r=4,8", "--model", str(tiny_model), "--data", str(data), *TINY,
            "--no-eval"]
    res = invoke(base + ["--json"])
    rows = json.loads(res.stdout)["rows"]
    assert [(r["run"], r["status"]) for r in rows] == [("f-r=4", "completed"), ("f-r=8", "failed")]
    assert "injected failure" in rows[1]["error"]
    assert "injected failure" in Path("sweeps/f/leaderboard.md").read_text()

    res = invoke(base + ["--fail-fast"], code=1)  # f-r=4 is skipped, f-r=8 fails again and stops the sweep
    assert "--fail-fast" in res.output and "injected failure" in res.output


def test_leaderboard_shows_each_variants_greedy_general_prompt_rates(tiny_model, tmp_path):
    """Held-out loss ranks how well the data was learned; the general prompts, decoded greedily, show whether a
    variant still stops elsewhere. The leaderboard carries them from the sweep's ft eval, greedy even though the
    primary (ranked) decoding is sampled."""
    data = write_data(tmp_path / "d.jsonl", 16)
    args = ["sweep", "--name", "gen", "--grid", "r=4", "--model", str(tiny_model), "--data", str(data),
            *[a for a in TINY if a not in ("--no-general", "--temperature", "0")], "--temperature", "0.7"]
    invoke(args)
    b = json.loads(Path("sweeps/gen/leaderboard.json").read_text())
    doc = json.loads(Path(b["eval_dir"], "results.json").read_text())
    assert "greedy" in doc["decodings"] and doc["primary_decoding"] == "sample"
    for row in b["rows"]:
        general = doc["by_decoding"]["greedy"]["by_source"][row["run"]][b["condition"]]["general"]
        assert general["n"] == 40
        assert (row["general_eos_rate"], row["general_loop_rate"]) == (general["eos_rate"], general["loop_rate"])
    md = Path("sweeps/gen/leaderboard.md").read_text()
    assert "general EOS" in md and "decoded greedily" in md


def test_leaderboard_carries_retention_and_lm_eval_benchmarks(tiny_model, tmp_path):
    """A persona variant that forgets general ability should show it on the board: --retention and --lm-eval
    reach the sweep's ft eval, and each variant's row carries retention_kl and lm_<task>_<metric> as measured."""
    pytest.importorskip("lm_eval")
    from tests.lm_tasks import LL, write_tasks

    tasks = write_tasks(tmp_path)
    data = write_data(tmp_path / "d.jsonl", 16)
    invoke(["sweep", "--name", "ret", "--grid", "lr=1e-2,3e-2", "--model", str(tiny_model), "--data", str(data),
            *TINY, "--retention", "--lm-eval", LL, "--lm-eval-include", str(tasks), "--fail-if", "retention_kl>100"])
    b = json.loads(Path("sweeps/ret/leaderboard.json").read_text())
    doc = json.loads(Path(b["eval_dir"], "results.json").read_text())
    metric = f"lm_{LL}_perplexity"
    for row in b["rows"]:
        m = doc["results"][row["run"]][b["condition"]]
        assert row["extra"] == {"retention_kl": m["retention_kl"], metric: m[metric]}
    base = b["rows"][-1]
    assert base["run"] == "base" and base["extra"]["retention_kl"] == pytest.approx(0, abs=1e-6)
    assert all(r["extra"]["retention_kl"] > 0 for r in b["rows"][:-1])  # the variants moved
    md = Path("sweeps/ret/leaderboard.md").read_text()
    assert f"| {metric} | retention_kl |" in md and b["gates"] == ["retention_kl>100"]


def test_grid_random_and_config_table(tmp_path):
    from finetune_cli.sweep.grid import expand, parse_grid, sample

    vs = expand(parse_grid("method=lora,dora;lr=1e-4,2e-4;r=16,32;seed=7"), "doric")
    assert len(vs) == 8 and vs[-1].name == "doric-method=dora-lr=2e-4-r=32"
    assert vs[-1].values == {"method": "dora", "lr": 2e-4, "r": 32, "seed": 7}
    drawn = sample(parse_grid("lr=1e-5..1e-3:log;r=8..64"), 5, "d", seed=3)
    assert len({v.name for v in drawn}) == 5
    assert all(1e-5 <= v.values["lr"] <= 1e-3 and isinstance(v.values["r"], int) for v in drawn)
    assert [v.name for v in drawn] == [v.name for v in sample(parse_grid("lr=1e-5..1e-3:log;r=8..64"), 5, "d", 3)]

    cfg = tmp_path / "ft.toml"
    cfg.write_text('[sweep]\nname = "doric"\ngrid = "lr=1e-5..1e-3:log"\nrandom = 3\nmodel = "tiny"\n'
                   'data = ["d.jsonl"]\nmax_steps = 5\n')
    res = invoke(["sweep", "-c", str(cfg), "--dry-run", "--json"])
    doc = json.loads(res.stdout)
    assert doc["random"]["value"] == 3 and doc["max_steps"]["source"].startswith("file:")
    res = invoke(["sweep", "-c", str(cfg), "--random", "0", "--dry-run"], code=2)
    assert "need --random N" in res.output


def test_report_to_a_missing_tracker_is_one_line(tiny_model, tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    data = write_data(tmp_path / "d.jsonl", 8)
    res = invoke(["train", "--model", str(tiny_model), "--data", str(data), "--report-to", "wandb"], code=2)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines == ["error: option --report-to wandb: the wandb package is not installed (uv pip install wandb, "
                     "or --report-to none)"]


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("tensorboard") is None,
                    reason="tensorboard is not installed in this environment (an optional extra): the event files "
                           "cannot be written or read back")
def test_report_to_tensorboard_writes_events(tiny_model, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = write_data(tmp_path / "d.jsonl", 16)
    invoke(["train", "--model", str(tiny_model), "--data", str(data), "--max-steps", "3", "--logging-steps", "1",
            "--max-len", "64", "--batch-size", "4", "--grad-accum", "1", "--name", "tb", "--report-to",
            "tensorboard", "--quiet"])
    events = list(Path("runs/tb/tensorboard").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert len(acc.Scalars("train/loss")) == 3


def test_a_subprocess_on_its_own_gpu_gets_the_variant_exactly():
    """--parallel-gpus launches `ft train` with flags: they must rebuild the variant's TrainConfig."""
    from finetune_cli.config import to_dict
    from finetune_cli.sweep.config import SweepConfig
    from finetune_cli.sweep.run import train_argv, train_config, variants

    cfg = SweepConfig(name="g", grid="method=dora;lr=3e-4,1e-3", model="tiny", data=["d.jsonl"], max_steps=3,
                      target_modules=["q_proj", "v_proj"], packing=False, alpha=8.0)
    cfg.validate()
    tc = train_config(cfg, variants(cfg)[1])
    res = invoke(["train", *train_argv(tc), "--dry-run", "--json"])
    assert {k: v["value"] for k, v in json.loads(res.stdout).items()} == to_dict(tc)
    assert tc.name == "g-lr=1e-3" and tc.lr == 1e-3 and tc.method == "dora"


def test_on_a_gpu_each_variant_trains_in_its_own_process_on_the_cards_given(tiny_model, tmp_path, monkeypatch):
    """Unsloth patches transformers' model classes for the whole process it is imported in, so on a GPU the
    sweep trains every variant in an `ft train` subprocess, even one card at a time (in-process, the sweep's
    eval of a freshly loaded base failed on an H100). Here the 'GPU' is pretended (the subprocess trains on
    CPU); the card each variant gets is taken from the sweep's own CUDA_VISIBLE_DEVICES."""
    import finetune_cli.sweep.run as sweep_run

    data = write_data(tmp_path / "d.jsonl", 16)
    monkeypatch.setattr(sweep_run, "visible_gpus", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    real, seen = subprocess.Popen, []

    def popen(argv, **kw):
        seen.append((argv[3], kw["env"]["CUDA_VISIBLE_DEVICES"]))
        return real(argv, **kw)

    monkeypatch.setattr(sweep_run.subprocess, "Popen", popen)
    res = invoke(["sweep", "--name", "p", "--grid", "r=4", "--model", str(tiny_model), "--data", str(data), *TINY,
                  "--no-eval", "--json"])
    assert seen == [("train", "5")]
    [row] = json.loads(res.stdout)["rows"]
    assert row["status"] == "completed" and row["global_step"] == 2
    name = row["run"]
    assert Path(f"runs/{name}/adapter/adapter_config.json").is_file()
    assert not Path(f"sweeps/p/logs/{name}.log").exists()  # one card: its output went to the terminal


def test_gpu_slots_follow_the_sweeps_own_visible_devices(monkeypatch):
    from finetune_cli.sweep.run import gpu_slots

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert gpu_slots(2) == ["2", "3"] and gpu_slots(1) == ["2"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_slots(2) == ["0", "1"]
