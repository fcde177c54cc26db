import orjson
import pytest
from typer.testing import CliRunner

from finetune_cli.cli import app

runner = CliRunner()


def rows_of(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def msgs(*turns, meta=None):
    row = {"messages": [{"role": r, "content": c} for r, c in turns]}
    if meta is not None:
        row["meta"] = meta
    return row


def write(path, rows):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def test_forward_reverse_roundtrip(tmp_path):
    src = [msgs(("system", "Speak Doric."), ("user", "Fit like?"), ("assistant", "Aye, nae bad."),
                meta={"id": "a1", "bucket": "core"}),
           msgs(("user", "Hi"), ("assistant", "Hullo"), ("user", "And?"), ("assistant", "Aye."),
                meta={"id": "a2"})]
    write(tmp_path / "in.jsonl", src)
    r = runner.invoke(app, ["to-sharegpt", "-i", "in.jsonl", "-o", "sg.jsonl"])
    assert r.exit_code == 0, r.output
    sg = rows_of(tmp_path / "sg.jsonl")
    assert sg[0] == {"conversations": [{"from": "system", "value": "Speak Doric."},
                                       {"from": "human", "value": "Fit like?"},
                                       {"from": "gpt", "value": "Aye, nae bad."}],
                     "meta": {"id": "a1", "bucket": "core"}}
    assert [t["from"] for t in sg[1]["conversations"]] == ["human", "gpt", "human", "gpt"]
    r = runner.invoke(app, ["to-sharegpt", "-i", "sg.jsonl", "-o", "back.jsonl", "--reverse"])
    assert r.exit_code == 0, r.output
    assert rows_of(tmp_path / "back.jsonl") == src


def test_aliases_drop_meta_and_system_file(tmp_path):
    (tmp_path / "sys.txt").write_text("Answer in verse.\n")
    write(tmp_path / "in.jsonl", [
        {"messages": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "meta": {"x": 1}},
        {"messages": [{"role": "system", "content": "old"}, {"role": "input", "content": "q2"},
                      {"role": "output", "content": "a2"}]},
    ])
    r = runner.invoke(app, ["to-sharegpt", "-i", "in.jsonl", "-o", "o.jsonl", "--drop-meta",
                            "--system", "@sys.txt"])
    assert r.exit_code == 0, r.output
    out = rows_of(tmp_path / "o.jsonl")
    assert all("meta" not in row for row in out)
    for row in out:  # system added or replaced, never duplicated
        assert row["conversations"][0] == {"from": "system", "value": "Answer in verse."}
        assert sum(t["from"] == "system" for t in row["conversations"]) == 1


BAD = [
    (msgs(("user", "q"), ("robot", "a")), "turn 1: unknown role 'robot'"),
    (msgs(("user", "q"), ("assistant", "  ")), "turn 1 (assistant): empty content"),
    (msgs(("user", "q"), ("user", "q2"), ("assistant", "a")), "turns 0 and 1: two user turns in a row"),
    (msgs(("user", "q"), ("assistant", "a"), ("user", "q2")), "does not end with an assistant turn"),
    ({"conversations": [{"from": "human", "value": "q"}]}, "missing 'messages'"),
    ({"messages": []}, "messages: conversation must be a non-empty list"),
    (msgs(("user", "q"), ("system", "s"), ("assistant", "a")), "a system turn must come first"),
]


@pytest.mark.parametrize("bad,reason", BAD)
def test_bad_rows_fail_with_file_line_and_no_output(tmp_path, bad, reason):
    good = msgs(("user", "q"), ("assistant", "a"))
    write(tmp_path / "in.jsonl", [good, good, bad, good])
    r = runner.invoke(app, ["to-sharegpt", "-i", "in.jsonl", "-o", "out.jsonl"])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: in.jsonl:3: ") and reason in lines[0], lines
    assert not (tmp_path / "out.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.jsonl"]


def test_failed_run_keeps_previous_output(tmp_path):
    (tmp_path / "out.jsonl").write_text("previous\n")
    write(tmp_path / "in.jsonl", [msgs(("user", "q"), ("assistant", "a")), {"messages": "nope"}])
    r = runner.invoke(app, ["to-sharegpt", "-i", "in.jsonl", "-o", "out.jsonl"])
    assert r.exit_code == 1
    assert (tmp_path / "out.jsonl").read_text() == "previous\n"


def test_skip_counts_and_keeps_order(tmp_path):
    rows = [msgs(("user", f"q{i}"), ("assistant", f"a{i}")) for i in range(6)]
    rows[2] = msgs(("user", "q"), ("user", "q"))
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows) + b"{oops\n")
    r = runner.invoke(app, ["to-sharegpt", "-i", "in.jsonl", "-o", "out.jsonl", "--on-error", "skip",
                            "--json"])
    assert r.exit_code == 0, r.output
    res = orjson.loads(r.stdout)
    assert res["written"] == 5 and res["skipped"] == 2
    assert [row["conversations"][0]["value"] for row in rows_of(tmp_path / "out.jsonl")] == \
        ["q0", "q1", "q3", "q4", "q5"]
    assert "in.jsonl:3:" in r.stderr and "in.jsonl:7: malformed JSON" in r.stderr


def test_reverse_hint_when_direction_is_wrong(tmp_path):
    write(tmp_path / "in.jsonl", [{"conversations": [{"from": "human", "value": "q"},
                                                     {"from": "gpt", "value": "a"}]}])
    r = runner.invoke(app, ["to-sharegpt", "-i", "in.jsonl", "-o", "o.jsonl"])
    assert r.exit_code == 1 and "did you mean --reverse?" in r.stderr


def test_gzip_in_and_out(tmp_path):
    import gzip
    with gzip.open(tmp_path / "in.jsonl.gz", "wb") as f:
        f.write(orjson.dumps(msgs(("user", "q"), ("assistant", "a"))) + b"\n")
    r = runner.invoke(app, ["to-sharegpt", "-i", "in.jsonl.gz", "-o", "o.jsonl.gz"])
    assert r.exit_code == 0, r.output
    assert orjson.loads(gzip.decompress((tmp_path / "o.jsonl.gz").read_bytes()))["conversations"][1]["value"] == "a"


def test_missing_system_file_is_config_error(tmp_path):
    write(tmp_path / "in.jsonl", [msgs(("user", "q"), ("assistant", "a"))])
    r = runner.invoke(app, ["to-sharegpt", "-i", "in.jsonl", "-o", "o.jsonl", "--system", "@nope.txt"])
    assert r.exit_code == 2 and "no such file 'nope.txt'" in r.stderr


def test_stdout_reader_gone_is_a_quiet_exit_141(tmp_path):
    """`ft to-sharegpt -o - | head -1`: a Unix filter whose reader left exits 141 (as cat does), no traceback."""
    import os
    import subprocess
    import sys

    write(tmp_path / "in.jsonl", [msgs(("user", f"q{i} " + "x" * 200), ("assistant", "a")) for i in range(3000)])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "finetune_cli", "to-sharegpt", "-i", "in.jsonl", "-o", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=env)
    assert orjson.loads(proc.stdout.readline())["conversations"][0]["from"] == "human"
    proc.stdout.close()  # what head does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 141, err
    assert err == ""


def test_json_with_stdout_output_rows_on_stdout_summary_on_stderr(tmp_path):
    write(tmp_path / "in.jsonl", [msgs(("user", "q"), ("assistant", "a"))])
    r = runner.invoke(app, ["to-sharegpt", "-i", "in.jsonl", "-o", "-", "--json"])
    assert r.exit_code == 0, r.output
    assert [orjson.loads(line)["conversations"][1]["value"] for line in r.stdout.splitlines()] == ["a"]
    assert orjson.loads(r.stderr)["written"] == 1


def test_one_row_is_one_row(tmp_path):
    write(tmp_path / "in.jsonl", [msgs(("user", "q"), ("assistant", "a"))])
    r = runner.invoke(app, ["to-sharegpt", "-i", "in.jsonl", "-o", "o.jsonl"])
    assert r.exit_code == 0 and "wrote 1 row to o.jsonl" in r.stderr
