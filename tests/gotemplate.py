"""The subset of Go's text/template that ft's Modelfile templates use, for tests (Ollama renders TEMPLATE
with Go's engine; no Go toolchain is needed to check what it would render).

    render(go_template, {"Messages": [{"Role": "user", "Content": "hi"}]})

Actions: ``{{ .Field }}``, ``{{ $v }}``, ``{{ $v := x }}``, ``{{ $v = x }}``, ``range .Messages`` and
``range $i, $_ := .Messages``, ``if``/``else``/``end``; functions ``eq``, ``and``, ``not`` over fields,
variables, string and integer literals and parenthesised calls; ``{{-``/``-}}`` trim whitespace as Go does.
"""

from __future__ import annotations

import re
import shlex

_ACTION = re.compile(r"{{(-\s)?\s*(.*?)\s*(\s-)?}}", re.S)


def _lex(src: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    for m in _ACTION.finditer(src):
        text = src[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        out.append(("text", text))
        out.append(("action", m.group(2)))
        pos = m.end()
        if m.group(3):
            rest = src[pos:]
            pos += len(rest) - len(rest.lstrip())
    out.append(("text", src[pos:]))
    return out


def _parse(tokens: list, i: int = 0) -> tuple[list, int, str | None]:
    """Nodes until an ``end``/``else`` at this level; returns (nodes, next index, the keyword that stopped)."""
    nodes = []
    while i < len(tokens):
        kind, s = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", s))
        elif s in ("end", "else"):
            return nodes, i, s
        elif s.startswith(("if ", "range ")):
            word, arg = s.split(" ", 1)
            body, i, stop = _parse(tokens, i)
            other = []
            if stop == "else":
                other, i, _ = _parse(tokens, i)
            nodes.append((word, arg, body, other))
        else:
            nodes.append(("expr", s))
    return nodes, i, None


def _words(s: str) -> list[str]:
    lex = shlex.shlex(s, posix=False, punctuation_chars="()")
    lex.wordchars += "$.:=_"
    return list(lex)


def _eval(words: list[str], dot, env: dict):
    def atom(k):
        w = words[k]
        if w == "(":
            depth, j = 1, k + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(words[j], 0)
                j += 1
            return _eval(words[k + 1:j - 1], dot, env), j
        if w.startswith('"'):
            return w[1:-1].encode().decode("unicode_escape"), k + 1
        if w.startswith("$"):
            return env[w], k + 1
        if w == ".":
            return dot, k + 1
        if w.startswith("."):
            return dot[w[1:]], k + 1
        if w in ("true", "false"):
            return w == "true", k + 1
        if w.isdigit():
            return int(w), k + 1
        raise ValueError(f"unsupported template word {w!r}")

    if words[0] in ("eq", "and", "not"):
        args, k = [], 1
        while k < len(words):
            v, k = atom(k)
            args.append(v)
        if words[0] == "eq":
            return args[0] == args[1]
        if words[0] == "not":
            return not args[0]
        for a in args:
            if not a:
                return a
        return args[-1]
    v, k = atom(0)
    assert k == len(words), words
    return v


def _run(nodes: list, dot, env: dict, out: list) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            words = _words(node[1])
            if len(words) > 2 and words[1] in (":=", "="):
                env[words[0]] = _eval(words[2:], dot, env)
            else:
                v = _eval(words, dot, env)
                out.append("" if v is None else str(v))
        elif node[0] == "if":
            _run(node[2] if _eval(_words(node[1]), dot, env) else node[3], dot, env, out)
        elif node[0] == "range":
            words = _words(node[1])
            names = []
            if ":=" in words:
                k = words.index(":=")
                names = [w.strip(",") for w in words[:k] if w != ","]
                words = words[k + 1:]
            for i, item in enumerate(_eval(words, dot, env)):
                if len(names) == 2:
                    env[names[0]], env[names[1]] = i, item
                elif names:
                    env[names[0]] = item
                _run(node[2], item, env, out)


def render(src: str, data: dict) -> str:
    nodes, _, _ = _parse(_lex(src))
    out: list[str] = []
    _run(nodes, data, {"$": data}, out)
    return "".join(out)
