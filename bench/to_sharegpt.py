"""Benchmark: `ft to-sharegpt` on 1M two-turn rows (a whole process, as a user runs it).

    python bench/to_sharegpt.py [--rows 1000000]

Prints rows/s for `ft to-sharegpt`, and beside it a baseline measured in the same run: a bare
orjson read → dict → write loop over the same file (the floor any converter pays).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson


def make_input(path: Path, n: int) -> None:
    with open(path, "wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"messages": [
                {"role": "user", "content": f"Fit like the day, number {i}? Tell me aboot the harbour."},
                {"role": "assistant", "content": "Aye, nae bad ava. The boats are in and the bairns are fine."}],
                "meta": {"id": f"job-{i:07d}", "bucket": "core", "persona": "doric"}}) + b"\n")


def bare_loop(src: Path, dst: Path) -> None:
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        for line in fi:
            row = orjson.loads(line)
            conv = [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]}
                    for m in row["messages"]]
            fo.write(orjson.dumps({"conversations": conv, "meta": row["meta"]}) + b"\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        src, out, base = Path(d, "in.jsonl"), Path(d, "out.jsonl"), Path(d, "base.jsonl")
        make_input(src, args.rows)
        t0 = time.perf_counter()
        bare_loop(src, base)
        t_base = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "finetune_cli", "to-sharegpt", "-i", str(src), "-o", str(out),
                        "--quiet"], check=True, env=dict(os.environ))
        t_ft = time.perf_counter() - t0
        assert sum(1 for _ in open(out, "rb")) == args.rows
    print(f"rows: {args.rows:,}")
    print(f"{'what':<34}{'seconds':>9}{'rows/s':>12}")
    print(f"{'ft to-sharegpt (whole process)':<34}{t_ft:>9.2f}{args.rows / t_ft:>12,.0f}")
    print(f"{'bare orjson loop (in-process)':<34}{t_base:>9.2f}{args.rows / t_base:>12,.0f}")
    print(f"ratio ft / bare: {t_ft / t_base:.2f}x the time (ft validates every turn, writes atomically)")


if __name__ == "__main__":
    main()
