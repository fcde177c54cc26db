"""``ft eval`` reports: a terminal table, ``report.html`` (side by side, offline, every string
escaped), ``report.md`` and ``results.json`` (``results[candidate][condition][metric]`` for the primary
decoding; ``by_decoding[decoding]["results" | "by_source"]`` for each decoding, by_source per prompt group)."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from ..jsonl import write_json_atomic, write_text_atomic
from ..ui import Reporter

TABLE_METRICS = ["eos_rate", "loop_rate", "distinct_2", "words_mean", "relevance_mean", "leak_rate", "break_rate",
                 "script_rate", "marker_in_band", "refusal_rate", "refusal_in_voice_rate", "over_refusal_rate",
                 "break_in_voice_rate", "format_valid_rate", "near_copy_rate", "heldout_loss", "retention_kl",
                 "retention_ppl", "judge_character", "judge_voice", "judge_relevance", "judge_win_rate"]
# lower is better for these: shown red when high in the HTML
BAD_HIGH = {"loop_rate", "leak_rate", "break_rate", "script_rate", "near_copy_rate", "script_char_share"}
FLAGS = [("no EOS", lambda o: not o["eos"]), ("loop", lambda o: o["loop"]), ("leak", lambda o: o["leak"]),
         ("break", lambda o: bool(o["breaks"])), ("script", lambda o: o["script_bad"] > 0),
         ("format", lambda o: o.get("format_ok") is False), ("near-copy", lambda o: bool(o.get("near_copy")))]


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def views(doc: dict) -> list[tuple[str | None, dict, dict]]:
    """``(decoding, results, by_source)`` per decoding; one ``(None, ...)`` for a results.json from before
    decodings."""
    if not doc.get("by_decoding"):
        return [(None, doc["results"], doc.get("by_source") or {})]
    return [(d, doc["by_decoding"][d]["results"], doc["by_decoding"][d]["by_source"]) for d in doc["decodings"]]


def metric_names(doc: dict) -> list[str]:
    seen: dict[str, None] = {}
    for conds in doc["results"].values():
        for m in conds.values():
            seen.update(dict.fromkeys(m))
    order = list(doc["definitions"])
    return sorted(seen, key=lambda k: order.index(k) if k in order else len(order))


def gate_failure(f: dict) -> str:
    """``gate: measured V`` (and ``vs base B`` for a gate against the base model)."""
    return f"{f['gate']}: measured {fmt(f['value'])}" + (f" vs base {fmt(f['base'])}" if "base" in f else "")


def print_summary(reporter: Reporter, doc: dict) -> None:
    present = set(metric_names(doc))
    cols = [m for m in TABLE_METRICS if m in present]
    cands = list(doc["results"])
    for dec, results, by_source in views(doc):
        for cond in doc["conditions"]:  # metrics down, candidates across: fits a terminal
            rows = [[m] + [results[c][cond].get(m) for c in cands] for m in cols]
            if any((by_source.get(c, {}).get(cond) or {}).get("general") for c in cands):
                rows += [[f"general: {m}"] + [(by_source[c][cond].get("general") or {}).get(m) for c in cands]
                         for m in ("eos_rate", "loop_rate", "relevance_mean", "over_refusal_rate")]
            reporter.table(" · ".join(x for x in ("ft eval", dec, cond) if x), ["metric"] + cands, rows)
    for f in doc.get("findings") or []:
        reporter.warn(f"{f['candidate']} [{f['condition']}]: {f['message']}")
    failed = doc["gates"]["failed"]
    for f in failed:
        reporter.warn(f"gate failed: {f['candidate']} [{f['condition']}] {gate_failure(f)}")
    if doc["gates"]["checked"] and not failed:
        reporter.result(f"gates passed: {', '.join(doc['gates']['checked'])}")


def flags_of(o: dict) -> list[str]:
    return [name for name, test in FLAGS if test(o)]


# --- HTML ------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}h3{font-size:1em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:.3em .5em;vertical-align:top}
th{background:#f6f6f6;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.bad{background:#fde2e2}td.fail{background:#f8b4b4;font-weight:bold}
table.side{table-layout:fixed;width:100%}table.side td{width:auto}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font:13px/1.4 ui-monospace,Menlo,Consolas,monospace}
.turn{margin:.2em 0}.role{font-weight:bold;color:#555}.flag{display:inline-block;background:#b91c1c;color:#fff;
border-radius:3px;padding:0 .35em;margin:0 .2em .2em 0;font-size:11px}.meta{color:#777;font-size:12px}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}dd{margin:0}
nav a{margin-right:.6em}details{margin:.3em 0}
"""


def e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _summary_html(doc: dict, results: dict, cond: str, failed: set[tuple[str, str, str]]) -> str:
    metrics = metric_names(doc)
    head = "".join(f'<th title="{e(doc["definitions"].get(m, ""))}">{e(m)}</th>' for m in metrics)
    rows = []
    for cand, conds in results.items():
        cells = []
        for m in metrics:
            v = (conds.get(cond) or {}).get(m)
            cls = "num"
            if (cand, cond, m) in failed:
                cls += " fail"
            elif m in BAD_HIGH and isinstance(v, float) and v > 0.05:
                cls += " bad"
            cells.append(f'<td class="{cls}">{e(fmt(v))}</td>')
        rows.append(f"<tr><th>{e(cand)}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>candidate</th>{head}</tr>{''.join(rows)}</table>"


def render_html(doc: dict, outputs: list[dict]) -> str:
    """The whole report as one self-contained HTML page (no scripts, no external assets)."""
    primary = doc.get("primary_decoding")
    failed = {(f.get("decoding", primary), f.get("group"), f["candidate"], f["condition"], f["metric"])
              for f in doc["gates"]["failed"]}
    by_key = {(o["candidate"], o["condition"], o.get("decoding"), o["prompt_id"]): o for o in outputs}
    cands = list(doc["results"])
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>ft eval: {e(doc['name'])}</title>"
             f"<style>{CSS}</style></head><body><h1>ft eval: {e(doc['name'])}</h1>",
             f"<p class=meta>{e(doc['created'])} · {len(doc['prompts'])} prompts · "
             f"conditions: {e(', '.join(doc['conditions']))} · generation: {e(doc['generation'])}</p>"]
    parts.append("<nav>" + "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("candidates", "Candidates"), ("summary", "Summary"), ("definitions", "Definitions"),
        ("judge", "Judge"), ("outputs", "Outputs"))) + "</nav>")
    parts.append('<h2 id="candidates">Candidates</h2><table><tr><th>name</th><th>kind</th><th>source</th>'
                 "<th>base model</th><th>system prompt (system condition)</th></tr>")
    for c in doc["candidates"]:
        parts.append(f"<tr><td>{e(c['name'])}</td><td>{e(c['kind'])}</td><td>{e(c['source'])}</td>"
                     f"<td>{e(c.get('base_model') or '')}</td><td><pre>{e(c.get('system_prompt') or '–')}</pre></td></tr>")
    parts.append("</table>")
    g = doc["gates"]
    if g["checked"]:
        status = "all passed" if not g["failed"] else f"{len(g['failed'])} failed"
        parts.append(f"<p><b>Gates</b> ({e(', '.join(g['checked']))}): {e(status)}</p>")
        if g["failed"]:
            parts.append("<ul>" + "".join(f"<li>{e(f['candidate'])} [{e(f['condition'])}] {e(gate_failure(f))}</li>"
                                          for f in g["failed"]) + "</ul>")
    if doc.get("findings"):
        parts.append("<p><b>Findings</b></p><ul>" + "".join(
            f"<li>{e(f['candidate'])} [{e(f['condition'])}]: {e(f['message'])}</li>" for f in doc["findings"])
            + "</ul>")
    parts.append('<h2 id="summary">Summary</h2>')
    for dec, results, by_source in views(doc):
        for cond in doc["conditions"]:
            title = " · ".join(x for x in (dec, cond) if x)
            mine = {(c, k, m) for d, g, c, k, m in failed if d == dec and g is None}
            parts.append(f"<h3>{e(title)}</h3>{_summary_html(doc, results, cond, mine)}")
            groups = sorted({g for c in by_source for g in (by_source[c].get(cond) or {})})
            for group in groups:  # the same metrics per prompt group (held-out rows, probes, general prompts)
                sub = {c: {cond: by_source[c][cond].get(group) or {}} for c in by_source}
                mine = {(c, k, m) for d, g, c, k, m in failed if d == dec and g == group}
                parts.append(f"<details><summary>{e(title)} · prompt group {e(group)}</summary>"
                             f"{_summary_html(doc, sub, cond, mine)}</details>")
    parts.append('<h2 id="definitions">Definitions</h2><dl>')
    for m in metric_names(doc):
        parts.append(f"<dt>{e(m)}</dt><dd>{e(doc['definitions'].get(m, ''))}</dd>")
    parts.append("</dl>")
    parts.append('<h2 id="judge">Judge</h2>')
    j = doc.get("judge")
    if not j:
        parts.append("<p>No LLM judge (run with --judge openai|anthropic).</p>")
    else:
        u = j["usage"]
        parts.append(f"<p>{e(j['provider'])} / {e(j['model'])}: {u['requests']} requests ({u['cached']} cached, "
                     f"{u['failed']} failed), {u['input_tokens']} input + {u['output_tokens']} output tokens.</p>")
        if j["pairs"]:
            parts.append("<table><tr><th>condition</th><th>A</th><th>B</th><th>A wins</th><th>B wins</th>"
                         "<th>ties</th></tr>" + "".join(
                             f"<tr><td>{e(p['condition'])}</td><td>{e(p['a'])}</td><td>{e(p['b'])}</td>"
                             f"<td class=num>{p['a_wins']}</td><td class=num>{p['b_wins']}</td>"
                             f"<td class=num>{p['ties']}</td></tr>" for p in j["pairs"]) + "</table>")
    parts.append('<h2 id="outputs">Outputs</h2>')
    for p in doc["prompts"]:
        parts.append(f'<section id="p-{e(p["id"])}"><h3>{e(p["id"])} <span class=meta>{e(p["source"])}</span></h3>')
        for t in p["turns"]:
            parts.append(f'<div class=turn><span class=role>{e(t["role"])}:</span> <pre>{e(t["content"])}</pre></div>')
        if p.get("reference"):
            parts.append(f"<details><summary>reference answer</summary><pre>{e(p['reference'])}</pre></details>")
        parts.append('<table class=side><tr><th style="width:7em">condition</th>'
                     + "".join(f"<th>{e(c)}</th>" for c in cands) + "</tr>")
        for cond, dec in [(k, d) for k in doc["conditions"] for d in (doc.get("decodings") or [None])]:
            cells = []
            for c in cands:
                o = by_key.get((c, cond, dec, p["id"]))
                if o is None:
                    cells.append("<td>–</td>")
                    continue
                badges = "".join(f"<span class=flag>{e(f)}</span>" for f in flags_of(o))
                cells.append(f"<td>{badges}<pre>{e(o['text'])}</pre><div class=meta>{o['tokens']} tokens · "
                             f"{o['words']} words</div></td>")
            parts.append(f"<tr><th>{e(' · '.join(x for x in (cond, dec) if x))}</th>{''.join(cells)}</tr>")
        parts.append("</table></section>")
    parts.append("</body></html>\n")
    return "".join(parts)


# --- Markdown --------------------------------------------------------------------------------

def _md_cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    f = "`" * max(3, longest + 1)
    return f"{f}text\n{text}\n{f}"


def render_md(doc: dict, outputs: list[dict], *, examples: int = 10) -> str:
    cands = list(doc["results"])
    lines = [f"# ft eval: {doc['name']}", "", f"{doc['created']} · {len(doc['prompts'])} prompts · "
             f"generation: {doc['generation']}", "", "## Candidates", "",
             "| name | kind | source |", "|---|---|---|"]
    lines += [f"| {_md_cell(c['name'])} | {c['kind']} | {_md_cell(c['source'])} |" for c in doc["candidates"]]
    g = doc["gates"]
    if g["checked"]:
        lines += ["", f"**Gates** ({', '.join(g['checked'])}): "
                  + ("all passed" if not g["failed"] else f"{len(g['failed'])} failed")]
        lines += [f"- {f['candidate']} [{f['condition']}] {gate_failure(f)}" for f in g["failed"]]
    if doc.get("findings"):
        lines += ["", "**Findings**"] + [f"- {f['candidate']} [{f['condition']}]: {f['message']}"
                                          for f in doc["findings"]]
    metrics = metric_names(doc)
    for dec, results, _ in views(doc):
        for cond in doc["conditions"]:
            title = " · ".join(x for x in (dec, cond) if x)
            lines += ["", f"## Summary: {title}", "", "| metric | " + " | ".join(_md_cell(c) for c in cands) + " |",
                      "|---|" + "---:|" * len(cands)]
            lines += [f"| {m} | " + " | ".join(fmt(results[c][cond].get(m)) for c in cands) + " |"
                      for m in metrics]
    lines += ["", "## Definitions", ""]
    lines += [f"- **{m}**: {doc['definitions'].get(m, '')}" for m in metrics]
    j = doc.get("judge")
    if j:
        u = j["usage"]
        lines += ["", "## Judge", "", f"{j['provider']} / {j['model']}: {u['requests']} requests ({u['cached']} "
                  f"cached), {u['input_tokens']} input + {u['output_tokens']} output tokens.", ""]
        if j["pairs"]:
            lines += ["| condition | A | B | A wins | B wins | ties |", "|---|---|---|---:|---:|---:|"]
            lines += [f"| {p['condition']} | {_md_cell(p['a'])} | {_md_cell(p['b'])} | {p['a_wins']} | "
                      f"{p['b_wins']} | {p['ties']} |" for p in j["pairs"]]
    primary = doc.get("primary_decoding")
    by_key = {(o["candidate"], o["condition"], o["prompt_id"]): o for o in outputs
              if o.get("decoding") == primary}
    lines += ["", f"## Examples (first {examples} prompts; all of them in report.html)"]
    for p in doc["prompts"][:examples]:
        lines += ["", f"### {p['id']} ({p['source']})", "", _fence(p["turns"][-1]["content"])]
        for cond in doc["conditions"]:
            for c in cands:
                o = by_key.get((c, cond, p["id"]))
                if o is not None:
                    flags = ", ".join(flags_of(o))
                    lines += ["", f"**{_md_cell(c)}** · {cond}" + (f" · ⚠ {flags}" if flags else ""), "",
                              _fence(o["text"])]
    return "\n".join(lines) + "\n"


def write_reports(out: Path, doc: dict, outputs: list[dict]) -> dict[str, str]:
    """results.json, report.html, report.md (each written atomically); returns their paths. A folder that
    people rated (ft rate's ratings.jsonl, kept across a re-run) gets their verdicts section again."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "html": out / "report.html", "md": out / "report.md"}
    write_json_atomic(paths["results"], doc)
    write_text_atomic(paths["html"], render_html(doc, outputs))
    write_text_atomic(paths["md"], render_md(doc, outputs))
    if (out / "ratings.jsonl").is_file():
        from ..rate.report import refresh  # numpy only when there are ratings

        refresh(out)
    return {k: str(v) for k, v in paths.items()}
