"""The engine of ``ft gen``: async workers with bounded concurrency, gates, append-as-you-go
writing, and the final deterministic pass (job order + fuzzy dedup + atomic rewrite).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .gates import check_answer, explain
from ..jsonl import AppendWriter, read_rows, write_rows_atomic
from ..persona import BUCKETS, Persona
from ..ui import Reporter

PREVIEW = 400  # characters of a rejected answer kept in the rejects file


@dataclass
class GenStats:
    accepted: Counter = field(default_factory=Counter)                       # bucket -> rows
    rejected: dict = field(default_factory=lambda: defaultdict(Counter))     # bucket -> reason -> attempts
    failed_by: Counter = field(default_factory=Counter)                      # bucket -> jobs
    tokens_in: Counter = field(default_factory=Counter)
    tokens_out: Counter = field(default_factory=Counter)
    requests_by: Counter = field(default_factory=Counter)
    duplicates: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)                         # provider error -> jobs
    gen_s: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failed_by.values())

    @property
    def requests(self) -> int:
        return sum(self.requests_by.values())


def _reject_row(job, *, turn: int, attempt: int, reason: str, detail: str, text: str | None,
                final: bool, role: str = "assistant") -> dict:
    return {"id": job.id, "order": job.order, "topic": job.topic, "group": job.group, "bucket": job.bucket,
            "turn": turn, "role": role, "attempt": attempt, "reason": reason, "detail": detail,
            "text": (text or "")[:PREVIEW], "final": final,
            **({"file": job.file, "start": job.start, "end": job.end} if hasattr(job, "chunk") else {})}


async def _follow_up(job, provider, messages: list[dict], turn: int, cfg, stats: GenStats,
                     rejects: AppendWriter) -> str | None:
    """The simulated user's next message; an empty or truncated one is drawn again, like an answer."""
    from ..providers import JobFailed

    for attempt in range(cfg.max_attempts):
        try:
            user = await provider.user_turn(job, messages, turn, attempt)
        except JobFailed as e:
            stats.failed_by[job.bucket] += 1
            stats.errors[str(e)] += 1
            rejects.write(_reject_row(job, turn=turn, attempt=attempt, reason="error", detail=str(e), text=None,
                                      final=True, role="user"))
            return None
        stats.requests_by[job.bucket] += 1
        stats.tokens_in[job.bucket] += user.tokens_in
        stats.tokens_out[job.bucket] += user.tokens_out
        text = (user.text or "").strip()
        if text and user.finish != "length":
            return text
        reason = "empty" if not text else "truncated"
        stats.rejected[job.bucket][reason] += 1
        rejects.write(_reject_row(job, turn=turn, attempt=attempt, reason=reason, detail="follow-up user turn",
                                  text=text, final=attempt == cfg.max_attempts - 1, role="user"))
    return None


async def _run_job(job, provider, persona: Persona, cfg, stats: GenStats, rejects: AppendWriter, gate=None):
    """The conversation for one job, or None when it was rejected or failed (rows in ``rejects``).

    A job without a prompt (--from-docs) has the provider write its first user turn too. ``gate``
    (--from-docs: :class:`finetune_cli.gen.grounding.GroundingGate`) checks each answer before the voice gates."""
    from ..providers import JobFailed

    messages = [{"role": "user", "content": job.prompt}] if job.prompt else []
    scores = []
    for turn in range(cfg.turns):
        if turn > 0 or not messages:
            text = await _follow_up(job, provider, messages, turn, cfg, stats, rejects)
            if text is None:
                return None
            messages.append({"role": "user", "content": text})
        for attempt in range(cfg.max_attempts):
            try:
                comp = await provider.answer(job, messages, turn, attempt)
            except JobFailed as e:
                stats.failed_by[job.bucket] += 1
                stats.errors[str(e)] += 1
                rejects.write(_reject_row(job, turn=turn, attempt=attempt, reason="error", detail=str(e),
                                          text=None, final=True))
                return None
            stats.requests_by[job.bucket] += 1
            stats.tokens_in[job.bucket] += comp.tokens_in
            stats.tokens_out[job.bucket] += comp.tokens_out
            text = comp.text.strip() if comp.text else ""
            reason, detail, prose, stored = None, "", text, text
            if gate is not None and text and comp.finish != "length":
                reason, detail, score, prose, stored = gate(job, text)
            if reason is None:
                reason = check_answer(prose, persona=persona, prompt=messages[-1]["content"], topic=job.topic,
                                      finish=comp.finish, overlap_max=cfg.overlap_max)
                detail = explain(reason, prose, persona) if reason else ""
            if reason is None:
                messages.append({"role": "assistant", "content": stored})
                if gate is not None:
                    scores.append(score)
                break
            stats.rejected[job.bucket][reason] += 1
            last = attempt == cfg.max_attempts - 1
            rejects.write(_reject_row(job, turn=turn, attempt=attempt, reason=reason,
                                      detail=detail, text=text, final=last))
            if last:
                return None
    system = [{"role": "system", "content": persona.system_prompt}] if persona.system_prompt else []
    return {"messages": system + messages,
            "meta": {"id": job.id, "topic": job.topic, "group": job.group, "bucket": job.bucket,
                     "lang": job.lang or "English", "persona": persona.name, "provider": provider.name,
                     "model": provider.model, "seed": cfg.seed, **(gate.meta(job, scores) if gate else {})}}


async def generate(todo: list, provider, persona: Persona, cfg, out: Path, rej: Path,
                   reporter: Reporter, gate=None) -> GenStats:
    """Run every job in ``todo`` with ``cfg.max_concurrency`` workers; append rows as they finish."""
    stats = GenStats()
    t0 = time.perf_counter()
    queue = iter(todo)
    try:
        # rows reach the OS at once (a killed process loses none); fsync runs once a second in a thread
        never = {"fsync_every": 1 << 62, "fsync_seconds": float("inf")}
        with AppendWriter(out, **never) as writer, AppendWriter(rej, **never) as rejects, \
                reporter.progress("generating", total=len(todo), fields={"ok": 0, "rej": 0, "rps": 0.0},
                                  template="ok {task.fields[ok]}  rejected {task.fields[rej]}  "
                                           "{task.fields[rps]:.0f} req/s") as task:
            ok = bad = 0

            async def worker() -> None:
                nonlocal ok, bad
                for job in queue:  # a shared iterator: each job taken once
                    row = await _run_job(job, provider, persona, cfg, stats, rejects, gate)
                    if row is not None:
                        writer.write(row)
                        stats.accepted[job.bucket] += 1
                        ok += 1
                    else:
                        bad += 1
                    dt = time.perf_counter() - t0
                    task.advance(1, ok=ok, rej=bad, rps=stats.requests / dt if dt > 0 else 0.0)

            workers = [asyncio.create_task(worker()) for _ in range(min(cfg.max_concurrency, max(1, len(todo))))]
            stop = asyncio.Event()
            syncer = asyncio.create_task(_sync_every(1.0, stop, writer, rejects))
            try:
                done, pending = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    if t.exception() is not None:
                        raise t.exception()
            finally:
                for t in workers:
                    t.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                stop.set()
                await syncer  # let a sync in progress finish before the files close
    finally:
        await provider.close()
    stats.gen_s = time.perf_counter() - t0
    return stats


async def _sync_every(seconds: float, stop: asyncio.Event, *writers: AppendWriter) -> None:
    """fsync the files every ``seconds`` in a worker thread: a slow disk never stalls the requests in flight."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except asyncio.TimeoutError:
            for w in writers:
                await asyncio.to_thread(w.sync)


def finalize(jobs: list, persona: Persona, cfg, out: Path, rej: Path, stats: GenStats,
             reporter: Reporter) -> dict:
    """Rewrite ``out`` in job order without near-duplicates, and ``rej`` in job order (atomically)."""
    from ..dedup import find_duplicates

    order = {j.id: j.order for j in jobs}
    by_id: dict[str, dict] = {}
    strays = []
    if out.exists():
        for _, row in read_rows(out, on_error="skip"):
            rid = (row.get("meta") or {}).get("id")
            if rid in order:
                by_id.setdefault(rid, row)  # a job appended twice (killed between write and record)
            else:
                strays.append(row)
    if strays:
        reporter.warn(f"{len(strays)} rows in {out} belong to no job of this command (other topics, seed or "
                      "--n-per-topic?); kept at the end. Use --overwrite to start over.")
    rows = sorted(by_id.values(), key=lambda r: order[r["meta"]["id"]])
    answers = ["\n".join(m["content"] for m in r["messages"] if m.get("role") == "assistant") for r in rows]
    dup_of = find_duplicates(answers, cfg.dedup_threshold) if cfg.dedup_threshold < 1.0 else \
        _exact_duplicates(answers)
    kept, dup_rejects = [], []
    for row, text, d in zip(rows, answers, dup_of):
        if d is None:
            kept.append(row)
            continue
        meta = row["meta"]
        stats.duplicates[meta["bucket"]] += 1
        dup_rejects.append({"id": meta["id"], "order": order[meta["id"]], "topic": meta["topic"],
                            "group": meta["group"], "bucket": meta["bucket"], "turn": 0, "role": "assistant",
                            "attempt": 0, "reason": "duplicate",
                            "detail": f"near-duplicate of {rows[d]['meta']['id']}", "text": text[:PREVIEW],
                            "final": True})
    write_rows_atomic(out, kept + strays)

    rej_rows = {}
    if rej.exists():
        for _, r in read_rows(rej, on_error="skip"):
            rej_rows[_reject_key(r)] = r
    for r in dup_rejects:
        rej_rows[_reject_key(r)] = r
    accepted_ids = {r["meta"]["id"] for r in kept}
    # a job that failed once and succeeded on a later run keeps its history, but not as "final"
    for r in rej_rows.values():
        if r.get("id") in accepted_ids and r.get("reason") == "error":
            r["final"] = False
    write_rows_atomic(rej, sorted(rej_rows.values(), key=lambda r: (
        r.get("order", 1 << 62), r.get("turn", 0), r.get("role") != "user", r.get("attempt", 0),
        str(r.get("reason")))))
    kept_by = Counter(r["meta"]["bucket"] for r in kept)
    return {"kept": len(kept) + len(strays), "duplicates": len(dup_rejects), "kept_by_bucket": kept_by}


def _reject_key(r: dict) -> tuple:
    """One rejects row per (job, turn, who, attempt, reason): a job retried on a later run replaces its row."""
    return r.get("id"), r.get("turn"), r.get("role", "assistant"), r.get("attempt"), r.get("reason")


def _exact_duplicates(texts: list[str]) -> list[int | None]:
    from ..dedup import normalize

    first: dict[str, int] = {}
    out = []
    for i, t in enumerate(texts):
        j = first.setdefault(normalize(t), i)
        out.append(None if j == i else j)
    return out


def summary_rows(stats: GenStats, kept_by: Counter) -> list[list]:
    """The end-of-run table: rows in the final file per bucket, this run's rejections and traffic."""
    rows = []
    extra = sorted((set(kept_by) | set(stats.rejected) | set(stats.failed_by)) - set(BUCKETS))  # --from-docs: decline
    for b in (*BUCKETS, *extra):
        rej = stats.rejected.get(b, Counter())
        reasons = Counter(rej)
        if stats.duplicates[b]:
            reasons["duplicate"] += stats.duplicates[b]
        if not (kept_by[b] or reasons or stats.failed_by[b]):
            continue
        rows.append([b, kept_by[b], sum(reasons.values()),
                     ", ".join(f"{k} {v}" for k, v in reasons.most_common()) or "-",
                     stats.failed_by[b], stats.tokens_in[b], stats.tokens_out[b],
                     round(stats.requests_by[b] / stats.gen_s, 1) if stats.gen_s > 0 else None])
    total_rej = sum(sum(c.values()) for c in stats.rejected.values()) + sum(stats.duplicates.values())
    rows.append(["all", sum(kept_by.values()), total_rej, "",
                 stats.failed, sum(stats.tokens_in.values()), sum(stats.tokens_out.values()),
                 round(stats.requests / stats.gen_s, 1) if stats.gen_s > 0 else None])
    return rows

