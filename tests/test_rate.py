"""ft rate's app (Starlette TestClient), its storage, its summary and its command."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from finetune_cli.cli import app as cli_app
from finetune_cli.rate import store as store_mod
from finetune_cli.rate.app import MAX_BODY, make_app
from finetune_cli.rate.store import pair_id
from rate_eval_dir import make_eval_dir

runner = CliRunner()


@pytest.fixture
def eval_dir(tmp_path):
    # answers that do not name their candidate: the page must not learn who answered
    return make_eval_dir(tmp_path / "eval", candidates=["base", "tuned", "merged"], prompts=2,
                         text=lambda c, cond, i: f"reply {i} {cond} {'xyz'[['base', 'tuned', 'merged'].index(c)]}")


def ratings(d):
    p = d / "ratings.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def rate_all(client, rater, choice="A"):
    seen = []
    state = client.get("/api/next", params={"rater": rater}).json()
    while state["pair"]:
        seen.append(state["pair"]["id"])
        r = client.post("/api/rate", json={"rater": rater, "pair": state["pair"]["id"], "choice": choice})
        assert r.status_code == 200, r.text
        state = r.json()
    return seen, state


def test_pairs_are_blind_and_ordered_per_rater(eval_dir):
    client = TestClient(make_app(eval_dir, seed=3))
    first = client.get("/api/next", params={"rater": "ana"}).json()
    assert first["done"] == 0 and first["total"] == 2 * 2 * 3  # prompts × conditions × C(3, 2)
    body = json.dumps(first)
    assert not any(name in body for name in ("base", "tuned", "merged"))
    ana, _ = rate_all(client, "ana")
    ben, _ = rate_all(client, "ben")
    assert len(set(ana)) == len(ana) == 12 and set(ana) == set(ben)  # every pair once, never twice
    assert ana != ben  # each rater gets their own order...
    sides = {(r["rater"], r["pair"]): r["shown"] for r in ratings(eval_dir)}
    assert any(sides[("ana", p)] != sides[("ben", p)] for p in ana)  # ...and their own sides
    assert all(sides[("ana", p)][0] != sides[("ana", p)][1] for p in ana)  # two different candidates


def test_people_rate_the_primary_decodings_answers(tmp_path):
    """ft eval writes an answer per decoding; the page shows the primary decoding's (the one the judge rated)."""
    d = make_eval_dir(tmp_path / "eval", prompts=1, conditions=("system",),
                      text=lambda c, cond, i: f"sampled answer of {c}")
    doc = json.loads((d / "results.json").read_text())
    doc.update(decodings=["greedy", "sample"], primary_decoding="sample")
    (d / "results.json").write_text(json.dumps(doc))
    rows = [json.loads(line) for line in (d / "outputs.jsonl").read_text().splitlines()]
    both = [dict(r, decoding="sample") for r in rows]
    both += [dict(r, decoding="greedy", text=f"greedy answer of {r['candidate']}") for r in rows]
    (d / "outputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in both))
    pairs, _ = store_mod.load_pairs(d)
    assert len(pairs) == 1 and {pairs[0].text_a, pairs[0].text_b} == {"sampled answer of base",
                                                                       "sampled answer of tuned"}


def test_verdict_row_and_no_second_verdict(eval_dir):
    client = TestClient(make_app(eval_dir))
    state = client.get("/api/next", params={"rater": "ana"}).json()
    pid, left_text = state["pair"]["id"], state["pair"]["a"]
    r = client.post("/api/rate", json={"rater": "ana", "pair": pid, "choice": "A", "reason": " sounds right "})
    assert r.status_code == 200 and r.json()["done"] == 1 and r.json()["pair"]["id"] != pid
    [row] = ratings(eval_dir)
    assert row["rater"] == "ana" and row["pair"] == pid and row["choice"] == "A" and row["reason"] == "sounds right"
    assert set(row) >= {"condition", "prompt_id", "candidates", "shown", "winner", "time"}
    assert row["winner"] == row["shown"][0] and "xyz"["base tuned merged".split().index(row["winner"])] == left_text[-1]
    r = client.post("/api/rate", json={"rater": "ana", "pair": pid, "choice": "B"})
    assert r.status_code == 409 and len(ratings(eval_dir)) == 1


def test_verdict_is_fsynced_before_the_response(eval_dir, monkeypatch):
    client = TestClient(make_app(eval_dir))
    pid = client.get("/api/next", params={"rater": "ana"}).json()["pair"]["id"]
    release, at_fsync, real = threading.Event(), [], os.fsync

    def slow_fsync(fd):
        at_fsync.append((eval_dir / "ratings.jsonl").read_text())  # flushed before the fsync
        release.wait(5)
        real(fd)

    monkeypatch.setattr(store_mod.os, "fsync", slow_fsync)
    answer = []
    t = threading.Thread(target=lambda: answer.append(
        client.post("/api/rate", json={"rater": "ana", "pair": pid, "choice": "tie"})))
    t.start()
    time.sleep(0.3)
    assert at_fsync and pid in at_fsync[0] and not answer  # no answer while the fsync is pending
    release.set()
    t.join(5)
    assert answer[0].status_code == 200


def test_restart_continues_where_each_rater_stopped(eval_dir):
    client = TestClient(make_app(eval_dir, seed=1))
    order = []
    for _ in range(3):
        s = client.get("/api/next", params={"rater": "ana"}).json()
        order.append(s["pair"]["id"])
        client.post("/api/rate", json={"rater": "ana", "pair": s["pair"]["id"], "choice": "B"})
    nxt = client.get("/api/next", params={"rater": "ana"}).json()["pair"]
    with (eval_dir / "ratings.jsonl").open("ab") as f:
        f.write(b'{"rater": "ana", "pa')  # a server killed mid-write
    again = TestClient(make_app(eval_dir, seed=1))
    s = again.get("/api/next", params={"rater": "ana"}).json()
    assert s["done"] == 3 and s["pair"] == nxt
    assert again.get("/api/next", params={"rater": "ben"}).json()["done"] == 0
    seen, end = rate_all(again, "ana")
    assert not set(seen) & set(order) and end["done"] == end["total"] == 12
    assert len(ratings(eval_dir)) == 12  # the torn line was cut, nothing lost


def test_pairs_limit_gives_every_rater_the_same_pairs(eval_dir):
    client = TestClient(make_app(eval_dir, pairs=4, seed=2))
    ana, _ = rate_all(client, "ana")
    ben, _ = rate_all(client, "ben")
    assert len(ana) == 4 and set(ana) == set(ben)


@pytest.mark.parametrize("kwargs, status", [
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
    ({"json": ["a", "list"]}, 400),
    ({"json": {"rater": "ana", "pair": "PAIR", "choice": "maybe"}}, 400),
    ({"json": {"rater": "", "pair": "PAIR", "choice": "A"}}, 400),
    ({"json": {"rater": "<b>x</b>", "pair": "PAIR", "choice": "A"}}, 400),
    ({"json": {"rater": "ana", "pair": "PAIR", "choice": "A", "reason": "two\nlines"}}, 400),
    ({"json": {"rater": "ana", "pair": "PAIR", "choice": "A", "reason": "x" * 301}}, 400),
    ({"json": {"rater": "ana", "pair": "0123456789abcdef", "choice": "A"}}, 404),
    ({"json": {"rater": "ana", "pair": 7, "choice": "A"}}, 404),
    ({"data": {"rater": "ana", "pair": "PAIR", "choice": "A"}}, 415),  # a cross-site form post
    ({"json": {"rater": "ana", "pair": "PAIR", "choice": "A", "reason": "x" * (MAX_BODY + 10)}}, 413),
])
def test_bad_posts_get_4xx_and_write_nothing(eval_dir, kwargs, status):
    client = TestClient(make_app(eval_dir))
    pid = client.get("/api/next", params={"rater": "ana"}).json()["pair"]["id"]
    if "json" in kwargs and isinstance(kwargs["json"], dict) and kwargs["json"].get("pair") == "PAIR":
        kwargs = {**kwargs, "json": {**kwargs["json"], "pair": pid}}
    r = client.post("/api/rate", **kwargs)
    assert r.status_code == status, r.text
    assert ratings(eval_dir) == []
    assert client.get("/api/next").status_code == 400  # no rater


def test_token_required_when_exposed(eval_dir):
    client = TestClient(make_app(eval_dir, token="s3cret"))
    assert client.get("/").status_code == 403
    assert client.get("/", params={"token": "wrong"}).status_code == 403
    assert client.get("/api/next", params={"rater": "ana"}).status_code == 403
    r = client.post("/api/rate", json={"rater": "ana", "pair": "x", "choice": "A"})
    assert r.status_code == 403 and ratings(eval_dir) == []
    assert client.get("/", params={"token": "s3cret"}).status_code == 200
    s = client.get("/api/next", params={"rater": "ana"}, headers={"X-Ft-Token": "s3cret"}).json()
    r = client.post("/api/rate", json={"rater": "ana", "pair": s["pair"]["id"], "choice": "A"},
                    headers={"X-Ft-Token": "s3cret"})
    assert r.status_code == 200 and len(ratings(eval_dir)) == 1


def test_local_page_refuses_foreign_host_headers(eval_dir):
    client = TestClient(make_app(eval_dir, allowed_hosts=["127.0.0.1", "localhost"]), base_url="http://127.0.0.1")
    assert client.get("/").status_code == 200
    assert client.get("/", headers={"host": "evil.example"}).status_code == 400  # DNS rebinding


def test_page_carries_no_model_text_and_a_strict_csp(tmp_path):
    d = make_eval_dir(tmp_path / "eval", text=lambda c, cond, i: "<script>alert(1)</script>")
    client = TestClient(make_app(d))
    r = client.get("/")
    assert "alert(1)" not in r.text and "script-src 'nonce-" in r.headers["content-security-policy"]
    nonce = r.headers["content-security-policy"].split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in r.text
    # the JSON carries the raw text; the page inserts it with textContent (tests/test_rate_browser.py)
    assert client.get("/api/next", params={"rater": "a"}).json()["pair"]["a"] == "<script>alert(1)</script>"


def test_missing_outputs_is_a_clear_error(tmp_path):
    d = make_eval_dir(tmp_path / "eval")
    (d / "outputs.jsonl").unlink()
    r = runner.invoke(cli_app, ["rate", str(d)])
    assert r.exit_code == 1 and "outputs.jsonl" in r.output


def write_verdicts(d, rows):
    with (d / "ratings.jsonl").open("w") as f:
        for rater, prompt, choice, shown in rows:
            winner = shown[0] if choice == "A" else shown[1] if choice == "B" else None
            f.write(json.dumps({"rater": rater, "pair": pair_id("system", prompt, "base", "tuned"),
                                "condition": "system", "prompt_id": prompt, "candidates": ["base", "tuned"],
                                "shown": shown, "choice": choice, "winner": winner, "reason": "",
                                "time": "2025-01-01T00:00:00+00:00"}) + "\n")


def test_summary_matches_hand_values(tmp_path):
    judge = [{"condition": "system", "prompt_id": "p0", "a": "base", "b": "tuned", "winner": "a"},
             {"condition": "system", "prompt_id": "p1", "a": "base", "b": "tuned", "winner": "b"},
             {"condition": "system", "prompt_id": "p2", "a": "base", "b": "tuned", "winner": "tie"}]
    d = make_eval_dir(tmp_path / "eval", prompts=3, conditions=("system",), judge_items=judge)
    bt, tb = ["base", "tuned"], ["tuned", "base"]
    write_verdicts(d, [("ana", "p0", "A", bt), ("ana", "p1", "A", tb), ("ana", "p2", "tie", bt),
                       ("ben", "p0", "B", tb), ("ben", "p1", "B", tb), ("ben", "p2", "both_bad", tb),
                       ("cy", "p0", "skip", bt)])
    r = runner.invoke(cli_app, ["rate", "--summary", str(d), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["ratings"] == 6 and s["raters"] == {"ana": 3, "ben": 3}
    [w] = s["win_rates"]  # base: 3 wins, 1 loss, a tie and a both-bad -> (3 + 1) / 6
    assert (w["a"], w["b"], w["n"], w["a_wins"], w["b_wins"], w["ties"], w["both_bad"]) == ("base", "tuned", 6, 3, 1, 1, 1)
    assert w["a_win_rate"] == pytest.approx(4 / 6)
    # Wilson(4, 6): centre (2/3 + 0.32013) / 1.64027, half 1.96·sqrt(0.037037 + 0.026676) / 1.64027
    assert w["ci95"] == pytest.approx([0.299993, 0.903225], abs=1e-5)
    # Bradley–Terry: base 3 + 2·0.5 + prior 0.5 = 4.5 wins, tuned 1 + 1 + 0.5 = 2.5
    assert [(b["candidate"], b["strength"]) for b in s["bradley_terry"]] == \
        [("base", pytest.approx(4.5 / 7)), ("tuned", pytest.approx(2.5 / 7))]
    # raters: p0 a/a, p1 b/a, p2 tie/both_bad -> 1 of 3 agree; kappa (1/3 - 2/9) / (1 - 2/9) = 1/7
    ag = s["rater_agreement"]
    assert ag["items"] == 3 and ag["percent"] == pytest.approx(1 / 3) and ag["mean_kappa"] == pytest.approx(1 / 7)
    # people by majority: base, tie (split), tie; judge: base, tuned, tie -> p_o 2/3, p_e 1/3, kappa 0.5
    ja = s["judge_agreement"]
    assert ja["available"] and ja["n"] == 3 and ja["percent"] == pytest.approx(2 / 3)
    assert ja["kappa"] == pytest.approx(0.5)
    r = runner.invoke(cli_app, ["rate", "--summary", str(d)])
    assert r.exit_code == 0 and "Bradley" in r.output and "kappa 0.50" in r.output


def test_summary_without_ratings_or_judge(tmp_path):
    d = make_eval_dir(tmp_path / "eval")
    r = runner.invoke(cli_app, ["rate", "--summary", str(d)])
    assert r.exit_code == 1 and "no ratings yet" in r.output
    write_verdicts(d, [("ana", "p0", "A", ["base", "tuned"])])
    r = runner.invoke(cli_app, ["rate", "--summary", str(d), "--json"])
    assert json.loads(r.stdout)["judge_agreement"] == {"available": False, "why": "ft eval ran without --judge"}


@pytest.mark.parametrize("args", [["--help"], ["rate", "--help"]])
def test_help_does_not_import_the_web_stack(args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "finetune_cli", *args],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0
    mods = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}
    assert "typer" in mods and not mods & {"starlette", "uvicorn", "numpy"}


EVIL = "<script>alert(1)</script>"


def reported_eval_dir(tmp_path, candidates):
    """An eval folder whose report.html/.md ft eval's own writer made (judge with pairwise verdicts)."""
    from finetune_cli.evaluate.report import write_reports

    judge = [{"condition": "system", "prompt_id": f"p{i}", "a": candidates[0], "b": candidates[1], "winner": w}
             for i, w in enumerate(["a", "b", "tie"])]
    d = make_eval_dir(tmp_path / "eval", candidates=candidates, prompts=3, conditions=("system",), judge_items=judge)
    doc = json.loads((d / "results.json").read_text())
    doc.update(created="now", generation="greedy", definitions={}, gates={"checked": [], "failed": []},
               results={c: {"system": {"n": 3}} for c in candidates})
    doc["judge"]["usage"] = {"requests": 3, "cached": 0, "failed": 0, "input_tokens": 1, "output_tokens": 1}
    for c in doc["candidates"]:
        c["source"] = "src"
    write_reports(d, doc, [])
    return d, doc


def test_summary_puts_peoples_verdicts_into_the_eval_report(tmp_path):
    from finetune_cli.evaluate.report import write_reports
    from finetune_cli.rate.report import BEGIN, END

    d, doc = reported_eval_dir(tmp_path, ["base", f"tuned{EVIL}"])
    assert BEGIN not in (d / "report.html").read_text()  # nobody rated yet: no section
    client = TestClient(make_app(d, seed=1))
    for rater, choice in (("ana", "A"), ("ben", "B")):
        state = client.get("/api/next", params={"rater": rater}).json()
        while state["pair"]:
            state = client.post("/api/rate", json={"rater": rater, "pair": state["pair"]["id"], "choice": choice,
                                                   "reason": f"because {EVIL}"}).json()
    r = runner.invoke(cli_app, ["rate", "--summary", str(d), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert json.loads((d / "ratings_summary.json").read_text()) == s
    page = (d / "report.html").read_text()
    section = page[page.index(BEGIN):page.index(END)]
    assert page.index(END) < page.index('<h2 id="outputs">')
    [w] = s["win_rates"]
    ja, ag = s["judge_agreement"], s["rater_agreement"]
    assert ja["available"] and ja["kappa"] is not None and ag["mean_kappa"] is not None
    for want in (f"<td>{w['a_win_rate']:.2f}</td>", f"<td>{w['ci95'][0]:.2f}–{w['ci95'][1]:.2f}</td>",
                 f"kappa {ja['kappa']:.2f}", f"mean Cohen&#x27;s kappa {ag['mean_kappa']:.2f}",
                 f"<td>{s['bradley_terry'][0]['strength']:.3f}</td>"):
        assert want in section, want
    assert "<script" not in page and "because &lt;script&gt;alert(1)&lt;/script&gt;" in section
    assert "tuned&lt;script&gt;" in section
    md = (d / "report.md").read_text()
    md_section = md[md.index(BEGIN):md.index(END)]
    assert f"kappa {ja['kappa']:.2f}" in md_section and "<script" not in md_section
    assert md.index(END) < md.index("## Examples")

    r = runner.invoke(cli_app, ["rate", "--summary", str(d)])  # a second summary replaces the section
    assert r.exit_code == 0, r.output
    assert (d / "report.html").read_text() == page and (d / "report.md").read_text() == md
    assert page.count(BEGIN) == page.count(END) == md.count(BEGIN) == 1

    (d / "ratings_summary.json").unlink()
    write_reports(d, doc, [])  # ft eval re-run in a rated folder: the section comes back, once
    assert (d / "report.html").read_text() == page and (d / "report.md").read_text() == md
    assert json.loads((d / "ratings_summary.json").read_text()) == s
