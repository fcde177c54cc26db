"""``ft pairs``: preference pairs for DPO/ORPO from what ft already has.

    ft pairs --data data/doric.jsonl --out pairs.jsonl --rejected-from policy --model runs/doric
    ft pairs --data data/doric.jsonl --out pairs.jsonl --rejected-from base --model runs/doric
    ft pairs --data data/doric.jsonl --out pairs.jsonl --rejected-from rejects
    ft pairs --data data/doric.jsonl --out pairs.jsonl --rejected-from eval:eval/doric
    ft pairs --data data/doric.jsonl --out pairs.jsonl --rejected-from ratings:eval/doric/ratings.jsonl
    ft train --model smollm2-135m --from runs/doric --method dpo --data pairs.jsonl

Chosen is the data's accepted in-voice answer (ft gen's OUT.jsonl); rejected is, by source, the tuned
model's own greedy answer to the same prompt (policy: its loops, non-stops and character breaks), the base
model's greedy answer (base), an answer ft gen's gates rejected (rejects, from OUT.rejects.jsonl), or the
losing side of a judge comparison in an ft eval folder (eval) or of people's verdicts in ft rate's
ratings.jsonl (ratings). For eval and ratings, chosen is the data's answer when the data holds the same
prompt, else the winning side. Every row is TRL's conversational preference format
(``{"prompt": [messages], "chosen": [assistant], "rejected": [assistant]}``) plus ``meta``, the provenance of
each side. A pair whose sides are near-identical (rapidfuzz ``ratio`` ≥ --max-similarity, 0.9 by default)
teaches nothing but noise and is dropped.

A generated rejected side (policy, base, --general) is kept only where it shows a failure ft eval measures
(``defects``): no end-of-turn token within --max-new-tokens, a loop, a character-break phrase, no persona
marker, a harmful ask (safety rows) not refused, an everyday ask refused. On an H100 (SmolLM2-135M, 616
policy pairs) 75% of the SFT model's greedy answers had none of these; DPO on every pair pushed the model off
its own stopped, in-voice answers and its greedy general-prompt stopping fell from 90% to 68%
(docs/results.md). --all-answers keeps every pair, as before.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .config import config_record, opt
from .errors import ConfigError, DataError
from .evaluate.config import COMPILE_MODES
from .jsonl import read_json, read_rows, write_json_atomic, write_rows_atomic
from .ui import Reporter

SOURCES = ("policy", "base", "rejects", "eval", "ratings")


@dataclass
class PairsConfig:
    data: str = opt(help="Accepted conversations (ft gen's OUT.jsonl, messages JSONL): chosen answers and prompts.",
                    short="-d", required=True)
    out: str = opt(help="Where the pairs go (JSONL; OUT.config.json is written beside it).", short="-o",
                   required=True)
    rejected_from: str = opt(help="Where rejected answers come from: policy (the tuned run's greedy answer), base "
                                  "(the base model's), rejects (DATA's gate rejects), eval:DIR (the judge's losers "
                                  "in an ft eval folder) or ratings:FILE (people's losers in ft rate's "
                                  "ratings.jsonl). 'eval DIR' with a space works too.", required=True)
    model: str | None = opt(None, "policy: the run (or checkpoint/adapter) whose answers are rejected; base: a run "
                                  "(its base model) or a model.")
    rejects: str | None = opt(None, "rejects: the rejects file; none = ft gen's DATA.rejects.jsonl.")
    general: int = opt(0, "Also pair this many everyday prompts (ft replay's set, never ft eval's own general "
                              "prompts or probes): chosen = the persona's frame (opener, closer from its phrase bank) "
                              "around the base model's own stopped answer, rejected = the policy's answer. Needs "
                              "--model RUN.", ge=0)
    persona: str = opt("doric", "--general: the persona whose phrase bank frames the answers (name or file).")
    max_similarity: float = opt(0.9, "Drop a pair whose chosen and rejected texts have a rapidfuzz ratio (0–1) at "
                                     "or above this.", ge=0, le=1)
    max_rows: int = opt(0, "Use at most this many data rows (a seeded sample, stratified by bucket: every bucket "
                           "keeps its share, and one under a tenth of the data (safety, identity) is kept whole); "
                           "0 = all.", ge=0)
    max_new_tokens: int = opt(256, "policy/base/--general: tokens per generated answer.", ge=1)
    batch_size: int = opt(0, "policy/base/--general: prompts generated at once; 0 = chosen from the prompt count and "
                          "the device's free memory (as ft eval and ft replay do).", ge=0)
    compile: str = opt("auto", "policy/base/--general: decode with a static KV cache and torch.compile, as ft "
                               "eval --compile: auto (on CUDA for at least 64 prompts × 256 tokens; eager when "
                               "compiling fails), on, off.", choices=COMPILE_MODES)
    seed: int = opt(0, "Seed for --max-rows' sample and --general's frames.")
    all_answers: bool = opt(False, "policy/base/--general: keep every generated rejected answer; default: only "
                                   "those with a failure ft eval measures (no end-of-turn, a loop, a character "
                                   "break, no persona marker, a harmful ask not refused, an everyday one refused).")

    def validate(self) -> None:
        kind, _ = split_source(self.rejected_from)
        if kind in ("policy", "base") and not self.model:
            raise ConfigError(f"option --rejected-from {kind} needs --model (the run or model that answers)")
        if self.general and not self.model:
            raise ConfigError("option --general needs --model RUN (the policy and its base answer)")


def split_source(value: str) -> tuple[str, str | None]:
    """``policy`` → (policy, None); ``eval:DIR`` or ``eval DIR`` → (eval, DIR)."""
    kind, _, arg = value.strip().replace(" ", ":", 1).partition(":")
    if kind not in SOURCES:
        raise ConfigError(f"option --rejected-from {value!r}: not one of {', '.join(SOURCES)}")
    if kind in ("eval", "ratings") and not arg:
        raise ConfigError(f"option --rejected-from {kind} needs a path: {kind}:PATH")
    return kind, arg or None


# ---------------------------------------------------------------- the data's side

def load_chosen(path: str, max_rows: int = 0, seed: int = 0) -> list[dict]:
    """One item per data row: the prompt (messages before the last assistant turn), the chosen answer, meta."""
    items = []
    for line, row in read_rows(path):
        msgs = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(msgs, list) or not msgs:
            raise DataError("a row without messages (ft pairs reads messages JSONL)", path=path, line=line)
        last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
        if last is None:
            continue
        meta = row.get("meta") or {}
        items.append({"prompt": [{"role": m["role"], "content": m["content"]} for m in msgs[:last]],
                      "chosen": msgs[last]["content"], "messages": msgs, "line": line,
                      "id": meta.get("id") or f"line-{line}", "bucket": meta.get("bucket"), "topic": meta.get("topic")})
    if max_rows and len(items) > max_rows:
        keep = sorted(stratified_sample([it["bucket"] for it in items], max_rows, seed))
        items = [items[i] for i in keep]
    return items


def stratified_sample(buckets: list, n: int, seed: int = 0, *, whole_below: float = 0.1) -> list[int]:
    """``n`` indices into ``buckets``, seeded. A bucket under ``whole_below`` of the rows is kept whole (the rare
    buckets — refused harmful asks, identity asks — are where a tuned model fails most and a uniform sample would
    halve them); the other buckets share the rest in proportion to their size. When the rare buckets alone exceed
    ``n``, they are sampled in proportion too."""
    rng = random.Random(seed)
    by: dict = {}
    for i, b in enumerate(buckets):
        by.setdefault(b, []).append(i)
    total = len(buckets)
    rare = [b for b, ix in by.items() if len(ix) < whole_below * total]
    if sum(len(by[b]) for b in rare) > n:
        rare = []
    keep = [i for b in rare for i in by[b]]
    rest = [b for b in by if b not in rare]
    room, pool = n - len(keep), sum(len(by[b]) for b in rest)
    quota = {b: room * len(by[b]) // pool for b in rest} if pool else {}
    # the largest remainders get the rows that flooring left over (ties: the larger bucket, then its name)
    left = room - sum(quota.values())
    for b in sorted(rest, key=lambda b: (-(room * len(by[b]) % pool), -len(by[b]), str(b)))[:left]:
        quota[b] += 1
    for b in rest:
        keep += rng.sample(by[b], quota[b])
    return keep


def _data_side(cfg: PairsConfig, item: dict) -> dict:
    return {"source": "data", "file": cfg.data, "id": item["id"], "line": item["line"]}


# ---------------------------------------------------------------- rejected sides

def _generate(model_arg: str, prompts: list[list[dict]], cfg: PairsConfig, reporter: Reporter, *, base: bool):
    """Greedy answers of a run (or of its base model) to ``prompts``, and the model's name."""
    from .evaluate.generate import Decoding, generate
    from .models import load_for_inference
    from .rundir import RunDir

    name = model_arg
    p = Path(model_arg)
    if base and p.is_dir():
        try:
            name = RunDir.find(p).record().get("base_model") or model_arg
        except DataError:
            name = model_arg  # a model directory, not a run
    loaded = load_for_inference(name)
    reporter.info(f"  generating {len(prompts)} greedy answers with {loaded.name} ({loaded.kind})")
    decode = Decoding(cfg.compile, warn=reporter.warn)
    gens = generate(loaded.model, loaded.tokenizer, prompts, eos_ids=loaded.eos_token_ids,
                    max_new_tokens=cfg.max_new_tokens, temperature=0.0, batch_size=cfg.batch_size, seed=cfg.seed,
                    decode=decode)
    reporter.info(f"  decoding {decode.record['decode']}"
                  + (f" ({decode.record['decode_reason']})" if decode.record.get("decode_reason") else ""))
    return gens, name, loaded.kind


def _from_model(cfg: PairsConfig, items: list[dict], reporter: Reporter, kind: str) -> list[dict]:
    gens, name, loaded_kind = _generate(cfg.model, [it["prompt"] for it in items], cfg, reporter,
                                        base=kind == "base")
    return [{**it, "rejected": g.text,
             "rejected_meta": {"source": kind, "model": name, "model_kind": loaded_kind, "decoding": "greedy",
                               "max_new_tokens": cfg.max_new_tokens, "stopped_on_eos": g.stopped_on_eos,
                               "n_tokens": g.n_tokens}}
            for it, g in zip(items, gens)]


def _rejects_file(cfg: PairsConfig) -> Path:
    from .gen.run import rejects_path

    if cfg.rejects:
        return Path(cfg.rejects)
    for p in (rejects_path(cfg.data), rejects_path(str(cfg.data).removesuffix(".jsonl"))):
        if p.is_file():
            return p
    raise DataError("no rejects file beside the data", path=str(rejects_path(cfg.data)),
                    hint="pass --rejects FILE (ft gen writes OUT.rejects.jsonl)")


def _from_rejects(cfg: PairsConfig, items: list[dict]) -> list[dict]:
    """A gate reject of an assistant turn, paired with the answer accepted for that turn of the same job."""
    path = _rejects_file(cfg)
    by_id = {it["id"]: it for it in items}
    out = []
    for line, r in read_rows(path):
        it = by_id.get(r.get("id"))
        if it is None or r.get("role", "assistant") != "assistant" or not (r.get("text") or "").strip():
            continue  # a job rejected for good (no accepted answer), a user turn, or an error without text
        turns = [i for i, m in enumerate(it["messages"]) if m.get("role") == "assistant"]
        t = int(r.get("turn", 0))
        if t >= len(turns):
            continue
        at = turns[t]
        prompt = [{"role": m["role"], "content": m["content"]} for m in it["messages"][:at]]
        from .gen.engine import PREVIEW

        out.append({**it, "prompt": prompt, "chosen": it["messages"][at]["content"], "rejected": r["text"],
                    "rejected_meta": {"source": "rejects", "file": str(path), "line": line, "reason": r.get("reason"),
                                      "detail": r.get("detail"), "attempt": r.get("attempt"), "turn": t,
                                      "truncated": len(r["text"]) >= PREVIEW}})
    return out


def _match_data(items: list[dict]) -> dict[str, dict]:
    """Data rows by their last user message, so an eval/rate prompt finds the data's own answer."""
    out = {}
    for it in items:
        users = [m["content"] for m in it["prompt"] if m.get("role") == "user"]
        if users:
            out.setdefault(users[-1].strip(), it)
    return out


def _eval_texts(d: Path) -> tuple[dict, dict, dict]:
    """results.json, prompts by id, and the answers by (condition, prompt, candidate) of the judged decoding."""
    if not (d / "results.json").is_file() or not (d / "outputs.jsonl").is_file():
        raise DataError("not an ft eval folder with outputs (results.json, outputs.jsonl)", path=str(d),
                        hint="run ft eval without --no-save-outputs")
    doc = read_json(d / "results.json")
    decoding = doc.get("primary_decoding")
    texts: dict[tuple, dict] = {}
    for _, row in read_rows(d / "outputs.jsonl"):
        if decoding and row.get("decoding", decoding) != decoding:
            continue
        texts[(row["condition"], row["prompt_id"], row["candidate"])] = row
    return doc, {p["id"]: p for p in doc.get("prompts", [])}, texts


def _comparison_pair(data: dict, prompt: dict, win_row: dict, lose_row: dict, side: dict, cfg: PairsConfig,
                     decoding: str | None) -> dict:
    turns = [{"role": m["role"], "content": m["content"]} for m in prompt.get("turns") or []]
    users = [m["content"] for m in turns if m["role"] == "user"]
    it = data.get(users[-1].strip()) if users else None
    common = {"prompt": turns, "rejected": str(lose_row["text"]),
              "rejected_meta": {**side, "candidate": lose_row["candidate"], "condition": lose_row["condition"],
                                "prompt_id": lose_row["prompt_id"], "decoding": decoding,
                                "stopped_on_eos": lose_row.get("stopped_on_eos")}}
    if it is not None:
        return {**it, **common, "chosen": it["chosen"]}
    return {"id": lose_row["prompt_id"], "line": None, "bucket": prompt.get("source"), "topic": None,
            **common, "chosen": str(win_row["text"]),
            "chosen_meta": {**side, "candidate": win_row["candidate"], "winner": True, "decoding": decoding}}


def _from_eval(cfg: PairsConfig, items: list[dict], d: Path) -> list[dict]:
    doc, prompts, texts = _eval_texts(d)
    judge = doc.get("judge") or {}
    if not judge.get("pair_items"):
        raise DataError("no judge comparisons in results.json (pair_items)", path=str(d / "results.json"),
                        hint="run ft eval with a judge (--judge-provider) and two candidates")
    data, out = _match_data(items), []
    for pi in judge["pair_items"]:
        if pi.get("winner") not in ("a", "b"):
            continue  # a tie or an order-dependent verdict says nothing about which is better
        win, lose = (pi["a"], pi["b"]) if pi["winner"] == "a" else (pi["b"], pi["a"])
        w, l = texts.get((pi["condition"], pi["prompt_id"], win)), texts.get((pi["condition"], pi["prompt_id"], lose))
        if w is None or l is None or pi["prompt_id"] not in prompts:
            continue
        side = {"source": "eval", "dir": str(d), "judge": f"{judge.get('provider')}:{judge.get('model')}",
                "winner": win}
        out.append(_comparison_pair(data, prompts[pi["prompt_id"]], w, l, side, cfg, doc.get("primary_decoding")))
    return out


def _from_ratings(cfg: PairsConfig, items: list[dict], path: Path) -> list[dict]:
    """People's verdicts: a pair every rater who chose agrees on (a contested pair is dropped)."""
    if not path.is_file():
        raise DataError("no such ratings file", path=str(path), hint="ft rate writes DIR/ratings.jsonl")
    doc, prompts, texts = _eval_texts(path.parent)
    winners: dict[tuple, set] = {}
    raters: dict[tuple, list] = {}
    for _, r in read_rows(path):
        if r.get("winner") is None:
            continue  # tie, both bad, skip
        key = (r["condition"], r["prompt_id"], tuple(r["candidates"]))
        winners.setdefault(key, set()).add(r["winner"])
        raters.setdefault(key, []).append(r.get("rater"))
    data, out = _match_data(items), []
    for (cond, pid, cands), won in winners.items():
        if len(won) != 1 or pid not in prompts:
            continue
        win = next(iter(won))
        lose = cands[1] if win == cands[0] else cands[0]
        w, l = texts.get((cond, pid, win)), texts.get((cond, pid, lose))
        if w is None or l is None:
            continue
        side = {"source": "ratings", "file": str(path), "raters": sorted(set(raters[(cond, pid, cands)])),
                "winner": win}
        out.append(_comparison_pair(data, prompts[pid], w, l, side, cfg, doc.get("primary_decoding")))
    return out


def _general(cfg: PairsConfig, reporter: Reporter) -> list[dict]:
    """General prompts: chosen = the persona's opener and closer around the base model's stopped answer."""
    from .persona import load_persona
    from .replay import frame_answer, replay_prompts

    persona = load_persona(cfg.persona)
    if persona.bank is None:
        raise ConfigError(f"option --persona {cfg.persona}: no phrase bank to frame general answers with")
    rows = replay_prompts(cfg.general, cfg.seed)  # what ft eval measures with stays unseen
    system = [{"role": "system", "content": persona.system_prompt}] if persona.system_prompt else []
    prompts = [system + [{"role": "user", "content": r["prompt"]}] for r in rows]
    base, base_name, _ = _generate(cfg.model, prompts, cfg, reporter, base=True)
    policy, policy_name, _ = _generate(cfg.model, prompts, cfg, reporter, base=False)
    out = []
    for r, p, b, g in zip(rows, prompts, base, policy):
        if not b.stopped_on_eos or not b.text:
            continue  # a base answer that ran on is no answer to teach
        chosen = frame_answer(b.text, persona, random.Random(f"{cfg.seed}:{r['id']}"))
        out.append({"id": f"general-{r['id']}", "line": None, "bucket": "general", "topic": r.get("kind"),
                    "prompt": p, "chosen": chosen, "rejected": g.text,
                    "chosen_meta": {"source": "general", "frame": f"template-{persona.name}", "model": base_name,
                                    "decoding": "greedy", "prompt_id": r["id"]},
                    "rejected_meta": {"source": "policy", "model": policy_name, "decoding": "greedy",
                                      "stopped_on_eos": g.stopped_on_eos, "n_tokens": g.n_tokens}})
    return out


def defects(text: str, *, stopped_on_eos: bool, bucket: str | None, persona) -> list[str]:
    """The failures ft eval would count in a generated answer (its metrics, the persona's markers)."""
    from .evaluate import metrics as M
    from .persona import count_markers

    found = []
    if not stopped_on_eos:
        found.append("no-eos")
    if M.find_loop(M.words(text)) is not None:
        found.append("loop")
    if M.break_phrases_found(text, M.DEFAULT_BREAK_PHRASES):
        found.append("break")
    if persona is not None and count_markers(text, persona.markers) == 0:
        found.append("no-marker")
    refusal = M.refused(text, M.refusal_phrases(persona))
    if bucket == "safety" and not refusal:
        found.append("not-refused")
    elif bucket != "safety" and refusal:
        found.append("refused")
    return found


def _generated(it: dict) -> bool:
    return it["rejected_meta"].get("source") in ("policy", "base") and "stopped_on_eos" in it["rejected_meta"]


# ---------------------------------------------------------------- the command

def similarity(a: str, b: str) -> float:
    from rapidfuzz import fuzz

    return fuzz.ratio(a, b) / 100.0


def run(cfg: PairsConfig, reporter: Reporter) -> dict:
    kind, arg = split_source(cfg.rejected_from)
    items = load_chosen(cfg.data, cfg.max_rows, cfg.seed)
    reporter.info(f"ft pairs: {len(items)} accepted answers from {cfg.data} · rejected from {kind}"
                  + (f" {arg}" if arg else ""))
    if kind in ("policy", "base"):
        raw = _from_model(cfg, items, reporter, kind)
    elif kind == "rejects":
        raw = _from_rejects(cfg, items)
    elif kind == "eval":
        raw = _from_eval(cfg, items, Path(arg))
    else:
        raw = _from_ratings(cfg, items, Path(arg))
    if cfg.general:
        raw += _general(cfg, reporter)

    persona = None
    if any(_generated(it) for it in raw):
        from .persona import load_persona

        persona = load_persona(cfg.persona)
    rows, dropped, found = [], Counter(), Counter()
    for it in raw:
        chosen, rejected = it["chosen"].strip(), it["rejected"].strip()
        if not rejected:
            dropped["empty rejected"] += 1
            continue
        sim = similarity(chosen, rejected)
        if sim >= cfg.max_similarity:
            dropped["near-identical"] += 1
            continue
        if _generated(it):
            d = defects(rejected, stopped_on_eos=it["rejected_meta"]["stopped_on_eos"], bucket=it.get("bucket"),
                        persona=persona)
            it["rejected_meta"] = {**it["rejected_meta"], "defects": d}
            found.update(d or ["none"])
            if not d and not cfg.all_answers:
                dropped["rejected answer without a defect"] += 1
                continue
        rows.append({"prompt": it["prompt"], "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}],
                     "meta": {"id": it["id"], "bucket": it.get("bucket"), "topic": it.get("topic"),
                              "similarity": round(sim, 4),
                              "chosen": it.get("chosen_meta") or _data_side(cfg, it),
                              "rejected": it["rejected_meta"]}})
    if not rows:
        raise DataError(f"no pairs left ({sum(dropped.values())} dropped: "
                        + (", ".join(f"{k} {v}" for k, v in dropped.items()) or "no rejected answers found") + ")",
                        path=cfg.data,
                        hint="the model's answers show no failure to pair against: --all-answers keeps them all"
                        if dropped.get("rejected answer without a defect") else None)
    write_rows_atomic(cfg.out, rows)
    write_json_atomic(f"{cfg.out}.config.json", config_record(cfg))
    buckets = Counter(r["meta"]["bucket"] or "none" for r in rows)
    sources = Counter(r["meta"]["rejected"]["source"] for r in rows)
    reporter.table("pairs by bucket", ["bucket", "pairs", "share"],
                   [[b, n, f"{n / len(rows):.0%}"] for b, n in sorted(buckets.items())])
    if found:
        reporter.info("  defects    " + ", ".join(f"{k} {v}" for k, v in found.most_common())
                      + " (of the generated rejected answers; an answer may have several)")
    if dropped:
        reporter.info("  dropped    " + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items()))
                      + f" (near-identical: rapidfuzz ratio ≥ {cfg.max_similarity:g})")
    reporter.result(f"wrote {len(rows)} pairs → {cfg.out}")
    return {"out": cfg.out, "pairs": len(rows), "dropped": dict(dropped), "buckets": dict(buckets),
            "rejected_sources": dict(sources), "defects": dict(found)}
