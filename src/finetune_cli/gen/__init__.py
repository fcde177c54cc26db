"""``ft gen``: topics → prompts in five buckets (core, adv, safety, multi, identity) → answers in a persona's
voice → gates → dedup.

    ft gen --topics-json topics.json --out datasets/doric.jsonl --n-per-topic 6 \\
        --adv-ratio 0.1 --safety-ratio 0.05 --multi-ratio 0.2 --max-concurrency 50 --seed 42

Providers: ``openai`` (or any OpenAI-compatible server via OPENAI_BASE_URL), ``anthropic``, and the
offline ``template`` provider (the persona's phrase bank); ``auto`` picks from the keys present.

``--from-docs DIR`` grounds the conversations in the user's documents instead of topics: see
:mod:`finetune_cli.gen.docs` (jobs and prompts) and :mod:`finetune_cli.gen.grounding` (its gates).

Every job has a stable id from (seed, topic, bucket, index). Accepted rows are appended as they
arrive (fsync in batches), so a killed run loses only the requests in flight and re-running the same
command skips finished jobs. At the end the file is rewritten atomically in job order, after fuzzy
deduplication in job order: the result does not depend on completion order, and a resumed run
writes the same bytes as an uninterrupted one. Rejected answers (and why) go to
``<out>.rejects.jsonl``; a failed request is never replaced by template text.
"""
