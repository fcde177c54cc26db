"""Shared fixtures: ft's state in a temp dir, tiny random-weight models built offline once per session."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test gets its own FT_HOME and no real API keys or config from the developer's shell."""
    monkeypatch.setenv("FT_HOME", str(tmp_path / "ft-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    for var in list(os.environ):
        if var.startswith("FT_") and var != "FT_HOME" or var in (
                "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "MODEL"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def _tiny(tmp_path_factory, name, **kw):
    from finetune_cli.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp(name) / "model", **kw)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 2-layer Llama with a ChatML template, pad ≠ eos (path to a saved folder)."""
    return _tiny(tmp_path_factory, "tiny-chatml", template="chatml")


@pytest.fixture(scope="session")
def tiny_llama3(tmp_path_factory):
    """A 2-layer Llama with a Llama-3-style template and no pad token."""
    return _tiny(tmp_path_factory, "tiny-llama3", template="llama3")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A 2-layer Llama without a chat template (a base model)."""
    return _tiny(tmp_path_factory, "tiny-base", template=None)


@pytest.fixture(scope="session")
def tiny_pad_eos(tmp_path_factory):
    """A 2-layer Llama whose tokenizer has pad == eos (like SmolLM2's GGUF tokenizer)."""
    return _tiny(tmp_path_factory, "tiny-pad-eos", template="chatml-pad-eos")
