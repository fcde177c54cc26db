"""``ft gen --from-docs``: jobs over document chunks, and the prompts that keep answers in them.

    ft gen --from-docs essays/ --persona doric --out datasets/essays.jsonl --n-per-topic 4 --decline-ratio 0.15

Each chunk (:mod:`finetune_cli.gen.docs_source`) gets ``--n-per-topic`` jobs. Buckets: ``core`` (a
question the chunk answers, written by the provider, then answered from the chunk alone), ``decline``
(a question the chunk cannot answer: the answer says so instead of inventing), and ft gen's ``adv``,
``safety`` and ``multi`` (the persona's prompt templates about the chunk's heading; ``adv`` and
``multi`` answers must still be grounded). Job ids hash (seed, file, chunk index, chunk offsets and
text, bucket, index): a re-run resumes, and an edited document gets new jobs only for the chunks that
changed. Everything after planning (concurrency, retries, resume, voice gates, dedup, the final
rewrite in job order) is ft gen's own machinery; :mod:`finetune_cli.gen.grounding` adds its gates.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError
from .grounding import UNGROUNDED_BUCKETS

QUESTION_SYSTEM = ("You write one question that a curious reader of the passage might ask. Reply with the "
                   "question only: one sentence in plain English, no preamble.")
ASK = {"core": "Write a question that the passage answers. Angle: {angle}.",
       "decline": "Write a question on a related subject that the passage does NOT answer (nothing in it says), "
                  "so that an honest answer is 'the text does not say'. Angle: {angle}."}
ANGLES = ["a fact it states", "why something happens", "what a word or name in it means", "how two things in it "
          "relate", "what the writer thinks", "an example it gives", "what happened first or next", "a detail"]
GROUNDED = ("\n\nAnswer only from the passage below: use its facts and words, add nothing it does not say, and "
            "quote only words that appear in it exactly. If the passage does not answer the question, say plainly, "
            "in your voice, that the text does not say, and do not guess.\n{passage}")
SCHEMA = ("\n\nReply with one JSON object only, no prose around it: {{\"answer\": \"<your answer, in your voice>\", "
          "\"references\": [{{\"file\": \"{file}\", \"start\": <offset>, \"end\": <offset>, \"quote\": \"<exact words "
          "copied from the passage>\"}}]}}. The passage starts at character {start} of {file}; offsets count "
          "characters of the file. Give one to three references; none when the text does not say.")


@dataclass
class DocJob:
    id: str
    order: int
    topic: str      # the chunk's heading, or FILE part N: what the persona's templates say {topic} is
    group: str      # "docs"
    bucket: str
    index: int
    lang: str | None
    prompt: str | None  # None: the provider writes the question (core, decline)
    file: str
    chunk_index: int
    start: int
    end: int
    heading: str
    chunk: str


def passage(job: DocJob) -> str:
    return f'<passage file="{job.file}" start="{job.start}" end="{job.end}">\n{job.chunk}\n</passage>'


def doc_job_id(seed: int, file: str, chunk, bucket: str, index: int) -> str:
    text = hashlib.sha256(chunk.text.encode()).hexdigest()[:16]
    key = f"{seed}\x1f{file}\x1f{chunk.index}\x1f{chunk.start}\x1f{chunk.end}\x1f{text}\x1f{bucket}\x1f{index}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def plan_doc_jobs(persona, cfg) -> tuple[list[DocJob], dict[str, str]]:
    """Every job of a --from-docs run, in output order, and the documents' texts by file."""
    from .docs_source import chunk_document, read_documents
    from .config import MAX_JOBS
    from .template_provider import compose_prompt

    if cfg.chunk_overlap >= cfg.chunk_tokens:
        raise ConfigError(f"--chunk-overlap ({cfg.chunk_overlap}) must be smaller than --chunk-tokens "
                          f"({cfg.chunk_tokens})")
    docs = read_documents(cfg.from_docs)
    chunks = [c for d in docs for c in chunk_document(d, budget=cfg.chunk_tokens, overlap=cfg.chunk_overlap)]
    if not chunks:
        raise DataError("no chunk of text to ask about (each needs a paragraph of 20+ words)",
                        path=", ".join(cfg.from_docs))
    total = len(chunks) * cfg.n_per_topic
    if total > MAX_JOBS:
        raise ConfigError(f"option --n-per-topic: {cfg.n_per_topic:,} × {len(chunks):,} chunks = {total:,} jobs; "
                          f"one run plans at most {MAX_JOBS:,}", hint="lower --n-per-topic or split the documents")
    counts = {b: round(total * r) for b, r in cfg.shares(persona).items()}
    if counts["multi"] and not persona.multi_languages:
        raise ConfigError(f"persona {persona.name!r} has no multi languages; set --multi-ratio 0")
    buckets = ["core"] * (total - sum(counts.values())) + [b for b, c in counts.items() for _ in range(c)]
    random.Random(f"{cfg.seed}:doc-buckets").shuffle(buckets)
    jobs = []
    for c_i, chunk in enumerate(chunks):
        topic = chunk.heading or f"{Path(chunk.file).stem.replace('_', ' ')} part {chunk.index + 1}"
        for index in range(cfg.n_per_topic):
            bucket = buckets[c_i * cfg.n_per_topic + index]
            jid = doc_job_id(cfg.seed, chunk.file, chunk, bucket, index)
            rng = random.Random(f"{cfg.seed}:{jid}")
            lang = rng.choice(persona.multi_languages) if bucket == "multi" else None
            prompt = None
            if bucket in ("adv", "safety", "multi", "identity"):
                prompt = compose_prompt(persona, bucket, topic, lang, rng)
            jobs.append(DocJob(jid, len(jobs), topic, "docs", bucket, index, lang, prompt, chunk.file, chunk.index,
                               chunk.start, chunk.end, chunk.heading, chunk.text))
    return jobs, {d.file: d.text for d in docs}


class GroundedLLM:
    """An LLM provider's requests for --from-docs jobs: the question comes from the passage, the
    answer from the persona's instructions plus the passage (and, with --format-schema, the JSON shape)."""

    def __init__(self, llm, persona, *, schema: bool = False):
        self.llm = llm
        self.persona = persona
        self.schema = schema
        self.name, self.model, self.stats = llm.name, llm.model, llm.stats

    async def user_turn(self, job: DocJob, messages: list[dict], turn: int, attempt: int):
        if turn > 0:
            return await self.llm.user_turn(job, messages, turn, attempt)
        ask = ASK[job.bucket].format(angle=ANGLES[(job.index + attempt) % len(ANGLES)])
        return await self.llm.complete(QUESTION_SYSTEM, [{"role": "user", "content": f"{passage(job)}\n\n{ask}"}],
                                       max_tokens=120)

    async def answer(self, job: DocJob, messages: list[dict], turn: int, attempt: int):
        system = self.persona.instructions
        if job.bucket in UNGROUNDED_BUCKETS:
            return await self.llm.complete(system, messages)
        if job.bucket == "multi" and turn == 0:
            system += f"\nThe user writes in {job.lang}. Answer in your own voice, not in {job.lang}."
        system += GROUNDED.format(passage=passage(job))
        if self.schema:
            system += SCHEMA.format(file=job.file, start=job.start)
        return await self.llm.complete(system, messages)

    async def close(self) -> None:
        await self.llm.close()
