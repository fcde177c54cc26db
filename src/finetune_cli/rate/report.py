"""The "People's verdicts" section of ft eval's report.html and report.md, and ratings_summary.json.

    refresh("eval/doric-smollm2-135m")   # after ft rate --summary, and after ft eval re-runs in a rated folder

The section sits between BEGIN and END markers, so a later refresh replaces it instead of adding a second
one. Every string in it is HTML-escaped (in report.md too: candidate names and reasons are people's text).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ..jsonl import write_json_atomic, write_text_atomic
from .store import RATINGS
from .summary import _fmt, load_verdicts, summarize

SUMMARY = "ratings_summary.json"
BEGIN = "<!-- ft rate: people's verdicts, begin (rewritten by ft rate --summary) -->"
END = "<!-- ft rate: people's verdicts, end -->"
HTML_ANCHOR, MD_ANCHOR = '<h2 id="outputs">', "\n## Examples"  # the section goes before these
VERDICT = {"tie": "tie", "both_bad": "both bad"}


def e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _verdict(v: dict) -> str:
    a, b = v["candidates"]
    return a if v["label"] == "a" else b if v["label"] == "b" else VERDICT[v["label"]]


def _lines(s: dict) -> tuple[str, str, str]:
    """The head line, the raters' agreement and the judge's agreement, as plain (unescaped) text."""
    head = (f"{s['ratings']} verdicts from {len(s['raters'])} rater(s): "
            + ", ".join(f"{r} {n}" for r, n in s["raters"].items()) + " (ft rate --summary; ratings.jsonl)")
    ag = s["rater_agreement"]
    raters = (f"Agreement between raters: {ag['items']} pairs with 2+ raters, {_fmt(ag['percent'])} agreeing, "
              f"mean Cohen's kappa {_fmt(ag['mean_kappa'])}")
    ja = s["judge_agreement"]
    judge = (f"People vs LLM judge ({ja['model']}): {ja['n']} pairs, {_fmt(ja['percent'])} agreeing, "
             f"Cohen's kappa {_fmt(ja['kappa'])}" if ja["available"]
             else f"People vs LLM judge: not available ({ja['why']})")
    return head, raters, judge


def _win_rows(s: dict) -> list[list[str]]:
    return [[w["a"], w["b"], str(w["n"]), str(w["a_wins"]), str(w["b_wins"]), str(w["ties"]), str(w["both_bad"]),
             _fmt(w["a_win_rate"]), f"{w['ci95'][0]:.2f}–{w['ci95'][1]:.2f}"] for w in s["win_rates"]]


WIN_HEAD = ["A", "B", "n", "A wins", "B wins", "ties", "both bad", "A win rate", "95% CI"]
WIN_TITLE = "Win rates (ties and both-bad count half; 95% Wilson interval)"
BT_HEAD = ["candidate", "strength", "Elo-scale"]


def _bt_rows(s: dict) -> list[list[str]]:
    return [[r["candidate"], _fmt(r["strength"], ".3f"), _fmt(r["elo"], ".0f")] for r in s["bradley_terry"]]


def _reasons(verdicts: list[dict]) -> list[list[str]]:
    return [[v["rater"], f"{v['candidates'][0]} vs {v['candidates'][1]}", f"{v['condition']} · {v['prompt_id']}",
             _verdict(v), v["reason"]] for v in verdicts if v.get("reason")]


REASON_HEAD = ["rater", "pair", "prompt", "verdict", "reason"]


def render_html(s: dict, verdicts: list[dict]) -> str:
    def table(head: list[str], rows: list[list[str]]) -> str:
        return ("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")

    head, raters, judge = _lines(s)
    reasons = _reasons(verdicts)
    parts = [BEGIN, "<section id=\"people\"><h2>People's verdicts</h2>", f"<p class=meta>{e(head)}</p>",
             f"<h3>{e(WIN_TITLE)}</h3>", table(WIN_HEAD, _win_rows(s)),
             f"<h3>Bradley–Terry from people (prior: {e(s['bt_prior'])} virtual wins each way)</h3>",
             table(BT_HEAD, _bt_rows(s)), f"<p>{e(raters)}</p>", f"<p>{e(judge)}</p>"]
    if reasons:
        parts.append(f"<details><summary>Reasons people gave ({len(reasons)})</summary>"
                     f"{table(REASON_HEAD, reasons)}</details>")
    parts += ["</section>", END]
    return "\n".join(parts) + "\n"


def render_md(s: dict, verdicts: list[dict]) -> str:
    def cell(v: str) -> str:
        return e(v).replace("|", "\\|").replace("\n", " ")

    def table(head: list[str], rows: list[list[str]]) -> list[str]:
        return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                + ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows])

    head, raters, judge = _lines(s)
    reasons = _reasons(verdicts)
    lines = [BEGIN, "## People's verdicts", "", e(head), "", f"**{WIN_TITLE}**", "", *table(WIN_HEAD, _win_rows(s)),
             "", f"**Bradley–Terry from people** (prior: {e(s['bt_prior'])} virtual wins each way)", "",
             *table(BT_HEAD, _bt_rows(s)), "", e(raters), "", e(judge)]
    if reasons:
        lines += ["", f"**Reasons people gave** ({len(reasons)})", "", *table(REASON_HEAD, reasons)]
    return "\n".join([*lines, END]) + "\n"


def splice(text: str, section: str, anchor: str) -> str:
    """``text`` with its section replaced by ``section``; without one, ``section`` goes before ``anchor``
    (or at the end, before ``</body>`` in a page)."""
    i = text.find(BEGIN)
    j = text.find(END, i) if i >= 0 else -1
    if i >= 0 and j >= 0:
        rest = text[j + len(END):]
        return text[:i] + section + (rest[1:] if rest.startswith("\n") else rest)
    k = text.find(anchor)
    if k < 0:
        k = text.rfind("</body>")
    if k < 0:
        return text.rstrip("\n") + "\n\n" + section
    if anchor == MD_ANCHOR and text.startswith(anchor, k):
        k += 1  # keep the blank line before "## Examples" where it is
        return text[:k] + section + "\n" + text[k:]
    return text[:k] + section + text[k:]


def refresh(eval_dir: str | Path, s: dict | None = None) -> list[str]:
    """Write ratings_summary.json and the section into report.html and report.md (those that exist);
    returns the paths written. Nothing when the folder has no verdicts yet."""
    d = Path(eval_dir)
    if not (d / RATINGS).is_file():
        return []
    verdicts = load_verdicts(d)
    if not verdicts:
        return []
    s = s if s is not None else summarize(d)
    write_json_atomic(d / SUMMARY, s)
    written = [str(d / SUMMARY)]
    for name, render, anchor in (("report.html", render_html, HTML_ANCHOR), ("report.md", render_md, MD_ANCHOR)):
        path = d / name
        if path.is_file():
            write_text_atomic(path, splice(path.read_text(encoding="utf-8"), render(s, verdicts), anchor))
            written.append(str(path))
    return written
