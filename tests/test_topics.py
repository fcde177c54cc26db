"""ft topics expand: every topic shape in and out, validation (5–12 words, banned prefixes, repeated
words), fuzzy dedup against existing and new topics, order kept, --in-place atomic, and no LLM → exit 2.
The real openai SDK talks to tests/fake_llm.py; never a live API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rapidfuzz import fuzz
from rapidfuzz.utils import default_process
from typer.testing import CliRunner

from fake_llm import FakeLLM
from finetune_cli.cli import app
from finetune_cli.errors import DataError
from finetune_cli.topics import load_topics, parse_topics, topic_problem

KEY = "sk-test-SECRET-topics"
GROUPED = {"work": ["preparing for a job interview at a local firm", "asking for a pay rise politely"],
           "daily_life": ["planning a week of cheap family meals"]}
SHAPES = {
    "list": GROUPED["work"],
    "dict": GROUPED,
    "groups": {"groups": GROUPED},
    "records": [{"topic": t, "group": g} for g, ts in GROUPED.items() for t in ts],
}


def expand(*args, env=None):
    return CliRunner().invoke(app, ["topics", "expand", *map(str, args)], env=env, catch_exceptions=False)


def result(r) -> dict:
    return json.loads(r.stdout[r.stdout.index("{"):])


@pytest.fixture
def llm():
    with FakeLLM() as srv:
        yield srv, {"OPENAI_BASE_URL": srv.openai_url, "OPENAI_API_KEY": KEY}


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_expands_and_keeps_its_shape_and_order(llm, shape):
    srv, env = llm
    Path("in.json").write_text(json.dumps(SHAPES[shape]))
    r = expand("--input", "in.json", "--output", "out.json", "--per-group", 4, "--json", env=env)
    assert r.exit_code == 0, r.output
    out = json.loads(Path("out.json").read_text())
    got_shape, grouped = parse_topics(out)
    before = parse_topics(SHAPES[shape])[1]
    assert got_shape == shape and list(grouped) == list(before)
    for group, old in before.items():
        assert grouped[group][:len(old)] == old  # existing topics first, in their order
        new = grouped[group][len(old):]
        assert len(new) == 4 and all(topic_problem(t) is None for t in new)
    assert result(r)["added"] == {g: 4 for g in before}
    assert Path("in.json").read_text() == json.dumps(SHAPES[shape])  # --output leaves the input alone
    assert srv.served["ok"] >= len(before)


@pytest.mark.parametrize("topic, problem", [
    ("too short to use", "4 words"),
    ("one two three four five six seven eight nine ten eleven twelve thirteen", "13 words"),
    ("The importance of saving money when you are young", "banned prefix"),
    ("1. A guide to fixing a bike puncture at home", "banned prefix"),
    ("walking and walking and walking to work every day", "repeats"),
])
def test_topic_problem_names_the_rule(topic, problem):
    assert problem in topic_problem(topic)


@pytest.mark.parametrize("topic", ["fixing a bike puncture at home", "walking to work and back every day",
                                   "one two three four five six seven eight nine ten eleven twelve"])
def test_valid_topics_pass(topic):
    assert topic_problem(topic) is None


def test_validation_and_fuzzy_dedup_against_existing_and_new(llm):
    srv, env = llm
    srv.topic_replies["work"] = [[
        "too short",                                                      # < 5 words
        "The importance of teamwork in a modern busy office",             # banned prefix
        "work and work and work through every single weekend",            # 'work' three times
        "Preparing for a job interview at a local firm!",                 # an existing topic again
        "preparing for job interviews at the local firm",                 # ... reworded
        "planning a week of cheap meals for the family",                  # another group's topic, reordered
        "asking a manager for flexible hours after having a baby",        # new and valid
        "asking the manager for flexible hours after having a baby",      # near-copy of the one above
    ], [
        "handing in a notice without burning any bridges",
        "handing in your notice without burning any bridges",           # near-copy within one reply
        "dealing with a colleague who takes credit for your work",
    ]]
    Path("in.json").write_text(json.dumps(GROUPED))
    r = expand("--input", "in.json", "--output", "out.json", "--per-group", 3, "--groups", "work", "--json",
               env=env)
    assert r.exit_code == 0, r.output
    out = json.loads(Path("out.json").read_text())
    assert out["work"] == GROUPED["work"] + ["asking a manager for flexible hours after having a baby",
                                             "handing in a notice without burning any bridges",
                                             "dealing with a colleague who takes credit for your work"]
    assert out["daily_life"] == GROUPED["daily_life"]  # not in --groups: untouched
    stats = result(r)["stats"]
    assert stats == {"invalid": 3, "duplicate": 5, "added": 3}
    everything = [t for ts in out.values() for t in ts]
    for i, a in enumerate(everything):  # nothing left that a user would call a repeat
        for b in everything[i + 1:]:
            assert fuzz.token_sort_ratio(a, b, processor=default_process) < 85


def test_short_of_per_group_warns(llm):
    srv, env = llm
    srv.topic_replies["work"] = [["too short"], ["choosing a quiet bicycle for the daily commute"]]
    Path("in.json").write_text(json.dumps({"work": GROUPED["work"]}))
    r = expand("--input", "in.json", "--output", "out.json", "--per-group", 2, "--max-rounds", 2, env=env)
    assert r.exit_code == 0, r.output
    assert "fewer than 2 new topics" in r.output and "invalid 1" in r.output
    assert json.loads(Path("out.json").read_text()) == {
        "work": GROUPED["work"] + ["choosing a quiet bicycle for the daily commute"]}


def test_no_valid_topic_at_all_is_exit_1_and_writes_nothing(llm):
    srv, env = llm
    srv.topic_replies["work"] = [["too short"]] * 2
    Path("in.json").write_text(json.dumps({"work": GROUPED["work"]}))
    r = expand("--input", "in.json", "--output", "out.json", "--per-group", 2, "--max-rounds", 2, env=env)
    assert r.exit_code == 1 and "no new topic passed the checks (invalid 2" in r.stderr, r.output
    assert not Path("out.json").exists()


def test_every_request_failing_is_exit_1_naming_host_and_error_class():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    Path("topics.json").write_text(json.dumps(GROUPED))
    before = Path("topics.json").read_bytes()
    env = {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OPENAI_API_KEY": KEY}
    r = expand("--input", "topics.json", "--in-place", "--per-group", 2, "--max-rounds", 1, "--max-retries", 0,
               env=env)
    assert r.exit_code == 1, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "added no topics: 2 requests failed" in errors[0]
    assert f"127.0.0.1:{port}" in errors[0] and "ConnectError" in errors[0] and KEY not in r.output
    assert Path("topics.json").read_bytes() == before


def test_in_place_replaces_the_file_atomically(llm, tmp_path):
    srv, env = llm
    src = Path("topics.json")
    records = [{"topic": GROUPED["work"][0], "group": "work", "note": "kept"},
               {"topic": GROUPED["daily_life"][0], "group": "daily_life"},
               {"topic": GROUPED["work"][1], "group": "work"}]
    src.write_text(json.dumps(records))
    inode = src.stat().st_ino
    r = expand("--input", src, "--in-place", "--per-group", 2, env=env)
    assert r.exit_code == 0, r.output
    assert src.stat().st_ino != inode  # a new file renamed over the old one, never rewritten in place
    assert [p.name for p in tmp_path.iterdir() if p.name != "ft-home"] == ["topics.json"]  # no temp files left
    out = json.loads(src.read_text())
    assert out[:3] == records  # existing records first, in their order, extra keys kept
    assert len(out) == 3 + 2 * 2 and len(load_topics(src)) == 7


def test_in_place_left_untouched_when_the_provider_fails():
    with FakeLLM(api_key="the-right-key") as srv:
        env = {"OPENAI_BASE_URL": srv.openai_url, "OPENAI_API_KEY": KEY}
        Path("topics.json").write_text(json.dumps(GROUPED))
        before = Path("topics.json").read_bytes()
        r = expand("--input", "topics.json", "--in-place", "--per-group", 2, env=env)
    assert r.exit_code == 1 and "authentication failed (HTTP 401)" in r.output and KEY not in r.output
    assert Path("topics.json").read_bytes() == before


def test_without_any_llm_exits_2_and_writes_nothing():
    Path("in.json").write_text(json.dumps(GROUPED))
    r = expand("--input", "in.json", "--output", "out.json", "--per-group", 2)
    assert r.exit_code == 2
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "needs an LLM" in errors[0] and "OPENAI_API_KEY" in errors[0]
    assert "never invents topics offline" in errors[0]
    assert not Path("out.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--per-group", 2], "exactly one of --output FILE or --in-place"),
    (["--per-group", 2, "--output", "o.json", "--in-place"], "exactly one of --output FILE or --in-place"),
    (["--per-group", 2, "--output", "o.json", "--groups", "nope"], "no group 'nope'"),
])
def test_bad_options_exit_2(llm, args, message):
    _, env = llm
    Path("in.json").write_text(json.dumps(GROUPED))
    r = expand("--input", "in.json", *args, env=env)
    assert r.exit_code == 2 and message in r.output, r.output


@pytest.mark.parametrize("data, message", [
    ({"work": "not a list"}, "expected a list of topics"),
    ([{"group": "work"}], "missing key 'topic'"),
    (["fine topic here", ""], "non-empty string"),
    (42, "expected a list of topics"),
])
def test_bad_topic_files_name_the_problem(data, message):
    Path("bad.json").write_text(json.dumps(data))
    with pytest.raises(DataError) as e:
        load_topics("bad.json")
    assert message in str(e.value) and "bad.json" in str(e.value)


# -- resumable: a run that dies keeps its accepted topics; the same command again finishes the job --------

# one group at a time: the requests (so the fake's answers) come in one order; rounds never run out
RESUMABLE = ("--per-group", 5, "--batch", 2, "--max-rounds", 30, "--max-concurrency", 1)


class KeyRevokedAfter(FakeLLM):
    """The fake LLM, except that every request after the first ``ok`` is refused with a 401: a fatal
    provider error that ends the run mid-way (retries do not help)."""

    def __init__(self, ok: int):
        super().__init__()
        self.ok = ok

    def _behaviour(self, messages, body):
        return "401" if self.requests > self.ok else super()._behaviour(messages, body)


def env_for(srv) -> dict:
    return {"OPENAI_BASE_URL": srv.openai_url, "OPENAI_API_KEY": KEY}


def progress_rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def uninterrupted() -> tuple[dict, int]:
    """What a run on GROUPED that nothing stopped writes, and the requests it takes."""
    Path("ref.json").write_text(json.dumps(GROUPED))
    with FakeLLM() as srv:
        r = expand("--input", "ref.json", "--output", "ref.out.json", *RESUMABLE, env=env_for(srv))
        assert r.exit_code == 0, r.output
        return json.loads(Path("ref.out.json").read_text()), srv.requests


def test_a_run_that_dies_keeps_its_topics_and_the_same_command_finishes_it():
    Path("in.json").write_text(json.dumps(GROUPED))
    args = ("--input", "in.json", "--output", "out.json")
    full, total = uninterrupted()
    accepted = [(g, t) for g, ts in full.items() for t in ts[len(GROUPED[g]):]]  # in the order they came
    assert len(accepted) == 10 and total >= 6

    with KeyRevokedAfter(ok=2) as srv:  # at most 2 topics a request: "work" is not finished when the key goes
        r = expand(*args, *RESUMABLE, env=env_for(srv))
    assert r.exit_code == 1 and "authentication failed (HTTP 401)" in r.stderr, r.output
    assert not Path("out.json").exists()
    rows = progress_rows("out.json.partial.jsonl")
    assert rows[0]["header"]["per_group"] == 5 and len(rows[0]["header"]["input_sha256"]) == 64
    kept = len(rows) - 1
    assert 0 < kept < 5 and [(row["group"], row["topic"]) for row in rows[1:]] == accepted[:kept]
    with open("out.json.partial.jsonl", "ab") as f:
        f.write(b'{"group": "work", "top')  # killed mid-write: half a line

    with FakeLLM() as srv:
        r = expand(*args, *RESUMABLE, "--json", env=env_for(srv))
        assert r.exit_code == 0, r.output
        assert srv.requests == total - 2  # only what was missing was asked for
    assert json.loads(Path("out.json").read_text()) == full
    assert result(r)["resumed"] == kept and result(r)["added"] == {"work": 5, "daily_life": 5}
    assert not Path("out.json.partial.jsonl").exists()


def test_progress_from_another_input_or_settings_is_refused_and_overwrite_discards_it():
    Path("in.json").write_text(json.dumps(GROUPED))
    args = ("--input", "in.json", "--output", "out.json")
    with KeyRevokedAfter(ok=1) as srv:
        assert expand(*args, *RESUMABLE, env=env_for(srv)).exit_code == 1
    progress = Path("out.json.partial.jsonl").read_bytes()
    assert len(progress.splitlines()) > 1  # the header, then the topics the one answered request gave

    with FakeLLM() as srv:
        r = expand(*args, "--per-group", 6, "--batch", 2, "--max-rounds", 30, "--max-concurrency", 1, env=env_for(srv))
        assert r.exit_code == 2, r.output
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "holds the progress of a run with --per-group 5 (now 6)" in errors[0]

        Path("in.json").write_text(json.dumps({**GROUPED, "work": GROUPED["work"] + ["a new topic"]}))
        r = expand(*args, *RESUMABLE, env=env_for(srv))
        assert r.exit_code == 2, r.output
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "out.json.partial.jsonl holds the progress of a run on another input" in errors[0]
        assert "--overwrite" in errors[0] and srv.requests == 0
        assert Path("out.json.partial.jsonl").read_bytes() == progress and not Path("out.json").exists()

        r = expand(*args, *RESUMABLE, "--overwrite", "--json", env=env_for(srv))
        assert r.exit_code == 0, r.output
    assert result(r)["resumed"] == 0
    assert not Path("out.json.partial.jsonl").exists()


def test_in_place_run_that_dies_leaves_the_input_byte_identical_and_resumes():
    full, _ = uninterrupted()
    Path("topics.json").write_text(json.dumps(GROUPED))
    before = Path("topics.json").read_bytes()
    with KeyRevokedAfter(ok=3) as srv:
        r = expand("--input", "topics.json", "--in-place", *RESUMABLE, env=env_for(srv))
    assert r.exit_code == 1, r.output
    assert Path("topics.json").read_bytes() == before  # never rewritten before the end
    kept = len(progress_rows("topics.json.partial.jsonl")) - 1
    assert kept > 0

    with FakeLLM() as srv:
        r = expand("--input", "topics.json", "--in-place", *RESUMABLE, env=env_for(srv))
    assert r.exit_code == 0, r.output
    assert f"resuming: {kept} topics already accepted (topics.json.partial.jsonl)" in r.stderr
    assert json.loads(Path("topics.json").read_text()) == full
    assert not Path("topics.json.partial.jsonl").exists()
