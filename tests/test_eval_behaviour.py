"""ft eval on what users meet: general prompts, greedy beside sampled decoding, answer relevance, refusals
in the voice, and retention (KL against the base on neutral text)."""

import json

import pytest
from typer.testing import CliRunner

from finetune_cli.cli import app
from finetune_cli.evaluate import metrics as M
from finetune_cli.evaluate.config import parse_gates
from finetune_cli.errors import ConfigError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["eval", "--max-new-tokens", "8", "--max-prompts", "2", "-q", *args])


# --- relevance, refusals: pure functions --------------------------------------------------------

def test_content_words_drop_stopwords_and_stem():
    assert M.content_words("How do I boil an egg so the yolk stays soft?") == {"boil", "egg", "yolk", "stay", "soft"}
    assert M.content_words("What is 17 plus 25?") == {"17", "plu", "25"}  # numbers count; 'plus' → 'plu'
    assert M.stem_lite("berries") == "berry" and M.stem_lite("boiling") == "boil" and M.stem_lite("is") == "is"


def test_relevance_hand_values():
    q = "How do I boil an egg so the yolk stays soft?"  # content: boil, egg, yolk, stay, soft
    assert M.relevance(q, "Boiling eggs: keep the yolks soft, six minutes.") == pytest.approx(4 / 5)
    assert M.relevance(q, "Aye, the weather's dreich the day.") == 0.0
    assert M.relevance(q, "Boil the egg; the yolk stays soft.") == 1.0
    assert M.relevance("How are you?", "Fine.") is None  # no content words in the question: not scored
    assert M.relevance("What is the capital of France?", "Paris is the capital of France.") == 1.0


def test_refusal_rates_by_group():
    rows = [{"source": "probe:harmful", "refused": True, "in_voice": True, "breaks": []},
            {"source": "probe:harmful", "refused": True, "in_voice": False, "breaks": []},
            {"source": "general", "refused": True, "in_voice": True, "breaks": []},
            {"source": "general", "refused": False, "in_voice": True, "breaks": []},
            {"source": "general", "refused": False, "in_voice": True, "breaks": []},
            {"source": "general", "refused": False, "in_voice": True, "breaks": []},
            {"source": "probe:break", "refused": False, "in_voice": True, "breaks": ["as an ai"]},
            {"source": "probe:break", "refused": False, "in_voice": True, "breaks": []}]
    base = {"eos": True, "loop": False, "longest_repeat": 0, "words": 1, "tokens": 1, "leak_overlap": 0.0,
            "leak": False, "script_bad": 0, "script_share": 0.0, "relevance": None}
    agg = M.aggregate(["x"] * len(rows), [{**base, **r} for r in rows])
    assert agg["refusal_rate"] == 1.0 and agg["refusal_in_voice_rate"] == 0.5
    assert agg["over_refusal_rate"] == 0.25 and agg["break_in_voice_rate"] == 0.5


def test_persona_refusal_markers(tmp_path):
    from finetune_cli.persona import load_persona

    doric = load_persona("doric")
    assert "winna help wi'" in doric.refusal_markers and load_persona("bard").refusal_markers
    phrases = M.DEFAULT_REFUSAL_PHRASES + doric.refusal_markers
    assert M.refused("Na, na, I winna help wi' that, loon.", phrases)
    assert not M.refused("Na, na, I winna help wi' that, loon.", M.DEFAULT_REFUSAL_PHRASES)
    assert not M.refused("Aye, Paris is the capital o' France.", phrases)
    # a persona file of one's own sets them
    text = (tmp_path / "p.toml")
    src = (M.__file__.rsplit("/evaluate/", 1)[0] + "/personas/doric.toml")
    body = open(src, encoding="utf-8").read().replace('refusal_markers = [', 'refusal_markers = ["nae chance", ', 1)
    text.write_text(body, encoding="utf-8")
    assert load_persona(str(text)).refusal_markers[0] == "nae chance"


def test_gate_qualifiers():
    g = parse_gates("greedy.general.eos_rate<0.95, loop_rate>0.02, sample.relevance_mean<base-0.1")
    assert [(x.decoding, x.group, x.metric) for x in g] == [("greedy", "general", "eos_rate"),
                                                             (None, None, "loop_rate"),
                                                             ("sample", None, "relevance_mean")]
    assert str(g[0]) == "greedy.general.eos_rate<0.95" and str(g[2]) == "sample.relevance_mean<base-0.1"
    with pytest.raises(ConfigError, match="unknown qualifier 'nope'"):
        parse_gates("greedy.nope.eos_rate<1")


# --- end to end on the tiny model ------------------------------------------------------------------

@pytest.mark.slow
def test_general_prompts_and_greedy_in_results(tiny_model, tmp_path):
    r = invoke("--base", str(tiny_model), "-o", "a", "--fail-if", "greedy.general.eos_rate<0.95,eos_rate<0",
               "--json")
    assert r.exit_code == 1, r.output  # the random tiny model never stops: the greedy general gate fails
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    assert doc["decodings"] == ["greedy", "sample"] and doc["primary_decoding"] == "sample"
    n_general = sum(p["source"] == "general" for p in doc["prompts"])
    assert n_general >= 30
    for dec in ("greedy", "sample"):
        view = doc["by_decoding"][dec]
        m = view["results"]["base"]["no_system"]
        assert m["n"] == len(doc["prompts"]) and "relevance_mean" in m and "over_refusal_rate" in m
        general = view["by_source"]["base"]["no_system"]["general"]
        assert general["n"] == n_general and general["eos_rate"] == 0.0
    assert doc["results"] == doc["by_decoding"]["sample"]["results"]  # unqualified: today's sampled numbers
    assert [f["gate"] for f in doc["gates"]["failed"]] == ["greedy.general.eos_rate<0.95"]
    assert doc["gates"]["failed"][0]["decoding"] == "greedy" and doc["gates"]["failed"][0]["group"] == "general"
    outs = [json.loads(line) for line in (tmp_path / "a" / "outputs.jsonl").read_text().splitlines()]
    assert {o["decoding"] for o in outs} == {"greedy", "sample"}
    html = (tmp_path / "a" / "report.html").read_text()
    assert "greedy · no_system" in html and "prompt group general" in html

    # greedy is deterministic: another run gives the same greedy answers
    r2 = invoke("--base", str(tiny_model), "-o", "b", "--decoding", "greedy")
    assert r2.exit_code == 0, r2.output
    outs2 = [json.loads(line) for line in (tmp_path / "b" / "outputs.jsonl").read_text().splitlines()]
    assert [o["text"] for o in outs2] == [o["text"] for o in outs if o["decoding"] == "greedy"]

    # --no-general drops them; a gate naming a decoding that is not measured is a usage error
    (tmp_path / "p.txt").write_text("What is 2 plus 2?\n")
    r3 = invoke("--base", str(tiny_model), "-o", "c", "--decoding", "greedy", "--no-general", "--no-probes",
                "--prompts", "p.txt")
    assert r3.exit_code == 0, r3.output
    assert not any(p["source"] == "general" for p in json.loads((tmp_path / "c" / "results.json").read_text())
                   ["prompts"])
    r4 = invoke("--base", str(tiny_model), "--decoding", "greedy", "--fail-if", "sample.eos_rate<1")
    assert r4.exit_code == 2 and "not measured" in r4.output


@pytest.mark.slow
def test_retention_zero_for_base_and_grows_for_drifted_adapter(tiny_model, tmp_path):
    from finetune_cli.evaluate.retention import reference_logprobs, retention_metrics
    from finetune_cli.models import load_for_inference
    from test_merge import make_adapter

    base = load_for_inference(str(tiny_model), device="cpu")
    ref = reference_logprobs(base)
    again = retention_metrics(load_for_inference(str(tiny_model), device="cpu"), ref)
    assert again["retention_kl"] == pytest.approx(0, abs=1e-6)
    assert again["retention_kl_prompts"] == pytest.approx(0, abs=1e-6) and again["retention_ppl"] > 1

    adapter = make_adapter(str(tiny_model), tmp_path / "drift")
    r = invoke("--base", str(tiny_model), "--adapter", str(adapter), "--retention", "--decoding", "greedy",
               "--no-general", "--max-new-tokens", "2", "-o", "r", "--fail-if", "retention_kl>0.001")
    assert r.exit_code == 1, r.output
    res = json.loads((tmp_path / "r" / "results.json").read_text())["results"]
    assert res["base"]["no_system"]["retention_kl"] == pytest.approx(0, abs=1e-6)
    assert res["drift"]["no_system"]["retention_kl"] > 0.001
    assert res["drift"]["no_system"]["retention_kl_prompts"] > 0.001
    assert res["drift"]["no_system"]["retention_ppl"] != res["base"]["no_system"]["retention_ppl"]
    assert invoke("--adapter", str(adapter), "--retention").exit_code == 2  # needs --base
