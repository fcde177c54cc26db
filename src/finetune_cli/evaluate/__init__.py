"""``ft eval``: side-by-side generations, failure-mode metrics, an optional LLM judge, reports, gates.

    ft eval --base smollm2-135m --run runs/doric --persona doric --decoding greedy,sample
    ft eval --run runs/doric --fail-if "greedy.general.eos_rate<0.95" --json

Modules: ``config`` (options), ``prompts`` (prompt files, held-out rows, the built-in probes and general prompts),
``generate`` (batched left-padded generation, held-out loss), ``metrics`` (pure per-output and
aggregate metrics with their definitions), ``nearcopy`` (blocked near-copy search), ``schema``
(a JSON Schema subset), ``judge`` (OpenAI/Anthropic rubric and pairwise judge, cached),
``retention`` (KL and perplexity against the base on neutral text), ``report`` (terminal table, report.html, report.md, results.json), ``run`` (the recipe).
Only ``config`` is imported by the CLI; everything heavy is imported inside functions.
"""
