"""The rating page as a Starlette app: one HTML page, a JSON API, verdicts stored before each answer.

    app = make_app("eval/doric", seed=0, token=None)      # serve with uvicorn, or test with TestClient

Routes: ``GET /`` the page; ``GET /api/next?rater=NAME`` progress and the next pair; ``POST /api/rate``
``{"rater", "pair", "choice", "reason"}`` stores a verdict and answers with the next pair. Candidate
names never reach the page. With a token every request needs ``?token=`` or ``X-Ft-Token``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import re
import secrets
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route

from .store import CHOICES, RATINGS, RatingStore, Schedule, load_pairs, verdict_row

MAX_BODY = 8 * 1024          # bytes of a POST: a verdict is a few hundred
MAX_REASON = 300             # characters of the optional reason
RATER_NAME = re.compile(r"^[\w][\w .@-]{0,39}$")
PAGE = (Path(__file__).parent / "page.html").read_text(encoding="utf-8")


class TokenGate:
    """Refuse (403) every request without the token, before any route sees it."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            req = Request(scope)
            given = (req.query_params.get("token") or req.headers.get("x-ft-token") or "").encode()
            if not hmac.compare_digest(given, self.token):
                resp = PlainTextResponse("forbidden: open the link ft rate printed (it carries a token)\n", 403)
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"Cache-Control": "no-store"})


async def _read_json(request: Request) -> dict | JSONResponse:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return _error(415, "send application/json")  # also keeps cross-site HTML forms out
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        return _error(413, f"body over {MAX_BODY} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return _error(413, f"body over {MAX_BODY} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "malformed JSON")
    if not isinstance(data, dict):
        return _error(400, "expected a JSON object")
    return data


def make_app(eval_dir: str | Path, *, seed: int = 0, pairs: int = 0, token: str | None = None,
             allowed_hosts: list[str] | None = None) -> Starlette:
    all_pairs, _ = load_pairs(eval_dir)
    schedule = Schedule(all_pairs, seed=seed, limit=pairs)
    store = RatingStore(Path(eval_dir) / RATINGS)

    def state(rater: str) -> dict:
        seq = schedule.order(rater)
        done = sum(store.has(rater, p.id) for p in seq)
        nxt = next((p for p in seq if not store.has(rater, p.id)), None)
        out: dict = {"rater": rater, "done": done, "total": len(seq), "pair": None}
        if nxt is not None:
            first, second = (nxt.text_b, nxt.text_a) if schedule.swapped(rater, nxt.id) else (nxt.text_a, nxt.text_b)
            out["pair"] = {"id": nxt.id, "turns": [{"role": str(t.get("role", "")), "content": str(t.get("content", ""))}
                                                   for t in nxt.turns], "a": first, "b": second}
        return out

    def rater_of(value) -> str | None:
        return value.strip() if isinstance(value, str) and RATER_NAME.match(value.strip()) else None

    async def page(request: Request) -> HTMLResponse:
        nonce = secrets.token_urlsafe(12)
        csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
               "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        return HTMLResponse(PAGE.replace("{{nonce}}", nonce), headers={
            "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})

    async def next_pair(request: Request) -> JSONResponse:
        rater = rater_of(request.query_params.get("rater"))
        if rater is None:
            return _error(400, "rater: 1-40 letters, digits, spaces, . @ - or _")
        return JSONResponse(state(rater), headers={"Cache-Control": "no-store"})

    async def rate(request: Request) -> JSONResponse:
        data = await _read_json(request)
        if isinstance(data, JSONResponse):
            return data
        rater = rater_of(data.get("rater"))
        if rater is None:
            return _error(400, "rater: 1-40 letters, digits, spaces, . @ - or _")
        choice, reason = data.get("choice"), data.get("reason", "")
        if choice not in CHOICES:
            return _error(400, f"choice: one of {', '.join(CHOICES)}")
        if not isinstance(reason, str) or len(reason) > MAX_REASON or "\n" in reason or "\r" in reason:
            return _error(400, f"reason: one line of at most {MAX_REASON} characters")
        pair = schedule.by_id.get(data.get("pair")) if isinstance(data.get("pair"), str) else None
        if pair is None:
            return _error(404, "no such pair")
        row = verdict_row(rater, pair, schedule.shown(rater, pair), choice, reason.strip())
        if not await run_in_threadpool(store.add, row):  # written and fsynced before we answer
            return _error(409, "this rater already judged this pair")
        return JSONResponse(state(rater), headers={"Cache-Control": "no-store"})

    middleware = []
    if allowed_hosts:  # a page on 127.0.0.1 is still reachable through DNS rebinding without this
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    if token:
        middleware.append(Middleware(TokenGate, token=token))
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        store.close()

    app = Starlette(routes=[Route("/", page), Route("/api/next", next_pair),
                            Route("/api/rate", rate, methods=["POST"])],
                    middleware=middleware, lifespan=lifespan, max_body_size=MAX_BODY)
    app.state.store, app.state.schedule = store, schedule
    return app
