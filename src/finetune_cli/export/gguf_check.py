"""Write each GGUF, load it back with a real GGUF reader, make it generate, measure its drift, write a Modelfile.

    report = export_gguf(Path("merged/a"), Path("merged/a/gguf"), ["f16", "q8_0", "q4_k_m"], texts=texts)

The reader is transformers' GGUF loader (gguf-py's parser and dequantizers: an independent reading of
the file, including the inverse Q/K permutation), plus llama-cpp-python when it is installed. Drift is
measured on the held-out conversations against the 16-bit merged model, token for token on the same
ids: mean KL(16-bit ‖ GGUF) per token, top-1 agreement and perplexity. KL is the number llama.cpp's
own ``llama-perplexity --kl-divergence`` reports; a sound Q8_0 is near 0.001 nats, a sound Q4_K_M on a
1-8B model a few hundredths, and a quantization that "turns into gibberish" is well above 0.1 (the
default ``--max-kl``). A file above the threshold is flagged, left out of the Modelfile, and ft exits 1.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from ..ui import NULL, Reporter
from .gguf_write import write_gguf

ORDER = ("q4_k_m", "q8_0", "f16")  # smallest first: the Modelfile uses the smallest file that passed


def _load_gguf(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    from ..models import quiet_gguf

    quiet_gguf()
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def drift(ref_logits: list[Any], model: Any, ids: list[Any]) -> dict:
    """KL(ref ‖ model), top-1 agreement, perplexities and |Δlogit| on the same token ids."""
    import torch

    kl_sum = agree = n = 0.0
    nll_ref = nll_q = 0.0
    n_pred = 0
    max_abs = 0.0
    with torch.no_grad():
        for ref, x in zip(ref_logits, ids):
            got = model(input_ids=x[None]).logits[0].float()
            if not torch.isfinite(got).all():
                return {"kl": math.inf, "top1_agreement": 0.0, "ppl_16bit": math.nan, "ppl_gguf": math.inf,
                        "max_abs_logit_diff": math.inf, "tokens": int(x.numel())}
            lp_ref, lp_q = ref.log_softmax(-1), got.log_softmax(-1)
            kl_sum += (lp_ref.exp() * (lp_ref - lp_q)).sum().item()
            agree += (ref.argmax(-1) == got.argmax(-1)).sum().item()
            n += ref.shape[0]
            tgt = x[1:]
            nll_ref -= lp_ref[:-1].gather(1, tgt[:, None]).sum().item()
            nll_q -= lp_q[:-1].gather(1, tgt[:, None]).sum().item()
            n_pred += tgt.numel()
            max_abs = max(max_abs, (got - ref).abs().max().item())
    return {"kl": kl_sum / n, "top1_agreement": agree / n, "ppl_16bit": math.exp(nll_ref / max(n_pred, 1)),
            "ppl_gguf": math.exp(nll_q / max(n_pred, 1)), "max_abs_logit_diff": max_abs, "tokens": int(n)}


def _generate(model: Any, tok: Any, prompt: str, n: int = 8) -> tuple[int, str]:
    import torch

    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id or 0,
                             eos_token_id=None)
    new = out[0, ids.shape[1]:]
    return int(new.numel()), tok.decode(new, skip_special_tokens=False)


def _tokenizer_agrees(path: Path, tok: Any, texts: list[str]) -> bool | None:
    """Does the tokenizer rebuilt from the GGUF metadata give the training tokenizer's ids?"""
    from transformers import AutoTokenizer

    from ..models import quiet_gguf

    quiet_gguf()
    try:
        g = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception:  # noqa: BLE001 - transformers cannot rebuild every GGUF tokenizer; llama.cpp reads it itself
        return None
    return all(g(t, add_special_tokens=False)["input_ids"] == tok(t, add_special_tokens=False)["input_ids"]
               for t in texts)


def _llama_cpp_check(path: Path, prompt: str) -> dict | None:
    """llama.cpp itself, when llama-cpp-python is installed: load, tokenize, generate a few tokens."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=512, verbose=False, seed=0)
    out = llm.create_completion(prompt, max_tokens=8, temperature=0.0)
    return {"reader": "llama.cpp", "text": out["choices"][0]["text"], "tokens": out["usage"]["completion_tokens"]}


def export_gguf(model_dir: Path, out_dir: Path, kinds: list[str], *, texts: list[str], max_kl: float = 0.1,
                system: str | None = None, reporter: Reporter = NULL) -> dict:
    """Write, reload, generate, measure drift, flag; then a Modelfile for the smallest file that passed."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .modelfile import write_modelfile
    from .verify import logits_on

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ref_model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = [tok(t, add_special_tokens=False, return_tensors="pt")["input_ids"][0][:256] for t in texts]
    ref = logits_on(ref_model, tok, texts)
    del ref_model
    gc.collect()
    prompt = texts[0]
    if getattr(tok, "chat_template", None):
        from .verify import BUILTIN_CHATS

        msgs = ([{"role": "system", "content": system}] if system else []) + BUILTIN_CHATS[0][:1]
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    files = []
    for kind in sorted(kinds, key=ORDER.index):
        path = out_dir / f"model-{kind}.gguf"
        info = write_gguf(model_dir, path, kind, reporter=reporter, name=model_dir.name)
        for fb in info["fallbacks"]:
            reporter.info(f"  {kind}: {fb}")
        model = _load_gguf(path)
        n_new, sample = _generate(model, tok, prompt)
        d = drift(ref, model, ids)
        del model
        gc.collect()
        info.update(d)
        info["reader"] = "transformers (gguf-py)"
        info["generated_tokens"], info["sample"] = n_new, sample
        info["tokenizer_agrees"] = _tokenizer_agrees(path, tok, texts)
        info["llama_cpp"] = _llama_cpp_check(path, prompt)
        info["flagged"] = not (d["kl"] <= max_kl) or n_new == 0
        mib = info["bytes"] / 2 ** 20
        reporter.info(f"{path.name}: {mib:.1f} MiB, reloaded and generated {n_new} tokens; drift vs 16-bit: "
                      f"KL {d['kl']:.4g} nats/token, top-1 agreement {d['top1_agreement']:.1%}, perplexity "
                      f"{d['ppl_gguf']:.4g} vs {d['ppl_16bit']:.4g}")
        if info["flagged"]:
            reporter.warn(f"this {kind} differs badly: do not ship it (KL {d['kl']:.3g} > --max-kl {max_kl:g})")
        if info["tokenizer_agrees"] is False:
            reporter.warn(f"{path.name}: the tokenizer transformers rebuilds from it splits text differently from "
                          "the training tokenizer (transformers' GGUF tokenizer support is partial; llama.cpp "
                          "reads the same keys with its own tokenizer)")
        files.append(info)
    passed = [f for f in files if not f["flagged"]]
    modelfile = None
    if passed:
        modelfile = write_modelfile(out_dir, Path(passed[0]["path"]).name, tok, system, reporter)
    else:
        reporter.warn("no GGUF passed the drift check: no Modelfile written")
    return {"files": files, "modelfile": str(modelfile) if modelfile else None, "max_kl": max_kl}
