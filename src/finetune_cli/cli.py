"""The ``ft`` command: joins the sub-commands. Each is a config dataclass and a plain ``run``.

Nothing here imports torch, transformers, openai or anthropic: ``ft --help`` stays instant.
"""

from __future__ import annotations

from typing import Optional

import typer

from . import __version__, gen, models, sharegpt, topics
from .chat.config import ChatConfig
from .command import register
from .evaluate import config as eval_config
from .export import command as merge_command
from .publish import config as publish_config
from .pairs import PairsConfig
from .rate.config import RateConfig
from .sweep.config import SweepConfig
from .train import records as train_records
from .train.config import TrainConfig

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


register(app, "train", TrainConfig, "train", _lazy(".train.run"),
         help="Fine-tune a model (LoRA/DoRA/rsLoRA/QLoRA/full) on conversations or text; writes runs/<name>/.")
register(app, "pairs", PairsConfig, "pairs", _lazy(".pairs"),
         help="Build DPO/ORPO preference pairs: chosen = the data's answer, rejected = the policy's, base's, a gate reject or a judged loser.")
register(app, "runs", train_records.RunsConfig, "runs", train_records.run_runs,
         help="List training runs side by side: model, method, r/alpha, lr, data, steps, best eval loss, tokens/s.")
register(app, "sweep", SweepConfig, "sweep", _lazy(".sweep.run"),
         help="Train a grid of variants (ft train options), evaluate them alike, rank them on one leaderboard.")
model_app = typer.Typer(help="Model utilities.", no_args_is_help=True)
register(model_app, "tiny", models.TinyConfig, "model_tiny", models.run_tiny,
         help="Build a tiny random-weight model (2 layers, hidden 64) for smoke runs and CI, offline.")
app.add_typer(model_app, name="model")
topics_app = typer.Typer(help="Topic files for ft gen.", no_args_is_help=True)
register(topics_app, "expand", topics.ExpandConfig, "topics_expand", topics.run,
         help="Add LLM-written topics to each group: validated, fuzzy-deduplicated, written atomically.")
app.add_typer(topics_app, name="topics")
register(app, "gen", gen.GenConfig, "gen", gen.run,
         help="Generate conversations in a persona's voice (OpenAI, Anthropic or offline): gated, deduplicated, resumable.")
register(app, "to-sharegpt", sharegpt.ToShareGPTConfig, "to_sharegpt", sharegpt.run,
         help="Convert OpenAI messages JSONL to ShareGPT conversations (or back with --reverse).")
register(app, "merge", merge_command.MergeConfig, "merge", merge_command.run,
         help="Merge an adapter into a verified 16-bit model, export the adapter alone, or write checked GGUFs.")
register(app, "eval", eval_config.EvalConfig, "eval", _lazy(".evaluate.run"),
         help="Evaluate models side by side: failure-mode metrics, optional LLM judge, HTML report, CI gates.")
register(app, "rate", RateConfig, "rate", _lazy(".rate.run"),
         help="Serve a local page where people judge blind A/B pairs of ft eval's answers; --summary for results.")
register(app, "chat", ChatConfig, "chat", _lazy(".chat.run"),
         help="Talk to a model as it was trained to talk, streamed; --compare several side by side.")
register(app, "card", publish_config.CardConfig, "card", _lazy(".publish.card"),
         help="Write a Hub model card (or dataset card) from ft's records: training, data, eval, GGUF drift.")
register(app, "push", publish_config.PushConfig, "push", _lazy(".publish.push"),
         dry_run=_lazy(".publish.push", "plan"),
         help="Publish a run's adapter, merged model, GGUFs or a dataset to the Hugging Face Hub (resumable).")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
