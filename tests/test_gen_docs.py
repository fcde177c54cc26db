"""ft gen --from-docs: chunking with offsets, grounding gates with reasons, provenance, JSON references,
resume after SIGKILL, and the offline stand-in end to end into ft train. Never a live API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fake_llm import FakeLLM
from finetune_cli.cli import app
from finetune_cli.gen.docs_source import Document, approx_tokens, chunk_document, read_documents
from finetune_cli.gen.grounding import check_references, declines, grounding_scores, invented_quotes
from tests.test_gen import _wait_lines

ASSETS = Path(__file__).parent / "assets"
DOC = ASSETS / "jekyll_door.md"   # Stevenson, 1886: public domain
KEY = "sk-test-SECRET-0123456789"


def gen(*args, env=None):
    return CliRunner().invoke(app, ["gen", *map(str, args)], env=env, catch_exceptions=False)


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_chunks_break_at_headings_and_paragraphs_with_overlap_and_exact_offsets():
    text = DOC.read_text()
    chunks = chunk_document(Document("d.md", text), budget=400, overlap=100)
    assert len(chunks) >= 3
    for c in chunks:
        assert c.text == text[c.start:c.end] and c.heading == "Story of the Door"
        assert approx_tokens(c.text) <= 400 or "\n\n" not in c.text  # one long paragraph may be split
        assert text[c.start - 2:c.start] in ("\n\n", "") or text[c.start - 1] in " \n"  # paragraph/sentence start
    assert any(b.start < a.end for a, b in zip(chunks, chunks[1:]))  # overlap
    assert "Robert Louis Stevenson, 1886" not in " ".join(c.text for c in chunks)  # under 20 words: dropped
    html = Path("p.html")
    html.write_text("<html><head><style>p{}</style></head><body><h2>Title</h2><p>" + "word " * 30 +
                    "</p><script>x()</script></body></html>")
    (doc,) = read_documents([str(html)])
    assert doc.text.startswith("## Title\n\nword") and "x()" not in doc.text and "p{}" not in doc.text


def test_gates_measure_overlap_quotes_declines_and_references():
    chunk = "The door was blistered and distained, with neither bell nor knocker."
    assert grounding_scores("Aye, the door had nae bell nor knocker.", chunk, frozenset({"aye", "nae"}))[
        "precision"] == 1.0
    assert invented_quotes('It says "neither bell nor knocker" there.', chunk) == []
    assert invented_quotes('It says "a golden bell and knocker" there.', chunk) == ["a golden bell and knocker"]
    assert declines("Na, the text disna say a word aboot that.") and not declines("The door was blistered.")
    docs = {"d.md": chunk}
    assert check_references([{"file": "d.md", "start": 4, "end": 8, "quote": "door"}], docs) is None
    assert "not the quote" in check_references([{"file": "d.md", "start": 0, "end": 3, "quote": "door"}], docs)


@pytest.mark.parametrize("schema", [False, True], ids=["prose", "format-schema"])
def test_fake_server_rows_are_grounded_with_provenance_and_bad_answers_rejected_with_reasons(schema):
    text = DOC.read_text()
    with FakeLLM() as srv:
        srv.doc_faults = {"Cain": "invented_quote", "rambles": "offtopic"}
        if schema:
            srv.doc_faults["ivy"] = "bad_reference"
        env = {"OPENAI_BASE_URL": srv.openai_url, "OPENAI_API_KEY": KEY}
        r = gen("--from-docs", DOC, "--out", "g.jsonl", "--n-per-topic", 4, "--chunk-tokens", 200,
                "--multi-ratio", 0, "--safety-ratio", 0, *(["--format-schema"] if schema else []), env=env)
    assert r.exit_code == 0, r.output
    out, rejects = rows("g.jsonl"), rows("g.jsonl.rejects.jsonl")
    assert out and Counter(x["meta"]["bucket"] for x in out)["decline"] >= 1
    for row in out:
        m = row["meta"]
        src = m["source"]
        assert src["file"] == str(DOC) and 0 <= src["start"] < src["end"] <= len(text)
        chunk = text[src["start"]:src["end"]]
        assert "Cain" not in chunk and "rambles" not in chunk and (not schema or "ivy" not in chunk)
        g = m["grounding"][0]
        answer = row["messages"][-1]["content"]
        if schema:
            obj = json.loads(answer)
            for ref in obj["references"]:  # every reference points into the document
                assert ref["file"] == str(DOC) and text[ref["start"]:ref["end"]] == ref["quote"]
            assert (len(obj["references"]) > 0) == (m["bucket"] != "decline") and g["references"] >= 0
            answer = obj["answer"]
        if m["bucket"] == "decline":
            assert declines(answer)
        else:
            assert g["precision"] >= 0.6 and 0.05 <= g["recall"] <= 0.9
    final = {(x["reason"], x["detail"].split(":")[0]) for x in rejects if x["final"]}
    assert ("quote_not_in_source", f"not in {DOC}") in final  # the invented quote, named
    invented = [x for x in rejects if x["reason"] == "quote_not_in_source"]
    assert all("green parrots" in x["detail"] and "Cain" in text[x["start"]:x["end"]] for x in invented)
    no_overlap = "bad_json" if schema else "ungrounded"  # the off-topic answer: no JSON / no overlap
    assert any(x["reason"] == no_overlap and "rambles" in text[x["start"]:x["end"]] for x in rejects)
    if not schema:
        assert any(x["detail"].startswith("precision 0.") for x in rejects if x["reason"] == "ungrounded")
    else:
        assert any("quote not in" in x["detail"] for x in rejects if x["reason"] == "bad_reference")


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    with FakeLLM(delay=0.05) as srv:
        env = dict(os.environ, OPENAI_BASE_URL=srv.openai_url, OPENAI_API_KEY=KEY,
                   PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
        cmd = [sys.executable, "-m", "finetune_cli", "gen", "--from-docs", str(DOC), "--out", "k.jsonl",
               "--n-per-topic", "8", "--chunk-tokens", "150", "--max-concurrency", "3", "--seed", "3", "-q"]
        (tmp_path / "full").mkdir()
        (tmp_path / "killed").mkdir()
        subprocess.run(cmd, cwd=tmp_path / "full", env=env, check=True, timeout=120)
        proc = subprocess.Popen(cmd, cwd=tmp_path / "killed", env=env)
        _wait_lines(tmp_path / "killed" / "k.jsonl", 8, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        n_full = len(rows(tmp_path / "full" / "k.jsonl"))
        assert 8 <= len(rows(tmp_path / "killed" / "k.jsonl")) < n_full
        subprocess.run(cmd, cwd=tmp_path / "killed", env=env, check=True, timeout=120)
    full = (tmp_path / "full" / "k.jsonl").read_bytes()
    assert full and (tmp_path / "killed" / "k.jsonl").read_bytes() == full
    assert (tmp_path / "killed" / "k.jsonl.rejects.jsonl").read_bytes() == \
        (tmp_path / "full" / "k.jsonl.rejects.jsonl").read_bytes()


def test_missing_docs_and_both_inputs_are_clear_errors(tmp_path):
    r = gen("--from-docs", "nowhere/", "--out", "x.jsonl")
    assert r.exit_code == 1 and "nowhere/: no such file or directory" in r.stderr
    Path("t.json").write_text('["a topic"]')
    r = gen("--from-docs", DOC, "--topics-json", "t.json", "--out", "x.jsonl")
    assert r.exit_code == 2 and "either --topics-json or --from-docs" in r.stderr


def test_pdf_without_pypdf_is_one_line_naming_the_extra(monkeypatch):
    Path("a.pdf").write_bytes(b"%PDF-1.4\n")
    monkeypatch.setitem(sys.modules, "pypdf", None)  # as if the docs extra were not installed
    r = gen("--from-docs", "a.pdf", "--out", "x.jsonl")
    assert r.exit_code == 2 and "needs pypdf" in r.stderr and "finetune-cli[docs]" in r.stderr


@pytest.mark.slow
def test_offline_stand_in_from_public_domain_text_into_ft_train(tiny_model):
    r = gen("--from-docs", ASSETS, "--out", "d.jsonl", "--provider", "template", "--n-per-topic", 6,
            "--chunk-tokens", 200, "--json")
    assert r.exit_code == 0, r.output
    assert "offline extractive stand-in" in r.stderr
    out = rows("d.jsonl")
    assert len(out) >= 20 and all(x["meta"]["provider"] == "extractive" for x in out)
    assert "stand-in" in out[0]["meta"]["model"]
    text = DOC.read_text()
    core = [x for x in out if x["meta"]["bucket"] == "core"]
    for x in core:  # each answer carries whole sentences of its own chunk
        src = x["meta"]["source"]
        assert any(s.strip() and s.strip() in text[src["start"]:src["end"]]
                   for s in x["messages"][-1]["content"].split(". ")[1:2])
    res = CliRunner().invoke(app, ["train", "--model", str(tiny_model), "--data", "d.jsonl", "--max-steps", "2",
                                   "--max-len", "512", "--batch-size", "4", "--grad-accum", "1", "--quiet",
                                   "--name", "docs"])
    assert res.exit_code == 0, res.output
    assert (Path("runs") / "docs" / "adapter" / "adapter_model.safetensors").exists()
