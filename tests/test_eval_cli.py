"""``ft eval`` end to end on tiny models: both conditions, results.json shape, gates, sweep, judge, HTML."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from finetune_cli.cli import app
from finetune_cli.evaluate.report import render_html, render_md
from finetune_cli.evaluate.prompts import PROBES

runner = CliRunner()
SYSTEM = "You are Dod, a Doric fisherman from Peterheid. Speak broad Doric and stay in character always."


def _adapter(base, out, seed):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    # init_lora_weights=False: random A and B, so the adapter changes the outputs
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    """A run directory as `ft train` writes it (CONTRACTS.md): adapter/, checkpoints/, run.json,
    data.json, heldout.jsonl — built directly so these tests do not depend on training speed."""
    root = tmp_path_factory.mktemp("eval-run")
    rd = root / "runs" / "dod"
    _adapter(tiny_model, rd / "adapter", 1)
    _adapter(tiny_model, rd / "checkpoints" / "checkpoint-2", 2)
    shutil.copytree(rd / "adapter", rd / "checkpoints" / "checkpoint-4")
    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Tell me about boat {i}."},
                          {"role": "assistant", "content": f"Aye, boat {i} is a bonnie boat, loon, she's nae bad."}],
             "meta": {"id": f"row-{i}", "persona": "doric"}} for i in range(8)]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (rd / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    (rd / "run.json").write_text(json.dumps({"name": "dod", "status": "completed", "base_model": str(tiny_model),
                                             "system_prompt": SYSTEM, "method": "lora"}))
    (rd / "data.json").write_text(json.dumps({"files": [{"path": str(data), "rows": 8}]}))
    return rd


def invoke(args):
    # one decoding, no general prompts: these tests are about the rest of ft eval (test_eval_behaviour: those)
    r = runner.invoke(app, ["eval", "--temperature", "0", "--decoding", "sample", "--no-general",
                            "--max-new-tokens", "12", "-q", *args])
    return r


@pytest.mark.slow
def test_end_to_end_base_and_adapter(tiny_model, run_dir, tmp_path):
    r = invoke(["--base", str(tiny_model), "--adapter", str(run_dir), "-o", "out", "--json",
                "--fail-if", "distinct_2<base-1"])
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    res = doc["results"]
    assert printed["results"] == res
    assert list(res) == ["base", "dod"]
    for cand in res:
        assert set(res[cand]) == {"system", "no_system"}  # both conditions, by default
        for cond in res[cand]:
            m = res[cand][cond]
            assert m["n"] == 3 + len(PROBES)  # held-out rows + probes
            assert 0 <= m["eos_rate"] <= 1 and m["tokens_mean"] <= 12
            assert m["heldout_loss"] > 0 and m["heldout_ppl"] > 1
            assert "marker_in_band" in m  # persona doric from the held-out rows' meta
    assert "near_copy_rate" in res["dod"]["system"] and "near_copy_rate" not in res["base"]["system"]
    assert res["base"]["system"]["heldout_loss"] != res["dod"]["system"]["heldout_loss"]
    assert doc["gates"]["checked"] == ["distinct_2<base-1"] and not doc["gates"]["failed"]
    less_varied = {c for c in res["dod"] if res["dod"][c]["distinct_2"] < res["base"][c]["distinct_2"]}
    assert {f["condition"] for f in doc["findings"] if f["metric"] == "distinct_2"} == less_varied
    cands = {c["name"]: c for c in doc["candidates"]}
    assert cands["dod"]["kind"] == "adapter" and cands["dod"]["system_prompt"] == SYSTEM
    assert cands["base"]["system_prompt"] == SYSTEM  # the base is asked with the run's system prompt
    assert set(doc["definitions"]) >= set(res["dod"]["system"])
    outs = [json.loads(x) for x in (tmp_path / "out" / "outputs.jsonl").read_text().splitlines()]
    assert len(outs) == 2 * 2 * (3 + len(PROBES))
    by = {(o["candidate"], o["condition"], o["prompt_id"]): o["text"] for o in outs}
    # the system condition really carries the system prompt: the same prompt gets other replies
    assert sum(by["base", "system", p] != by["base", "no_system", p] for p in ("row-0", "probe-hi")) >= 1
    html = (tmp_path / "out" / "report.html").read_text()
    assert "row-0" in html and "probe-print-system" in html and "no_system" in html
    assert (tmp_path / "out" / "report.md").read_text().startswith("# ft eval")


@pytest.mark.slow
def test_gates_exit_codes_and_errors(tiny_model, tmp_path):
    (tmp_path / "p.txt").write_text("Fit like?\n\nWhat is the capital of France?\n")
    base = ["--base", str(tiny_model), "--prompts", "p.txt", "--no-probes", "--system", SYSTEM]
    r = invoke(base + ["-o", "fail", "--fail-if", "eos_rate<0.9, loop_rate>0.5"])
    assert r.exit_code == 1
    doc = json.loads((tmp_path / "fail" / "results.json").read_text())  # written before exiting
    assert {f["gate"] for f in doc["gates"]["failed"]} == {"eos_rate<0.9"}  # random weights never stop
    assert doc["results"]["base"]["system"]["n"] == 2
    r = invoke(base + ["-o", "pass", "--fail-if", "eos_rate>1.5,words_mean<0"])
    assert r.exit_code == 0, r.output
    r = invoke(base + ["--fail-if", "eos_rat<0.9"])
    assert r.exit_code == 2 and "did you mean 'eos_rate'" in r.output
    r = invoke(base + ["--fail-if", "eos_rate<<0.9"])
    assert r.exit_code == 2 and "cannot read" in r.output
    r = invoke(base + ["--fail-if", "judge_voice<3"])
    assert r.exit_code == 2 and "--judge" in r.output
    r = invoke(["--merged", str(tiny_model), "--prompts", "p.txt", "--fail-if", "distinct_2<base"])
    assert r.exit_code == 2 and "--base" in r.output
    # a gate on a metric that was not measured fails rather than passing silently
    r = invoke(base + ["-o", "nf", "--fail-if", "format_valid_rate<0.5"])
    assert r.exit_code == 1
    # format validity against a regex
    r = invoke(base + ["-o", "fmt", "--format-regex", r".*", "--fail-if", "format_valid_rate<1"])
    assert r.exit_code == 0, r.output
    r = invoke(["--prompts", "p.txt"])
    assert r.exit_code == 2 and "no candidate" in r.output


@pytest.mark.slow
def test_checkpoint_sweep(run_dir, tmp_path):
    r = invoke(["--run", str(run_dir), "--checkpoints", "all", "--no-probes", "--conditions", "system",
                "-o", "sweep", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    assert list(res) == ["dod@2", "dod@4", "dod"]
    assert list(res["dod"]) == ["system"]
    # checkpoint-4 holds the final adapter's weights; checkpoint-2 differs
    assert res["dod@4"]["system"]["heldout_loss"] == pytest.approx(res["dod"]["system"]["heldout_loss"])
    assert res["dod@2"]["system"]["heldout_loss"] != pytest.approx(res["dod"]["system"]["heldout_loss"])
    r = invoke(["--run", str(run_dir), "--checkpoints", "3"])
    assert r.exit_code == 2 and "saved: 2, 4" in r.output


@pytest.mark.slow
def test_judge_through_the_cli(tiny_model, run_dir, tmp_path, monkeypatch):
    from test_eval_judge import FakeJudge, serve

    fake = FakeJudge()
    srv = serve(fake)
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        (tmp_path / "p.txt").write_text("Fit like?\n")
        args = ["--base", str(tiny_model), "--adapter", str(run_dir), "--prompts", "p.txt", "--no-probes",
                "--system", SYSTEM, "--judge", "openai", "--judge-base-url",
                f"http://127.0.0.1:{srv.server_address[1]}/v1", "--json", "-o", "j"]
        r = invoke(args)
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert out["results"]["base"]["system"]["judge_coherence"] == 4
        for cond in ("system", "no_system"):
            rates = [out["results"][c][cond]["judge_win_rate"] for c in ("base", "dod")]
            assert sum(rates) == 1
        # rubric: 2 candidates × 2 conditions; pairwise: 2 conditions × both orders
        assert out["judge_usage"]["requests"] == 4 + 4 and out["judge_usage"]["input_tokens"] == 800
        assert "judge" in (tmp_path / "j" / "report.html").read_text()
        r = invoke(args)  # cached under FT_HOME: no new requests
        assert json.loads(r.stdout)["judge_usage"]["cached"] == 8 and len(fake.requests) == 8
    finally:
        srv.shutdown()


def test_bad_prompt_file_names_file_and_line(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n'
                                      '{"messages": [{"role": "wizard", "content": "x"}]}\n')
    r = invoke(["--base", "nowhere-model-dir/", "--prompts", "p.jsonl"])
    assert r.exit_code == 1 and "p.jsonl:2: messages: turn 0: unknown role 'wizard'" in r.output, r.output


HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)></pre>```'


def test_html_and_md_escape_hostile_outputs():
    doc = {
        "name": "<b>run</b>", "created": "now", "generation": "greedy", "conditions": ["system"],
        "candidates": [{"name": "<i>cand</i>", "kind": "adapter", "source": "a&b", "system_prompt": HOSTILE}],
        "results": {"<i>cand</i>": {"system": {"n": 1, "eos_rate": 1.0}}},
        "definitions": {"n": "count", "eos_rate": 'stops "early" <ok>'},
        "gates": {"checked": [], "failed": []}, "judge": None,
        "prompts": [{"id": "p<1>", "source": "file", "turns": [{"role": "user", "content": HOSTILE}],
                     "reference": HOSTILE}],
    }
    outputs = [{"candidate": "<i>cand</i>", "condition": "system", "prompt_id": "p<1>", "text": HOSTILE,
                "eos": True, "loop": False, "leak": False, "breaks": [], "script_bad": 0, "tokens": 3, "words": 2}]
    page = render_html(doc, outputs)
    assert "<script" not in page and "<img" not in page and "<i>cand" not in page and "<b>run" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") == 4  # prompt, reference, output, system
    assert "&lt;i&gt;cand&lt;/i&gt;" in page and 'title="stops &quot;early&quot; &lt;ok&gt;"' in page
    md = render_md(doc, outputs)
    assert "````text\n" + HOSTILE in md  # a fence longer than any backtick run in the text


def test_reports_show_the_base_value_of_a_failed_base_gate():
    doc = {
        "name": "r", "created": "now", "generation": "greedy", "conditions": ["system"],
        "candidates": [{"name": "base", "kind": "base", "source": "m"}, {"name": "tuned", "kind": "adapter",
                                                                         "source": "a"}],
        "results": {"base": {"system": {"n": 1, "distinct_2": 0.6}}, "tuned": {"system": {"n": 1, "distinct_2": 0.5}}},
        "definitions": {}, "judge": None, "prompts": [],
        "gates": {"checked": ["distinct_2<base"], "failed": [
            {"candidate": "tuned", "condition": "system", "gate": "distinct_2<base", "metric": "distinct_2",
             "value": 0.5, "base": 0.6}]},
    }
    want = "distinct_2&lt;base: measured 0.500 vs base 0.600"
    assert want in render_html(doc, [])
    assert want.replace("&lt;", "<") in render_md(doc, [])


def test_adapter_runs_on_the_base_given_even_when_it_records_another(tiny_model, tmp_path):
    from finetune_cli.tiny import make_tiny_model

    other = make_tiny_model(tmp_path / "other", seed=7)
    _adapter(tiny_model, tmp_path / "ad", 1)  # adapter_config names tiny_model
    (tmp_path / "p.txt").write_text("Fit like?\n")
    args = ["--base", str(other), "--adapter", "ad", "--prompts", "p.txt", "--no-probes", "--conditions",
            "no_system", "--json"]
    r = invoke(args + ["-o", "o1"])
    assert r.exit_code == 0, r.output
    cands = {c["name"]: c for c in json.loads((tmp_path / "o1" / "results.json").read_text())["candidates"]}
    assert cands["ad"]["base_model"] == str(other)
    texts = json.loads(r.stdout)["results"]
    # moved: the base the adapter records is gone; --base is enough
    cfg_path = tmp_path / "ad" / "adapter_config.json"
    acfg = json.loads(cfg_path.read_text())
    acfg["base_model_name_or_path"] = str(tmp_path / "moved-away")
    cfg_path.write_text(json.dumps(acfg))
    r = invoke(args + ["-o", "o2"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"] == texts  # the same model: the same scores


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model, tmp_path_factory):
    from finetune_cli.merge.gguf_write import write_gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_gguf(tiny_model, path, "f16")
    return path


def _varied_base_repetitive_tuned(monkeypatch):
    """Generation stand-in: the base answers every prompt differently, the tuned model (a peft model) with
    the same few words; loading, scoring and gating stay real."""
    import finetune_cli.evaluate.generate as G

    def fake(model, tok, prompts, **kw):
        tuned = hasattr(model, "peft_config")
        return [G.Generation(text="aye aye aye aye aye aye" if tuned else f"answer {i} says word{i} then w{i * 7}",
                             n_tokens=6, stopped_on_eos=True) for i in range(len(prompts))]

    monkeypatch.setattr(G, "generate", fake)


@pytest.mark.parametrize("base", ["gguf", "alias"])
def test_a_gguf_or_alias_base_is_the_base_for_gates_and_findings(base, tiny_model, tiny_gguf, tmp_path,
                                                                 monkeypatch):
    _varied_base_repetitive_tuned(monkeypatch)
    if base == "alias":  # smollm2-135m, the default real model, is a GGUF too: here the tiny one stands in
        monkeypatch.setenv("FT_SMOLLM2_GGUF", str(tiny_gguf))
    name = str(tiny_gguf) if base == "gguf" else "smollm2-135m"
    _adapter(tiny_model, tmp_path / "ad", 1)
    (tmp_path / "p.txt").write_text("Fit like?\nFit's the news?\nAye?\n")
    # unmerged: the stand-in tells the tuned model by its peft layers
    args = ["--base", name, "--adapter", "ad", "--prompts", "p.txt", "--no-probes", "--conditions", "no_system",
            "--no-merge-adapter"]
    r = invoke(args + ["-o", "worse", "--fail-if", "distinct_2<base"])
    assert r.exit_code == 1, r.output
    doc = json.loads((tmp_path / "worse" / "results.json").read_text())
    assert doc["candidates"][0]["kind"] == "base"
    [failed] = doc["gates"]["failed"]
    assert failed["candidate"] == "ad" and failed["value"] < failed["base"]
    assert [f["candidate"] for f in doc["findings"] if f["metric"] == "distinct_2"] == ["ad"]
    r = invoke(args + ["-o", "fine", "--fail-if", "distinct_2<base-1"])  # the gate can pass, too
    assert r.exit_code == 0, r.output


def test_a_prompt_past_the_context_is_cut_and_said(tiny_model, tmp_path):
    (tmp_path / "p.txt").write_text("Fit like?\n" + "boat " * 400_000 + "Fit's the news?\n")  # 2 MB on one line
    r = runner.invoke(app, ["eval", "--base", str(tiny_model), "--prompts", "p.txt", "--no-probes", "--no-general",
                            "--system", "Hi.", "--decoding", "greedy", "--temperature", "0", "--max-new-tokens", "4", "--conditions", "no_system", "-o", "o"])
    assert r.exit_code == 0, r.output
    assert "1 prompt(s) longer than the model's context" in r.output
    outs = [json.loads(x) for x in (tmp_path / "o" / "outputs.jsonl").read_text().splitlines()]
    assert [o.get("prompt_truncated", False) for o in outs] == [False, True]


@pytest.mark.slow
def test_decode_path_is_recorded_and_compile_failure_falls_back_or_fails(tiny_model, tmp_path, monkeypatch):
    import finetune_cli.evaluate.generate as G

    args = ["--base", str(tiny_model), "--no-probes", "--prompts", "p.txt", "--conditions", "no_system"]
    (tmp_path / "p.txt").write_text("Fit like?\nTell me about boats.\n")
    r = invoke(args + ["-o", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    path = json.loads((tmp_path / "cpu" / "results.json").read_text())["timing"]["base"]["generation_path"]
    assert path["decode"] == "eager" and "cpu" in path["decode_reason"]
    config = tmp_path / "old.toml"
    config.write_text("[eval]\ncompile = false\n")  # a config from before auto: a bool
    r = invoke(args + ["-o", "old", "-c", str(config), "--dry-run"])
    assert r.exit_code == 0, r.output
    r = invoke(args + ["-o", "on-cpu", "--compile", "on"])
    assert r.exit_code == 2 and "--compile on: cannot decode compiled: the device is cpu" in r.output

    monkeypatch.setattr(G, "choose_decode", lambda mode, **kw: (True, None))
    real = G._generate_batch

    def batch(model, enc, gcfg):
        if gcfg.compile_config is not None:
            raise RuntimeError("dynamo: unsupported op")
        return real(model, enc, gcfg)

    monkeypatch.setattr(G, "_generate_batch", batch)
    r = runner.invoke(app, ["eval", "--temperature", "0", "--decoding", "sample", "--no-general",
                            "--max-new-tokens", "12", *args, "-o", "auto"])
    assert r.exit_code == 0, r.output
    assert r.output.count("compiled decoding failed (RuntimeError: dynamo: unsupported op)") == 1
    assert "decoding eager (compiling failed" in r.output
    path = json.loads((tmp_path / "auto" / "results.json").read_text())["timing"]["base"]["generation_path"]
    assert path["decode"] == "eager" and "unsupported op" in path["decode_reason"]
    r = invoke(args + ["-o", "on", "--compile", "on"])
    assert r.exit_code == 1
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert errors == ["error: compiled decoding failed: RuntimeError: dynamo: unsupported op (--compile auto falls "
                      "back to eager decoding, --compile off never compiles)"]


@pytest.mark.slow
def test_ft_runs_shows_each_runs_newest_greedy_general_prompt_rates(run_dir, tmp_path):
    """Held-out loss says how well the data was learned; the general prompts say whether the model still stops
    elsewhere. ft runs shows the latter from the run's newest ft eval (greedy, general prompts)."""
    r = runner.invoke(app, ["eval", "--run", str(run_dir), "--decoding", "greedy,sample", "--no-probes",
                            "--max-new-tokens", "8", "--max-prompts", "1", "-o", "eval/dod-1", "-q"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "eval" / "dod-1" / "results.json").read_text())
    cond = next(iter(doc["by_decoding"]["greedy"]["by_source"]["dod"]))
    general = doc["by_decoding"]["greedy"]["by_source"]["dod"][cond]["general"]
    res = runner.invoke(app, ["runs", "--runs-dir", str(run_dir.parent), "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)["runs"][0]
    assert (row["general_eos_rate"], row["general_loop_rate"], row["general_eval"], row["general_decoding"]) == \
        (general["eos_rate"], general["loop_rate"], "dod-1", "greedy")
    table = runner.invoke(app, ["runs", "--runs-dir", str(run_dir.parent)], env={"COLUMNS": "220"}).output
    assert "general EOS" in table and f"{general['eos_rate']:.0%}" in table
    other = runner.invoke(app, ["runs", "--runs-dir", str(run_dir.parent), "--evals-dir", "nowhere", "--json"])
    assert "general_eos_rate" not in json.loads(other.stdout)["runs"][0]  # no eval found: no column value, no error
