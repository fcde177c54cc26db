"""Does ``ft sweep`` add anything beyond its runs? 3 variants as one sweep vs 3 ``ft train`` calls.

    python bench/sweep_overhead.py OUT [--model tiny|smollm2-135m|PATH] [--steps 30] [--rows 256]

Both sides train the same three variants (lr 1e-4, 2e-4, 3e-4; every other option alike) in fresh
processes, one after the other: (a) ``ft sweep --no-eval`` (one process, the three runs in it), (b) three
``ft train`` processes. Reported: wall seconds of each side, the sum of the runs' own train_seconds
(run.json), and ratio = (b) / (a): ≥ 1 means the sweep costs nothing extra (it even saves two
interpreter starts), < 0.95 would mean the sweep adds more than 5 %. Writes OUT/sweep_overhead.json.
Not run by the tests (minutes on CPU with the tiny model's defaults below; use a GPU for real models).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

LRS = ["1e-4", "2e-4", "3e-4"]
QS = ["Fit like?", "Tell me about the harbour.", "How are the bairns?", "What's for tea?"]
ANS = ["Aye, nae bad, loon.", "The boats come in at dawn, ye ken.", "Fine and muckle, thanks.", "Tatties an herrin."]


def ft(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "finetune_cli", *args, "--quiet"], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rows", type=int, default=256)
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data.jsonl"
    with open(data, "w") as f:
        for i in range(a.rows):
            f.write(json.dumps({"messages": [{"role": "user", "content": QS[i % 4]},
                                             {"role": "assistant", "content": ANS[i % 4]}]}) + "\n")
    common = ["--model", a.model, "--data", str(data), "--max-steps", str(a.steps), "--max-len", "128"]
    stamp = time.strftime("%H%M%S")
    sweep_runs, train_runs = out / f"sweep-runs-{stamp}", out / f"train-runs-{stamp}"
    ft("train", *common, "--max-steps", "1", "--runs-dir", str(out / "warmup"), "--name", "w")  # caches, files

    sweep_s = ft("sweep", "--name", "o", "--grid", f"lr={','.join(LRS)}", *common, "--no-eval",
                 "--runs-dir", str(sweep_runs), "--sweeps-dir", str(out / f"sweeps-{stamp}"))
    train_s = sum(ft("train", *common, "--lr", lr, "--name", f"o-lr={lr}", "--runs-dir", str(train_runs))
                  for lr in LRS)

    def inner(root: Path) -> float:
        return sum(json.loads((root / f"o-lr={lr}" / "run.json").read_text())["train_seconds"] for lr in LRS)

    doc = {"model": a.model, "steps": a.steps, "variants": len(LRS), "sweep_wall_s": round(sweep_s, 2),
           "train_calls_wall_s": round(train_s, 2), "ratio": round(train_s / sweep_s, 3),
           "sweep_runs_train_s": round(inner(sweep_runs), 2), "train_calls_train_s": round(inner(train_runs), 2)}
    (out / "sweep_overhead.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
