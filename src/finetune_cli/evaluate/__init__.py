"""``ft eval``: side-by-side generations, failure-mode metrics, an optional LLM judge, reports, gates.

Modules: ``config`` (options), ``prompts`` (prompt files, held-out rows, the built-in probe set),
``generate`` (batched left-padded generation, held-out loss), ``metrics`` (pure per-output and
aggregate metrics with their definitions), ``nearcopy`` (blocked near-copy search), ``schema``
(a JSON Schema subset), ``judge`` (OpenAI/Anthropic rubric and pairwise judge, cached),
``report`` (terminal table, report.html, report.md, results.json), ``run`` (the recipe).
Only ``config`` is imported by the CLI; everything heavy is imported inside functions.
"""
