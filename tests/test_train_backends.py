"""Backend choice: auto picks hf without CUDA/Unsloth; unsloth refuses to run unpatched or without a GPU."""

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
