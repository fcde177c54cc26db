"""Base + LoRA / DoRA / rsLoRA -> one merged 16-bit model a user can serve, and the adapter-only export.

    src = find_source(run="runs/a")                     # or adapter="out/adapter", base="tiny"
    ref, tok = load_reference(src)                      # fp32 base with the adapter applied (unmerged)
    merged = ref.merge_and_unload()                     # fp32 math: DoRA/rsLoRA scaling included by peft
    save_merged(merged, tok, out, dtype="bf16", src=src)

The base is loaded in fp32 for the merge, whatever the adapter was trained on: a QLoRA adapter is merged
into the 16-bit base weights, never into 4-bit ones (merging into dequantized NF4 bakes quantization noise
into every weight). The saved folder carries the tokenizer and chat template used in training and a
generation config whose EOS ids are the template's end of turn plus the tokenizer's EOS, so vLLM and
``generate`` stop where training taught the model to stop.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError, ExportError
from ..files import check_readable
from ..rundir import RunDir
from ..ui import NULL, Reporter

DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(.+?)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
                       r"lora_magnitude_vector)(?:\.weight)?$")
# what a clean adapter folder keeps (vLLM --enable-lora, PeftModel.from_pretrained)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


@dataclass
class Source:
    """What ``ft merge`` exports: an adapter on a base, or a fully fine-tuned model."""

    kind: str  # adapter | full
    path: Path  # the adapter dir, or the full model dir
    base: str | None = None
    run_dir: Path | None = None
    run: dict = field(default_factory=dict)
    adapter_config: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        if self.run.get("method"):
            return self.run["method"]
        if self.kind == "full":
            return "full"
        c = self.adapter_config
        return "dora" if c.get("use_dora") else "rslora" if c.get("use_rslora") else "lora"


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"unreadable {what} ({e})", path=str(path)) from None


def find_source(*, run: str | None = None, adapter: str | None = None, base: str | None = None) -> Source:
    """Validate ``--run`` / ``--adapter`` / ``--base`` into a :class:`Source`; bad input is one clear line."""
    if bool(run) == bool(adapter):
        raise ConfigError("pass exactly one of --run RUN_DIR or --adapter DIR",
                          hint="e.g. ft merge --run runs/a --out merged/a")
    if run:
        rd = RunDir(run)
        if not rd.run_json.is_file():
            raise ConfigError(f"--run {run}: not a run directory (no run.json)",
                              hint="ft train writes runs/<name>/run.json; for a bare adapter use --adapter DIR")
        info = rd.record()
        if (rd.adapter / "adapter_config.json").is_file():
            return Source("adapter", rd.adapter, base or info.get("base_model"), rd.path, info,
                          _read_json(rd.adapter / "adapter_config.json", "adapter config"))
        if (rd.model / "config.json").is_file():
            return Source("full", rd.model, base or info.get("base_model"), rd.path, info)
        raise ConfigError(f"--run {run}: the run has no adapter/ or model/ (status: {info.get('status')})",
                          hint="a run still training or stopped early: use --adapter RUN/checkpoints/checkpoint-N")
    ad = Path(adapter)
    if not ad.is_dir():
        raise ConfigError(f"--adapter {adapter}: no such directory")
    if not (ad / "adapter_config.json").is_file():
        hint = "this looks like a full model: merge needs an adapter" if (ad / "config.json").is_file() else \
            "an adapter folder has adapter_config.json and adapter_model.safetensors"
        raise ConfigError(f"--adapter {adapter}: no adapter_config.json in it", hint=hint)
    if not any((ad / n).is_file() for n in ("adapter_model.safetensors", "adapter_model.bin")):
        raise ConfigError(f"--adapter {adapter}: no adapter_model.safetensors in it")
    acfg = _read_json(ad / "adapter_config.json", "adapter config")
    rd = RunDir.find(ad)  # runs/a/adapter or runs/a/checkpoints/checkpoint-N: the run's prompt, template, rows
    run_info = rd.record() if rd else {}
    base = base or run_info.get("base_model") or acfg.get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"--adapter {adapter}: the adapter does not name its base model", hint="pass --base MODEL")
    return Source("adapter", ad, base, rd.path if rd else None, run_info, acfg)


def _adapter_tensors(adapter_dir: Path) -> dict[str, tuple[int, ...]]:
    st = adapter_dir / "adapter_model.safetensors"
    if st.is_file():
        from safetensors import safe_open

        check_readable(st)
        with safe_open(str(st), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    sd = load_adapter_bin(adapter_dir / "adapter_model.bin")
    return {k: tuple(v.shape) for k, v in sd.items()}


def load_adapter_bin(path: Path) -> dict:
    """A pickled adapter's tensors, through torch's ``weights_only`` unpickler (tensors and plain
    containers; a pickle that would build anything else, run code included, is refused)."""
    import pickle

    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(f"{path}: refused: the pickle holds more than tensors, and unpickling it could run code",
                          hint="use an adapter saved as adapter_model.safetensors") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"damaged file ({why})", path=str(path)) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"{path}: refused: not a dict of tensors")
    return sd


def check_adapter_fits(adapter_dir: Path, model: Any, base: str) -> int:
    """Every adapter tensor must land on a base module of the right shape; returns the LoRA module count.

    peft skips adapter keys that match nothing with at most a warning, which makes a merge onto the wrong
    base "succeed" as a silent no-op; a size mismatch surfaces as a long state-dict trace.
    """
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    lora_modules = set()
    for key, shape in _adapter_tensors(adapter_dir).items():
        m = _LORA_KEY.match(key)
        if m is None:  # modules_to_save / trained embeddings: a full tensor of the base's shape
            name = key.removeprefix("base_model.model.").replace(".modules_to_save", "")
            want = params.get(name)
            if want is not None and tuple(want.shape) != shape:
                raise ConfigError(f"adapter {adapter_dir} does not fit base {base}: {name} is {list(shape)} in the "
                                  f"adapter but {list(want.shape)} in the base", hint="pass the right --base")
            continue
        path, part = m.group(1), m.group(2)
        mod = modules.get(path)
        if mod is None:
            raise ConfigError(f"adapter {adapter_dir} does not fit base {base}: the base has no module {path}",
                              hint="the adapter was trained on another model: pass the right --base")
        lora_modules.add(path)
        in_f, out_f = getattr(mod, "in_features", None), getattr(mod, "out_features", None)
        bad = (part == "lora_A" and in_f is not None and shape[-1] != in_f) or \
              (part == "lora_B" and out_f is not None and shape[0] != out_f) or \
              (part == "lora_magnitude_vector" and out_f is not None and shape[0] != out_f)
        if bad:
            raise ConfigError(f"adapter {adapter_dir} does not fit base {base}: {path} is {in_f}→{out_f} in the "
                              f"base but the adapter's {part} is {list(shape)}",
                              hint="the adapter was trained on another model: pass the right --base")
    if not lora_modules:
        raise ConfigError(f"adapter {adapter_dir}: no LoRA weights in it")
    return len(lora_modules)


def load_tokenizer(path: Path, *, trust_remote_code: bool = False, name: str | None = None):
    """The tokenizer saved with the adapter/model: it carries the chat template used in training."""
    from transformers import AutoTokenizer

    from ..models import refuse_remote_code

    refuse_remote_code(path, name or str(path), trust_remote_code)
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: no usable tokenizer saved with it ({str(e).splitlines()[0]})") from None


def load_reference(src: Source, *, device: str = "cpu", reporter: Reporter = NULL, trust_remote_code: bool = False):
    """``(model, tokenizer)``: fp32 base with the adapter applied but not merged (or the full model)."""
    import torch

    from ..models import load_model

    if src.kind == "adapter" and not any((src.path / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        from ..models import resolve_model

        reporter.warn(f"{src.path} has no tokenizer saved with it: using the base's (and its chat template)")
        tok = load_tokenizer(Path(resolve_model(src.base, reporter)), trust_remote_code=trust_remote_code,
                             name=src.base)
    else:
        tok = load_tokenizer(src.path, trust_remote_code=trust_remote_code)
    from ..chat_template import set_thinking

    set_thinking(tok, src.run.get("thinking"))  # the run's --thinking: the merged model serves as it trained
    if src.kind == "full":
        for weights in sorted(src.path.glob("*.safetensors")):
            check_readable(weights)
        model, _ = load_model(str(src.path), dtype=torch.float32, device=device, trust_remote_code=trust_remote_code)
        return model.eval(), tok
    from peft import PeftModel

    if src.adapter_config.get("base_model_name_or_path") and src.base != src.adapter_config["base_model_name_or_path"]:
        reporter.info(f"base: {src.base} (the adapter was saved against "
                      f"{src.adapter_config['base_model_name_or_path']})")
    model, _ = load_model(src.base, dtype=torch.float32, device=device, reporter=reporter,
                          trust_remote_code=trust_remote_code)
    if len(tok) > model.get_input_embeddings().weight.shape[0]:  # tokens added in training
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    check_adapter_fits(src.path, model, src.base)
    try:
        model = PeftModel.from_pretrained(model, str(src.path), torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ConfigError(f"adapter {src.path}: peft could not load it onto {src.base} "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return model.to(device).eval(), tok


def merge(model: Any, src: Source) -> Any:
    """Fold the adapter into the fp32 weights (peft applies LoRA/rsLoRA scaling and DoRA's magnitudes)."""
    return model if src.kind == "full" else model.merge_and_unload(progressbar=False, safe_merge=True)


def generation_config_for(tok, base_dir: str | None):
    """The base's sampling defaults, with EOS = the template's end of turn + the tokenizer's EOS."""
    from transformers import GenerationConfig

    from ..chat_template import eos_token_ids

    gen = None
    if base_dir and Path(base_dir).is_dir():
        try:
            gen = GenerationConfig.from_pretrained(base_dir)
        except OSError:
            gen = None
    gen = gen or GenerationConfig()
    ids = eos_token_ids(tok)
    if not ids:
        raise ExportError("the tokenizer has no EOS token and the chat template no end-of-turn token: a served "
                          "model would never stop", hint="train with --chat-template chatml")
    gen.eos_token_id = ids if len(ids) > 1 else ids[0]
    gen.pad_token_id = tok.pad_token_id
    gen.bos_token_id = tok.bos_token_id
    return gen


def _heldout(src: Source) -> dict:
    """Which held-out rows verification sampled (verify.sample_texts draws from them first)."""
    rd = RunDir(src.run_dir) if src.run_dir else None
    rows = rd.heldout_rows() if rd else []
    return {"heldout": str(rd.heldout_path) if rows else None, "heldout_rows": len(rows)}


def save_merged(model: Any, tok: Any, out: Path, *, dtype: str, src: Source, base_dir: str | None) -> dict:
    """Write safetensors + config + tokenizer/template + generation config + ft_merge.json into ``out``."""
    import torch

    gen = generation_config_for(tok, base_dir)
    model = model.to(getattr(torch, DTYPES[dtype]))
    model.generation_config = gen
    model.config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.config.bos_token_id = tok.bos_token_id
    if hasattr(model.config, "quantization_config"):  # a QLoRA base: the merged weights are plain 16-bit
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    if getattr(tok, "chat_template", None) and not (out / "chat_template.jinja").is_file():
        (out / "chat_template.jinja").write_text(tok.chat_template, encoding="utf-8")
    info = {"base_model": src.base, "source": str(src.path), "run": str(src.run_dir) if src.run_dir else None,
            "method": src.method, "dtype": dtype, "eos_token_ids": gen.eos_token_id,
            "system_prompt": src.run.get("system_prompt"), "chat_template": src.run.get("chat_template"),
            "thinking": src.run.get("thinking"), **_heldout(src)}
    (out / "ft_merge.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info


def save_adapter_only(src: Source, tok: Any, out: Path, reporter: Reporter = NULL) -> list[str]:
    """A clean adapter folder for ``vllm serve BASE --enable-lora --lora-modules name=DIR`` and peft."""
    if src.kind != "adapter":
        raise ConfigError("--adapter-only: this run is a full fine-tune, it has no adapter",
                          hint="drop --adapter-only to export the model")
    out.mkdir(parents=True, exist_ok=True)
    if (src.path / "adapter_model.safetensors").is_file():
        shutil.copy2(src.path / "adapter_model.safetensors", out / "adapter_model.safetensors")
    else:  # outputs hold no pickles: a .bin adapter is written as safetensors
        from safetensors.torch import save_file

        sd = load_adapter_bin(src.path / "adapter_model.bin")
        save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, str(out / "adapter_model.safetensors"),
                  metadata={"format": "pt"})
    acfg = dict(src.adapter_config)
    acfg["base_model_name_or_path"] = src.base
    acfg["inference_mode"] = True
    (out / "adapter_config.json").write_text(json.dumps(acfg, indent=2), encoding="utf-8")
    tok.save_pretrained(out)
    if getattr(tok, "chat_template", None) and not (out / "chat_template.jinja").is_file():
        (out / "chat_template.jinja").write_text(tok.chat_template, encoding="utf-8")
    if acfg.get("use_dora"):
        reporter.warn("vLLM's --enable-lora does not serve DoRA adapters: serve the merged model instead")
    if acfg.get("modules_to_save") or any(_LORA_KEY.match(k) is None for k in _adapter_tensors(out)):
        reporter.warn("this adapter carries full embedding/lm_head weights (tokens added in training): "
                      "vLLM's LoRA loader may reject them; the merged model serves everywhere")
    return sorted(p.name for p in out.iterdir())
