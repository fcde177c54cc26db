"""The CLI edge: typer options built from a config dataclass, and errors turned into exit codes.

Each command is a config dataclass plus a plain ``run(cfg, reporter)``; this module gives it
``--config``, ``--dry-run``, ``--quiet``, ``--json`` and ``--debug``, one flag per config field
(help, default, range and env names from the field), and one error policy:
one line on stderr, exit 2 for usage/config errors, 1 for data/runtime errors, 130 on Ctrl-C, and
141 (128 + SIGPIPE, what the shell reports for ``cat`` in the same place) without a word when the
reader of stdout went away: ``ft to-sharegpt -o - | head -1`` behaves like a Unix filter.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import traceback
import typing
from dataclasses import MISSING, fields
from typing import Any, Callable, List, Optional

import typer

from . import config as C
from .errors import FtError
from .ui import Reporter

COMMON = {
    "config": (Optional[str], typer.Option(None, "--config", "-c", help="TOML config file (each command reads its own \\[section]); env FT_CONFIG.", rich_help_panel="Common")),
    "dry_run": (bool, typer.Option(False, "--dry-run", help="Print the resolved config with the source of each value and exit.", rich_help_panel="Common")),
    "quiet": (bool, typer.Option(False, "--quiet", "-q", help="No progress bars or notices.", rich_help_panel="Common")),
    "json_out": (bool, typer.Option(False, "--json", help="Print one JSON document on stdout for scripts.", rich_help_panel="Common")),
    "debug": (bool, typer.Option(False, "--debug", help="Show the traceback of an error (never local variables).", rich_help_panel="Common")),
}


def _default_text(f) -> str:
    if f.metadata.get("required"):
        return "required"
    if f.default is not MISSING:
        d = f.default
    elif f.default_factory is not MISSING:
        d = f.default_factory()
    else:
        return "required"
    if d is None:
        return "none"
    if isinstance(d, bool):
        return "on" if d else "off"
    if isinstance(d, list):
        return ",".join(map(str, d)) if d else "none"
    return str(d)


def _help(section: str, f) -> str:
    m = f.metadata
    parts = [m.get("help", "")]
    if m.get("choices"):
        parts.append(f"One of: {', '.join(m['choices'])}.")
    rng = []
    for k, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        if m.get(k) is not None:
            rng.append(f"{sym} {m[k]:g}")
    if rng:
        parts.append(f"Range: {', '.join(rng)}.")
    parts.append(f"\\[default: {_default_text(f)}; env {C.env_names(section, f)[-1]}]")
    return " ".join(p for p in parts if p)


def _param(section: str, f, hint: Any) -> inspect.Parameter:
    inner, _ = C._unwrap_optional(hint)
    m = f.metadata
    flag = m.get("flag") or "--" + f.name.replace("_", "-")
    decls = [flag] + ([m["short"]] if m.get("short") else [])
    origin = typing.get_origin(inner)
    if inner is bool:
        decls = [f"{flag}/--no-{flag[2:]}"] + decls[1:]
        ann = Optional[bool]
    elif origin in (list, tuple):
        ann = Optional[List[str]]
    elif inner in (int, float, str):
        ann = Optional[inner]
    else:
        ann = Optional[str]
    if m.get("positional"):
        opt = typer.Argument(None, help=_help(section, f), show_default=False, metavar=f.name.upper())
    else:
        opt = typer.Option(None, *decls, help=_help(section, f), show_default=False,
                           rich_help_panel=m.get("panel"))
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)


def print_resolved(reporter: Reporter, section: str, resolved: C.Resolved) -> None:
    data = C.to_dict(resolved.config)
    if reporter.json_mode:
        reporter.emit_json({k: {"value": v, "source": resolved.sources[k]} for k, v in data.items()})
        return
    reporter.table(f"ft {section.replace('_', '-')}: resolved config", ["key", "value", "source"],
                   [[k, repr(v) if isinstance(v, str) else str(v), resolved.sources[k]]
                    for k, v in data.items()])


def _say(*lines: str) -> None:
    """Lines to stderr in one write: the processes of a multi-GPU run share it, and a line written in
    pieces (text, then newline, as print does when unbuffered) interleaves with another process's."""
    sys.stderr.write("".join(line + "\n" for line in lines))
    sys.stderr.flush()


def fail(err: BaseException, debug: bool) -> typing.NoReturn:
    if debug:
        traceback.print_exception(err, file=sys.stderr)  # plain traceback: no locals, ever
    if isinstance(err, KeyboardInterrupt):
        _say("ft: interrupted")
        raise typer.Exit(130)
    if isinstance(err, FtError):
        _say(*(f"error: {line}" for line in str(err).splitlines() or [type(err).__name__]))
        raise typer.Exit(err.exit_code)
    msg = str(err).splitlines()[0] if str(err) else ""
    _say(f"error: unexpected {type(err).__name__}: {msg} (run again with --debug for the traceback)")
    raise typer.Exit(1)


def _stdout_closed() -> typing.NoReturn:
    """The reader of stdout is gone (``| head``): no message, no traceback, exit 141. stdout is pointed
    at /dev/null first, else Python's own flush at exit fails again and prints "Exception ignored"."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a test runner's stdout)
        pass
    raise typer.Exit(141)


def register(app: typer.Typer, name: str, cfg_cls: type, section: str,
             run: Callable[[Any, Reporter], Any], *, help: str, sections: dict[str, type],
             dry_run: Callable[[Any, Reporter], Any] | None = None) -> None:
    """Add ``ft NAME`` to ``app``: flags from ``cfg_cls``, then ``run(cfg, reporter)``.

    ``run`` returns a JSON-able result (printed with ``--json``) or None; a result dict with an
    ``exit_code`` key sets the exit code (gates that failed, rows skipped under a policy, ...).
    ``dry_run(cfg, reporter)``, when given, is what ``--dry-run`` does after printing the resolved config
    (``ft push`` lists the files it would upload). ``sections``: every command's section and config
    class, so a config file shared by several commands is checked whole.
    """
    hints = typing.get_type_hints(cfg_cls)
    cfg_fields = [f for f in fields(cfg_cls) if f.metadata.get("cli", True)]

    def command(**kwargs: Any) -> None:
        common = {k: kwargs.pop(k) for k in COMMON}
        reporter = Reporter(quiet=common["quiet"] or common["json_out"], json_mode=common["json_out"],
                            debug=common["debug"])
        try:
            resolved = C.load_config(cfg_cls, section, config_file=common["config"], flags=kwargs,
                                     sections=sections)
            for line in resolved.warnings:
                reporter.warn(line)
            if common["dry_run"] and dry_run is None:
                print_resolved(reporter, section, resolved)
                return
            if common["dry_run"]:
                if not common["json_out"]:
                    print_resolved(reporter, section, resolved)
                result = dry_run(resolved.config, reporter)
            elif common["json_out"]:
                # stdout carries one JSON document: what libraries print (Unsloth's banner...) goes to stderr
                with contextlib.redirect_stdout(sys.stderr):
                    result = run(resolved.config, reporter)
            else:
                result = run(resolved.config, reporter)
        except BrokenPipeError:
            _stdout_closed()
        except (FtError, KeyboardInterrupt, Exception) as err:  # noqa: BLE001 - the edge
            fail(err, common["debug"])
        code = 0
        try:
            if isinstance(result, dict):
                code = int(result.pop("exit_code", 0) or 0)
                reporter.emit_json(result)
            elif result is not None:
                reporter.emit_json(result)
        except BrokenPipeError:
            _stdout_closed()
        if code:
            raise typer.Exit(code)

    params = [_param(section, f, hints[f.name]) for f in cfg_fields]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)
               for k, (ann, opt) in COMMON.items()]
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = name.replace("-", "_")
    command.__doc__ = help
    app.command(name, help=help)(command)
