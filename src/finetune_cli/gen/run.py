"""``ft gen``'s run: plan jobs, draw answers, gate, deduplicate, write (the package docstring has the examples)."""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from pathlib import Path

from ..config import config_record
from .config import MAX_JOBS, GenConfig
from ..errors import ConfigError, DataError, ProviderError
from ..jsonl import read_rows, repair_tail, write_json_atomic
from ..ui import Reporter, count

if TYPE_CHECKING:
    from ..persona import Persona


@dataclass
class Job:
    id: str
    order: int
    topic: str
    group: str
    bucket: str
    index: int
    lang: str | None
    prompt: str


def job_id(seed: int, topic: str, bucket: str, index: int) -> str:
    return hashlib.sha256(f"{seed}\x1f{topic}\x1f{bucket}\x1f{index}".encode()).hexdigest()[:16]


def plan_jobs(topics: list[tuple[str, str]], persona: Persona, cfg: GenConfig) -> list[Job]:
    """Every job of the run, in output order. Bucket counts are exact shares of the total."""
    from .template_provider import compose_prompt

    total = len(topics) * cfg.n_per_topic
    if total > MAX_JOBS:  # checked before any list of that size is built (a typo is not a MemoryError)
        raise ConfigError(f"option --n-per-topic: {cfg.n_per_topic:,} × {len(topics):,} topics = {total:,} jobs; "
                          f"one run plans at most {MAX_JOBS:,}", hint="lower --n-per-topic or split the topics file")
    counts = {b: round(total * r) for b, r in cfg.shares(persona).items()}
    if counts["multi"] and not persona.multi_languages:
        raise ConfigError(f"persona {persona.name!r} has no multi languages; set --multi-ratio 0")
    buckets = [b for b, c in counts.items() for _ in range(c)]
    buckets = ["core"] * (total - len(buckets)) + buckets
    random.Random(f"{cfg.seed}:buckets").shuffle(buckets)
    jobs = []
    for t_i, (topic, group) in enumerate(topics):
        for index in range(cfg.n_per_topic):
            bucket = buckets[t_i * cfg.n_per_topic + index]
            rng = random.Random(f"{cfg.seed}:{topic}:{bucket}:{index}")
            lang = rng.choice(persona.multi_languages) if bucket == "multi" else None
            prompt = compose_prompt(persona, bucket, topic, lang, rng)
            jobs.append(Job(job_id(cfg.seed, topic, bucket, index), len(jobs), topic, group, bucket, index,
                            lang, prompt))
    return jobs


def make_provider(cfg: GenConfig, persona: Persona, reporter: Reporter):
    from ..providers import LLMProvider, RetryPolicy, choose_provider
    from .template_provider import TemplateProvider

    kind = choose_provider(cfg.provider)
    if kind == "template" and cfg.from_docs:
        from .extractive import STAND_IN, ExtractiveProvider

        reporter.warn(f"--from-docs with the template provider: {STAND_IN}; use an LLM provider for real data")
        return ExtractiveProvider(persona, cfg.seed, schema=cfg.format_schema)
    if kind == "template":
        if cfg.provider == "auto":
            reporter.info("no OPENAI_API_KEY, OPENAI_BASE_URL or ANTHROPIC_API_KEY: using the offline template "
                          f"provider (persona {persona.name}'s phrase bank)")
        return TemplateProvider(persona, cfg.seed)
    policy = RetryPolicy(max_retries=cfg.max_retries, base=cfg.retry_base, cap=cfg.retry_cap, timeout=cfg.timeout)
    llm = LLMProvider(kind, model=cfg.model, base_url=cfg.base_url, policy=policy,
                      temperature=cfg.temperature, max_tokens=cfg.max_tokens, persona=persona)
    if cfg.from_docs:
        from .docs import GroundedLLM

        return GroundedLLM(llm, persona, schema=cfg.format_schema)
    return llm


def rejects_path(out: str | Path) -> Path:
    return Path(f"{out}.rejects.jsonl")


def config_path(out: str | Path) -> Path:
    """Where ``ft gen`` records its resolved config, beside the rows: OUT.config.json."""
    return Path(f"{out}.config.json")


def finished_ids(out: Path, rejects: Path) -> tuple[set[str], set[str]]:
    """Ids already accepted in ``out``, and ids finally rejected (a gate or a duplicate: not retried).

    Jobs that failed on provider errors are retried on the next run."""
    done, rejected = set(), set()
    if out.exists():
        repair_tail(out)
        for _, row in read_rows(out, on_error="skip"):
            rid = (row.get("meta") or {}).get("id")
            if isinstance(rid, str):
                done.add(rid)
    if rejects.exists():
        repair_tail(rejects)
        for _, row in read_rows(rejects, on_error="skip"):
            if row.get("final") and row.get("reason") != "error" and isinstance(row.get("id"), str):
                rejected.add(row["id"])
    return done, rejected


def nothing_usable(stats, n_jobs: int, out: Path, rej: Path) -> ProviderError | DataError:
    """The error of a run that wrote no row: the provider's most common failure (host and error class,
    never the key), or the gates that rejected every answer."""
    if stats.errors:
        error, n = stats.errors.most_common(1)[0]
        return ProviderError(f"ft gen wrote no rows to {out}: {stats.failed} of {n_jobs} jobs failed on provider "
                             f"errors ({n} × {error})", hint=f"details in {rej}")
    return DataError(f"no rows written: every answer of {n_jobs} jobs was rejected", path=str(out),
                     hint=f"reasons in {rej}")


def run(cfg: GenConfig, reporter: Reporter) -> dict:
    from .engine import finalize, generate, summary_rows
    from ..topics import load_topics

    from ..persona import load_persona

    persona = load_persona(cfg.persona)
    identity = cfg.shares(persona)["identity"]  # checked before anything is written; recorded beside the rows
    gate = None
    if cfg.from_docs:
        from .docs import plan_doc_jobs
        from .grounding import Bands, GroundingGate

        jobs, docs = plan_doc_jobs(persona, cfg)
        gate = GroundingGate(docs, persona.markers, Bands(cfg.min_precision, cfg.min_recall, cfg.max_recall),
                             schema=cfg.format_schema)
    else:
        jobs = plan_jobs(load_topics(cfg.topics_json), persona, cfg)
    out, rej = Path(cfg.out), rejects_path(cfg.out)
    if cfg.overwrite:
        for p in (out, rej):
            if p.exists():
                p.unlink()
    done, rejected = finished_ids(out, rej)
    todo = [j for j in jobs if j.id not in done and j.id not in rejected]
    if len(todo) < len(jobs):
        reporter.info(f"resuming {out}: {len(jobs) - len(todo)} of {len(jobs)} jobs already finished")
    provider = make_provider(cfg, persona, reporter)
    reporter.info(f"ft gen: {len(todo)} jobs, persona {persona.name}, provider {provider.name}, "
                  f"model {provider.model}, concurrency {cfg.max_concurrency}")
    t0 = time.perf_counter()
    import asyncio  # here, not at the top: `ft --help` should not pay for it

    stats = asyncio.run(generate(todo, provider, persona, cfg, out, rej, reporter, gate=gate))
    gen_s = time.perf_counter() - t0
    final = finalize(jobs, persona, cfg, out, rej, stats, reporter)
    # each value and where it was set
    write_json_atomic(config_path(cfg.out), config_record(cfg, identity_ratio=identity))
    elapsed = time.perf_counter() - t0
    rows = summary_rows(stats, final["kept_by_bucket"])
    reporter.table(f"ft gen: {out} ({count(final['kept'], 'row')}; {elapsed:.1f} s)",
                   ["bucket", "accepted", "rejected", "by reason", "failed", "tokens in", "tokens out", "req/s"],
                   rows)
    retries = dict(provider.stats.retries) if hasattr(provider, "stats") else {}
    if retries:
        reporter.info("retried requests: " + ", ".join(f"{k}: {v}" for k, v in sorted(retries.items())))
    for note in getattr(getattr(provider, "stats", None), "adapted", []):
        reporter.warn(f"provider: {note}")
    if stats.failed:
        reporter.warn(f"{stats.failed} jobs failed on provider errors (see {rej}); re-run the same "
                      "command to retry them")
    if jobs and not final["kept"]:
        raise nothing_usable(stats, len(jobs), out, rej)
    requests = provider.stats.requests if hasattr(provider, "stats") else stats.requests  # HTTP, retries included
    return {"out": str(out), "rejects": str(rej), "config": str(config_path(out)), "rows": final["kept"], "duplicates": final["duplicates"],
            "jobs": len(jobs), "skipped_finished": len(jobs) - len(todo),
            "accepted": dict(stats.accepted), "rejected": {b: dict(c) for b, c in stats.rejected.items()},
            "failed": stats.failed, "retries": retries, "requests": requests,
            "tokens_in": sum(stats.tokens_in.values()), "tokens_out": sum(stats.tokens_out.values()),
            "generate_s": round(gen_s, 3), "elapsed_s": round(elapsed, 3),
            "requests_per_s": round(requests / gen_s, 2) if gen_s > 0 else None,
            "provider": provider.name, "model": provider.model, "persona": persona.name,
            "exit_code": 0}

