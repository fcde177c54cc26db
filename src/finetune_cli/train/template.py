"""Moved to ``finetune_cli/chat_template.py`` (train, eval, export and the shared layer all use it)."""

from ..chat_template import (CHATML_TEMPLATE, LLAMA3_TEMPLATE, TEMPLATES, PadEos,  # noqa: F401
                             assistant_only_labels, choose_template, end_of_turn, eos_token_ids,
                             prepare_model_and_tokenizer, render, setup_pad_eos)
