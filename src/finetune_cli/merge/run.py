"""``ft merge``'s run: merge or copy the adapter, verify, write GGUFs (the package docstring has the examples)."""

from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

from .config import GGUF_TYPES, MergeConfig  # noqa: F401  (GGUF_TYPES: part of this module's API)
from ..errors import ConfigError, ExportError
from ..ui import Reporter, human_size as _size

def _prepare_out(out: Path, force: bool) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(f"--out {out}: already exists and is not empty", hint="pick another --out or add --force")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    from ..files import umask_modes

    umask_modes(tmp)  # safetensors writes 0600
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(tmp, out)


def _files(out: Path) -> list[dict]:
    return [{"path": str(p), "bytes": p.stat().st_size} for p in sorted(out.rglob("*")) if p.is_file()]


def _report_diff(reporter: Reporter, label: str, d, dtype: str) -> dict:
    r = d.as_dict(dtype)
    verdict = "ok" if r["ok"] else "FAILED"
    reporter.info(f"verify {label}: max |Δlogit| {d.max_abs:.3g} (tolerance {r['max_tolerance']:.3g}), mean "
                  f"{d.mean_abs:.3g} (tolerance {r['mean_tolerance']:.3g}) over {d.tokens} tokens, logit scale "
                  f"{d.scale:.3g}: {verdict}")
    return r


def _export_adapter(cfg, src, ref, tok, tmp, texts, reporter) -> dict:
    from .weights import save_adapter_only
    from .verify import compare, logits_on

    names = save_adapter_only(src, tok, tmp, reporter)
    result: dict = {"kind": "adapter", "files": names}
    if cfg.verify:
        from peft import PeftModel

        want = logits_on(ref, tok, texts)
        base = ref.unload()  # the same base weights, adapter removed
        again = PeftModel.from_pretrained(base, str(tmp)).eval()
        d = compare(want, logits_on(again, tok, texts))
        result["verify"] = {"reload_peft": _report_diff(reporter, "adapter reloaded with peft", d, "merge")}
        if not d.ok("merge"):
            raise ExportError("the exported adapter does not reproduce base+adapter when reloaded with peft")
    return result


def _export_merged(cfg, src, ref, tok, tmp, texts, reporter, device) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from ..models import resolve_model
    from .weights import merge, save_merged
    from .verify import compare, logits_on

    result: dict = {"kind": "merged", "dtype": cfg.dtype}
    verify: dict = {}
    with reporter.progress("merging and verifying", total=4) as task:
        want = logits_on(ref, tok, texts) if cfg.verify else None
        task.advance(1)
        merged = merge(ref, src)
        if cfg.verify:
            d = compare(want, logits_on(merged, tok, texts))
            verify["merge_fp32"] = _report_diff(reporter, "fp32 merge vs base+adapter", d, "merge")
            if not d.ok("merge"):
                raise ExportError(f"the merged weights do not reproduce base+adapter (max |Δlogit| {d.max_abs:.3g} "
                                  f"in fp32, tolerance {verify['merge_fp32']['max_tolerance']:.3g}): nothing written")
        task.advance(1)
        base_dir = resolve_model(src.base) if src.kind == "adapter" else str(src.path)
        info = save_merged(merged, tok, tmp, dtype=cfg.dtype, src=src, base_dir=base_dir)
        del merged, ref
        gc.collect()
        task.advance(1)
        if cfg.verify:  # the files as a user loads them: plain transformers, the saved dtype
            again = AutoModelForCausalLM.from_pretrained(str(tmp), trust_remote_code=cfg.trust_remote_code).eval()
            if again.dtype != getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[cfg.dtype]):
                raise ExportError(f"the saved model reloads as {again.dtype}, not {cfg.dtype}")
            if device == "cpu":  # CPU half-precision matmuls are slow: upcast, so only the files' rounding is measured
                again = again.float()
            d = compare(want, logits_on(again.to(device), tok, texts))
            verify[f"saved_{cfg.dtype}"] = _report_diff(reporter, f"saved {cfg.dtype} vs base+adapter", d, cfg.dtype)
            del again
            if not d.ok(cfg.dtype):
                raise ExportError(f"the saved {cfg.dtype} model differs from base+adapter past the tolerance (max "
                                  f"|Δlogit| {d.max_abs:.3g}, mean {d.mean_abs:.3g}): nothing written",
                                  hint="try --dtype bf16" if cfg.dtype == "fp16" else None)
        task.advance(1)
    result.update(info)
    result["verify"] = verify
    return result


def _retarget(obj, tmp: Path, out: Path):
    """``obj`` with every path under the temporary folder pointed at where it is published."""
    if isinstance(obj, dict):
        return {k: _retarget(v, tmp, out) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_retarget(v, tmp, out) for v in obj]
    if isinstance(obj, str) and obj.startswith(str(tmp)):
        return str(out) + obj[len(str(tmp)):]
    return obj


def _source_pre(src) -> str | None:
    """The pre-tokenizer name of the GGUF the base model was dequantized from, if it was (kept as it was)."""
    import json

    from ..models import resolve_model

    base = resolve_model(src.base) if src.kind == "adapter" and src.base else str(src.path)
    record = Path(base) / "ft_source.json"
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text(encoding="utf-8")).get("tokenizer_pre")
    except (OSError, ValueError) as e:
        raise ExportError(f"{record}: unreadable ({e})") from None


def run(cfg: MergeConfig, reporter: Reporter) -> dict:
    from ..models import default_device
    from .weights import find_source, load_reference
    from .verify import sample_texts

    src = find_source(run=cfg.run, adapter=cfg.adapter, base=cfg.base)
    out = Path(cfg.out)
    device = default_device() if cfg.device == "auto" else cfg.device
    what = "adapter-only export" if cfg.adapter_only else f"{src.method} merge → {cfg.dtype}"
    reporter.info(f"ft merge: {src.path} on {src.base or '(full model)'}: {what} → {out}")
    if src.method == "qlora" and not cfg.adapter_only:
        reporter.info("QLoRA adapter: merged into the 16-bit base weights (never into 4-bit ones)")
    tmp = _prepare_out(out, cfg.force)
    try:
        ref, tok = load_reference(src, device=device, reporter=reporter, trust_remote_code=cfg.trust_remote_code)
        texts = sample_texts(tok, run_dir=src.run_dir, n=cfg.samples, system=src.run.get("system_prompt"))
        if cfg.adapter_only:
            result = _export_adapter(cfg, src, ref, tok, tmp, texts, reporter)
        else:
            result = _export_merged(cfg, src, ref, tok, tmp, texts, reporter, device)
            if cfg.gguf_types:
                from .gguf_check import export_gguf

                result["gguf"] = export_gguf(tmp, tmp / "gguf", cfg.gguf_types, texts=texts, max_kl=cfg.max_kl,
                                             system=src.run.get("system_prompt"), reporter=reporter,
                                             name=src.run.get("name") or out.name, keep_pre=_source_pre(src),
                                             llama_check=cfg.llama_cpp)
                from ..jsonl import write_json_atomic

                result["gguf"] = _retarget(result["gguf"], tmp, out)  # paths as published, not the temporary folder
                write_json_atomic(tmp / "gguf" / "ft_gguf.json", result["gguf"])  # drift figures, for ft card
        from ..config import config_record
        from ..jsonl import write_json_atomic

        write_json_atomic(tmp / "ft_config.json", config_record(cfg, gguf=cfg.gguf_types, device=device))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = _files(out)
    reporter.table(f"ft merge: wrote {out}", ["file", "size"],
                   [[str(Path(f["path"]).relative_to(out)), _size(f["bytes"])] for f in files])
    result.update({"out": str(out), "source": str(src.path), "base_model": src.base, "method": src.method,
                   "files": files, "total_bytes": sum(f["bytes"] for f in files)})
    flagged = [g["type"] for g in result.get("gguf", {}).get("files", []) if g.get("flagged")]
    if flagged:
        result["exit_code"] = 1
    return result
