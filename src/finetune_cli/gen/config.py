"""``ft gen``'s options: :class:`GenConfig` (the command itself is :mod:`finetune_cli.gen.run`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import opt
from ..errors import ConfigError


MAX_JOBS = 1_000_000  # conversations one `ft gen` plans; each job is held in memory with its prompt
IDENTITY_SHARE = 0.05  # --identity-ratio where the persona has identity asks and the user set none

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
    identity_ratio: float | None = opt(None, "Share of rows whose user presses on who the assistant is (\"are you "
                                       "a real person?\"), answered in the voice; none: 0.05 where the persona has "
                                       "identity templates (0 with --from-docs), else 0.", ge=0, le=1)
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
        self._check_sum(self.identity_ratio or 0.0)
        if self.min_recall > self.max_recall:
            raise ConfigError(f"--min-recall ({self.min_recall:g}) must be ≤ --max-recall ({self.max_recall:g})")

    def _check_sum(self, identity: float) -> None:
        decline = self.decline_ratio if self.from_docs else 0.0
        total = self.adv_ratio + self.safety_ratio + self.multi_ratio + identity + decline
        if total > 1.0 + 1e-9:
            raise ConfigError("--adv-ratio + --safety-ratio + --multi-ratio + --identity-ratio"
                              + (" + --decline-ratio" if decline else "") + f" must be ≤ 1 (got {total:g})"
                              + ("" if self.identity_ratio is not None else f", with the persona's identity share "
                                 f"{identity:g}: set --identity-ratio to change it"))

    def shares(self, persona) -> dict[str, float]:
        """Each bucket's share of the rows but core's, in planning order; identity's default resolved against the
        persona (IDENTITY_SHARE where it has identity templates, else none; none by default with --from-docs, whose
        rows answer from a document)."""
        identity = self.identity_ratio
        if identity is None:
            identity = IDENTITY_SHARE if persona.templates.identity and not self.from_docs else 0.0
        elif identity and not persona.templates.identity:
            raise ConfigError(f"option --identity-ratio: persona {persona.name!r} has no identity templates",
                              hint="set --identity-ratio 0, or add templates.identity (and bank.identity, "
                                   "bank.offers) to the persona")
        self._check_sum(identity)
        shares = {"decline": self.decline_ratio} if self.from_docs else {}
        return shares | {"adv": self.adv_ratio, "safety": self.safety_ratio, "multi": self.multi_ratio,
                         "identity": identity}
