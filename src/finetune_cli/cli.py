"""The ``ft`` command: joins the sub-commands. Each is a config dataclass and a plain ``run``.

Nothing here imports torch, transformers, openai or anthropic: ``ft --help`` stays instant.
"""

from __future__ import annotations

from typing import Optional

import typer

from . import __version__, replay, runs, sharegpt, tiny, topics
from .chat.config import ChatConfig
from .command import register
from .evaluate.config import EvalConfig
from .gen.config import GenConfig
from .merge.config import MergeConfig
from .pairs import PairsConfig
from .publish.config import CardConfig, PushConfig
from .rate.config import RateConfig
from .sweep.config import SweepConfig
from .train.config import TrainConfig

# Every command's config-file section and config class, in one table: a config file is checked against
# all of them (a file shared by several commands), whichever command reads it.
SECTIONS: dict[str, type] = {
    "train": TrainConfig, "replay": replay.ReplayConfig, "pairs": PairsConfig, "runs": runs.RunsConfig,
    "sweep": SweepConfig, "model_tiny": tiny.TinyConfig, "topics_expand": topics.ExpandConfig, "gen": GenConfig,
    "to_sharegpt": sharegpt.ToShareGPTConfig, "merge": MergeConfig, "eval": EvalConfig, "rate": RateConfig,
    "chat": ChatConfig, "card": CardConfig, "push": PushConfig,
}

app = typer.Typer(
    name="ft",
    help="ft: collect → transform → fine-tune → evaluate → export open LLMs that talk in a voice.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _lazy(module: str, name: str = "run"):
    """``module.run``, imported when the command runs: `ft --help` does not load every recipe."""
    def run(cfg, reporter):
        import importlib

        return getattr(importlib.import_module(module, __package__), name)(cfg, reporter)
    return run


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ft {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                                 help="Print ft's version and exit.")) -> None:
    """ft: collect → transform → fine-tune → evaluate → export."""


def _command(app_: typer.Typer, name: str, section: str, module: str, *, help: str, dry_run: str | None = None) -> None:
    """``ft NAME``: options from ``SECTIONS[section]``, then ``module.run`` imported when the command runs."""
    register(app_, name, SECTIONS[section], section, _lazy(module), sections=SECTIONS, help=help,
             dry_run=_lazy(module, dry_run) if dry_run else None)


_command(app, "train", "train", ".train.run",
         help="Fine-tune a model (LoRA/DoRA/rsLoRA/QLoRA/full) on conversations or text; writes runs/<name>/.")
_command(app, "replay", "replay", ".replay",
         help="General-chat rows from the base model's own stopped answers (framed in the persona's voice), to mix into training.")
_command(app, "pairs", "pairs", ".pairs",
         help="Build DPO/ORPO preference pairs: chosen = the data's answer, rejected = the policy's, base's, a gate reject or a judged loser.")
_command(app, "runs", "runs", ".runs",
         help="List training runs side by side: model, method, r/alpha, lr, data, steps, best eval loss, tokens/s.")
_command(app, "sweep", "sweep", ".sweep.run",
         help="Train a grid of variants (ft train options), evaluate them alike, rank them on one leaderboard.")
model_app = typer.Typer(help="Model utilities.", no_args_is_help=True)
_command(model_app, "tiny", "model_tiny", ".tiny",
         help="Build a tiny random-weight model (2 layers, hidden 64) for smoke runs and CI, offline.")
app.add_typer(model_app, name="model")
topics_app = typer.Typer(help="Topic files for ft gen.", no_args_is_help=True)
_command(topics_app, "expand", "topics_expand", ".topics",
         help="Add LLM-written topics to each group: validated, fuzzy-deduplicated, written atomically.")
app.add_typer(topics_app, name="topics")
_command(app, "gen", "gen", ".gen.run",
         help="Generate conversations in a persona's voice (OpenAI, Anthropic or offline): gated, deduplicated, resumable.")
_command(app, "to-sharegpt", "to_sharegpt", ".sharegpt",
         help="Convert messages (or alpaca) JSONL to ShareGPT conversations (or to messages with --reverse).")
_command(app, "merge", "merge", ".merge.run",
         help="Merge an adapter into a verified 16-bit model, export the adapter alone, or write checked GGUFs.")
_command(app, "eval", "eval", ".evaluate.run",
         help="Evaluate models side by side: failure-mode metrics, optional LLM judge, HTML report, CI gates.")
_command(app, "rate", "rate", ".rate.run",
         help="Serve a local page where people judge blind A/B pairs of ft eval's answers; --summary for results.")
_command(app, "chat", "chat", ".chat.run",
         help="Talk to a model as it was trained to talk, streamed; --compare several side by side.")
_command(app, "card", "card", ".publish.card",
         help="Write a Hub model card (or dataset card) from ft's records: training, data, eval, GGUF drift.")
_command(app, "push", "push", ".publish.push", dry_run="plan",
         help="Publish a run's adapter, merged model, GGUFs or a dataset to the Hugging Face Hub (resumable).")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
