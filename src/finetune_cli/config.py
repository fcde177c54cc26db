"""ft's one config loader: typed dataclasses whose field help is the documentation.

Precedence, lowest first: the dataclass default < the config file's ``[section]`` < environment
(``.env`` included) < CLI flags. Every value remembers where it came from, so ``--dry-run`` can
print it. Unknown keys, wrong types and out-of-range values are errors that name the key, the
file and the closest valid key; all problems are reported at once.

    @dataclass
    class GenConfig:
        n_per_topic: int = opt(6, "answers per topic", ge=1)
        model: str = opt("gpt-4o-mini", "model name", env=("MODEL",))

    cfg, sources = load_config(GenConfig, "gen", config_file="ft.toml", flags={"n_per_topic": 3})

The file format for the whole project (configs and persona files) is TOML.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .jsonl import UTF8_BOM

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def split_list(values: list[str], *, lower: bool = False) -> list[str]:
    """A list option given as repeated flags and/or comma-separated items (``--gguf f16,q8_0 --gguf q8_0``):
    each item stripped (and lower-cased with ``lower``), once, in order."""
    items = (v.strip() for value in values for v in value.split(","))
    return list(dict.fromkeys(v.lower() if lower else v for v in items if v))


def opt(default: Any = MISSING, help: str = "", *, ge: float | None = None, le: float | None = None,
        gt: float | None = None, lt: float | None = None, choices: tuple[str, ...] | None = None,
        env: tuple[str, ...] = (), flag: str | None = None, short: str | None = None,
        panel: str | None = None, secret: bool = False, cli: bool = True, required: bool = False,
        default_factory: Any = MISSING, positional: bool = False) -> Any:
    """A config field: default, help (units and sentinels), range, choices, env names, CLI flag.

    ``required=True`` fields default to None and must be set by a file, the environment or a flag.
    ``positional=True`` makes the CLI take it as an argument (``ft model tiny DIR``) instead of a flag.
    """
    meta = dict(help=help, ge=ge, le=le, gt=gt, lt=lt, choices=choices, env=tuple(env), flag=flag,
                short=short, panel=panel, secret=secret, cli=cli, required=required, positional=positional)
    if required:
        default = None
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Resolved:
    """A loaded config and the source of each value (``default``, ``file:PATH``, ``env:NAME``, ``flag``)."""

    config: Any
    sources: dict[str, str]
    warnings: list[str] = field(default_factory=list)  # e.g. an unknown FT_<SECTION>_* variable


def env_names(section: str, f: dataclasses.Field) -> tuple[str, ...]:
    """The environment variables a field reads, most specific first."""
    return (f"FT_{section.upper()}_{f.name.upper()}",) + tuple(f.metadata.get("env", ()))


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def type_name(tp: Any) -> str:
    tp, optional = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (arg, *_) = typing.get_args(tp) or (Any,)
        name = f"list of {type_name(arg)}"
    elif origin is dict:
        name = "table"
    elif is_dataclass(tp):
        name = "table"
    else:
        name = getattr(tp, "__name__", str(tp))
    return f"{name} or none" if optional else name


def _coerce(value: Any, tp: Any, *, from_env: bool, where: str, errors: list[str]) -> Any:
    """Convert ``value`` to ``tp`` or append a message to ``errors`` (returns None then)."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        errors.append(f"{where}: a value is required ({type_name(tp)})")
        return None
    if from_env and optional and isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
        return None
    tp = inner
    origin = typing.get_origin(tp)
    try:
        if tp is Any:
            return value
        if tp is bool:
            if isinstance(value, bool):
                return value
            if from_env and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise TypeError
        if tp is int:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if from_env and isinstance(value, str):
                return int(value.strip())
            raise TypeError
        if tp is float:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, (int, float)):
                number = float(value)
            elif from_env and isinstance(value, str):
                number = float(value.strip())
            else:
                raise TypeError
            if not math.isfinite(number):
                # NaN compares False with every bound, so it would pass any range check: refuse it here
                errors.append(f"{where}: {value!r} is not a finite number")
                return None
            return number
        if tp is str:
            if isinstance(value, str):
                return value
            raise TypeError
        if origin in (list, tuple):
            (arg,) = typing.get_args(tp)[:1] or (Any,)
            if from_env and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return [_coerce(v, arg, from_env=from_env, where=f"{where}[{i}]", errors=errors)
                    for i, v in enumerate(value)]
        if origin is dict:
            _, varg = typing.get_args(tp)
            if not isinstance(value, dict):
                raise TypeError
            return {str(k): _coerce(v, varg, from_env=from_env, where=f"{where}.{k}", errors=errors)
                    for k, v in value.items()}
        if is_dataclass(tp):
            if not isinstance(value, dict):
                raise TypeError
            return from_mapping(tp, value, origin=where, errors=errors)
    except (TypeError, ValueError):
        shown = value if len(repr(value)) < 60 else repr(value)[:57] + "..."
        errors.append(f"{where}: expected {type_name(tp)}, got {shown!r}")
        return None
    return value


def _check_range(value: Any, f: dataclasses.Field, where: str, errors: list[str]) -> None:
    m = f.metadata
    if value is None:
        return
    choices = m.get("choices")
    items = value if isinstance(value, list) else [value]
    if choices:
        for v in items:
            if v not in choices:
                close = difflib.get_close_matches(str(v), choices, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                errors.append(f"{where}: {v!r} is not one of {', '.join(choices)}{hint}")
    for v in items:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if m.get("ge") is not None and v < m["ge"]:
            errors.append(f"{where}: {v} is below the minimum {m['ge']}")
        if m.get("gt") is not None and v <= m["gt"]:
            errors.append(f"{where}: {v} must be greater than {m['gt']}")
        if m.get("le") is not None and v > m["le"]:
            errors.append(f"{where}: {v} is above the maximum {m['le']}")
        if m.get("lt") is not None and v >= m["lt"]:
            errors.append(f"{where}: {v} must be less than {m['lt']}")


def _unknown_key(key: str, valid: list[str], where: str) -> str:
    close = difflib.get_close_matches(key.replace("-", "_"), valid, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (valid keys: {', '.join(valid)})"
    return f"{where}: unknown key {key!r}{hint}"


def from_mapping(cls: type, data: dict, *, origin: str, errors: list[str] | None = None) -> Any:
    """Build dataclass ``cls`` from a mapping (a TOML table), validating every field.

    ``origin`` names where the data came from (``persona.toml``, ``ft.toml [gen]``). Raises
    :class:`ConfigError` listing every problem, unless an ``errors`` list is passed in.
    """
    own = errors is None
    errors = [] if errors is None else errors
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    for key in data:
        if key.replace("-", "_") not in valid:
            errors.append(_unknown_key(key, valid, origin))
    kwargs = {}
    for f in fields(cls):
        key = f.name if f.name in data else f.name.replace("_", "-")
        if key in data:
            v = _coerce(data[key], hints[f.name], from_env=False, where=f"{origin}: {f.name}",
                        errors=errors)
            _check_range(v, f, f"{origin}: {f.name}", errors)
            kwargs[f.name] = v
        elif f.default is MISSING and f.default_factory is MISSING:
            errors.append(f"{origin}: missing required key {f.name!r}")
    if own and errors:
        raise ConfigError("\n".join(errors))
    if errors:
        return None
    return cls(**kwargs)


def load_toml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file")
    try:
        # a UTF-8 BOM (Windows editors write one) is not part of the document
        return tomllib.loads(p.read_bytes().removeprefix(UTF8_BOM).decode("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def load_dotenv_once(path: str | Path = ".env") -> None:
    """Load ``.env`` from the working directory; real environment variables win."""
    if os.environ.get("_FT_DOTENV_LOADED") == str(Path(path).resolve()):
        return
    if Path(path).is_file():
        from dotenv import load_dotenv

        load_dotenv(path, override=False)
    os.environ["_FT_DOTENV_LOADED"] = str(Path(path).resolve())


def check_file_sections(data: dict, path: str, sections: dict[str, type]) -> list[str]:
    """Unknown sections and unknown keys in any known section of a config file (``sections``: every
    command's section and config class, so a file shared by several commands is checked whole)."""
    errors = []
    for section, table in data.items():
        if section not in sections:
            close = difflib.get_close_matches(section, list(sections), n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else f" (sections: {', '.join(sorted(sections))})"
            errors.append(f"{path}: unknown section [{section}]{hint}")
            continue
        if not isinstance(table, dict):
            errors.append(f"{path}: [{section}] must be a table of keys")
            continue
        valid = [f.name for f in fields(sections[section])]
        for key in table:
            if key.replace("-", "_") not in valid:
                errors.append(_unknown_key(key, valid, f"{path} [{section}]"))
    return errors


def unknown_env_vars(cls: type, section: str, environ: dict[str, str], sections=()) -> list[str]:
    """A line for each ``FT_<SECTION>_*`` variable that no field reads (a typo is otherwise silently
    ignored), with the closest variable that would have been read."""
    prefix = f"FT_{section.upper()}_"
    known = [n for f in fields(cls) for n in env_names(section, f)]
    # FT_MODEL_TINY_SEED belongs to [model_tiny], not to a section named [model]
    longer = [f"FT_{s.upper()}_" for s in sections if s.startswith(section + "_")]
    out = []
    for var in sorted(environ):
        if not var.startswith(prefix) or var in known or any(var.startswith(p) for p in longer):
            continue
        close = difflib.get_close_matches(var, known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        out.append(f"environment {var}: no [{section}] key reads it, ignored{hint}")
    return out


def load_config(cls: type, section: str, *, config_file: str | Path | None = None,
                flags: dict[str, Any] | None = None, environ: dict[str, str] | None = None,
                sections: dict[str, type] | None = None) -> Resolved:
    """Resolve ``cls`` from defaults, the config file's ``[section]``, environment and flags.

    ``sections`` maps every command's section to its config class (the CLI passes its table,
    ``finetune_cli.cli.SECTIONS``): a config file's other sections are checked too. Without it only
    ``[section]`` is known."""
    sections = {**(sections or {}), section: cls}
    if environ is None:
        load_dotenv_once()
        environ = dict(os.environ)
    if config_file is None and environ.get("FT_CONFIG"):
        config_file = environ["FT_CONFIG"]
    flags = flags or {}
    hints = typing.get_type_hints(cls)
    errors: list[str] = []
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    for f in fields(cls):
        if f.default is not MISSING:
            values[f.name] = f.default
        elif f.default_factory is not MISSING:
            values[f.name] = f.default_factory()
        sources[f.name] = "default"

    table: dict = {}
    if config_file is not None:
        data = load_toml(config_file)
        errors += check_file_sections(data, str(config_file), sections)
        table = data.get(section, {}) if isinstance(data.get(section, {}), dict) else {}
    valid = {f.name: f for f in fields(cls)}
    for key, raw in table.items():
        name = key.replace("-", "_")
        if name not in valid:
            continue  # reported by check_file_sections
        where = f"{config_file} [{section}] {name}"
        values[name] = _coerce(raw, hints[name], from_env=False, where=where, errors=errors)
        sources[name] = f"file:{config_file}"

    for f in fields(cls):
        for var in env_names(section, f):
            if var in environ and environ[var] != "":
                values[f.name] = _coerce(environ[var], hints[f.name], from_env=True,
                                         where=f"environment {var}", errors=errors)
                sources[f.name] = f"env:{var}"
                break
    warnings = unknown_env_vars(cls, section, environ, sections)

    for name, raw in flags.items():
        if raw is None or (isinstance(raw, (list, tuple)) and not raw):
            continue
        flag = valid[name].metadata.get("flag") or "--" + name.replace("_", "-")
        values[name] = _coerce(list(raw) if isinstance(raw, tuple) else raw, hints[name],
                               from_env=isinstance(raw, str) and typing.get_origin(
                                   _unwrap_optional(hints[name])[0]) is list,
                               where=f"option {flag}", errors=errors)
        sources[name] = "flag"

    for f in fields(cls):
        if f.name not in values or (f.metadata.get("required") and values[f.name] is None):
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            what = f"argument {f.name.upper()}" if f.metadata.get("positional") else f"option {flag}"
            errors.append(f"{section.replace('_', '-')}: missing required {what}")
            continue
        src = sources[f.name]
        where = {"default": f"default {f.name}", "flag": f"option --{f.name.replace('_', '-')}"}.get(
            src, f"{src.split(':', 1)[1]} {f.name}" if src.startswith("env:") else f"{config_file} [{section}] {f.name}")
        _check_range(values[f.name], f, where, errors)

    if errors:
        raise ConfigError("\n".join(dict.fromkeys(errors)))
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()  # checks only: a value it changed would be recorded under a source that did not set it
    object.__setattr__(cfg, "_ft_sources", dict(sources))  # what sources_of reads, wherever cfg travels
    return Resolved(cfg, sources, warnings)


def sources_of(cfg: Any) -> dict[str, str]:
    """Where each value of ``cfg`` came from (``default``, ``file:PATH``, ``env:NAME``, ``flag``), as
    :func:`load_config` resolved it. A config built in code (tests, a sweep) has no file, environment or
    flags: each value is ``default`` when it equals the field's default, else ``code``."""
    recorded = getattr(cfg, "_ft_sources", None)
    if recorded is not None:
        return dict(recorded)
    out = {}
    for f in fields(cfg):
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        out[f.name] = "default" if getattr(cfg, f.name) == default else "code"
    return out


def config_record(cfg: Any, **derived: Any) -> dict[str, Any]:
    """What every command writes beside its outputs (config.json / ft_config.json): the resolved values,
    the source of each, and the values computed from them (``derived``)."""
    out = {"config": to_dict(cfg), "sources": sources_of(cfg)}
    if derived:
        out["resolved"] = derived
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain data for run records; secret fields are masked."""
    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if f.metadata.get("secret") and v:
            v = "***"
        elif is_dataclass(v):
            v = to_dict(v)
        out[f.name] = v
    return out


def text_or_file(value: str | None, *, option: str = "--system") -> str | None:
    """``TEXT`` as is, or the contents of ``@path`` (trailing newline stripped)."""
    if value is None or not value.startswith("@"):
        return value
    p = Path(value[1:])
    if not p.is_file():
        raise ConfigError(f"option {option}: no such file {str(p)!r}")
    try:
        return p.read_text(encoding="utf-8").rstrip("\n")
    except UnicodeDecodeError as e:
        raise ConfigError(f"option {option}: {p} is not valid UTF-8 (byte {e.start})") from None


def ft_home() -> Path:
    """Where ft keeps its state (model caches, judge caches): ``$FT_HOME``, else ``~/.cache/ft``."""
    root = os.environ.get("FT_HOME")
    return Path(root) if root else Path.home() / ".cache" / "ft"
