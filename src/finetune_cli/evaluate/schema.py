"""A JSON Schema subset for ``--format-schema``: enough to say "answers must be
``{"references": [...]}``" without a dependency. Uses the ``jsonschema`` package when installed.

Supported keywords: type (string or list), enum, const, properties, required,
additionalProperties (bool or schema), items (schema), minItems, maxItems, minLength, maxLength,
pattern, minimum, maximum, anyOf, oneOf, allOf. Any other keyword is a ConfigError at load time,
so a schema never silently validates less than the user wrote.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError

_KNOWN = {"type", "enum", "const", "properties", "required", "additionalProperties", "items",
          "minItems", "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum",
          "anyOf", "oneOf", "allOf", "$schema", "$id", "title", "description", "default", "examples"}

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def check_schema(schema: Any, where: str = "schema") -> None:
    """Raise ConfigError naming the first keyword this validator does not support."""
    try:
        import jsonschema  # noqa: F401 - the full validator handles every keyword
        return
    except ImportError:
        pass
    if not isinstance(schema, dict):
        if isinstance(schema, bool):
            return
        raise ConfigError(f"{where}: a schema must be an object")
    for k, v in schema.items():
        if k not in _KNOWN:
            raise ConfigError(f"{where}: unsupported JSON Schema keyword {k!r} (install jsonschema "
                              "for the full standard)")
        if k == "type":
            for t in v if isinstance(v, list) else [v]:
                if t not in _TYPES:
                    raise ConfigError(f"{where}: unknown type {t!r}")
        if k == "properties":
            for name, sub in v.items():
                check_schema(sub, f"{where}.properties.{name}")
        if k in ("items", "additionalProperties") and isinstance(v, dict):
            check_schema(v, f"{where}.{k}")
        if k in ("anyOf", "oneOf", "allOf"):
            for i, sub in enumerate(v):
                check_schema(sub, f"{where}.{k}[{i}]")


def schema_errors(doc: Any, schema: Any, path: str = "$") -> list[str]:
    """Where ``doc`` breaks ``schema`` (empty when valid)."""
    try:
        import jsonschema
    except ImportError:
        return _errors(doc, schema, path)
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]


def _errors(doc: Any, s: Any, path: str) -> list[str]:
    if s is True or s == {}:
        return []
    if s is False:
        return [f"{path}: not allowed"]
    errs: list[str] = []
    if "type" in s:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not any(_TYPES[t](doc) for t in types):
            return [f"{path}: expected {'/'.join(types)}"]
    if "enum" in s and doc not in s["enum"]:
        errs.append(f"{path}: not one of the enum values")
    if "const" in s and doc != s["const"]:
        errs.append(f"{path}: not the const value")
    if isinstance(doc, dict):
        props = s.get("properties", {})
        for name in s.get("required", []):
            if name not in doc:
                errs.append(f"{path}: missing {name!r}")
        for k, v in doc.items():
            if k in props:
                errs += _errors(v, props[k], f"{path}.{k}")
            elif "additionalProperties" in s:
                errs += _errors(v, s["additionalProperties"], f"{path}.{k}")
    if isinstance(doc, list):
        if "items" in s:
            for i, v in enumerate(doc):
                errs += _errors(v, s["items"], f"{path}[{i}]")
        if len(doc) < s.get("minItems", 0) or len(doc) > s.get("maxItems", float("inf")):
            errs.append(f"{path}: {len(doc)} items out of range")
    if isinstance(doc, str):
        if len(doc) < s.get("minLength", 0) or len(doc) > s.get("maxLength", float("inf")):
            errs.append(f"{path}: length out of range")
        if "pattern" in s and not re.search(s["pattern"], doc):
            errs.append(f"{path}: does not match pattern")
    if _TYPES["number"](doc):
        if doc < s.get("minimum", float("-inf")) or doc > s.get("maximum", float("inf")):
            errs.append(f"{path}: out of range")
    for sub in s.get("allOf", []):
        errs += _errors(doc, sub, path)
    if "anyOf" in s and not any(not _errors(doc, sub, path) for sub in s["anyOf"]):
        errs.append(f"{path}: matches none of anyOf")
    if "oneOf" in s and sum(not _errors(doc, sub, path) for sub in s["oneOf"]) != 1:
        errs.append(f"{path}: does not match exactly one of oneOf")
    return errs
