"""Local lm-evaluation-harness tasks for the tests (a YAML each and one JSONL file; nothing on the Hub)."""

from __future__ import annotations

import json
import random
from pathlib import Path

TASK = "ft_tiny_mc"
LL = "ft_tiny_ll"  # a continuous metric (perplexity of the answer): base and adapter surely differ on it


def write_tasks(d: Path) -> Path:
    """Two local lm-eval tasks in ``d``: multiple choice (TASK, acc) and loglikelihood (LL, perplexity) over
    one JSONL file, nothing on the Hub."""
    rng = random.Random(0)
    words = ["boat", "harbour", "rain", "herring", "kirk", "bread", "hill", "river", "cat", "loon"]
    with (d / "mc.jsonl").open("w") as f:
        for i in range(24):
            choices = rng.sample(words, 4)
            f.write(json.dumps({"question": f"Which word comes {i}?", "choices": choices,
                                "label": rng.randrange(4)}) + "\n")
    (d / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {d / "mc.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    (d / f"{LL}.yaml").write_text(f"""task: {LL}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {d / "mc.jsonl"}
test_split: test
output_type: loglikelihood
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: " {{{{choices[label]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
""")
    return d
