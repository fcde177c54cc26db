"""Topic files, and ``ft topics expand``: more topics per group from an LLM, validated and deduplicated.

    ft topics expand --input topics.json --output topics.big.json --per-group 40
    ft topics expand --input topics.json --in-place --per-group 40

Accepted shapes (the output keeps the input's shape):
    ["topic", ...]                                   one group, "general"
    {"group": ["topic", ...], ...}
    {"groups": {"group": ["topic", ...], ...}}
    [{"topic": "...", "group": "..."}, ...]

New topics must have 5–12 words, must not open with a banned prefix ("the importance of", ...),
must not repeat a word more than twice, and must not be a fuzzy duplicate (rapidfuzz
token_sort_ratio ≥ --similarity) of any existing or new topic. Existing topics stay, in order.
Without an LLM (no OPENAI_API_KEY, OPENAI_BASE_URL or ANTHROPIC_API_KEY) it exits 2: ft never
invents topics offline.

Resumable: each accepted topic is appended at once to ``<output>.partial.jsonl`` (``<input>.partial.jsonl``
with --in-place), after a header line with the input's sha256 and the settings that decide what is
accepted. A run that dies (Ctrl-C, a kill, a revoked key) keeps those topics; running the same
command again loads them, rebuilds the dedup state and asks only for the topics still missing per
group. A re-run on another input or with other settings is refused (``--overwrite`` discards the
progress instead). The output (or, with --in-place, the input) is written atomically once, at the
end, and the progress file removed; until then the input is never touched.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson

from .config import opt
from .errors import ConfigError, DataError, ProviderError
from .files import sha256_file
from .jsonl import AppendWriter, read_json, read_rows, repair_tail, write_json_atomic
from .ui import Reporter, count

DEFAULT_GROUP = "general"
BANNED_PREFIXES = ("the importance of", "importance of", "a guide to", "guide to", "an introduction to",
                   "introduction to", "everything you need", "the ultimate", "ultimate guide", "top 10",
                   "top ten", "10 ways", "ten ways", "tips and tricks", "the role of", "the benefits of",
                   "here are", "here is", "sure", "certainly", "as an ai", "topic:")
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


def _shape_of(data) -> str:
    if isinstance(data, list):
        if all(isinstance(x, str) for x in data):
            return "list"
        if all(isinstance(x, dict) for x in data):
            return "records"
    if isinstance(data, dict):
        if set(data) == {"groups"} and isinstance(data["groups"], dict):
            return "groups"
        return "dict"
    return "unknown"


def parse_topics(data, *, path: str = "<topics>") -> tuple[str, dict[str, list[str]]]:
    """``(shape, {group: [topics]})`` from any accepted shape; group and topic order kept."""
    shape = _shape_of(data)
    grouped: dict[str, list[str]] = {}

    def add(group, topic, where: str) -> None:
        if not isinstance(topic, str) or not topic.strip():
            raise DataError(f"{where}: a topic must be a non-empty string, got {topic!r}", path=path)
        if not isinstance(group, str) or not group.strip():
            raise DataError(f"{where}: a group must be a non-empty string, got {group!r}", path=path)
        items = grouped.setdefault(group.strip(), [])
        if topic.strip() not in items:
            items.append(topic.strip())

    if shape == "list":
        for i, t in enumerate(data):
            add(DEFAULT_GROUP, t, f"[{i}]")
    elif shape == "records":
        for i, r in enumerate(data):
            if "topic" not in r:
                raise DataError(f"[{i}]: missing key 'topic'", path=path)
            add(r.get("group", DEFAULT_GROUP), r["topic"], f"[{i}]")
    elif shape in ("dict", "groups"):
        table = data["groups"] if shape == "groups" else data
        for g, items in table.items():
            if not isinstance(items, list):
                raise DataError(f"group {g!r}: expected a list of topics, got {type(items).__name__}", path=path)
            for i, t in enumerate(items):
                add(g, t, f"{g}[{i}]")
    else:
        raise DataError("expected a list of topics, {group: [topics]}, {\"groups\": {...}} or a list of "
                        "{topic, group} objects", path=path)
    if not any(grouped.values()):
        raise DataError("no topics", path=path)
    return shape, grouped


def load_topics(path: str | Path) -> list[tuple[str, str]]:
    """``[(topic, group), ...]`` in file order, exact repeats dropped."""
    _, grouped = parse_topics(read_json(path), path=str(path))
    return [(t, g) for g, items in grouped.items() for t in items]


def dump_topics(shape: str, grouped: dict[str, list[str]]):
    if shape == "list":
        return [t for items in grouped.values() for t in items]
    if shape == "records":
        return [{"topic": t, "group": g} for g, items in grouped.items() for t in items]
    if shape == "groups":
        return {"groups": grouped}
    return grouped


def topic_problem(topic: str) -> str | None:
    """Why a generated topic is not acceptable, or None."""
    words = _WORD.findall(topic)
    if not 5 <= len(words) <= 12:
        return f"{len(words)} words (5-12)"
    low = topic.lower().lstrip("-*•0123456789. ")
    for p in BANNED_PREFIXES:
        if low.startswith(p):
            return f"banned prefix {p!r}"
    word, n = Counter(w.lower() for w in words).most_common(1)[0]
    if n > 2:
        return f"repeats {word!r} {n} times"
    return None


def parse_topic_list(text: str) -> list[str]:
    """The JSON array of strings in an LLM reply (code fences and chatter around it ignored)."""
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        raise ValueError("no JSON array in the reply")
    data = orjson.loads(text[start:end + 1])
    if not isinstance(data, list):
        raise ValueError("not a JSON array")
    return [x.strip() for x in data if isinstance(x, str) and x.strip()]


@dataclass
class ExpandConfig:
    input: str = opt(help="Topics JSON file (any accepted shape).", short="-i", required=True)
    output: str | None = opt(None, "Where to write the expanded topics (atomically).", short="-o")
    in_place: bool = opt(False, "Overwrite --input (atomically) instead of writing --output.")
    per_group: int = opt(40, "New topics to add to each group.", ge=1, le=10000)
    groups: list[str] = opt([], "Only expand these groups (default: all).")
    provider: str = opt("auto", "LLM provider; auto: from the keys present.",
                        choices=("auto", "openai", "anthropic"))
    model: str | None = opt(None, "Model name.", env=("MODEL",))
    base_url: str | None = opt(None, "API base URL (default: OPENAI_BASE_URL / ANTHROPIC_BASE_URL).")
    batch: int = opt(25, "Topics asked for per request.", ge=1, le=200)
    max_rounds: int = opt(6, "Requests per group before giving up on reaching --per-group.", ge=1)
    similarity: float = opt(0.85, "A new topic this similar (token_sort_ratio) to another is a duplicate.",
                            ge=0.5, le=1)
    max_concurrency: int = opt(8, "Groups expanded at once.", ge=1)
    timeout: float = opt(60.0, "Per-request timeout, in seconds.", gt=0)
    max_retries: int = opt(6, "Retries of one request on 429, 5xx, timeouts.", ge=0)
    temperature: float = opt(1.0, "Sampling temperature (higher: more varied topics).", ge=0, le=2)
    overwrite: bool = opt(False, "Start over: delete the progress file (<output>.partial.jsonl) an interrupted "
                                 "run left, instead of resuming from it (default: resume).")

    def validate(self) -> None:
        if bool(self.output) == bool(self.in_place):
            raise ConfigError("give exactly one of --output FILE or --in-place")


PROMPT = """Topic group: {group}
Existing topics in this group (do not repeat them or reword them):
{existing}

Write {k} NEW topics for this group that people might ask an assistant about. Each topic: 5 to 12 \
words, specific and realistic, varied in angle (practical how-to, explanation, personal situation, \
comparison, problem to solve). Do not start with "The importance of", "A guide to" or "Introduction to". \
Reply with a JSON array of strings only."""


def progress_path(target: str | Path) -> Path:
    """Where a run appends the topics it accepts until the output is written: ``<target>.partial.jsonl``."""
    p = Path(target)
    return p.with_name(p.name + ".partial.jsonl")


def _progress_header(cfg: ExpandConfig, input_sha256: str) -> dict:
    """What a resumed run must share with the run it continues: the same input, and the settings that
    decide which and how many topics are accepted (not --model, --batch or --temperature)."""
    return {"ft": "topics expand", "input_sha256": input_sha256, "per_group": cfg.per_group,
            "groups": sorted(cfg.groups), "similarity": cfg.similarity}


_SETTING_FLAGS = {"per_group": "--per-group", "groups": "--groups", "similarity": "--similarity"}


def load_progress(path: Path, header: dict, cfg: ExpandConfig, targets: list[str]) -> dict[str, list[str]] | None:
    """``{group: [accepted topics]}`` from an interrupted run's progress file, or None when there is none.

    Progress made from another input or with other settings raises :class:`ConfigError`: mixing the two
    would write topics the command did not ask for."""
    if not path.exists():
        return None
    repair_tail(path)  # a run killed mid-write leaves half a line
    found, done = None, {}
    for line, row in read_rows(path):
        if found is None:
            found = row.get("header")
            if not isinstance(found, dict) or found.get("ft") != "topics expand":
                raise DataError("not a progress file of ft topics expand (no header line)", path=str(path),
                                hint="move it away, or add --overwrite to delete it")
            if found.get("input_sha256") != header["input_sha256"]:
                raise ConfigError(f"{path} holds the progress of a run on another input ({cfg.input} is not the "
                                  "file it started from)", hint="run it with that input to resume, or add "
                                                                "--overwrite to discard the progress")
            changed = [f"{_SETTING_FLAGS[k]} {found.get(k)!r} (now {v!r})" for k, v in header.items()
                       if k in _SETTING_FLAGS and found.get(k) != v]
            if changed:
                raise ConfigError(f"{path} holds the progress of a run with {', '.join(changed)}",
                                  hint="run the same command to resume, or add --overwrite to discard the progress")
            continue
        group, topic = row.get("group"), row.get("topic")
        if group not in targets or not isinstance(topic, str):
            raise DataError(f"expected {{group, topic}} of a group being expanded, got {row!r}", path=str(path),
                            line=line, hint="add --overwrite to discard the progress")
        items = done.setdefault(group, [])
        if topic not in items:  # a line written twice
            items.append(topic)
    return None if found is None else done


async def _expand_group(provider, group: str, existing: list[str], done: list[str], everything: list[str],
                        cfg: ExpandConfig, stats: Counter, failures: Counter, log: AppendWriter) -> list[str]:
    from rapidfuzz import fuzz, process
    from rapidfuzz.utils import default_process

    from .providers import JobFailed

    new = list(done)  # accepted by an interrupted run: the prompts go on from where it stopped
    cutoff = cfg.similarity * 100
    for _ in range(cfg.max_rounds):
        if len(new) >= cfg.per_group:
            break
        k = min(cfg.batch, cfg.per_group - len(new))
        shown = (existing + new)[-60:]
        prompt = PROMPT.format(group=group.replace("_", " "), k=k,
                               existing="\n".join(f"- {t}" for t in shown) or "(none yet)")
        try:
            comp = await provider.complete(None, [{"role": "user", "content": prompt}], max_tokens=60 * k + 100)
        except JobFailed as e:
            stats["failed"] += 1
            failures[str(e)] += 1
            continue
        try:
            candidates = parse_topic_list(comp.text)
        except (ValueError, orjson.JSONDecodeError):
            stats["bad_reply"] += 1
            continue
        for t in candidates:
            if topic_problem(t):
                stats["invalid"] += 1
                continue
            match = process.extractOne(t, everything, scorer=fuzz.token_sort_ratio, processor=default_process,
                                       score_cutoff=cutoff) if everything else None
            if match is not None:
                stats["duplicate"] += 1
                continue
            new.append(t)
            everything.append(t)
            log.write({"group": group, "topic": t})
            stats["added"] += 1
            if len(new) >= cfg.per_group:
                break
    return new


async def _expand(provider, grouped: dict[str, list[str]], done: dict[str, list[str]], targets: list[str],
                  cfg: ExpandConfig, reporter: Reporter, log: AppendWriter):
    import asyncio  # not at the top: `ft --help` should not pay for it

    everything = [t for items in grouped.values() for t in items] + [t for items in done.values() for t in items]
    stats: Counter = Counter()
    failures: Counter = Counter()  # provider error -> requests
    sem = asyncio.Semaphore(cfg.max_concurrency)

    with reporter.progress("expanding topics", total=len(targets)) as task:
        async def one(g: str) -> tuple[str, list[str]]:
            async with sem:
                got = await _expand_group(provider, g, grouped[g], done.get(g, []), everything, cfg, stats,
                                          failures, log)
                task.advance(1)
                return g, got

        try:
            results = await asyncio.gather(*(one(g) for g in targets))
        finally:
            await provider.close()
    return dict(results), stats, failures


def run(cfg: ExpandConfig, reporter: Reporter) -> dict:
    from .providers import LLMProvider, RetryPolicy, choose_provider

    raw = read_json(cfg.input)
    shape, grouped = parse_topics(raw, path=cfg.input)
    unknown = [g for g in cfg.groups if g not in grouped]
    if unknown:
        raise ConfigError(f"--groups: no group {', '.join(map(repr, unknown))} in {cfg.input} "
                          f"(groups: {', '.join(grouped)})")
    targets = [g for g in grouped if not cfg.groups or g in cfg.groups]
    target = Path(cfg.input if cfg.in_place else cfg.output)
    partial = progress_path(target)
    if cfg.overwrite:
        partial.unlink(missing_ok=True)
    header = _progress_header(cfg, sha256_file(cfg.input))
    done = load_progress(partial, header, cfg, targets)
    fresh, done = done is None, done or {}
    resumed = sum(map(len, done.values()))
    if resumed:
        reporter.info(f"resuming: {count(resumed, 'topic')} already accepted ({partial})")
    kind = choose_provider(cfg.provider)
    if kind == "template":
        raise ConfigError("ft topics expand needs an LLM: set OPENAI_API_KEY (or OPENAI_BASE_URL for a local "
                          "OpenAI-compatible server) or ANTHROPIC_API_KEY; ft never invents topics offline")
    provider = LLMProvider(kind, model=cfg.model, base_url=cfg.base_url,
                           policy=RetryPolicy(max_retries=cfg.max_retries, timeout=cfg.timeout),
                           temperature=cfg.temperature)
    import asyncio

    log = AppendWriter(partial)
    try:
        with log:
            if fresh:
                log.write({"header": header})
            new, stats, failures = asyncio.run(_expand(provider, grouped, done, targets, cfg, reporter, log))
    finally:
        if not resumed and log.count == (1 if fresh else 0):  # nothing accepted: no progress worth keeping
            partial.unlink(missing_ok=True)
    if not any(new.values()):  # nothing usable: the input stays as it is, and the run fails
        counts = (f"invalid {stats['invalid']}, duplicates {stats['duplicate']}, bad replies {stats['bad_reply']}, "
                  f"failed requests {stats['failed']}")
        if failures:
            error, n = failures.most_common(1)[0]
            raise ProviderError(f"ft topics expand added no topics: {stats['failed']} requests failed "
                                f"({n} × {error}); {counts}")
        raise DataError(f"no new topic passed the checks ({counts})", path=cfg.input,
                        hint="run again, or try another --model")
    out = {g: items + new.get(g, []) for g, items in grouped.items()}
    if shape == "records":  # the records as they were (their order across groups, any extra keys), then the new
        data = raw + [{"topic": t, "group": g} for g, items in new.items() for t in items]
    else:
        data = dump_topics(shape, out)
    write_json_atomic(target, data)
    partial.unlink(missing_ok=True)  # only now: a crash before the rename keeps every accepted topic
    rows = [[g, len(grouped[g]), len(new.get(g, [])), len(out[g])] for g in grouped]
    reporter.table(f"ft topics expand → {target}", ["group", "existing", "added", "total"], rows)
    short = [g for g in new if len(new[g]) < cfg.per_group]
    if short:
        reporter.warn(f"{len(short)} groups got fewer than {cfg.per_group} new topics "
                      f"(invalid {stats['invalid']}, duplicates {stats['duplicate']}, bad replies "
                      f"{stats['bad_reply']}, failed requests {stats['failed']}); run again to add more")
    return {"output": str(target), "added": {g: len(v) for g, v in new.items()}, "resumed": resumed,
            "stats": dict(stats),
            "requests": provider.stats.requests, "provider": kind, "model": provider.model}
