"""Alpaca rows (instruction, input, output, optional system) in ``ft train --data`` and ``ft to-sharegpt``."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from finetune_cli.cli import app
from finetune_cli.errors import DataError
from finetune_cli.sharegpt import alpaca_turns
from finetune_cli.train.data import load_inputs

runner = CliRunner()

PLAIN = {"instruction": "Fit like?", "input": "", "output": "Aye, nae bad."}
WITH_INPUT = {"instruction": "Translate to Doric.", "input": "How are the children?", "output": "Foo's the bairns?"}
WITH_SYSTEM = {"system": "Speak Doric.", "instruction": "Greet me.", "output": "Aye aye, loon."}
MSG = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
SG = {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]}


def write(path: Path, rows: list) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def conv(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


def test_alpaca_rows_become_conversations_in_jsonl_json_and_parquet(tmp_path):
    import datasets

    write(tmp_path / "a.jsonl", [PLAIN, WITH_INPUT, WITH_SYSTEM, MSG, SG])  # shapes may share a file
    (tmp_path / "b.json").write_text(json.dumps([PLAIN, WITH_INPUT, WITH_SYSTEM]))
    columns = [{"input": None, "system": None, **r} for r in (PLAIN, WITH_INPUT, WITH_SYSTEM)]  # nulls where absent
    datasets.Dataset.from_list(columns).to_parquet(str(tmp_path / "c.parquet"))
    want = [conv(("user", "Fit like?"), ("assistant", "Aye, nae bad.")),
            conv(("user", "Translate to Doric.\nHow are the children?"), ("assistant", "Foo's the bairns?")),
            conv(("system", "Speak Doric."), ("user", "Greet me."), ("assistant", "Aye aye, loon."))]
    inputs = load_inputs([str(tmp_path / n) for n in ("a.jsonl", "b.json", "c.parquet")])
    got = [c.messages for c in inputs.conversations]
    assert got[:3] == got[5:8] == got[8:] == want
    assert got[3:5] == [conv(("user", "q"), ("assistant", "a")), conv(("user", "q2"), ("assistant", "a2"))]
    assert [f["rows"] for f in inputs.files] == [5, 3, 3] and not inputs.documents
    assert inputs.conversations[1].source == f"{tmp_path / 'a.jsonl'}:2"


def test_system_option_replaces_the_rows_system_and_a_text_column_is_ignored(tmp_path):
    write(tmp_path / "a.jsonl", [WITH_SYSTEM, {**PLAIN, "text": "### Instruction:\nFit like?\n\n### Response:\n..."}])
    inputs = load_inputs([str(tmp_path / "a.jsonl")], system="Be brief.")
    assert [c.messages[0] for c in inputs.conversations] == [{"role": "system", "content": "Be brief."}] * 2
    assert not inputs.documents  # tatsu-lab/alpaca ships the rendered prompt as 'text' beside the fields
    assert alpaca_turns({**PLAIN, "input": None, "system": ""}) == [("user", "Fit like?"), ("assistant", "Aye, nae bad.")]


BAD = [
    ({"input": "x", "output": "y"}, "alpaca row has no 'instruction'"),
    ({"instruction": "", "output": "y"}, "'instruction' must be a non-empty string (got an empty string)"),
    ({"instruction": "  ", "output": "y"}, "'instruction' must be a non-empty string (got only whitespace)"),
    ({"instruction": "q"}, "alpaca row has no 'output'"),
    ({"instruction": "q", "output": 3}, "'output' must be a non-empty string (got a number)"),
    ({"instruction": "q", "output": None}, "'output' must be a non-empty string (got null)"),
    ({"instruction": "q", "input": ["x"], "output": "y"}, "'input' must be a string (got a list)"),
    ({"instruction": "q", "output": "y", "system": {"a": 1}}, "'system' must be a string (got an object)"),
    ({**PLAIN, **MSG}, "row mixes shapes: 'messages' and alpaca"),
    ({**SG, "output": "y"}, "row mixes shapes: 'conversations' and alpaca"),
]


@pytest.mark.parametrize("bad,reason", BAD)
def test_bad_rows_name_file_line_and_field_in_train_data(tmp_path, bad, reason):
    write(tmp_path / "a.jsonl", [PLAIN, bad, PLAIN])
    with pytest.raises(DataError) as e:
        load_inputs(["a.jsonl"])
    assert str(e.value).startswith(f"a.jsonl:2: {reason}")


def test_bad_row_in_a_json_file_names_its_row(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps([PLAIN, PLAIN, {**PLAIN, "instruction": ""}]))
    with pytest.raises(DataError, match=r"^b\.json:3: 'instruction' must be a non-empty string"):
        load_inputs(["b.json"])


def test_to_sharegpt_turns_alpaca_into_sharegpt_and_messages(tmp_path):
    write(tmp_path / "in.jsonl", [{**WITH_INPUT, "meta": {"id": "a1"}}, WITH_SYSTEM, MSG])
    r = runner.invoke(app, ["to-sharegpt", "-i", "in.jsonl", "-o", "sg.jsonl"])
    assert r.exit_code == 0, r.output
    sg = [orjson.loads(ln) for ln in (tmp_path / "sg.jsonl").read_bytes().splitlines()]
    assert sg == [
        {"conversations": [{"from": "human", "value": "Translate to Doric.\nHow are the children?"},
                           {"from": "gpt", "value": "Foo's the bairns?"}], "meta": {"id": "a1"}},
        {"conversations": [{"from": "system", "value": "Speak Doric."}, {"from": "human", "value": "Greet me."},
                           {"from": "gpt", "value": "Aye aye, loon."}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    ]
    write(tmp_path / "al.jsonl", [WITH_SYSTEM])
    r = runner.invoke(app, ["to-sharegpt", "-i", "al.jsonl", "-o", "m.jsonl", "--reverse", "--system", "New."])
    assert r.exit_code == 0, r.output
    assert orjson.loads((tmp_path / "m.jsonl").read_bytes()) == {
        "messages": conv(("system", "New."), ("user", "Greet me."), ("assistant", "Aye aye, loon."))}


@pytest.mark.parametrize("bad,reason", [BAD[1], BAD[4], BAD[6], BAD[8]])
def test_to_sharegpt_bad_alpaca_row_is_one_line_and_keeps_the_old_output(tmp_path, bad, reason):
    write(tmp_path / "in.jsonl", [PLAIN, bad])
    r = runner.invoke(app, ["to-sharegpt", "-i", "in.jsonl", "-o", "out.jsonl"])
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: in.jsonl:2: {reason}"), lines
    assert not (tmp_path / "out.jsonl").exists()
    (tmp_path / "out.jsonl").write_text("previous\n")
    assert runner.invoke(app, ["to-sharegpt", "-i", "in.jsonl", "-o", "out.jsonl"]).exit_code == 1
    assert (tmp_path / "out.jsonl").read_text() == "previous\n"


def test_train_on_alpaca_data_end_to_end(tiny_model, tmp_path):
    rows = [{"instruction": f"Question {i}?", "input": "Some context." if i % 2 else "", "output": f"Aye, {i}."}
            for i in range(12)]
    write(tmp_path / "al.jsonl", rows)
    r = CliRunner().invoke(app, ["train", "--model", str(tiny_model), "--data", "al.jsonl", "--max-steps", "2",
                                 "--val-split", "0.25", "--name", "al", "--max-len", "96", "--batch-size", "4",
                                 "--grad-accum", "1", "--quiet"])
    assert r.exit_code == 0, (r.output, r.exception)
    data = json.loads(Path("runs/al/data.json").read_text())
    assert data["train_rows"] + data["val_rows"] == 12 and data["files"][0]["rows"] == 12
    heldout = [orjson.loads(ln) for ln in Path("runs/al/heldout.jsonl").read_bytes().splitlines()]
    assert len(heldout) == data["val_rows"] > 0
    by_q = {r["instruction"]: r for r in rows}
    for row in heldout:  # the held-out rows are the alpaca rows as messages
        user, answer = row["messages"][-2]["content"], row["messages"][-1]["content"]
        src = by_q[user.split("\n")[0]]
        assert user == src["instruction"] + ("\nSome context." if src["input"] else "")
        assert answer == src["output"]


def test_bad_alpaca_row_stops_train_with_exit_1_and_no_run(tiny_model, tmp_path):
    write(tmp_path / "al.jsonl", [PLAIN, {"instruction": "q", "output": 7}])
    r = CliRunner().invoke(app, ["train", "--model", str(tiny_model), "--data", "al.jsonl", "--max-steps", "1"])
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert lines == ["error: al.jsonl:2: 'output' must be a non-empty string (got a number)"], r.output
    assert not Path("runs").exists() or not any(Path("runs").iterdir())
