"""``ft eval``: generate side by side, score failure modes, judge (optional), report, gate.

    ft eval --base tiny --adapter runs/doric --prompts prompts.jsonl --fail-if "eos_rate<0.9,loop_rate>0.05"
    ft eval --run runs/doric --checkpoints all          # pick a checkpoint by behaviour, not by loss

The recipe: plan candidates → gather prompts (file or held-out rows, plus probes) → for each
candidate load it as trained (its chat template, end-of-turn ids, system prompt), generate every
prompt in each condition, score each output → optional judge → gates → reports.
"""

from __future__ import annotations

import gc
import re
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import config_record, text_or_file, to_dict
from ..errors import ConfigError, DataError, FtError, ProviderError
from ..jsonl import read_json, write_json_atomic, write_rows_atomic
from ..ui import Reporter
from . import metrics as M
from .candidates import Candidate, plan, training_answers
from .config import EvalConfig
from .prompts import Prompt, common_system, general_prompts, load_prompts, probe_prompts


def _apart(a: float, b: float) -> tuple[str, str]:
    """Two different numbers with as few decimals (3 to 6) as tell them apart: never "0.964 below 0.964"."""
    for d in range(3, 7):
        if f"{a:.{d}f}" != f"{b:.{d}f}":
            break
    return f"{a:.{d}f}", f"{b:.{d}f}"


def gather_prompts(cfg: EvalConfig, cands: list[Candidate], reporter: Reporter) -> list[Prompt]:
    prompts: list[Prompt] = []
    if cfg.prompts:
        prompts = load_prompts(cfg.prompts, limit=cfg.max_prompts)
    else:
        run_dir = next((c.run_dir for c in cands if c.run_dir is not None), None)
        held = run_dir / "heldout.jsonl" if run_dir else None
        if held is not None and held.is_file():
            prompts = load_prompts(held, source="heldout", limit=cfg.max_prompts)
        elif not cfg.probes and not cfg.general:
            raise ConfigError("ft eval: no prompts: --no-probes, --no-general, no --prompts and no run with "
                              "heldout.jsonl", hint="pass --prompts FILE or drop --no-probes")
        else:
            reporter.warn("no --prompts and no run with heldout.jsonl: using the built-in probes and general "
                          "prompts only")
    if cfg.probes:
        prompts += probe_prompts()
    if cfg.general:
        prompts += general_prompts()
    if not prompts:  # a prompt file or held-out file with no prompts in it, and --no-probes --no-general
        raise ConfigError("ft eval: no prompts (pass --prompts FILE or keep --probes on)")
    return prompts


def pick_persona(cfg: EvalConfig, prompts: list[Prompt], reporter: Reporter):
    from ..persona import load_persona

    if cfg.persona:
        return load_persona(cfg.persona)
    names = Counter(p.meta.get("persona") for p in prompts if p.meta.get("persona"))
    if not names:
        return None
    name = names.most_common(1)[0][0]
    try:
        return load_persona(str(name))
    except ConfigError:
        reporter.info(f"held-out rows name persona {name!r}, which is not a known persona: no marker metrics")
        return None


def load_candidate(c: Candidate, cfg: EvalConfig):
    from ..models import load_for_inference

    device = None if cfg.device == "auto" else cfg.device
    # --base is the base every adapter runs on (as in ft merge), whatever base the adapter records: the
    # comparison is against the model that was evaluated as "base", and a moved adapter still loads
    base = cfg.base if c.kind in ("adapter", "checkpoint") else None
    return load_for_inference(c.source, base=base, device=device, trust_remote_code=cfg.trust_remote_code)


def score_condition(texts_gens, prompts: list[Prompt], *, cfg: EvalConfig, leak_system: str | None, persona,
                    regex, schema, index) -> list[dict]:
    scripts = M.normalize_scripts(cfg.scripts)
    refusal_phrases = M.refusal_phrases(persona)
    rows = []
    for p, g in zip(prompts, texts_gens):
        s = M.score_output(g.text, n_tokens=g.n_tokens, stopped_on_eos=g.stopped_on_eos,
                           system_prompt=leak_system, break_phrases=cfg.break_phrases, scripts=scripts,
                           leak_n=cfg.leak_ngram, leak_threshold=cfg.leak_threshold)
        question = next((t["content"] for t in reversed(p.turns) if t["role"] == "user"), "")
        rel = M.relevance(question, g.text)
        s["relevance"] = round(rel, 4) if rel is not None else None
        s["refused"] = M.refused(g.text, refusal_phrases)
        if persona is not None:
            from ..persona import count_markers, marker_density

            s["in_voice"] = count_markers(g.text, persona.markers) > 0
            d = marker_density(g.text, persona.markers)
            lo, hi = persona.marker_band
            s["marker_density"] = round(d, 3)
            s["marker_in_band"] = lo <= d <= hi
        if regex is not None or schema is not None:
            s["format_ok"] = M.format_ok(g.text, regex=regex, schema=schema)
        if index is not None:
            score, i = index.best(g.text)
            s["near_copy"] = i is not None
            s["near_copy_score"] = score if i is not None else None
        rows.append({"prompt_id": p.id, "source": p.source, "text": g.text, **s})
    return rows


def by_source(rows: list[dict]) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["source"].split(":")[0], []).append(r)
    return {k: M.aggregate([r["text"] for r in v], v) for k, v in groups.items()}


def base_candidate(results: dict, kinds: dict[str, str]) -> str | None:
    return next((c for c in results if kinds[c] == "base"), None)


def primary_decoding(decodings: list[str]) -> str:
    """The decoding behind ``results`` and unqualified gates: sample (what ft eval measured before greedy was
    added), else the only one."""
    return "sample" if "sample" in decodings else decodings[0]


def check_gates(cfg: EvalConfig, by_decoding: dict, kinds: dict[str, str]) -> dict[str, Any]:
    """Gates over ``by_decoding[decoding]`` (``results`` and ``by_source``): a gate's decoding (else the
    primary one), its prompt group (else all prompts)."""
    gates = cfg.gates
    primary = primary_decoding(list(by_decoding))
    any_results = by_decoding[primary]["results"]
    base = base_candidate(any_results, kinds)
    targets = [c for c in any_results if kinds[c] != "base"] or list(any_results)

    def value(dec: str, cand: str, cond: str, g) -> Any:
        view = by_decoding[dec]
        m = (view["by_source"][cand][cond].get(g.group) or {}) if g.group else view["results"][cand][cond]
        return m.get(g.metric)

    failed = []
    for cand in targets:
        for cond in any_results[cand]:
            for g in gates:
                dec = g.decoding or primary
                v = value(dec, cand, cond, g)
                ref = value(dec, base, cond, g) if g.relative and base else None
                if g.fails(v, ref):
                    failed.append({"candidate": cand, "condition": cond, "decoding": dec, "group": g.group,
                                   "gate": str(g), "metric": g.metric, "value": v,
                                   **({"base": ref} if g.relative else {})})
    return {"checked": [str(g) for g in gates], "targets": targets, "failed": failed}


# a tuned model this much worse than its base on general prompts is worth a line even without a gate
_WORSE = {"eos_rate": -0.05, "loop_rate": 0.05, "relevance_mean": -0.05}


def started_from(cand_info: list[dict]) -> dict[str, str]:
    """candidate → the candidate it was trained from (a DPO/ORPO run's ``--from`` SFT run), where both are here."""
    from ..rundir import RunDir

    by_dir = {str(Path(ci["run_dir"]).resolve()): ci["name"] for ci in cand_info if ci.get("run_dir")}
    out = {}
    for ci in cand_info:
        if not ci.get("run_dir"):
            continue
        try:
            parent = RunDir(Path(ci["run_dir"])).read().get("from_run")
        except DataError:  # a corrupt run.json: no parent to compare with here
            continue
        found = by_dir.get(str(Path(parent).resolve())) if parent else None
        if found is not None:
            out[ci["name"]] = found
    return out


def _general_worse(by_decoding: dict, cand: str, cond: str, ref_cand: str) -> list[tuple[str, str, float, float]]:
    """(decoding, metric, value, reference) where ``cand`` does worse than ``ref_cand`` on the general prompts."""
    out = []
    for dec, view in by_decoding.items():
        mine = view["by_source"][cand][cond].get("general") or {}
        theirs = (view["by_source"].get(ref_cand, {}).get(cond) or {}).get("general") or {}
        for metric, margin in _WORSE.items():
            v, ref = mine.get(metric), theirs.get(metric)
            if v is not None and ref is not None and (v < ref + margin if margin < 0 else v > ref + margin):
                out.append((dec, metric, v, ref))
    return out


_WORSE_WHAT = {"eos_rate": "stops (EOS) in fewer answers", "loop_rate": "loops in more answers",
               "relevance_mean": "answers further from the question"}


def findings(by_decoding: dict, kinds: dict[str, str], parents: dict[str, str] | None = None) -> list[dict]:
    """What a reader should not miss even without a gate: a tuned model less varied than its base (it
    answers from a narrow training set: the template-answer failure), reciting its training answers, and on
    the general prompts (outside its training) stopping less, looping more or straying from the question more
    than its base — or than the SFT run a preference stage started from (``parents``: candidate → that run's
    candidate), where the preference stage undid what SFT had."""
    primary = primary_decoding(list(by_decoding))
    results = by_decoding[primary]["results"]
    base = base_candidate(results, kinds)
    out = []
    for cand, conds in results.items():
        if kinds[cand] == "base":
            continue
        for cond, m in conds.items():
            d2, ref = m.get("distinct_2"), (results[base][cond].get("distinct_2") if base else None)
            if d2 is not None and ref is not None and d2 < ref:
                shown, ref_shown = _apart(d2, ref)
                out.append({"candidate": cand, "condition": cond, "metric": "distinct_2", "value": d2, "base": ref,
                            "message": f"distinct-2 {shown} is below the base model's {ref_shown}: its answers are "
                                       "less varied than before tuning, as when a model answers every prompt from "
                                       "a narrow training set (more varied data: a larger phrase bank, an LLM "
                                       "provider, fewer epochs)"})
            nc = m.get("near_copy_rate")
            if nc is not None and nc >= 0.05:
                out.append({"candidate": cand, "condition": cond, "metric": "near_copy_rate", "value": nc,
                            "message": f"{nc:.0%} of answers are near-copies of a training answer: it recites "
                                       "its data (fewer epochs or a lower learning rate, more varied data)"})
            parent = (parents or {}).get(cand)
            if parent is not None:
                for dec, metric, v, ref in _general_worse(by_decoding, cand, cond, parent):
                    out.append({"candidate": cand, "condition": cond, "decoding": dec, "group": "general",
                                "metric": metric, "value": v, "from": parent, "from_value": ref,
                                "message": f"{dec}, general prompts: {_WORSE_WHAT[metric]} than {parent}, the run "
                                           f"it started from ({metric} {v:.3f} vs {ref:.3f}): the preference stage "
                                           "undid what SFT had (pairs only where the rejected answer fails, as ft "
                                           "pairs keeps by default; --sft-weight; fewer steps)"})
            if base is None:
                continue
            for dec, metric, v, ref in _general_worse(by_decoding, cand, cond, base):
                out.append({"candidate": cand, "condition": cond, "decoding": dec, "group": "general",
                            "metric": metric, "value": v, "base": ref,
                            "message": f"{dec}, general prompts: {_WORSE_WHAT[metric]} than the base ({metric} "
                                       f"{v:.3f} vs {ref:.3f}): tuning cost behaviour outside the training topics "
                                       "(fewer epochs or a lower learning rate, general chat mixed into the data)"})
    return out


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "-", s).strip("-") or "eval"


def run(cfg: EvalConfig, reporter: Reporter) -> dict:
    from .generate import Decoding, generate, heldout_loss, merge_lora_for_inference, perplexity

    cands = plan(cfg)
    prompts = gather_prompts(cfg, cands, reporter)
    judge, judge_error = _judge_or_skip(cfg, reporter)  # before generating: a missing key fails in seconds
    persona = pick_persona(cfg, prompts, reporter)
    regex = re.compile(cfg.format_regex, re.S) if cfg.format_regex else None
    schema = None
    if cfg.format_schema:
        from .schema import check_schema

        schema = read_json(cfg.format_schema)
        check_schema(schema, cfg.format_schema)
    loss_prompts = [p for p in (load_prompts(cfg.heldout, source="heldout", limit=cfg.max_prompts)
                                if cfg.heldout else prompts) if p.reference is not None]

    forced = text_or_file(cfg.system)
    run_systems = [c.run_json().get("system_prompt") for c in cands]
    shared = forced or next((s for s in run_systems if s), None) or \
        (persona.system_prompt if persona else None) or common_system(prompts)
    conditions = list(dict.fromkeys(cfg.conditions))
    if "system" in conditions and not shared:
        reporter.warn("no system prompt known (no --system, run, persona or prompt rows with one): "
                      "evaluating without a system prompt only")
        conditions = [c for c in conditions if c != "system"]
        if not conditions:
            raise ConfigError("option --conditions: only 'system' was asked for, and there is no system prompt",
                              hint="pass --system TEXT or @file")
    decodings = cfg.decodings
    reporter.info(f"ft eval: {len(cands)} candidate(s) × {len(conditions)} condition(s) × "
                  f"{len(decodings)} decoding(s) × {len(prompts)} prompts")

    out_dir = Path(cfg.out) if cfg.out else Path("eval") / \
        f"{_slug(cands[0].name)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    held_answers = {p.reference for p in prompts if p.reference}
    indexes: dict[Path, Any] = {}
    by_decoding: dict[str, dict] = {d: {"generation": _generation_text(cfg, d), "results": {}, "by_source": {}}
                                    for d in decodings}
    harness = None
    if cfg.lm_eval_tasks:  # checked and loaded before any generation: a task not on this machine fails at start
        from .lm_harness import Harness

        harness = Harness(cfg.lm_eval_tasks, cfg.lm_eval_include, cfg.lm_eval_limit)
    reference = None
    if cfg.retention:
        from .retention import reference_logprobs

        reference = reference_logprobs(load_candidate_path(cfg.base, cfg))
        gc.collect()
    outputs: list[dict] = []
    cand_info: list[dict] = []
    timing: dict[str, dict] = {}
    gen_kw = dict(max_new_tokens=cfg.max_new_tokens, repetition_penalty=cfg.repetition_penalty,
                  batch_size=cfg.batch_size, seed=cfg.seed)
    decode = Decoding(cfg.compile_mode, warn=reporter.warn)  # one for the run: a compile failure turns it eager
    sampling = {"greedy": dict(temperature=0.0, top_p=1.0), "sample": dict(temperature=cfg.temperature, top_p=cfg.top_p)}
    total = len(cands) * len(conditions) * len(decodings) * len(prompts)
    with reporter.progress("generating", total=total) as task:
        for c in cands:
            loaded = load_candidate(c, cfg)
            # --base is the base whatever its format (a .gguf file, an alias, a merged folder): a base typed
            # by its format would leave findings and `<base` gates with nothing to compare against
            kind = c.kind if c.kind in ("checkpoint", "base") else loaded.kind
            path = {"adapter": None}
            if loaded.kind == "adapter":
                path = {"adapter": "unmerged", "reason": "--no-merge-adapter"}
                if cfg.merge_adapter:
                    loaded.model, path = merge_lora_for_inference(loaded.model)
            system = forced or loaded.system_prompt or shared
            index = None
            if cfg.near_copy and c.run_dir is not None:
                if c.run_dir not in indexes:
                    from .nearcopy import NearCopyIndex

                    answers = training_answers(c.run_dir, reporter, extra_files=cfg.train_data,
                                               exclude=held_answers)
                    indexes[c.run_dir] = NearCopyIndex(answers) if answers else None
                index = indexes[c.run_dir]
            cand_info.append({"name": c.name, "kind": kind, "source": c.source, "base_model": loaded.base_model,
                              "system_prompt": system, "run_dir": str(c.run_dir) if c.run_dir else None})
            for view in by_decoding.values():
                view["results"][c.name], view["by_source"][c.name] = {}, {}
            model_metrics = {}  # of the model itself, the same in every condition: retention, benchmarks
            if reference is not None:
                from .retention import retention_metrics

                model_metrics = retention_metrics(loaded, reference, reporter=reporter, name=c.name)
            if harness is not None:
                scores = harness.run(loaded.model, loaded.tokenizer)
                reporter.info(f"  {c.name}: lm-eval " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(scores.items())))
                model_metrics.update(scores)
            t0, n_tok, gen_secs = time.perf_counter(), 0, 0.0
            decoded: list[dict] = []  # what each generate call ran: compiled or eager (and why)
            for cond in conditions:
                sys_ = system if cond == "system" else None
                try:
                    loss, _ = heldout_loss(loaded.model, loaded.tokenizer,
                                           [p.conversation(sys_) for p in loss_prompts], batch_size=4)
                except FtError as e:
                    reporter.warn(f"{c.name}: no held-out loss ({e})")
                    loss = None
                for dec in decodings:
                    g0 = time.perf_counter()
                    gens = generate(loaded.model, loaded.tokenizer, [p.messages(sys_) for p in prompts],
                                    eos_ids=loaded.eos_token_ids, on_batch=task.advance, decode=decode,
                                    **sampling[dec], **gen_kw)
                    gen_secs += time.perf_counter() - g0
                    decoded.append(decode.record)
                    n_tok += sum(g.n_tokens for g in gens)
                    cut = sum(g.prompt_truncated for g in gens)
                    if cut and dec == decodings[0]:
                        reporter.warn(f"{c.name} ({cond}): {cut} prompt(s) longer than the model's context less "
                                      f"--max-new-tokens: their start was cut (prompt_truncated in outputs.jsonl)")
                    rows = score_condition(gens, prompts, cfg=cfg, leak_system=system, persona=persona,
                                           regex=regex, schema=schema, index=index)
                    agg = M.aggregate([r["text"] for r in rows], rows)
                    agg["heldout_loss"], agg["heldout_ppl"] = loss, perplexity(loss)
                    agg.update(model_metrics)
                    by_decoding[dec]["results"][c.name][cond] = agg
                    by_decoding[dec]["by_source"][c.name][cond] = by_source(rows)
                    for p, g, r in zip(prompts, gens, rows):
                        outputs.append({"candidate": c.name, "condition": cond, "decoding": dec, **r,
                                        "stopped_on_eos": g.stopped_on_eos, "n_tokens": g.n_tokens,
                                        **({"prompt_truncated": True} if g.prompt_truncated else {})})
            secs = time.perf_counter() - t0
            timing[c.name] = {"seconds": round(secs, 2), "generated_tokens": n_tok,
                              "tokens_per_s": round(n_tok / secs, 1) if secs else None,
                              # generation alone (tokens_per_s above includes held-out loss and retention)
                              "generate_seconds": round(gen_secs, 2),
                              "generate_tokens_per_s": round(n_tok / gen_secs, 1) if gen_secs else None,
                              "generation_path": {**path, **decoded[-1], "batch_size": cfg.batch_size or "auto"}}
            if any(d != decoded[-1] for d in decoded):  # compiling failed after some calls had run compiled
                timing[c.name]["generation_path"]["decode_calls"] = [d.get("decode") for d in decoded]
            if decoded[-1]:
                why = decoded[-1].get("decode_reason")
                reporter.info(f"  {c.name}: {n_tok:,} tokens at {timing[c.name]['generate_tokens_per_s'] or 0:,.0f} "
                              f"tokens/s, decoding {decoded[-1]['decode']}" + (f" ({why})" if why else ""))
            del loaded
            gc.collect()
            _empty_cuda_cache()

    primary = primary_decoding(decodings)
    results, sources = by_decoding[primary]["results"], by_decoding[primary]["by_source"]
    judge_doc = None
    if judge is not None:  # one decoding: the judge's scores sit beside that decoding's metrics
        judge_doc, judge_error = _judge(judge, cfg, prompts, [o for o in outputs if o["decoding"] == primary],
                                        persona, shared, reporter)
        if judge_doc:
            for cand, conds in judge_doc["scores"].items():
                for cond, vals in conds.items():
                    results[cand][cond].update(vals)

    kinds = {ci["name"]: ci["kind"] for ci in cand_info}
    gates = check_gates(cfg, by_decoding, kinds)
    noted = findings(by_decoding, kinds, started_from(cand_info))
    doc = {
        "ft_eval": 1, "name": out_dir.name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "generation": by_decoding[primary]["generation"],
        "candidates": cand_info, "conditions": conditions, "persona": persona.name if persona else None,
        "decodings": decodings, "primary_decoding": primary,
        "definitions": {**M.DEFINITIONS, **_judge_definitions(), **(harness.definitions if harness else {})},
        "results": results, "by_source": sources,
        "by_decoding": by_decoding,
        "judge": judge_doc, "judge_error": judge_error, "gates": gates, "findings": noted, "timing": timing,
        "prompts": [{"id": p.id, "source": p.source, "turns": p.turns, "reference": p.reference} for p in prompts],
        "config": to_dict(cfg),
    }
    from .report import print_summary, write_reports

    paths = write_reports(out_dir, doc, outputs)
    write_json_atomic(out_dir / "ft_config.json", config_record(cfg))  # each value and where it was set
    paths["config"] = str(out_dir / "ft_config.json")
    if cfg.save_outputs:
        write_rows_atomic(out_dir / "outputs.jsonl", outputs)
        paths["outputs"] = str(out_dir / "outputs.jsonl")
    print_summary(reporter, doc)
    reporter.result(f"report: {paths['html']}")
    if judge_error and not cfg.judge_optional:
        raise ProviderError(f"--judge {cfg.judge} did not run: {judge_error}",
                            hint=f"results without it in {paths['html']}; --judge-optional to accept that")
    return {"out": str(out_dir), "files": paths, "results": results, "gates": gates, "findings": noted,
            "judge_usage": judge_doc["usage"] if judge_doc else None, "timing": timing,
            "exit_code": 1 if gates["failed"] else 0}


def _generation_text(cfg: EvalConfig, decoding: str) -> str:
    how = "greedy" if decoding == "greedy" else f"temperature {cfg.temperature}, top_p {cfg.top_p}, seed {cfg.seed}"
    return f"{how}, repetition_penalty {cfg.repetition_penalty}, max_new_tokens {cfg.max_new_tokens}"


def load_candidate_path(source: str, cfg: EvalConfig):
    from ..models import load_for_inference

    return load_for_inference(source, device=None if cfg.device == "auto" else cfg.device,
                              trust_remote_code=cfg.trust_remote_code)


def _judge_definitions() -> dict[str, str]:
    d = {f"judge_{c}": f"LLM judge's mean 1–5 score for {c}" for c in
         ("voice", "character", "coherence", "engagement", "length", "relevance")}
    d["judge_character"] = "LLM judge's mean 1–5 score for staying in character"
    d["judge_win_rate"] = ("blind pairwise win rate against the other candidates, both orders; a win needs "
                           "both orders to agree, else it counts as a tie (½)")
    return d


def _judge_or_skip(cfg, reporter):
    """``(judge, None)``, ``(None, None)`` without --judge, or ``(None, why)`` when --judge-optional lets a
    judge that cannot start (no key) be skipped; without that flag the error stops the run."""
    if cfg.judge == "none":
        return None, None
    from ..config import ft_home
    from .judge import Judge

    judge = Judge(cfg.judge, cfg.judge_model, base_url=cfg.judge_base_url,
                  cache_path=ft_home() / "judge" / "cache.jsonl", workers=cfg.judge_workers)
    try:
        judge.client()
    except ProviderError as e:
        if not cfg.judge_optional:
            raise
        reporter.warn(f"judge skipped: {e}")
        return None, str(e)
    return judge, None


def _judge(judge, cfg, prompts, outputs, persona, shared, reporter):
    from .judge import JudgeItem, run_judge

    chosen = {p.id: p for p in prompts[: cfg.judge_prompts]}
    items = [JudgeItem(o["candidate"], o["condition"], o["prompt_id"], chosen[o["prompt_id"]].turns, o["text"])
             for o in outputs if o["prompt_id"] in chosen]
    character = (persona.instructions if persona else None) or shared or \
        "No character description was given: judge general quality."
    try:
        doc = run_judge(judge, items, character=character, pairwise=cfg.judge_pairwise, reporter=reporter)
    except FtError as e:  # its provider's text is redacted (judge.py)
        reporter.warn(f"judge skipped: {e}")
        return None, str(e)
    u = doc["usage"]
    reporter.info(f"judge {doc['provider']}/{doc['model']}: {u['requests']} requests, {u['cached']} cached, "
                  f"{u['failed']} failed; {u['input_tokens']} input + {u['output_tokens']} output tokens")
    if items and not doc["scores"] and not doc["pairs"]:
        why = f"judge {doc['provider']}/{doc['model']}: none of {u['failed']} judgments succeeded"
        reporter.warn(f"judge skipped: {why}")
        return None, why
    return doc, None


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
