"""The CLI as a whole: help of every command, version, exit codes, and what `ft --help` imports."""

import os
import subprocess
import sys

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from finetune_cli import __version__
from finetune_cli.cli import app

runner = CliRunner()


def all_commands():
    root = get_command(app)
    out = []

    def walk(cmd, path):
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            for name, sub in cmd.commands.items():
                walk(sub, path + [name])
        else:
            out.append(path)

    walk(root, [])
    return out


def test_root_help_and_version():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "to-sharegpt" in r.output
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"ft {__version__}"


def test_shell_completion_script(monkeypatch):
    # typer detects the shell from the process tree (shellingham), which a test run does not control: say bash
    monkeypatch.setattr("typer.completion._get_shell_name", lambda: "bash")
    r = runner.invoke(app, ["--show-completion"])
    assert r.exit_code == 0 and "complete -o default -F _ft_completion ft" in r.output, (r.output, r.exception)
    assert "--install-completion" in runner.invoke(app, ["--help"]).output


@pytest.mark.parametrize("path", all_commands(), ids=lambda p: " ".join(p))
def test_every_command_has_help_and_dry_run(path):
    r = runner.invoke(app, path + ["--help"])
    assert r.exit_code == 0, r.output
    assert "--dry-run" in r.output and "--config" in r.output


def test_unknown_option_is_usage_error():
    r = runner.invoke(app, ["to-sharegpt", "--bogus"])
    assert r.exit_code == 2


HEAVY = ("torch", "transformers", "openai", "anthropic", "peft", "trl", "datasets")


def imported_modules(args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "finetune_cli", *args],
                          capture_output=True, text=True, env=env)
    mods = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            mods.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return proc, mods


@pytest.mark.parametrize("args", [["--help"], ["to-sharegpt", "--help"]])
def test_help_imports_nothing_heavy(args):
    proc, mods = imported_modules(args)
    assert proc.returncode == 0
    assert "typer" in mods  # the check can see imports at all
    assert not mods & set(HEAVY), mods & set(HEAVY)


def test_to_sharegpt_run_imports_nothing_heavy(tmp_path):
    (tmp_path / "in.jsonl").write_text(
        '{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}\n')
    proc, mods = imported_modules(["to-sharegpt", "-i", str(tmp_path / "in.jsonl"),
                                   "-o", str(tmp_path / "o.jsonl")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not mods & set(HEAVY), mods & set(HEAVY)


def test_json_mode_keeps_library_prints_off_stdout():
    """Libraries (Unsloth's banner, ...) print to stdout; with --json it must hold one JSON document."""
    from dataclasses import dataclass

    import orjson
    import typer

    from finetune_cli.command import register
    from finetune_cli.config import opt

    @dataclass
    class Noisy:
        n: int = opt(1, "n")

    def run(cfg, reporter):
        print("🦥 a library banner")
        return {"n": cfg.n}

    demo = typer.Typer()
    sections = {"noisy_demo": Noisy, "noisy_demo2": Noisy}
    register(demo, "noisy", Noisy, "noisy_demo", run, help="demo", sections=sections)
    register(demo, "other", Noisy, "noisy_demo2", run, help="demo", sections=sections)
    r = runner.invoke(demo, ["noisy", "--n", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert orjson.loads(r.stdout) == {"n": 3}
    assert "banner" in r.stderr
