"""A focused, offline HF -> GGUF converter for Llama 2/3, Mistral, SmolLM, Qwen2/3, Gemma 3 (text), Phi-3/Phi-4.

    info = write_gguf(Path("merged/a"), Path("merged/a/gguf/model-q4_k_m.gguf"), "q4_k_m")

What llama.cpp's ``convert_hf_to_gguf.py`` + ``llama-quantize`` do for these architectures, and no more:
hyperparameters as ``{arch}.*`` keys; tensors renamed with gguf-py's ``TensorNameMap``; for the ``llama``
architecture the Q and K projections permuted from HF's rotate-half rope layout to llama.cpp's
interleaved one (transformers' GGUF loader applies the inverse on load); Gemma 3's RMSNorm weights stored
as ``1 + w`` (HF multiplies by ``1 + w``, llama.cpp by the stored weight), its key length, sliding window
and per-layer sliding pattern, local rope base; Phi-3's fused qkv and gate_up tensors as they are (llama.cpp
splits them at run time), its partial rope and original context length; the tokenizer as ``tokenizer.ggml.*`` (``gguf_vocab``:
byte-level BPE, or SentencePiece-style BPE as llama.cpp's "llama" tokenizer with scores). Tensors stream
from safetensors one at a time, so memory stays at one tensor.

Types: ``f16`` (2-D weights F16), ``q8_0`` (2-D weights Q8_0), ``q4_k_m`` (llama.cpp's mix: Q4_K, with
Q6_K for output.weight (or the tied token embedding) and for attn_v/ffn_down in the layers ``use_more_bits`` picks). 1-D tensors stay
F32. A row length that is not a multiple of the block size falls back as llama.cpp does (Q4_K -> Q5_0,
Q6_K -> Q8_0, else F16) and is reported. Any other architecture is refused in one line naming the
supported ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ExportError
from ..ui import NULL, Reporter

# HF model_type -> llama.cpp arch
ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3",
         "phi3": "phi3"}
FILE_TYPES = {"f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_k_m": "MOSTLY_Q4_K_M"}
# llama.cpp's fallback for rows that K-quant blocks (256) do not divide
FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0", "Q5_0": "F16", "Q8_0": "F16"}
_CHUNK = 1 << 22  # elements quantized at a time: bounds the quantizers' temporaries


@dataclass
class TensorPlan:
    hf_name: str
    name: str
    shape: tuple[int, ...]
    qtype: str  # F32 F16 Q8_0 Q5_0 Q4_K Q6_K
    wanted: str  # the type the recipe asked for (differs after a fallback)
    permute_heads: int | None = None
    shift: float = 0.0  # added to the weights: Gemma's norms are (1 + w) in HF, w in llama.cpp


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _recipe(kind: str, name: str, n_layers: int, tied: bool) -> str:
    if kind == "f16":
        return "F16"
    if kind == "q8_0":
        return "Q8_0"
    if name == "output.weight" or (tied and name == "token_embd.weight"):  # tied: the embedding is the output
        return "Q6_K"
    if name.endswith(("attn_v.weight", "ffn_down.weight")) and _use_more_bits(int(name.split(".")[1]), n_layers):
        return "Q6_K"
    return "Q4_K"


def _block(qtype: str) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][0]


def _fit(qtype: str, cols: int) -> str:
    while qtype not in ("F16", "F32") and cols % _block(qtype):
        qtype = FALLBACK[qtype]
    return qtype


def read_model_dir(model_dir: Path) -> tuple[dict, dict[str, Path]]:
    """``(config, {tensor name: safetensors file})`` for a saved HF model folder."""
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{model_dir}: no config.json, not a saved model")
    config = json.loads(cfg_path.read_text())
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        wm = json.loads(index.read_text())["weight_map"]
        return config, {k: model_dir / v for k, v in wm.items()}
    st = model_dir / "model.safetensors"
    if not st.is_file():
        raise ExportError(f"{model_dir}: no model.safetensors")
    from safetensors import safe_open

    with safe_open(str(st), "np") as f:
        return config, {k: st for k in f.keys()}


def tensor_shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes = {}
    for path in sorted(set(files.values())):
        with safe_open(str(path), "np") as f:
            shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k in files})
    return shapes


def plan(config: dict, shapes: dict[str, tuple[int, ...]], kind: str) -> list[TensorPlan]:
    """Which GGUF tensor each HF tensor (name -> shape) becomes, with which type."""
    import gguf

    model_type = config.get("model_type")
    arch = ARCHS.get(model_type)
    if arch is None:
        raise ExportError(f"GGUF export supports {', '.join(ARCHS)} models; this one is {model_type!r}"
                          + (" (Gemma 3 with vision: export the text model)" if model_type == "gemma3" else ""),
                          hint="use llama.cpp's convert_hf_to_gguf.py on the merged folder")
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    n_layers = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(arch_id, n_layers)
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    tied = config.get("tie_word_embeddings", False)
    out: list[TensorPlan] = []
    for hf_name in sorted(shapes, key=_order):
        if hf_name == "lm_head.weight" and tied:
            continue
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"GGUF export: no GGUF name for tensor {hf_name!r} ({model_type})")
        shape = tuple(shapes[hf_name])
        permute = None
        if arch == "llama" and (".attn_q." in name or ".attn_k." in name):
            permute = n_head if ".attn_q." in name else n_kv
        shift = 1.0 if arch == "gemma3" and hf_name.endswith("norm.weight") else 0.0
        if len(shape) == 1:
            qtype = wanted = "F32"
        else:
            wanted = _recipe(kind, name, n_layers, tied)
            qtype = _fit(wanted, shape[-1])
        out.append(TensorPlan(hf_name, name, shape, qtype, wanted, permute, shift))
    return out


def _order(hf_name: str) -> tuple:
    parts = hf_name.split(".")
    layer = next((int(p) for p in parts if p.isdigit()), -1)
    return (0 if "embed" in hf_name else 2 if layer < 0 else 1, layer, hf_name)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half rope layout -> llama.cpp's interleaved one (convert_hf_to_gguf ``LlamaModel.permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def transform(w: np.ndarray, p: TensorPlan) -> np.ndarray:
    """An HF tensor as llama.cpp lays it out (rope permutation, norm shift)."""
    if p.permute_heads:
        w = permute_qk(w, p.permute_heads)
    if p.shift:
        w = w + np.float32(p.shift)
    return w


def encode(w: np.ndarray, qtype: str) -> np.ndarray:
    """Float weights -> the bytes (or floats) GGUF stores for ``qtype``."""
    from gguf import GGMLQuantizationType, quants

    from . import kquants

    if qtype == "F32":
        return w.astype(np.float32)
    if qtype == "F16":
        return w.astype(np.float16)
    fn: Callable[[np.ndarray], np.ndarray]
    if qtype == "Q4_K":
        fn = kquants.quantize_q4_k
    elif qtype == "Q6_K":
        fn = kquants.quantize_q6_k
    else:
        t = GGMLQuantizationType[qtype]
        fn = lambda a: quants.quantize(a, t)  # noqa: E731
    rows = max(1, _CHUNK // w.shape[-1])
    return np.concatenate([fn(np.ascontiguousarray(w[i:i + rows], dtype=np.float32))
                           for i in range(0, w.shape[0], rows)])


def _nbytes(p: TensorPlan) -> tuple[tuple[int, ...], Any, int]:
    from gguf import GGMLQuantizationType
    from gguf.quants import quant_shape_to_byte_shape

    if p.qtype in ("F32", "F16"):
        dt = np.float32 if p.qtype == "F32" else np.float16
        return p.shape, dt, int(np.prod(p.shape)) * np.dtype(dt).itemsize
    shape = quant_shape_to_byte_shape(p.shape, GGMLQuantizationType[p.qtype])
    return shape, np.uint8, int(np.prod(shape))


def _rope_keys(w, arch: str, config: dict, head_dim: int) -> np.ndarray | None:
    """Rope hyperparameters; Llama 3.x's frequency scaling becomes a ``rope_freqs`` tensor, as llama.cpp does."""
    rope = dict(config.get("rope_parameters") or {})
    rope = dict(rope.get("full_attention", rope))  # Gemma 3: per layer type; the global layers' is the main one
    rope.update(config.get("rope_scaling") or {})
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    w.add_rope_freq_base(float(theta))
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind == "default":
        return None
    if kind == "linear":
        import gguf

        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))
        return None
    if kind == "llama3":
        factor, lo, hi = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
        old = rope.get("original_max_position_embeddings", 8192)
        freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
        out = []
        for f in freqs:
            wavelen = 2 * math.pi / f
            if wavelen < old / hi:
                out.append(1.0)
            elif wavelen > old / lo:
                out.append(factor)
            else:
                smooth = (old / wavelen - lo) / (hi - lo)
                out.append(1 / ((1 - smooth) / factor + smooth))
        return np.array(out, dtype=np.float32)
    raise ExportError(f"GGUF export: rope scaling {kind!r} is not supported by ft's converter",
                      hint="use llama.cpp's convert_hf_to_gguf.py on the merged folder")


def _gemma3_keys(w: Any, config: dict, head_dim: int) -> None:
    """What llama.cpp's gemma3 reads beyond the common keys (it scales embeddings by sqrt(hidden) itself)."""
    # llama.cpp scales queries by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 27B); HF by query_pre_attn_scalar
    scalar = config.get("query_pre_attn_scalar", head_dim)
    used = config["hidden_size"] // config["num_attention_heads"] if config["num_hidden_layers"] == 62 else head_dim
    if scalar != used:
        raise ExportError(f"GGUF export: query_pre_attn_scalar {scalar} is not the {used} llama.cpp's gemma3 "
                          "scales attention by: the file would compute a different model")
    if config.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    local = (config.get("rope_parameters") or {}).get("sliding_attention", {}).get("rope_theta",
                                                                                    config.get("rope_local_base_freq"))
    if local is not None:
        w.add_rope_freq_base_swa(float(local))
    types = config.get("layer_types")
    if config.get("sliding_window") and (types is None or "sliding_attention" in types):
        w.add_sliding_window(int(config["sliding_window"]))
        if types:  # explicit per layer, rather than llama.cpp's default (every 6th layer global)
            w.add_sliding_window_pattern([t == "sliding_attention" for t in types])


def _llama_cpp_safe_name(name: str, model_dir: Path, reporter: Reporter) -> str:
    """llama.cpp gives a model whose general.name contains "phi3" or "phi-3" Phi-3's token attributes and aborts
    ("unordered_map::at") when the vocabulary lacks one of Phi-3's tokens: such a name is written as phi_3."""
    low = name.lower()
    if "phi3" not in low and "phi-3" not in low:
        return name
    tj = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    have = set(tj["model"]["vocab"]) | {a["content"] for a in tj.get("added_tokens", [])}
    if {"</s>", "<unk>", "<s>", "<|endoftext|>"} <= have:
        return name
    import re

    safe = re.sub(r"(?i)phi-?3", lambda m: m.group(0)[:3] + "_3", name)
    reporter.warn(f"GGUF general.name {name!r} written as {safe!r}: llama.cpp treats names containing 'phi3' as "
                  "Phi-3's vocabulary and refuses this one")
    return safe


def write_gguf(model_dir: Path, out_path: Path, kind: str, *, reporter: Reporter = NULL,
               name: str | None = None, keep_pre: str | None = None) -> dict:
    """Write ``out_path`` from the merged HF folder; returns types used, fallbacks and bytes.

    ``name`` is ``general.name`` (the run's or model's name, never a temporary folder's); ``keep_pre`` the
    pre-tokenizer name of the GGUF the model came from, if it came from one."""
    import gguf
    from safetensors import safe_open

    from .gguf_vocab import add_tokenizer

    config, files = read_model_dir(model_dir)
    plans = plan(config, tensor_shapes(files), kind)
    arch = ARCHS[config["model_type"]]
    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    tmp = out_path.with_name(out_path.name + ".part")
    w = gguf.GGUFWriter(str(tmp), arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(_llama_cpp_safe_name(name or model_dir.name, model_dir, reporter))
    w.add_context_length(config.get("max_position_embeddings", 2048))
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    w.add_vocab_size(config["vocab_size"])
    rope_pct = (config.get("rope_parameters") or {}).get("partial_rotary_factor",
                                                         config.get("partial_rotary_factor", 1.0))
    w.add_rope_dimension_count(int(rope_pct * head_dim))
    if head_dim != config["hidden_size"] // n_head or arch == "gemma3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    rope_freqs = _rope_keys(w, arch, config, head_dim)
    if arch == "gemma3":
        _gemma3_keys(w, config, head_dim)
    if arch == "phi3":  # as llama.cpp's converter: 0 says "no sliding window" (Phi-4)
        w.add_rope_scaling_orig_ctx_len(int(config.get("original_max_position_embeddings")
                                            or config.get("max_position_embeddings", 4096)))
        w.add_sliding_window(int(config.get("sliding_window") or 0))
    w.add_file_type(int(getattr(gguf.LlamaFileType, FILE_TYPES[kind])))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tok_info = add_tokenizer(w, model_dir, config["vocab_size"], reporter, config=config, keep_pre=keep_pre)

    if rope_freqs is not None:
        plans.insert(0, TensorPlan("", "rope_freqs.weight", rope_freqs.shape, "F32", "F32"))
    for p in plans:
        shape, dt, nbytes = _nbytes(p)
        w.add_tensor_info(p.name, shape, np.dtype(dt), nbytes,
                          raw_dtype=None if p.qtype in ("F32", "F16") else gguf.GGMLQuantizationType[p.qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    with reporter.progress(f"writing {out_path.name}", total=len(plans)) as task:
        for p in plans:
            if not p.hf_name:
                data = rope_freqs
            else:
                with safe_open(str(files[p.hf_name]), "pt") as f:
                    data = f.get_tensor(p.hf_name).float().numpy()
                data = transform(data, p)
            w.write_tensor_data(encode(data, p.qtype))
            task.advance(1)
    w.close()
    tmp.replace(out_path)
    counts: dict[str, int] = {}
    for p in plans:
        counts[p.qtype] = counts.get(p.qtype, 0) + 1
    moved: dict[str, list[str]] = {}
    for p in plans:
        if p.wanted != p.qtype:
            moved.setdefault(f"{p.wanted}→{p.qtype}", []).append(p.name)
    fallbacks = [f"{len(v)} tensor(s) {k}: rows not a multiple of {_block(k.split('→')[0])} "
                 f"({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})" for k, v in sorted(moved.items())]
    return {"path": str(out_path), "type": kind, "tensor_types": counts, "fallbacks": fallbacks,
            "bytes": out_path.stat().st_size, **tok_info}
