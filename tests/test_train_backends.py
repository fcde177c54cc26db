"""Backend choice: auto picks hf without CUDA/Unsloth; unsloth refuses to run unpatched or without a GPU; what
ft asks of Unsloth when it loads (a stand-in on the CPU)."""

import sys

import pytest

from finetune_cli.errors import ConfigError
from finetune_cli.train.run import pick_backend


def test_auto_picks_hf_without_cuda():
    assert pick_backend("auto") == "hf"
    assert pick_backend("hf") == "hf"


def test_unsloth_without_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match="Unsloth needs a CUDA GPU"):
        pick_backend("unsloth")


def test_unsloth_refuses_when_transformers_came_first(monkeypatch):
    import transformers  # noqa: F401

    from finetune_cli.train.backend_unsloth import import_unsloth

    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    with pytest.raises(ConfigError, match="transformers was imported before Unsloth"):
        import_unsloth()


def test_unsloth_collator_adds_sequence_lengths():
    from finetune_cli.train.backend_unsloth import Collator

    batch = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}]
    out = Collator(pad_id=0, padding_free=True)(batch)
    assert out["packed_seq_lengths"].tolist() == [3, 2]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert out["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    assert "packed_seq_lengths" not in Collator(pad_id=0, padding_free=False)(batch)


def test_unsloth_collator_drops_an_all_ones_mask_only():
    from finetune_cli.train.backend_unsloth import Collator

    same = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9, 4], "labels": [8, 9, 4]}]
    assert "attention_mask" not in Collator(pad_id=0, padding_free=False)(same)
    ragged = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    out = Collator(pad_id=0, padding_free=False)(ragged)
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]


def test_unsloth_pads_without_a_varlen_kernel(monkeypatch):
    """Unsloth's own verdict decides, not whether a package is installed (an xformers built for another
    torch imports, and Unsloth falls back to SDPA)."""
    import sys
    import types

    from finetune_cli.train import backend_unsloth

    ad = types.SimpleNamespace(HAS_FLASH_ATTENTION=False, HAS_XFORMERS=False, _TORCH_VARLEN_ATTN=None,
                               _NATIVE_BEATS_XFORMERS=False)
    pkg = types.ModuleType("unsloth")
    pkg.utils = types.SimpleNamespace(attention_dispatch=ad)
    monkeypatch.setitem(sys.modules, "unsloth", pkg)
    monkeypatch.setitem(sys.modules, "unsloth.utils", pkg.utils)
    monkeypatch.setitem(sys.modules, "unsloth.utils.attention_dispatch", ad)
    ok, why = backend_unsloth.padding_free_supported(model=None)
    assert not ok and "flash-attn" in why and not backend_unsloth.varlen_attention(None)
    ad.HAS_XFORMERS = True
    assert backend_unsloth.padding_free_supported(model=None) == (True, "unsloth + xformers")
    ad._TORCH_VARLEN_ATTN, ad._NATIVE_BEATS_XFORMERS = object(), True
    assert backend_unsloth.padding_free_supported(model=None) == (True, "unsloth + torch varlen_attn")
    ad.HAS_FLASH_ATTENTION = True
    assert backend_unsloth.varlen_attention(None) and backend_unsloth.varlen_kernel() == "flash-attn"


def test_unsloth_load_asks_unsloth_for_ft_recipe_and_keeps_ft_checks(monkeypatch, tiny_base):
    """ft's side of the Unsloth backend, on the CPU: a stand-in for Unsloth's FastLanguageModel loads and
    wraps through transformers + peft and records what ft asked of it (the GPU check, gpu/check_unsloth.py,
    runs the real one). A base model without a template, trained with Llama 3's: ft installs it, adds its
    tokens, sets EOS to its end of turn and a pad ≠ EOS, grows the embeddings, and makes only the new rows
    trainable."""
    import types

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_cli.train import backend_unsloth
    from finetune_cli.train.config import TrainConfig
    from finetune_cli.ui import Reporter

    asked: dict = {}

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(model_name, **kw):
            asked["load"] = kw
            return AutoModelForCausalLM.from_pretrained(model_name), AutoTokenizer.from_pretrained(model_name)

        @staticmethod
        def get_peft_model(model, *, use_gradient_checkpointing, random_state, **kw):
            asked["peft"] = {**kw, "use_gradient_checkpointing": use_gradient_checkpointing}
            return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **kw))

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    model, tok, setup = backend_unsloth.load(TrainConfig(model=str(tiny_base), data=["d"], method="dora", chat_template="llama3"),
                                             Reporter(quiet=True))
    load, peft = asked["load"], asked["peft"]
    assert load["dtype"] == torch.bfloat16 and load["load_in_4bit"] is False and not load["full_finetuning"]
    assert load["use_gradient_checkpointing"] == peft["use_gradient_checkpointing"] == "unsloth"
    assert peft["use_dora"] and not peft["use_rslora"] and peft["target_modules"] == backend_unsloth.LLAMA_LINEAR
    header = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert setup.added_tokens == header  # the tiny vocabulary has ChatML's tokens, not Llama 3's
    new = sorted(tok.convert_tokens_to_ids(header))
    assert peft["trainable_token_indices"] == {"embed_tokens": new, "lm_head": new}
    assert setup.template == "llama3" and "<|start_header_id|>" in tok.chat_template
    assert tok.eos_token == "<|eot_id|>" and tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id and model.config.eos_token_id == tok.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    assert setup.optimizer == "adamw_8bit" and setup.attn == "unsloth" and setup.gradient_checkpointing
    assert 0 < setup.trainable_params < setup.total_params
