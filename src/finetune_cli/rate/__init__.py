"""``ft rate``: people judge blind A/B pairs of ft eval's answers on a local web page.

    ft rate out/eval/doric                      # serve the page on 127.0.0.1
    ft rate out/eval/doric --summary --json

Modules: ``config`` (options; the only one the CLI imports), ``store`` (pairs from outputs.jsonl, the
per-rater schedule, ratings.jsonl), ``app`` (the Starlette app and its page, ``page.html``), ``stats``
(win rates, Bradley–Terry, kappa: plain functions), ``summary`` (the numbers), ``report`` (them in ft
eval's report.html/.md and ratings_summary.json), ``run`` (serve or summarise).
"""
