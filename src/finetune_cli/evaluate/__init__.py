"""``ft eval``: side-by-side generations, failure-mode metrics, an optional LLM judge, reports, gates.

Modules: ``config`` (options), ``prompts`` (prompt files, held-out rows, the built-in probes and general prompts),
``generate`` (batched left-padded generation, held-out loss), ``metrics`` (pure per-output and
aggregate metrics with their definitions), ``nearcopy`` (blocked near-copy search), ``schema``
(a JSON Schema subset), ``judge`` (OpenAI/Anthropic rubric and pairwise judge, cached),
``retention`` (KL and perplexity against the base on neutral text), ``report`` (terminal table, report.html, report.md, results.json), ``run`` (the recipe).
Only ``config`` is imported by the CLI; everything heavy is imported inside functions.
"""
