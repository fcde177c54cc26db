"""sweeps/<name>/leaderboard.{json,md,html}: one row per variant (and the base, for reference).

Order (RULE): finished variants before failed ones; then variants passing every --fail-if gate
before those failing one (fewer failures first); then the judge arena's rating (higher first, when
the arena ran), then people's rating (ft rate), then the held-out loss ft eval measured (lower
first), then the training's best eval loss (with --no-eval), then the name. The base model is listed last, unranked.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from ..jsonl import read_json, write_json_atomic, write_text_atomic
from ..rundir import RunDir, general_figures
from ..ui import Reporter

GENERAL_NOTE = ("General EOS / loops / relevance: ft eval's general prompts (outside any training topic), decoded "
                "greedily where the eval had greedy (what servers and chat UIs use)")
RULE = ("finished before failed; passing every --fail-if gate before failing (fewer failures first); "
        "higher judge-arena rating; higher human rating (ft rate); lower held-out loss (ft eval); lower "
        "best eval loss (training); name")
FAILURE_METRICS = ["eos_rate", "loop_rate", "break_rate", "leak_rate", "script_rate", "distinct_2", "words_mean"]
# On ft eval's general prompts (outside any training topic), greedy where evaluated: what a server shows.
GENERAL = ["general_eos_rate", "general_loop_rate", "general_relevance"]
COST = ["train_seconds", "tokens_per_s", "peak_mem_gib", "global_step", "best_eval_loss"]


def _primary(conditions: list[str]) -> str | None:
    return "system" if "system" in conditions else (conditions[0] if conditions else None)


def _row(name: str, kind: str, values: dict, runs_dir: str, results: dict, cond: str | None,
         gates: list[dict], arena: dict | None, human: dict, doc: dict) -> dict:
    rec = RunDir(Path(runs_dir) / name).read() if kind == "variant" else {}
    m = (results.get(name) or {}).get(cond) or {} if cond else {}
    row: dict[str, Any] = {"run": name, "kind": kind, "values": values}
    row.update({k: rec.get(k) for k in COST})
    row["heldout_loss"] = m.get("heldout_loss")
    row.update({k: m.get(k) for k in FAILURE_METRICS})
    # retention and benchmarks, when the sweep measured them (--retention, --lm-eval)
    row["extra"] = {k: v for k, v in m.items() if k == "retention_kl" or k.startswith("lm_")}
    general = general_figures(doc, name, cond) if cond else {}
    row.update({k: general.get(k) for k in GENERAL})
    failed = [f"{g['gate']} ({g['condition']})" for g in gates if g["candidate"] == name]
    row["gates_failed"] = failed
    r = (arena or {}).get("ratings", {}).get(name) or {}
    row.update({"rating": r.get("rating"), "rating_lo": r.get("lo"), "rating_hi": r.get("hi"),
                "games": r.get("games")})
    h = human.get(name) or {}
    row.update({"human_rating": h.get("rating"), "human_games": h.get("games")})
    return row


def check_gates(gates: list, results: dict, conditions: list[str]) -> tuple[list[str], list[dict]]:
    """--fail-if (ft eval's gate language) over every variant × condition; a gate against ``base`` compares
    with the base model in the same condition. The base itself is exempt."""
    failed = []
    for cand, conds in results.items():
        if cand == "base":
            continue
        for cond in conditions:
            m = conds.get(cond) or {}
            for g in gates:
                ref = (results.get("base") or {}).get(cond, {}).get(g.metric) if g.relative else None
                if g.fails(m.get(g.metric), ref):
                    failed.append({"candidate": cand, "condition": cond, "gate": str(g)})
    return [str(g) for g in gates], failed


def _key(row: dict) -> tuple:
    def num(v, sign=1.0):
        return sign * v if isinstance(v, (int, float)) and not math.isnan(v) else math.inf

    return (row["status"] != "completed", len(row["gates_failed"]), num(row["rating"], -1),
            num(row["human_rating"], -1), num(row["heldout_loss"]), num(row["best_eval_loss"]), row["run"])


def build(cfg, ledger: dict, eval_dir: Path | None, arena: dict | None) -> dict:
    doc = read_json(eval_dir / "results.json") if eval_dir else {}
    results, conds = doc.get("results", {}), doc.get("conditions", [])
    cond = _primary(conds)
    checked, gates = check_gates(cfg.gates, results, conds)
    human: dict = {}
    if eval_dir is not None and (eval_dir / "ratings.jsonl").is_file():
        from .arena import human_ratings

        human = human_ratings(eval_dir)
    rows = []
    for v in ledger["variants"]:
        row = _row(v["name"], "variant", v["values"], ledger["runs_dir"], results, cond, gates, arena, human, doc)
        row.update(status=v.get("status"), error=v.get("error"))
        if row["train_seconds"] is None:
            row["train_seconds"] = v.get("seconds")
        rows.append(row)
    rows.sort(key=_key)
    for i, row in enumerate(rows, 1):
        row["rank"] = i
    if "base" in results:
        base = _row("base", "base", {}, ledger["runs_dir"], results, cond, [], arena, human, doc)
        base.update(status="base", rank=None, error=None)
        rows.append(base)
    best = rows[0] if rows and rows[0]["kind"] == "variant" and rows[0]["status"] == "completed" else None
    return {"ft_sweep_leaderboard": 1, "sweep": ledger["name"], "base": ledger["base"], "rule": RULE,
            "condition": cond, "gates": checked,
            "eval_dir": str(eval_dir) if eval_dir else None,
            "generation": doc.get("generation"), "keys": sorted({k for v in ledger["variants"] for k in v["values"]}),
            "arena": {k: v for k, v in (arena or {}).items() if k != "ratings"} or None,
            "best": best, "rows": rows}


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "; ".join(map(str, v)) if v else "pass"
    return str(v)


def _rating(row: dict, key: str = "rating") -> Any:
    if row.get(key) is None:
        return None
    if key == "rating" and row.get("rating_lo") is not None:
        return f"{row['rating']:.0f} [{row['rating_lo']:.0f}, {row['rating_hi']:.0f}]"
    return f"{row[key]:.0f}"


def table(board: dict) -> tuple[list[str], list[list[str]]]:
    keys = board["keys"]
    heads = ["#", "run", *keys, "status", "gates", "arena (95% CI)", "human", "held-out loss", "eos_rate",
             "loop_rate", "break_rate", "distinct_2", "general EOS", "general loops", "general relevance", "train s",
             "tok/s", "peak GiB"]
    extra = sorted({k for r in board["rows"] for k in r.get("extra") or {}})
    heads += extra
    out = []
    for r in board["rows"]:
        out.append([fmt(r["rank"]), r["run"], *[fmt(r["values"].get(k)) for k in keys],
                    r["status"] + (f": {r['error']}" if r.get("error") else ""),
                    "–" if r["kind"] == "base" else fmt(r["gates_failed"]), fmt(_rating(r)),
                    fmt(_rating(r, "human_rating")), fmt(r["heldout_loss"]), fmt(r["eos_rate"]), fmt(r["loop_rate"]),
                    fmt(r["break_rate"]), fmt(r["distinct_2"]), *[fmt(r.get(k)) for k in GENERAL],
                    fmt(r["train_seconds"]), fmt(r["tokens_per_s"]),
                    fmt(r["peak_mem_gib"]), *[fmt((r.get("extra") or {}).get(k)) for k in extra]])
    return heads, out


def _bias_line(board: dict) -> str | None:
    a = board.get("arena")
    if not a:
        return None
    pb = a["position_bias"]
    rate = "–" if pb["first_rate"] is None else f"{pb['first_rate']:.2f} [{pb['lo']:.2f}, {pb['hi']:.2f}]"
    return (f"Judge arena {a['judge']}: {a['comparisons']} comparisons ({a['calls']} calls, both orders) "
            f"instead of {a['all_pairs_calls']} for every pair on every prompt; position bias: the first "
            f"reply won {rate} of {pb['decisive']} decisive verdicts (0.5 = none); ties {a['ties']}.")


def render_md(board: dict) -> str:
    heads, rows = table(board)
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = [f"# Sweep {cell(board['sweep'])}", "", f"Base `{cell(board['base'])}`; eval condition "
             f"`{board['condition'] or 'none (--no-eval)'}`; {cell(board.get('generation') or '')}.", "", f"Order: {RULE}.", "",
             f"{GENERAL_NOTE}.", ""]
    if board["gates"]:
        lines += [f"Gates: `{cell(', '.join(board['gates']))}`", ""]
    lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    bias = _bias_line(board)
    return "\n".join(lines + ([""] + [bias] if bias else [])) + "\n"


def render_html(board: dict) -> str:
    e = lambda v: html.escape(str(v), quote=True)  # noqa: E731 - every string the page shows
    heads, rows = table(board)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>\n" for r in rows)
    bias = _bias_line(board)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>sweep {e(board['sweep'])}</title>"
            "<style>body{font:14px system-ui;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}tr:first-child td{font-weight:bold}"
            "</style></head><body>"
            f"<h1>Sweep {e(board['sweep'])}</h1><p>Base {e(board['base'])} · eval condition "
            f"{e(board['condition'] or 'none (--no-eval)')} · {e(board.get('generation') or '')}</p><p>Order: {e(RULE)}.</p>"
            f"<p>{e(GENERAL_NOTE)}.</p>"
            + (f"<p>Gates: {e(', '.join(board['gates']))}</p>" if board["gates"] else "")
            + "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in heads) + "</tr>\n" + body + "</table>"
            + (f"<p>{e(bias)}</p>" if bias else "") + "</body></html>\n")


def write(sweep_dir: Path, board: dict) -> dict[str, str]:
    paths = {k: sweep_dir / f"leaderboard.{k}" for k in ("json", "md", "html")}
    write_json_atomic(paths["json"], board)
    write_text_atomic(paths["md"], render_md(board))
    write_text_atomic(paths["html"], render_html(board))
    return {k: str(v) for k, v in paths.items()}


def print_board(reporter: Reporter, board: dict) -> None:
    heads, rows = table(board)
    shown = ("status", "gates", "arena (95% CI)", "held-out loss", "eos_rate", "loop_rate", "general EOS",
             "general loops")
    fixed = 2 + len(board["keys"])  # "#", "run" and the varied values first; a value may be named like a column
    keep = [*range(fixed), *(fixed + heads[fixed:].index(h) for h in shown)]
    reporter.table(f"sweep {board['sweep']}: leaderboard", [heads[i] for i in keep],
                   [[r[i] for i in keep] for r in rows])
    bias = _bias_line(board)
    if bias:
        reporter.info(bias)
