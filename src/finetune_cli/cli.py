"""The ``ft`` command: joins the sub-commands. Each is a config dataclass and a plain ``run``.

Nothing here imports torch, transformers, openai or anthropic: ``ft --help`` stays instant.
"""

from __future__ import annotations

from typing import Optional

import typer

from . import __version__, sharegpt
from .command import register

app = typer.Typer(
    name="ft",
    help="ft: collect → transform → fine-tune → evaluate → export open LLMs that talk in a voice.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ft {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                                 help="Print ft's version and exit.")) -> None:
    """ft: collect → transform → fine-tune → evaluate → export."""


register(app, "to-sharegpt", sharegpt.ToShareGPTConfig, "to_sharegpt", sharegpt.run,
         help="Convert OpenAI messages JSONL to ShareGPT conversations (or back with --reverse).")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
