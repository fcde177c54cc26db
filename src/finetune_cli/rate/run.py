"""``ft rate``: serve the blind A/B page for an eval folder, or summarise its verdicts.

    ft rate eval/doric-smollm2-135m                              # http://127.0.0.1:8765/
    ft rate eval/doric-smollm2-135m --pairs 30 --rater ana --rater ben
    ft rate eval/doric-smollm2-135m --host 0.0.0.0               # exposed: links carry a token
    ft rate eval/doric-smollm2-135m --summary [--json]            # also writes ratings_summary.json and
                                                                 # People's verdicts into report.html/.md
"""

from __future__ import annotations

import secrets
import socket
import sys
from urllib.parse import quote, urlencode

from ..ui import Reporter
from .config import RateConfig

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def links(host: str, port: int, token: str | None, raters: list[str]) -> list[str]:
    if host in ("0.0.0.0", "::", ""):  # every interface: a name the raters' machines can reach
        host = socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}/"
    query = {"token": token} if token else {}
    if not raters:
        return [base + ("?" + urlencode(query) if query else "")]
    return [base + "?" + urlencode({**query, "rater": r}, quote_via=quote) for r in raters]


def run(cfg: RateConfig, reporter: Reporter) -> dict:
    if cfg.summary:
        from .report import refresh
        from .summary import print_summary, summarize

        s = summarize(cfg.eval_dir)
        print_summary(reporter, s)
        written = refresh(cfg.eval_dir, s)  # ratings_summary.json and the section in ft eval's reports
        if written:
            reporter.info("wrote " + ", ".join(written))
        return s

    import uvicorn

    from .app import make_app

    local = cfg.host in LOCAL_HOSTS
    token = None if local else secrets.token_urlsafe(18)
    app = make_app(cfg.eval_dir, seed=cfg.seed, pairs=cfg.pairs, token=token,
                   allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"] if local else None)
    schedule, store = app.state.schedule, app.state.store
    urls = links(cfg.host, cfg.port, token, cfg.rater)
    reporter.info(f"ft rate: {len(schedule.pairs)} pairs per rater from {cfg.eval_dir}; verdicts → "
                  f"{store.path} ({len(store.rows)} so far). Ctrl-C stops.")
    if not local:
        reporter.warn(f"listening on {cfg.host}: anyone who can reach it with the token can rate; "
                      "share each link only with its rater")
    for url in urls:  # the point of this command: printed even with --quiet (to stderr with --json)
        print(url, file=sys.stderr if reporter.json_mode else sys.stdout, flush=True)
    if not cfg.rater:
        reporter.info("each rater types a name on the page; add &rater=NAME to a link to make it personal")
    uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                                  server_header=False)).run()
    return {"eval_dir": cfg.eval_dir, "links": urls, "ratings": len(store.rows)}
