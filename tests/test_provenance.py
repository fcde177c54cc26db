"""Every command that writes outputs writes its resolved config beside them, with where each value was set.

One value per source for each of ft gen, ft train, ft merge and ft eval: ft.toml (file), FT_<SECTION>_<KEY>
(env), a flag, and one left at its default; each is read back from the command's config record.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from finetune_cli.cli import app
from finetune_cli.rundir import RunDir
from tests.test_train import write_data

TOML = """
[gen]
n_per_topic = 2
[train]
r = 4
[merge]
samples = 2
[eval]
max_new_tokens = 6
"""


def ft(*args, env):
    res = CliRunner().invoke(app, [*map(str, args), "--config", "ft.toml", "-q"], env=env)
    assert res.exit_code == 0, (res.output, res.exception)
    return res


def test_each_command_records_each_source(tiny_model, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    Path("ft.toml").write_text(TOML)
    Path("topics.json").write_text(json.dumps({"daily_life": ["keeping a small flat warm in winter"]}))

    ft("gen", "--topics-json", "topics.json", "--out", "gen.jsonl", "--provider", "template",
       env={"FT_GEN_SEED": "7"})
    gen = json.loads(Path("gen.jsonl.config.json").read_text())
    assert gen["config"]["n_per_topic"] == 2 and gen["config"]["seed"] == 7
    assert gen["sources"]["n_per_topic"] == "file:ft.toml" and gen["sources"]["seed"] == "env:FT_GEN_SEED"
    assert gen["sources"]["out"] == "flag" and gen["sources"]["turns"] == "default"

    data = write_data(tmp_path / "d.jsonl", 12)
    ft("train", "--model", tiny_model, "--data", data, "--name", "p", "--max-steps", 2, "--max-len", 96,
       "--batch-size", 4, "--val-file", data, env={"FT_TRAIN_SEED": "3"})
    values, sources = RunDir("runs/p").config()
    assert (values["r"], values["seed"], values["max_steps"]) == (4, 3, 2)
    assert sources["r"] == "file:ft.toml" and sources["seed"] == "env:FT_TRAIN_SEED"
    assert sources["max_steps"] == "flag" and sources["epochs"] == "default"
    # validate() checks and never rewrites: --val-file leaves --val-split as set (its default), derived apart
    assert values["val_split"] == 0.05 and sources["val_split"] == "default"
    assert json.loads(Path("runs/p/config.json").read_text())["resolved"]["held_out_share"] == 0.0

    ft("merge", "--run", "runs/p", "--out", "merged", env={"FT_MERGE_MAX_KL": "0.2"})
    merge = json.loads(Path("merged/ft_config.json").read_text())
    assert merge["sources"]["samples"] == "file:ft.toml" and merge["sources"]["max_kl"] == "env:FT_MERGE_MAX_KL"
    assert merge["sources"]["out"] == "flag" and merge["sources"]["dtype"] == "default"

    Path("p.txt").write_text("Fit like?\n")
    ft("eval", "--merged", "merged", "--prompts", "p.txt", "--no-probes", "-o", "ev", "--temperature", 0,
       env={"FT_EVAL_SEED": "5"})
    ev = json.loads(Path("ev/ft_config.json").read_text())
    assert ev["config"]["max_new_tokens"] == 6 and ev["sources"]["max_new_tokens"] == "file:ft.toml"
    assert ev["sources"]["seed"] == "env:FT_EVAL_SEED" and ev["sources"]["temperature"] == "flag"
    assert ev["sources"]["batch_size"] == "default"


def test_a_config_built_in_code_says_so():
    from finetune_cli.config import load_config, sources_of
    from finetune_cli.merge.run import MergeConfig

    cfg = MergeConfig(out="x", samples=3)
    assert sources_of(cfg)["samples"] == "code" and sources_of(cfg)["dtype"] == "default"
    resolved = load_config(MergeConfig, "merge", flags={"out": "x", "gguf": ["F16,q8_0", "f16"]}, environ={})
    assert resolved.config.gguf == ["F16,q8_0", "f16"]            # validate() leaves the value as given
    assert resolved.config.gguf_types == ["f16", "q8_0"]          # and the derived list is computed
    assert sources_of(resolved.config) == resolved.sources
