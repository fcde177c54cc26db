"""Benchmark: `ft --help` start-up against a bare typer app with the same command names.

    python bench/cli_startup.py [--runs 15]

Both run as whole processes; prints the median and min of each and the ratio (goal ≤ 1.2×),
then lists any heavy module (torch, transformers, openai, anthropic) `ft --help` imports.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "openai", "anthropic", "peft", "trl", "datasets")


def command_tree() -> dict:
    from typer.main import get_command

    from finetune_cli.cli import app

    def walk(cmd):
        return {n: walk(c) for n, c in cmd.commands.items()} if hasattr(cmd, "commands") else None

    return walk(get_command(app))


def bare_app(tree: dict) -> str:
    lines = ["import typer", "app = typer.Typer(add_completion=False)"]

    def emit(tree, parent, prefix):
        for i, (name, sub) in enumerate(tree.items()):
            if sub is None:
                fn = f"{prefix}_{i}"
                lines.append(f"@{parent}.command({name!r})\ndef {fn}(x: str = typer.Option(None)):\n    pass")
            else:
                var = f"{prefix}_g{i}"
                lines.append(f"{var} = typer.Typer()\n{parent}.add_typer({var}, name={name!r})")
                emit(sub, var, var)

    emit(tree, "app", "c")
    lines += ["@app.callback()\ndef root():\n    pass", "app()"]
    return "\n".join(lines) + "\n"


def timeit(cmd: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        bare = Path(d, "bare.py")
        bare.write_text(bare_app(command_tree()))
        ft_cmd = [sys.executable, "-m", "finetune_cli", "--help"]
        bare_cmd = [sys.executable, str(bare), "--help"]
        timeit(ft_cmd, 2), timeit(bare_cmd, 2)  # warm the file cache
        ft_t, bare_t = [], []
        for _ in range(args.runs):  # interleave so background load hits both alike
            ft_t += timeit(ft_cmd, 1)
            bare_t += timeit(bare_cmd, 1)
    fm, bm = statistics.median(ft_t), statistics.median(bare_t)
    print(f"{'command':<28}{'median s':>10}{'min s':>9}")
    print(f"{'ft --help':<28}{fm:>10.3f}{min(ft_t):>9.3f}")
    print(f"{'bare typer app --help':<28}{bm:>10.3f}{min(bare_t):>9.3f}")
    print(f"ratio (median): {fm / bm:.2f}x   (min): {min(ft_t) / min(bare_t):.2f}x   goal ≤ 1.2x")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "finetune_cli", "--help"],
                          capture_output=True, text=True)
    mods = {ln.rsplit("|", 1)[1].strip().split(".")[0] for ln in proc.stderr.splitlines()
            if ln.startswith("import time:") and "|" in ln}
    print("heavy modules imported by ft --help:", sorted(mods & set(HEAVY)) or "none")


if __name__ == "__main__":
    main()
