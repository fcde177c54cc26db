from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_cli import config as C
from finetune_cli.cli import app
from finetune_cli.config import load_config, opt
from finetune_cli.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Demo:
    steps: int = opt(10, "steps", ge=1, le=1000)
    lr: float = opt(2e-4, "learning rate", gt=0)
    model: str = opt("tiny", "model", env=("MODEL",))
    method: str = opt("lora", "method", choices=("lora", "dora"))
    tags: list[str] = opt([], "tags")
    packing: bool = opt(True, "packing")
    note: str | None = opt(None, "note")


def write(tmp_path, text, name="ft.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults():
    r = load_config(Demo, "demo", environ={})
    assert r.config == Demo()
    assert set(r.sources.values()) == {"default"}


def test_precedence_default_file_env_flag(tmp_path):
    p = write(tmp_path, "[demo]\nsteps = 20\nlr = 1e-3\nmodel = 'file-model'\n")
    env = {"FT_DEMO_LR": "5e-4", "MODEL": "env-model"}
    r = load_config(Demo, "demo", config_file=p, environ=env, flags={"model": "flag-model"})
    assert (r.config.steps, r.config.lr, r.config.model) == (20, 5e-4, "flag-model")
    assert r.sources["steps"] == f"file:{p}"
    assert r.sources["lr"] == "env:FT_DEMO_LR"
    assert r.sources["model"] == "flag"
    assert r.sources["method"] == "default"


def test_specific_env_beats_alias():
    r = load_config(Demo, "demo", environ={"FT_DEMO_MODEL": "a", "MODEL": "b"})
    assert r.config.model == "a"


def test_env_types_are_parsed():
    env = {"FT_DEMO_PACKING": "off", "FT_DEMO_TAGS": "a, b", "FT_DEMO_NOTE": "none", "FT_DEMO_STEPS": "7"}
    r = load_config(Demo, "demo", environ=env)
    assert (r.config.packing, r.config.tags, r.config.note, r.config.steps) == (False, ["a", "b"], None, 7)


def test_dotenv_is_read_and_real_env_wins(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("FT_DEMO_STEPS=33\nFT_DEMO_LR=0.5\n")
    monkeypatch.setenv("FT_DEMO_LR", "0.25")
    monkeypatch.delenv("_FT_DOTENV_LOADED", raising=False)
    r = load_config(Demo, "demo")
    assert (r.config.steps, r.config.lr) == (33, 0.25)
    monkeypatch.delenv("FT_DEMO_STEPS")


def test_unknown_key_names_key_file_and_closest(tmp_path):
    p = write(tmp_path, "[demo]\nstesp = 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(Demo, "demo", config_file=p, environ={})
    assert str(p) in str(e.value) and "'stesp'" in str(e.value) and "did you mean 'steps'" in str(e.value)


def test_unknown_section(tmp_path):
    p = write(tmp_path, "[dmeo]\nsteps = 3\n")
    with pytest.raises(ConfigError, match=r"unknown section \[dmeo\] \(did you mean \[demo\]\?\)"):
        load_config(Demo, "demo", config_file=p, environ={})


@pytest.mark.parametrize("toml,msg", [
    ("steps = 0", "0 is below the minimum 1"),
    ("steps = 5000", "5000 is above the maximum 1000"),
    ("steps = 'ten'", "expected int, got 'ten'"),
    ("steps = true", "expected int, got True"),
    ("lr = 0", "must be greater than 0"),
    ("method = 'lroa'", "'lroa' is not one of lora, dora (did you mean 'lora'?)"),
    ("tags = 'x'", "expected list of str"),
])
def test_bad_values_in_file(tmp_path, toml, msg):
    p = write(tmp_path, f"[demo]\n{toml}\n")
    with pytest.raises(ConfigError) as e:
        load_config(Demo, "demo", config_file=p, environ={})
    assert msg in str(e.value) and str(p) in str(e.value)


def test_bad_env_value_names_variable():
    with pytest.raises(ConfigError, match="environment FT_DEMO_STEPS: expected int"):
        load_config(Demo, "demo", environ={"FT_DEMO_STEPS": "many"})


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf"])
def test_non_finite_floats_are_refused_naming_the_source(tmp_path, raw):
    """NaN compares False with every bound: it must not pass a range check (nor inf)."""
    with pytest.raises(ConfigError, match=f"environment FT_DEMO_LR: '{raw}' is not a finite number"):
        load_config(Demo, "demo", environ={"FT_DEMO_LR": raw})
    with pytest.raises(ConfigError, match="is not a finite number"):
        load_config(Demo, "demo", config_file=write(tmp_path, f"[demo]\nlr = {raw.lower()}\n"), environ={})
    with pytest.raises(ConfigError, match="option --lr: .* is not a finite number"):
        load_config(Demo, "demo", environ={}, flags={"lr": float(raw)})


def test_cli_nan_is_exit_2_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_GEN_ADV_RATIO", "nan")
    r = CliRunner().invoke(app, ["gen", "--topics-json", "t.json", "-o", "o.jsonl"])
    assert r.exit_code == 2
    assert "environment FT_GEN_ADV_RATIO: 'nan' is not a finite number" in r.stderr


def test_unknown_section_env_variable_warns_with_the_nearest(tmp_path):
    r = load_config(Demo, "demo", environ={"FT_DEMO_STPES": "3", "FT_HOME": "x", "FT_DEMOS": "1"})
    assert r.config.steps == 10
    assert r.warnings == ["environment FT_DEMO_STPES: no [demo] key reads it, ignored "
                          "(did you mean FT_DEMO_STEPS?)"]


def test_cli_warns_of_an_unknown_env_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_TO_SHAREGPT_DORP_META", "1")
    monkeypatch.setenv("FT_TOPICS_EXPAND_BATCH", "3")  # another command's: not this one's business
    r = CliRunner().invoke(app, ["to-sharegpt", "-i", "in.jsonl", "-o", "x.jsonl", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "warning: environment FT_TO_SHAREGPT_DORP_META: no [to_sharegpt] key reads it, ignored " \
        "(did you mean FT_TO_SHAREGPT_DROP_META?)" in r.stderr
    assert "FT_TOPICS_EXPAND" not in r.stderr


def test_a_utf8_bom_in_a_config_file_is_accepted(tmp_path):
    p = tmp_path / "ft.toml"
    p.write_bytes(b"\xef\xbb\xbf[demo]\nsteps = 3\n")
    assert load_config(Demo, "demo", config_file=p, environ={}).config.steps == 3


def test_all_errors_reported_at_once(tmp_path):
    p = write(tmp_path, "[demo]\nsteps = 0\nlr = -1\nbogus = 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(Demo, "demo", config_file=p, environ={})
    assert len(str(e.value).splitlines()) == 3


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(Demo, "demo", config_file=write(tmp_path, "[demo\n"), environ={})
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(Demo, "demo", config_file=tmp_path / "nope.toml", environ={})


def test_from_mapping_nested_and_unknown():
    @dataclass
    class Inner:
        lo: float = opt(0.0, "")
        hi: float = opt(1.0, "")

    @dataclass
    class Outer:
        name: str = opt(help="", required=True)
        band: Inner = opt(default_factory=Inner)
        words: dict[str, list[str]] = opt({}, "")

    o = C.from_mapping(Outer, {"name": "x", "band": {"lo": 1, "hi": 2}, "words": {"a": ["b"]}},
                       origin="p.toml")
    assert o.band == Inner(1.0, 2.0) and o.words == {"a": ["b"]}
    with pytest.raises(ConfigError, match=r"p.toml: band: unknown key 'hii' \(did you mean 'hi'\?\)"):
        C.from_mapping(Outer, {"name": "x", "band": {"hii": 2}}, origin="p.toml")


def test_cli_dry_run_shows_sources(tmp_path, monkeypatch):
    p = write(tmp_path, "[to_sharegpt]\ninput = 'in.jsonl'\n")
    monkeypatch.setenv("FT_TO_SHAREGPT_DROP_META", "1")
    r = CliRunner().invoke(app, ["to-sharegpt", "--config", str(p), "-o", "x.jsonl", "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    import orjson
    data = orjson.loads(r.stdout)
    assert data["input"] == {"value": "in.jsonl", "source": f"file:{p}"}
    assert data["drop_meta"] == {"value": True, "source": "env:FT_TO_SHAREGPT_DROP_META"}
    assert data["output"]["source"] == "flag"
    assert data["reverse"]["source"] == "default"
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_config_error_exit_2_one_line(tmp_path):
    p = write(tmp_path, "[to_sharegpt]\ninptu = 'a'\n")
    r = CliRunner().invoke(app, ["to-sharegpt", "--config", str(p), "-i", "a", "-o", "b"])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        f"error: {p} [to_sharegpt]: unknown key 'inptu' (did you mean 'input'?)"]


def test_example_configs_load():
    """Every example config in the repo is valid for every section it has."""
    from finetune_cli.cli import SECTIONS

    files = sorted((ROOT / "examples").glob("*.toml"))
    assert files, "no example configs"
    for f in files:
        data = C.load_toml(f)
        assert data, f
        lines = f.read_text(encoding="utf-8").splitlines()
        for section in data:
            assert section in SECTIONS, f"{f}: [{section}]"
            C.load_config(SECTIONS[section], section, config_file=f, environ={}, sections=SECTIONS,
                          flags=_positional_args(SECTIONS[section], lines[lines.index(f"[{section}]") - 1]))


def _positional_args(cls, comment: str) -> dict:
    """A command's arguments (``ft chat MODEL``) as written in the line that opens its example section."""
    import dataclasses
    import shlex

    words = [w for w in shlex.split(comment[2:])[1:] if not w.startswith("-")]
    positional = [fl for fl in dataclasses.fields(cls) if fl.metadata.get("positional")]
    values = [w for w in words if "/" in w or "." in w][: len(positional)]
    return {fl.name: ([v] if "list" in str(fl.type) else v) for fl, v in zip(positional, values)}


def test_example_sections_open_with_the_command_that_runs_them():
    """Each [section] of an example config follows a `# ft COMMAND --config FILE` line; that very command
    resolves the section (--dry-run): every key comes from the file, the command's own checks pass."""
    import shlex

    import orjson

    from finetune_cli.cli import SECTIONS

    for f in sorted((ROOT / "examples").glob("*.toml")):
        data = C.load_toml(f)
        lines = f.read_text(encoding="utf-8").splitlines()
        for section, table in data.items():
            at = lines.index(f"[{section}]")
            comment = lines[at - 1]
            assert comment.startswith("# ft "), f"{f}: [{section}] does not open with its command"
            argv = shlex.split(comment[2:])[1:]
            assert argv[argv.index("--config") + 1] == str(f.relative_to(ROOT)), comment
            argv[argv.index("--config") + 1] = str(f)
            if section == "push":  # its --dry-run lists the files it would upload: the run must exist
                cfg = C.load_config(SECTIONS[section], section, config_file=f, environ={}, sections=SECTIONS,
                                    flags=_positional_args(SECTIONS[section], comment))
                assert {k: cfg.sources[k] for k in table} == {k: f"file:{f}" for k in table}, section
                continue
            r = CliRunner().invoke(app, [*argv, "--dry-run", "--json"])
            assert r.exit_code == 0, f"{comment}: {r.output}"
            resolved = orjson.loads(r.stdout)
            assert table and {k: resolved[k]["source"] for k in table} == {k: f"file:{f}" for k in table}


def test_example_config_documents_every_command():
    from finetune_cli.cli import SECTIONS

    documented = set()
    for f in (ROOT / "examples").glob("*.toml"):
        documented |= set(C.load_toml(f))
    assert set(SECTIONS) <= documented
