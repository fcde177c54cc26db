"""Write each GGUF, load it back with a real GGUF reader, make it generate, measure its drift, write a Modelfile.

    report = export_gguf(Path("merged/a"), Path("merged/a/gguf"), ["f16", "q8_0", "q4_k_m"], texts=texts)

The readers are transformers' GGUF loader (gguf-py's parser and dequantizers: an independent reading of
the file, including the inverse Q/K permutation) and llama.cpp itself when llama-cpp-python is installed
(``llama_cpp.py``: the program users run the file in; without it the check is reported skipped). Drift is
measured on the held-out conversations against the 16-bit merged model, token for token on the same
ids: mean KL(16-bit ‖ GGUF) per token, top-1 agreement and perplexity. KL is the number llama.cpp's
own ``llama-perplexity --kl-divergence`` reports; a sound Q8_0 is near 0.001 nats, a sound Q4_K_M on a
1-8B model a few hundredths, and a quantization that "turns into gibberish" is well above 0.1 (the
default ``--max-kl``). A file above the threshold is flagged, left out of the Modelfile, and ft exits 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..ui import NULL, Reporter
from .gguf_write import write_gguf
from .verify import drift  # noqa: F401  (tests and callers read it here too)

ORDER = ("q4_k_m", "q8_0", "f16")  # smallest first: the Modelfile uses the smallest file that passed


def _load_gguf(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    from ..models import quiet_gguf

    quiet_gguf()
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def _generate(model: Any, tok: Any, prompt: str, n: int = 8) -> tuple[int, str]:
    import torch

    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id or 0,
                             eos_token_id=None)
    new = out[0, ids.shape[1]:]
    return int(new.numel()), tok.decode(new, skip_special_tokens=False)


def _tokenizer_agrees(path: Path, tok: Any, texts: list[str]) -> bool | None:
    """Does the tokenizer rebuilt from the GGUF metadata give the training tokenizer's ids? None where
    transformers cannot rebuild it: Gemma's SentencePiece vocabulary it rebuilds as a Unigram model that splits
    text otherwise than llama.cpp and the real tokenizer (262k tokens, ~20 s, and a false alarm every time)."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from ..models import is_gemma_sentencepiece, quiet_gguf

    if is_gemma_sentencepiece(GGUFReader(str(path)).fields):
        return None
    quiet_gguf()
    try:
        g = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception:  # noqa: BLE001 - transformers cannot rebuild every GGUF tokenizer; llama.cpp reads it itself
        return None
    return all(g(t, add_special_tokens=False)["input_ids"] == tok(t, add_special_tokens=False)["input_ids"]
               for t in texts)


def _hf_logits(model: Any):
    return lambda x: model(input_ids=x[None]).logits[0].float()


def _reference(model: Any, tok: Any, texts: list[str], ids: list[Any], ref: list[Any], prompt: str,
               max_new: int) -> Any:
    """The 16-bit model's side of the llama.cpp comparison: its greedy answer to the chat prompt."""
    import torch

    from ..chat_template import end_of_turn
    from .llama_cpp import Reference

    end_ids = sorted({i for i in (tok.eos_token_id, (end_of_turn(tok) or (None, None))[1]) if i is not None})
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new, do_sample=False,
                             eos_token_id=end_ids, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                             else end_ids[0])
    greedy = out[0, len(prompt_ids):].tolist()
    for n, t in enumerate(greedy):
        if t in end_ids:
            greedy = greedy[:n + 1]
            break
    return Reference(texts=texts, ids=ids, logits=ref, prompt_ids=prompt_ids, greedy_ids=greedy, end_ids=end_ids)


def _llama_cpp(path: Path, tok: Any, reference: Any, max_new: int, reporter: Reporter) -> dict:
    from ..errors import ExportError
    from . import llama_cpp

    try:
        res = llama_cpp.check(path, tok, reference, max_new=max_new)
    except ExportError as e:
        reporter.warn(str(e))
        return {"status": "failed", "error": str(e)}
    stop = f"stopped on {res['stop_token']}" if res["stopped"] else f"no end token in {res['generated_tokens']}"
    reporter.info(f"  llama.cpp: loaded; tokenizer {'agrees' if res['tokenizer_agrees'] else 'DIFFERS'}; KL "
                  f"{res['kl']:.4g}, top-1 {res['top1_agreement']:.1%}, perplexity {res['ppl_gguf']:.4g} vs "
                  f"{res['ppl_16bit']:.4g}; greedy next-token agreement {res['greedy_next_token_agreement']:.1%} "
                  f"over {res['greedy_steps']} steps; its own greedy answer {stop}")
    if not res["tokenizer_check_text_agrees"]:
        reporter.warn(f"{path.name}: llama.cpp splits its own pre-tokenizer check text differently from the "
                      "training tokenizer (rare scripts or emoji may tokenize differently)")
    return res


def export_gguf(model_dir: Path, out_dir: Path, kinds: list[str], *, texts: list[str], max_kl: float = 0.1,
                system: str | None = None, reporter: Reporter = NULL, name: str | None = None,
                keep_pre: str | None = None, max_new: int = 128, llama_check: bool = True) -> dict:
    """Write, reload (transformers and llama.cpp), generate, measure drift, flag; then a Modelfile for the
    smallest file that passed. ``name``: general.name; ``keep_pre``: the source GGUF's pre-tokenizer name."""
    from . import llama_cpp

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
    prompt = texts[0]
    if getattr(tok, "chat_template", None):
        from .verify import BUILTIN_CHATS

        msgs = ([{"role": "system", "content": system}] if system else []) + BUILTIN_CHATS[0][:1]
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    skipped = llama_cpp.unavailable() if llama_check else "turned off (--no-llama-cpp)"
    reference = None if skipped else _reference(ref_model, tok, texts, ids, ref, prompt, max_new)
    if skipped:
        reporter.warn(f"llama.cpp check skipped: {skipped}")
    del ref_model
    gc.collect()
    files = []
    for kind in sorted(kinds, key=ORDER.index):
        path = out_dir / f"model-{kind}.gguf"
        info = write_gguf(model_dir, path, kind, reporter=reporter, name=name or model_dir.name, keep_pre=keep_pre)
        for fb in info["fallbacks"]:
            reporter.info(f"  {kind}: {fb}")
        model = _load_gguf(path)
        n_new, sample = _generate(model, tok, prompt)
        d = drift(ref, _hf_logits(model), ids)
        del model
        gc.collect()
        info.update(d)
        info["reader"] = "transformers (gguf-py)"
        info["generated_tokens"], info["sample"] = n_new, sample
        info["tokenizer_agrees"] = _tokenizer_agrees(path, tok, texts)
        lc = ({"status": "skipped", "reason": skipped} if skipped
              else _llama_cpp(path, tok, reference, max_new, reporter))
        space = info.get("add_space_prefix")
        if space and space["start"] != space["after_special"]:
            where = ("the start of a text but not text after a special token" if space["start"] else
                     "text after a special token but not the start of a text")
            reporter.warn(f"{path.name}: the training tokenizer prefixes a space to {where}; llama.cpp does both "
                          "or neither, so tokenizer.ggml.add_space_prefix follows the text after special "
                          "tokens (all of a chat) and a text that opens without one gets another first token")
        info["llama_cpp"] = lc
        info["flagged"] = not (d["kl"] <= max_kl) or n_new == 0 or lc["status"] == "failed" or (
            lc["status"] == "ok" and (not lc["tokenizer_agrees"] or not lc["kl"] <= max_kl))
        mib = info["bytes"] / 2 ** 20
        reporter.info(f"{path.name}: {mib:.1f} MiB, reloaded and generated {n_new} tokens; drift vs 16-bit: "
                      f"KL {d['kl']:.4g} nats/token, top-1 agreement {d['top1_agreement']:.1%}, perplexity "
                      f"{d['ppl_gguf']:.4g} vs {d['ppl_16bit']:.4g}")
        if info["flagged"]:
            why = (f"llama.cpp {lc['status']}" if lc["status"] == "failed" else
                   f"llama.cpp tokenizes differently from training, {lc['tokenizer_first_difference']}"
                   if lc["status"] == "ok" and not lc["tokenizer_agrees"]
                   else f"KL {max(d['kl'], lc.get('kl', 0.0)):.3g} > --max-kl {max_kl:g}")
            reporter.warn(f"this {kind} differs badly: do not ship it ({why})")
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
    return {"files": files, "modelfile": str(modelfile) if modelfile else None, "max_kl": max_kl,
            "llama_cpp": "skipped: " + skipped if skipped else "checked"}
