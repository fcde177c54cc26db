"""``ft gen``: topics → prompts in four buckets → answers in a persona's voice → gates → dedup.

    ft gen --topics-json topics.json --out datasets/doric.jsonl --n-per-topic 6 \\
        --adv-ratio 0.1 --safety-ratio 0.05 --multi-ratio 0.2 --max-concurrency 50 --seed 42

Providers: ``openai`` (or any OpenAI-compatible server via OPENAI_BASE_URL), ``anthropic``, and the
offline ``template`` provider (the persona's phrase bank); ``auto`` picks from the keys present.

``--from-docs DIR`` grounds the conversations in the user's documents instead of topics: see
:mod:`finetune_cli.docs_gen` (jobs and prompts) and :mod:`finetune_cli.grounding` (its gates).

Every job has a stable id from (seed, topic, bucket, index). Accepted rows are appended as they
arrive (fsync in batches), so a killed run loses only the requests in flight and re-running the same
command skips finished jobs. At the end the file is rewritten atomically in job order, after fuzzy
deduplication in job order: the result does not depend on completion order, and a resumed run
writes the same bytes as an uninterrupted one. Rejected answers (and why) go to
``<out>.rejects.jsonl``; a failed request is never replaced by template text.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from pathlib import Path

from .config import config_record, opt
from .errors import ConfigError, DataError, ProviderError
from .jsonl import read_rows, repair_tail, write_json_atomic
from .ui import Reporter, count

if TYPE_CHECKING:
    from .persona import Persona


MAX_JOBS = 1_000_000  # conversations one `ft gen` plans; each job is held in memory with its prompt


@dataclass
class GenConfig:
    topics_json: str | None = opt(None, "Topics file (any shape ft topics accepts); or --from-docs.",
                                  panel="Input/output")
    from_docs: list[str] = opt([], "Documents to ground conversations in: .txt/.md/.html/.pdf files or directories "
                               "(repeat the flag); each chunk is a topic. Instead of --topics-json.",
                               panel="Documents")
    out: str = opt(help="Output JSONL of messages rows; rejects go to OUT.rejects.jsonl.", short="-o",
                   required=True, panel="Input/output")
    persona: str = opt("doric", "Persona: a shipped name (doric, bard) or a persona .toml file.")
    provider: str = opt("auto", "Who writes the answers; auto: openai if OPENAI_API_KEY/OPENAI_BASE_URL is "
                        "set, else anthropic if ANTHROPIC_API_KEY is, else the offline template provider.",
                        choices=("auto", "openai", "anthropic", "template"), panel="Provider")
    model: str | None = opt(None, "Model name (default: gpt-4o-mini / claude-haiku-4-5).",
                            env=("MODEL",), panel="Provider")
    base_url: str | None = opt(None, "API base URL (default: OPENAI_BASE_URL / ANTHROPIC_BASE_URL, else the "
                               "provider's own).", panel="Provider")
    n_per_topic: int = opt(6, "Conversations per topic.", ge=1)
    adv_ratio: float = opt(0.1, "Share of rows whose user pushes the assistant to drop the voice.", ge=0, le=1)
    safety_ratio: float = opt(0.05, "Share of rows with a harmful ask, refused in the voice.", ge=0, le=1)
    multi_ratio: float = opt(0.2, "Share of rows where the user writes in another language.", ge=0, le=1)
    turns: int = opt(1, "Assistant turns per conversation; follow-up user turns are generated too.", ge=1, le=20)
    seed: int = opt(42, "Seed for buckets, prompts, template answers and job ids.")
    max_concurrency: int = opt(50, "Jobs in flight at once.", ge=1, le=4096, panel="Provider")
    timeout: float = opt(60.0, "Per-request timeout, in seconds.", gt=0, panel="Provider")
    max_retries: int = opt(6, "Retries of one request on 429, 5xx, timeouts, connection errors.", ge=0,
                           panel="Provider")
    retry_base: float = opt(1.0, "First retry wait in seconds (doubles each retry, with jitter; "
                            "Retry-After wins when the server sends it).", ge=0, panel="Provider")
    retry_cap: float = opt(60.0, "Longest single wait, in seconds.", gt=0, panel="Provider")
    max_attempts: int = opt(3, "Answers drawn per turn before a job is rejected by the gates.", ge=1)
    temperature: float = opt(0.8, "Sampling temperature (openai; the anthropic SDK ft installs takes none).",
                             ge=0, le=2, panel="Provider")
    max_tokens: int = opt(512, "Token limit per answer; an answer cut at it is regenerated.", ge=16,
                          panel="Provider")
    dedup_threshold: float = opt(0.9, "Answers with token_sort_ratio ≥ this to an earlier kept answer are "
                                 "duplicates (1.0: exact copies only).", ge=0.5, le=1)
    overlap_max: float = opt(0.5, "Reject answers whose word trigrams repeat the prompt more than this share.",
                             gt=0, le=1)
    overwrite: bool = opt(False, "Start over: delete OUT and its rejects file first (default: resume).")
    chunk_tokens: int = opt(350, "--from-docs: chunk size in approximate tokens (words × 4/3), split at headings "
                            "and blank lines.", ge=50, le=8000, panel="Documents")
    chunk_overlap: int = opt(50, "--from-docs: approximate tokens of trailing paragraphs repeated at the start of "
                             "the next chunk of a section (0: none).", ge=0, panel="Documents")
    decline_ratio: float = opt(0.15, "--from-docs: share of rows asking what the chunk does not say, answered by "
                               "declining.", ge=0, le=1, panel="Documents")
    min_precision: float = opt(0.6, "--from-docs: least share of an answer's content words found in its chunk.",
                               ge=0, le=1, panel="Documents")
    min_recall: float = opt(0.05, "--from-docs: least share of the chunk's content words an answer uses.",
                            ge=0, le=1, panel="Documents")
    max_recall: float = opt(0.9, "--from-docs: most share of the chunk's content words an answer uses (above: a "
                            "copy of the chunk).", ge=0, le=1, panel="Documents")
    format_schema: bool = opt(False, "--from-docs: answers are JSON {answer, references: [{file, start, end, "
                              "quote}]}, each quote checked against the document.", panel="Documents")

    def validate(self) -> None:
        if bool(self.topics_json) == bool(self.from_docs):
            raise ConfigError("give either --topics-json or --from-docs (one of them)")
        decline = self.decline_ratio if self.from_docs else 0.0
        if self.adv_ratio + self.safety_ratio + self.multi_ratio + decline > 1.0 + 1e-9:
            raise ConfigError("--adv-ratio + --safety-ratio + --multi-ratio" + (" + --decline-ratio" if decline else "")
                              + f" must be ≤ 1 (got {self.adv_ratio + self.safety_ratio + self.multi_ratio + decline:g})")
        if self.min_recall > self.max_recall:
            raise ConfigError(f"--min-recall ({self.min_recall:g}) must be ≤ --max-recall ({self.max_recall:g})")


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
    from .template_voice import topic_phrase, topic_things

    total = len(topics) * cfg.n_per_topic
    if total > MAX_JOBS:  # checked before any list of that size is built (a typo is not a MemoryError)
        raise ConfigError(f"option --n-per-topic: {cfg.n_per_topic:,} × {len(topics):,} topics = {total:,} jobs; "
                          f"one run plans at most {MAX_JOBS:,}", hint="lower --n-per-topic or split the topics file")
    counts = {b: round(total * r) for b, r in (("adv", cfg.adv_ratio), ("safety", cfg.safety_ratio),
                                               ("multi", cfg.multi_ratio))}
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
            pool = persona.templates.multi[lang] if lang else getattr(persona.templates, bucket)
            prompt = rng.choice(pool).format(topic=topic_phrase(topic), thing=rng.choice(topic_things(topic)))
            prompt = prompt[:1].upper() + prompt[1:]
            jobs.append(Job(job_id(cfg.seed, topic, bucket, index), len(jobs), topic, group, bucket, index,
                            lang, prompt))
    return jobs


def make_provider(cfg: GenConfig, persona: Persona, reporter: Reporter):
    from .providers import LLMProvider, RetryPolicy, choose_provider
    from .template_voice import TemplateProvider

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
        from .docs_gen import GroundedLLM

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
    from .gen_run import finalize, generate, summary_rows
    from .topics import load_topics

    from .persona import load_persona

    persona = load_persona(cfg.persona)
    gate = None
    if cfg.from_docs:
        from .docs_gen import plan_doc_jobs
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
    write_json_atomic(config_path(cfg.out), config_record(cfg))  # each value and where it was set
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

