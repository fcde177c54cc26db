"""Training inputs: every accepted shape, completion chunking, masking stats and data errors (fast)."""

from __future__ import annotations

import json

import pytest

from finetune_cli.errors import DataError, TrainingError
from finetune_cli.tiny import make_tokenizer
from finetune_cli.train.data import chunk_tokens, load_inputs, most_common_system
from finetune_cli.train.examples import masking_stats, split_val, tokenize_inputs

MSG = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Fit like?"},
                    {"role": "assistant", "content": "Aye, fine."}]}
SG = {"conversations": [{"from": "human", "value": "Fit like?"}, {"from": "gpt", "value": "Nae bad."}]}


def _tok_args(**kw):
    return {"max_len": 256, "train_on": "assistant", "chunk_size": 32, "chunk_overlap": 4, "text_header": "none",
            **kw}


def test_messages_sharegpt_json_parquet_and_text_load(tmp_path):
    import datasets

    (tmp_path / "a.jsonl").write_text(json.dumps(MSG) + "\n" + json.dumps(SG) + "\n")
    (tmp_path / "b.json").write_text(json.dumps([MSG, SG]))
    datasets.Dataset.from_list([{"text": "An essay about the harbour."}]).to_parquet(str(tmp_path / "c.parquet"))
    (tmp_path / "d.txt").write_text("Title\nBody text.")
    paths = [str(tmp_path / n) for n in ("a.jsonl", "b.json", "c.parquet", "d.txt")]
    inputs = load_inputs(paths, system="Speak Doric.")
    assert len(inputs.conversations) == 4 and len(inputs.documents) == 2
    assert all(c.messages[0] == {"role": "system", "content": "Speak Doric."} for c in inputs.conversations)
    assert [c.source for c in inputs.conversations][:2] == [f"{paths[0]}:1", f"{paths[0]}:2"]
    assert [f["rows"] for f in inputs.files] == [2, 2, 1, 1] and len(inputs.files[0]["sha256"]) == 64
    assert most_common_system(inputs.conversations) == "Speak Doric."


@pytest.mark.parametrize("content,reason", [
    ('{"messages": [{"role": "user", "content": "hi"}]}', "a.jsonl:2: messages: conversation does not end with an assistant"),
    ('{"prompt": "x"}', "a.jsonl:2: no 'messages', 'conversations' or 'text' field (keys: prompt)"),
    ('{"messages": [', "a.jsonl:2:"),
    ('{"text": ""}', "a.jsonl:2: 'text' must be a non-empty string"),
])
def test_data_errors_name_file_and_line(tmp_path, monkeypatch, content, reason):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jsonl").write_text(json.dumps(MSG) + "\n" + content + "\n")
    with pytest.raises(DataError) as e:
        load_inputs(["a.jsonl"])
    assert str(e.value).startswith(reason)


def test_chunk_tokens_overlap_and_tail():
    ids = list(range(10))
    assert chunk_tokens(ids, size=4, overlap=1) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert chunk_tokens(ids, size=4, overlap=0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunk_tokens(ids[:3], size=4, overlap=1) == [[0, 1, 2]]
    for size, overlap in ((7, 3), (5, 0), (3, 2)):
        chunks = chunk_tokens(ids, size=size, overlap=overlap)
        assert all(len(c) <= size for c in chunks) and chunks[0][0] == 0 and chunks[-1][-1] == 9
        assert all(a[-overlap:] == b[:overlap] for a, b in zip(chunks, chunks[1:])) if overlap else True


def test_text_chunks_carry_an_untrained_title_and_end_with_eos(tmp_path):
    tok = make_tokenizer("chatml")
    body = " ".join(["The quick brown fox jumps over the lazy dog."] * 20)
    (tmp_path / "essay.txt").write_text("On Foxes\n" + body)
    inputs = load_inputs([str(tmp_path / "essay.txt")])
    ex = tokenize_inputs(tok, inputs, **_tok_args(text_header="first-line"))
    head = tok("On Foxes\n", add_special_tokens=False)["input_ids"]
    assert len(ex) > 2 and all(len(e.input_ids) <= 32 for e in ex)
    for e in ex:
        assert e.input_ids[:len(head)] == head and e.labels[:len(head)] == [-100] * len(head)
        assert e.labels[len(head):] == e.input_ids[len(head):]
    assert ex[-1].input_ids[-1] == tok.eos_token_id and ex[0].input_ids[-1] != tok.eos_token_id
    assert "On Foxes" not in ex[0].row["text"] and ex[0].row["meta"]["title"] == "On Foxes"
    # consecutive chunks overlap by the requested tokens
    n = len(head)
    assert ex[0].input_ids[-4:] == ex[1].input_ids[n:n + 4]


def test_masking_stats_report_empty_examples_and_fail_when_all_are_empty(tmp_path):
    tok = make_tokenizer("chatml")
    long_user = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    (tmp_path / "a.jsonl").write_text(json.dumps(MSG) + "\n" + json.dumps(long_user) + "\n")
    ex = tokenize_inputs(tok, load_inputs([str(tmp_path / "a.jsonl")]), **_tok_args(max_len=64))
    stats = masking_stats(ex, tok.eos_token_id, tok.pad_token_id)
    assert stats["empty_examples"] == 1 and stats["empty_sources"] == [f"{tmp_path / 'a.jsonl'}:2"]
    assert stats["truncated_examples"] == 1 and stats["eos_trained_examples"] == stats["chat_examples"] == 1
    assert 0 < stats["trainable_share"] < 0.5 and stats["pad_in_inputs"] == 0
    with pytest.raises(TrainingError, match="every example has zero trainable tokens"):
        masking_stats([ex[1]], tok.eos_token_id, tok.pad_token_id)


def test_val_split_is_seeded_and_disjoint():
    items = list(range(40))
    from finetune_cli.train.examples import Example

    ex = [Example([i], [i], f"s{i}", "chat") for i in items]
    tr, va = split_val(ex, 0.1, seed=42)
    tr2, va2 = split_val(ex, 0.1, seed=42)
    assert [e.source for e in va] == [e.source for e in va2] and len(va) == 4 and len(tr) == 36
    assert not {e.source for e in tr} & {e.source for e in va}
    assert split_val(ex, 0.0, seed=1) == (ex, [])


def test_system_dropout_leaves_the_system_turn_out_of_a_seeded_share(tiny_model):
    from transformers import AutoTokenizer

    from finetune_cli.train.examples import Example, drop_system
    from finetune_cli.chat_template import assistant_only_labels

    tok = AutoTokenizer.from_pretrained(tiny_model)
    convs = [[{"role": "system", "content": "Speak Doric."}, {"role": "user", "content": f"q{i}"},
              {"role": "assistant", "content": f"Aye, answer {i}."}] for i in range(200)]
    examples = []
    for i, m in enumerate(convs):
        ids, labels = assistant_only_labels(tok, m, max_len=10**9, train_on="assistant")
        examples.append(Example(ids, labels, f"d.jsonl:{i + 1}", "chat", False, {"messages": m, "meta": {}}))
    out, n = drop_system(tok, examples, 0.25, 7, max_len=512, train_on="assistant")
    assert 30 <= n <= 70 and len(out) == 200
    dropped = [e for e in out if e.row["messages"][0]["role"] != "system"]
    assert len(dropped) == n
    for e in dropped:  # re-tokenized without the system turn; the assistant labels are unchanged
        orig = examples[int(e.source.split(":")[1]) - 1]
        assert len(e.input_ids) < len(orig.input_ids)
        assert [x for x in e.labels if x != -100] == [x for x in orig.labels if x != -100]
        assert "Speak Doric" not in tok.decode(e.input_ids)
    again, _ = drop_system(tok, examples, 0.25, 7, max_len=512, train_on="assistant")
    assert [e.input_ids for e in again] == [e.input_ids for e in out]      # seeded: resume sees the same data
    assert drop_system(tok, examples, 0.0, 7, max_len=512, train_on="assistant") == (examples, 0)
