"""``ft card``: a Hub model card (or dataset card) written only from the records ft keeps.

    ft card runs/doric                         # runs/doric/README.md
    ft card merged/doric --eval eval/ --repo me/doric
    ft card datasets/doric.jsonl               # datasets/doric.README.md

Every figure comes from a record (run.json, config.json, data.json, ft_merge.json, gguf/ft_gguf.json,
ft eval's results.json, the dataset's rows and rejects file); what was not recorded is left out or said to
be unknown, never filled in. The YAML header is what huggingface_hub's ModelCard and metadata_load read.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from .. import __version__
from ..files import sha256_file
from ..ui import Reporter
from ..ui import human_size as _size
from .config import CardConfig
from .sources import Source, read_dataset, read_source

# ft's model aliases and the Hub models they are (their licence as their own card states it)
ALIAS_IDS = {"smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}
HYPER = ("method", "r", "alpha", "dropout", "target_modules", "lr", "scheduler", "warmup_ratio", "epochs",
         "max_steps", "batch_size", "grad_accum", "batch_tokens", "max_len", "train_on", "system_dropout",
         "weight_decay", "optimizer", "seed", "val_split")
METRICS = ("eos_rate", "loop_rate", "distinct_2", "leak_rate", "break_rate", "near_copy_rate", "words_mean",
           "heldout_loss", "heldout_ppl", "judge_voice", "judge_character", "judge_win_rate")


def _n(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return str(v)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_n(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _yaml(meta: dict) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def base_model(src: Source) -> tuple[str | None, str | None, str]:
    """(hub id or None, licence or None, what to call the base) from the run's or merge's record."""
    arg = src.run.get("base_model_arg") or src.merge.get("base_model") or src.run.get("base_model")
    resolved = src.run.get("base_model") or src.merge.get("base_model")
    if not arg:
        return None, None, "unknown (not recorded)"
    if arg in ALIAS_IDS:
        hub, lic = ALIAS_IDS[arg]
        return hub, lic, f"{hub} (ft alias {arg})"
    local = next((Path(p) for p in (resolved, arg) if p and Path(p).is_dir()), None)
    hub = arg if arg.count("/") == 1 and not Path(arg).exists() and not arg.startswith((".", "/", "~")) else None
    readme = local / "README.md" if local else None
    if readme is None and hub:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(hub, "README.md")
            readme = Path(cached) if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001 - no cache: the licence is simply unknown
            readme = None
    lic = None
    if readme and readme.is_file():
        from huggingface_hub import metadata_load

        lic = (metadata_load(readme) or {}).get("license")
    return hub, lic, hub or f"{arg} (a local model)"


def metadata(src: Source, what: list[str]) -> dict:
    hub, lic, _ = base_model(src)
    method = src.run.get("method") or src.merge.get("method")
    meta: dict[str, Any] = {}
    if hub:
        meta["base_model"] = hub
    meta["library_name"] = "peft" if what == ["adapter"] else "gguf" if what == ["gguf"] else "transformers"
    if lic:
        meta["license"] = lic
    tags = ["ft", "text-generation"] + ([method] if method else []) + (["gguf"] if "gguf" in what else [])
    persona = (src.eval or {}).get("persona")
    if persona:
        tags.append(f"persona-{persona}")
    meta["tags"] = tags
    datasets = [f["path"] for f in src.data.get("files") or [] if _hub_dataset(f.get("path"))]
    if datasets:
        meta["datasets"] = datasets
    meta["pipeline_tag"] = "text-generation"
    return meta


def _hub_dataset(p: str | None) -> bool:
    return bool(p) and p.count("/") == 1 and not Path(p).exists() and not p.endswith((".jsonl", ".json"))


def contents(src: Source) -> list[str]:
    """What ``src`` holds to publish: adapter, merged, gguf."""
    out = []
    if src.adapter_dir:
        out.append("adapter")
    if src.model_dir:
        out.append("merged")
    if src.gguf_files():
        out.append("gguf")
    return out


# ---------------------------------------------------------------- model card sections

def _purpose(src: Source) -> str:
    system = src.run.get("system_prompt") or src.merge.get("system_prompt")
    persona = (src.eval or {}).get("persona")
    out = ["## What it is for", ""]
    out.append(f"A model fine-tuned with ft to answer in the voice of the persona **{persona}**."
               if persona else "A model fine-tuned with ft to answer in one voice.")
    if system:
        out += ["", "It was trained with this system prompt; use it at inference too:", "", "```text", system, "```"]
    return "\n".join(out)


def _training(src: Source) -> str:
    r, cfg = src.run, src.config.get("config") or {}
    sources, resolved = src.config.get("sources") or {}, src.config.get("resolved") or {}
    _, _, base = base_model(src)
    out = ["## Training", ""]
    facts = [("base model", base), ("method", r.get("method") or src.merge.get("method")),
             ("backend", r.get("backend")), ("status", r.get("status")),
             ("steps", f"{r['global_step']} of {r.get('total_steps')}" if r.get("global_step") is not None else None),
             ("train time", f"{r['train_seconds']} s" if r.get("train_seconds") is not None else None),
             ("seconds per step", r.get("seconds_per_step")), ("tokens/s", r.get("tokens_per_s")),
             ("peak GPU memory", f"{r['peak_mem_gib']} GiB" if r.get("peak_mem_gib") is not None else None),
             ("processes", r.get("world_size")), ("effective batch size", r.get("effective_batch_size")),
             ("dtype", resolved.get("dtype")), ("chat template", r.get("chat_template")),
             ("loss first → final", f"{_n(r['first_loss'])} → {_n(r['final_loss'])}"
              if r.get("first_loss") is not None and r.get("final_loss") is not None else None),
             ("best eval loss", f"{_n(r['best_eval_loss'])} ({r.get('best_checkpoint')})"
              if r.get("best_eval_loss") is not None else None),
             ("merged dtype", src.merge.get("dtype"))]
    out.append(_table(["", ""], [[k, v] for k, v in facts if v is not None]))
    hyper = [[k, cfg[k], sources.get(k, "?")] for k in HYPER if k in cfg and cfg[k] is not None]
    if hyper:
        out += ["", "Hyper-parameters and where each came from (`set`: the user's flag, file or environment; "
                "`default`: ft's default):", "", _table(["option", "value", "source"], hyper)]
        if resolved.get("learning_rate") is not None or resolved.get("lora_alpha") is not None:
            out += ["", f"Resolved: learning rate {_n(resolved.get('learning_rate'))}, LoRA alpha "
                        f"{_n(resolved.get('lora_alpha'))}, optimizer {_n(resolved.get('optimizer'))}."]
    versions = r.get("versions") or {}
    if versions:
        out += ["", "Libraries: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "."]
    out += ["", "Hardware: " + ("not recorded by ft (only processes and peak memory are)." if r else
                                "not recorded.")]
    return "\n".join(out)


def _data(src: Source) -> str:
    d = src.data
    out = ["## Data", ""]
    if not d and not src.run:
        return "\n".join(out + ["Not recorded (no run records next to this model)."])
    facts = [("training rows", d.get("train_rows", src.run.get("train_rows"))),
             ("validation rows", d.get("val_rows", src.run.get("val_rows"))),
             ("rows trained without the system prompt", d.get("train_rows_without_system")),
             ("share of tokens trained", d.get("trainable_share")),
             ("examples cut at max length", d.get("truncated_examples")),
             ("examples that lost their end-of-turn token", d.get("eos_lost_examples")),
             ("token fingerprint (sha256)", d.get("tokens_sha256"))]
    facts = [[k, v] for k, v in facts if v is not None]
    out.append(_table(["", ""], facts) if facts else "Not recorded (the run has no data.json).")
    files = d.get("files") or []
    if files:
        out += ["", "Files (sha256 of each as trained):", "",
                _table(["file", "rows", "sha256"], [[f.get("path"), f.get("rows"), f.get("sha256")] for f in files])]
    for f in files:
        p = Path(f.get("path") or "")
        if p.is_file() and p.suffix == ".jsonl" and sha256_file(p) == f.get("sha256"):
            buckets, rejects = dataset_stats(p)
            if buckets:
                out += ["", f"`{p.name}` by bucket: " + ", ".join(f"{k} {v}" for k, v in buckets.most_common()) + "."]
            if rejects:
                out += ["Rejected by ft gen's gates: " + ", ".join(f"{k} {v}" for k, v in rejects.most_common()) + "."]
    return "\n".join(out)


def _eval(src: Source) -> str:
    doc = src.eval
    out = ["## Evaluation", ""]
    if not doc:
        return "\n".join(out + ["Not evaluated with `ft eval` (no results found; `ft card --eval DIR`)."])
    results = doc.get("results") or {}
    cols = [m for m in METRICS if any(m in cond for conds in results.values() for cond in conds.values())]
    rows = [[cand, cond] + [m.get(c) for c in cols] for cand, conds in results.items() for cond, m in conds.items()]
    out += [f"From `ft eval` ({doc.get('name')}, {doc.get('created')}); conditions: "
            f"{', '.join(doc.get('conditions') or [])} (`system`: with the system prompt, `none`: without).", "",
            _table(["candidate", "condition"] + cols, rows), "", f"Decoding: {doc.get('generation')}."]
    gates = doc.get("gates") or {}
    if gates.get("checked"):
        failed = gates.get("failed") or []
        out += ["", f"Gates: {', '.join(gates['checked'])}: " + (
            "all held." if not failed else "FAILED: " + "; ".join(
                f"{g['candidate']} ({g['condition']}) {g['gate']} (value {_n(g.get('value'))})" for g in failed))]
    defs = doc.get("definitions") or {}
    if cols and defs:
        out += ["", "<details><summary>Metric definitions</summary>", ""]
        out += [f"- `{c}`: {defs[c]}" for c in cols if c in defs] + ["", "</details>"]
    return "\n".join(out)


def _loss(src: Source, loss_ref: str | None) -> str | None:
    if not loss_ref:
        return None
    return "\n".join(["## Loss", "", f"![training and eval loss]({loss_ref})"])


def _gguf(src: Source) -> str | None:
    files = src.gguf_files()
    if not files:
        return None
    drift = {Path(f.get("path", "")).name: f for f in src.gguf.get("files") or []}
    rows = []
    for p in files:
        d = drift.get(p.name, {})
        rows.append([p.name, _size(p.stat().st_size), d.get("kl"), d.get("top1_agreement"), d.get("ppl_gguf"),
                     d.get("ppl_16bit"), ("llama.cpp " + d["llama_cpp"].get("status", "?")) if d.get("llama_cpp")
                     else None, ("DO NOT SHIP" if d.get("flagged") else "ok") if d else None])
    out = ["## GGUF files", "", _table(["file", "size", "KL vs 16-bit (nats/token)", "top-1 agreement",
                                        "perplexity", "16-bit perplexity", "loaded by", "verdict"], rows)]
    if not src.gguf:
        out += ["", "Drift figures were not recorded for these files (gguf/ft_gguf.json is missing)."]
    else:
        out += ["", f"Drift measured by ft merge on held-out text against the merged 16-bit model; threshold "
                    f"--max-kl {_n(src.gguf.get('max_kl'))}."]
    return "\n".join(out)


def _usage(src: Source, repo: str, what: list[str]) -> str:
    hub, _, _ = base_model(src)
    base = hub or "BASE_MODEL"
    system = src.run.get("system_prompt") or src.merge.get("system_prompt") or "..."
    out = ["## How to run it", ""]
    if "merged" in what:
        out += ["transformers:", "", "```python", "from transformers import pipeline",
                f"chat = pipeline('text-generation', model='{repo}')",
                f"print(chat([{{'role': 'system', 'content': {system!r}}}, {{'role': 'user', 'content': 'Hello'}}],"
                " max_new_tokens=128)[0]['generated_text'][-1]['content'])", "```", ""]
    if "adapter" in what:
        sub = "adapter" if "merged" in what or "gguf" in what else None
        kw = f", subfolder='{sub}'" if sub else ""
        out += ["peft:", "", "```python", "from peft import AutoPeftModelForCausalLM",
                f"model = AutoPeftModelForCausalLM.from_pretrained('{repo}'{kw})", "```", "",
                "vLLM:", "", "```bash",
                f"vllm serve {base} --enable-lora --lora-modules {repo.split('/')[-1]}={repo}", "```", ""]
    if "gguf" in what:
        names = [p.name for p in src.gguf_files()]
        if src.gguf_dir and (src.gguf_dir / "Modelfile").is_file():
            out += ["Ollama (the Modelfile carries the template, stop tokens and system prompt):", "", "```bash",
                    f"hf download {repo} --include 'gguf/*' --local-dir .",
                    "cd gguf && ollama create " + repo.split("/")[-1] + " -f Modelfile", "```", ""]
        out += ["llama.cpp:", "", "```bash", f"hf download {repo} gguf/{names[-1]} --local-dir .",
                f"llama-cli -m gguf/{names[-1]} -cnv", "```", ""]
    return "\n".join(out).rstrip()


def _limitations(src: Source) -> str:
    out = ["## Limitations", ""]
    lines = []
    doc = src.eval or {}
    for f in doc.get("findings") or []:
        lines.append(f"- {f['candidate']} ({f['condition']}): {f['message']}")
    for g in (doc.get("gates") or {}).get("failed") or []:
        lines.append(f"- gate {g['gate']} failed for {g['candidate']} ({g['condition']}): value {_n(g.get('value'))}")
    if src.run.get("eos_lost_examples"):
        lines.append(f"- {src.run['eos_lost_examples']} training example(s) lost their end-of-turn token at "
                     "--max-len: the model saw fewer endings to learn")
    for f in src.gguf.get("files") or []:
        if f.get("flagged"):
            lines.append(f"- {Path(f.get('path', '')).name} drifts too far from the 16-bit model: do not use it")
    if not lines:
        lines.append("- ft eval noted nothing." if doc else "- Not evaluated with ft eval: its limits are unknown.")
    return "\n".join(out + lines + ["", "A small model tuned on synthetic conversations: it imitates a voice, "
                                          "it does not know more than its base model."])


def model_card(src: Source, *, repo: str, loss_ref: str | None, what: list[str] | None = None) -> str:
    what = what or contents(src)
    parts = [f"# {src.name}\n\nWritten by ft {__version__} (`ft card`) from the run's own records.",
             _purpose(src), _training(src), _data(src), _eval(src), _loss(src, loss_ref), _gguf(src),
             _usage(src, repo, what), _limitations(src)]
    return _yaml(metadata(src, what)) + "\n" + "\n\n".join(p for p in parts if p is not None) + "\n"


# ---------------------------------------------------------------- dataset card

def dataset_stats(path: Path) -> tuple[Counter, Counter]:
    """Rows per bucket, and final gate rejections per reason (from ft gen's PATH.rejects.jsonl)."""
    buckets = Counter((r.get("meta") or {}).get("bucket") or "unlabelled" for r in read_dataset(path))
    rej_path = Path(f"{path}.rejects.jsonl")
    rejects = Counter(r.get("reason") for r in read_dataset(rej_path) if r.get("final", True)) \
        if rej_path.is_file() else Counter()
    return buckets, rejects


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def dataset_card(src: Source, *, repo: str) -> str:
    path = src.dataset
    rows = read_dataset(path)
    buckets, rejects = dataset_stats(path)
    metas = [r.get("meta") or {} for r in rows]

    def counts(key: str) -> Counter:
        return Counter(m[key] for m in metas if m.get(key) is not None)

    personas, providers, models, langs, seeds = (counts(k) for k in ("persona", "provider", "model", "lang", "seed"))
    topics = counts("topic")
    turns = Counter(sum(1 for m in r.get("messages") or [] if m.get("role") == "user") for r in rows)
    meta = {"tags": ["ft", "synthetic", "conversational"] + [f"persona-{p}" for p in personas],
            "task_categories": ["text-generation"], "size_categories": [_size_category(len(rows))],
            "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": path.name}]}]}
    facts = [("rows", len(rows)), ("sha256", sha256_file(path)),
             ("persona", ", ".join(personas) or None), ("provider", ", ".join(providers) or None),
             ("generator model", ", ".join(map(str, models)) or None),
             ("languages", ", ".join(f"{k} {v}" for k, v in langs.items()) or None),
             ("seed", ", ".join(map(str, seeds)) or None), ("topics", len(topics) or None),
             ("user turns per row", ", ".join(f"{k}: {v}" for k, v in sorted(turns.items())))]
    out = [f"# {path.stem}", "", f"Conversations generated by `ft gen` (ft {__version__}); card written by "
           "`ft card` from the rows and their rejects file.", "",
           "## Contents", "", _table(["", ""], [[k, v] for k, v in facts if v is not None]), "",
           "Rows per bucket:", "", _table(["bucket", "rows"], [[k, v] for k, v in buckets.most_common()])]
    if rejects:
        out += ["", "Answers rejected by ft gen's gates (final attempts, by reason):", "",
                _table(["reason", "rejected"], [[k, v] for k, v in rejects.most_common()])]
    example = rows[0]["messages"] if rows and rows[0].get("messages") else None
    out += ["", "## Format", "", "One JSON object a line: `messages` (OpenAI chat format) and `meta` "
            "(id, topic, group, bucket, lang, persona, provider, model, seed)."]
    if example:
        import json

        out += ["", "```json", json.dumps(example[:3], ensure_ascii=False, indent=1)[:1500], "```"]
    out += ["", "## How to use it", "", "```python", "from datasets import load_dataset",
            f"rows = load_dataset('{repo}', split='train')", "```", "", "```bash",
            f"ft train --model smollm2-135m --data {path.name}", "```", "", "## Limitations", "",
            "Synthetic: written by a model (or ft's offline phrase bank) in a persona's voice, filtered by ft's "
            "gates; it inherits the generator's errors and is not a record of real speech."]
    return _yaml(meta) + "\n" + "\n".join(out) + "\n"


# ---------------------------------------------------------------- the command

def write_card(src: Source, out: Path, *, repo: str, what: list[str] | None = None) -> Path:
    """Write the card at ``out``; a run's loss.png is referenced (and copied next to the card when needed)."""
    from ..jsonl import write_text_atomic

    if src.kind == "dataset":
        text = dataset_card(src, repo=repo)
    else:
        loss_ref = None
        png = src.run_dir / "loss.png" if src.run_dir else None
        if png and png.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            if out.parent.resolve() != png.parent.resolve():
                shutil.copy2(png, out.parent / "loss.png")
            loss_ref = "loss.png"
        text = model_card(src, repo=repo, loss_ref=loss_ref, what=what)
    write_text_atomic(out, text)
    return out


def default_out(src: Source) -> Path:
    return src.path.with_suffix(".README.md") if src.kind == "dataset" else src.path / "README.md"


def run(cfg: CardConfig, reporter: Reporter) -> dict:
    src = read_source(cfg.path, cfg.eval)
    repo = cfg.repo or src.name
    if cfg.out == "-":
        import sys

        text = dataset_card(src, repo=repo) if src.kind == "dataset" else model_card(
            src, repo=repo, loss_ref="loss.png" if src.run_dir and (src.run_dir / "loss.png").is_file() else None)
        sys.stdout.write(text)
        return None
    out = write_card(src, Path(cfg.out) if cfg.out else default_out(src), repo=repo)
    if src.eval_path:
        reporter.info(f"eval results: {src.eval_path}")
    reporter.result(f"card for {src.kind} {src.name}: {out}")
    return {"card": str(out), "kind": src.kind, "eval": str(src.eval_path) if src.eval_path else None}
