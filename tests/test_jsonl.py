import gzip
import os
import signal
import subprocess
import sys
import textwrap

import orjson
import pytest

from finetune_cli.errors import DataError
from finetune_cli.jsonl import (AppendWriter, ReadStats, read_json, read_rows, repair_tail,
                                write_rows_atomic)

MALFORMED = [
    (b'{"a": 1}\n{"a": \n', 2, "malformed JSON"),
    (b'{"a": 1}\n[1, 2]\n', 2, "expected a JSON object, got list"),
    (b'"just a string"\n', 1, "expected a JSON object, got str"),
    (b'{"a": 1}\n\n{"a": "\xff\xfe"}\n', 3, "invalid UTF-8"),
    (b'{"a": 1}{"b": 2}\n', 1, "malformed JSON"),
    (b'{"a": NaN}\n', 1, "malformed JSON"),
]


@pytest.mark.parametrize("data,line,reason", MALFORMED)
def test_malformed_rows_name_file_and_line(tmp_path, data, line, reason):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(data)
    with pytest.raises(DataError) as e:
        list(read_rows(p))
    assert str(e.value).startswith(f"{p}:{line}: {reason}")


@pytest.mark.parametrize("data,line,reason", MALFORMED)
def test_skip_counts_bad_rows(tmp_path, data, line, reason):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(data)
    stats = ReadStats()
    rows = list(read_rows(p, on_error="skip", stats=stats))
    assert stats.skipped == 1
    assert f":{line}: {reason}" in stats.examples[0]
    assert all(isinstance(r, dict) for _, r in rows)


def test_gzip_and_line_numbers_skip_blank_lines(tmp_path):
    p = tmp_path / "rows.jsonl.gz"
    with gzip.open(p, "wb") as f:
        f.write(b'{"i": 1}\n\n{"i": 2}\n')
    assert [(n, r["i"]) for n, r in read_rows(p)] == [(1, 1), (3, 2)]


def test_truncated_gzip_is_a_data_error(tmp_path):
    p = tmp_path / "rows.jsonl.gz"
    full = gzip.compress(b'{"i": 1}\n' * 1000)
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="cannot read"):
        list(read_rows(p))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(read_rows(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="is a directory"):
        list(read_rows(tmp_path))


def test_read_json_reports_line(tmp_path):
    p = tmp_path / "t.json"
    p.write_text('{\n  "a": [1,\n  2,,]\n}')
    with pytest.raises(DataError, match=r"t.json:3: malformed JSON"):
        read_json(p)


def test_atomic_write_roundtrip_and_gzip(tmp_path):
    rows = [{"i": i, "s": "ünï"} for i in range(100)]
    for name in ("out.jsonl", "out.jsonl.gz"):
        assert write_rows_atomic(tmp_path / name, rows) == 100
        assert [r for _, r in read_rows(tmp_path / name)] == rows
    # gzip output is deterministic (no mtime in the header)
    a = (tmp_path / "out.jsonl.gz").read_bytes()
    write_rows_atomic(tmp_path / "out.jsonl.gz", rows)
    assert (tmp_path / "out.jsonl.gz").read_bytes() == a


def test_atomic_write_failing_midway_keeps_old_file(tmp_path):
    p = tmp_path / "out.jsonl"
    p.write_bytes(b'{"old": true}\n')

    def rows():
        yield {"i": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_rows_atomic(p, rows())
    assert p.read_bytes() == b'{"old": true}\n'
    assert [x.name for x in tmp_path.iterdir()] == ["out.jsonl"]  # no temp file left


def test_atomic_write_killed_midway_keeps_old_file(tmp_path):
    """A SIGKILL in the middle of a big write leaves the previous file intact."""
    p = tmp_path / "out.jsonl"
    p.write_bytes(b'{"old": true}\n')
    script = textwrap.dedent(f"""
        import os, signal
        from finetune_cli.jsonl import write_rows_atomic
        def rows():
            for i in range(200000):
                if i == 100000:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield {{"i": i, "pad": "x" * 50}}
        write_rows_atomic({str(p)!r}, rows())
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -signal.SIGKILL
    assert p.read_bytes() == b'{"old": true}\n'


def test_append_writer_repairs_torn_tail_and_appends(tmp_path):
    p = tmp_path / "gen.jsonl"
    p.write_bytes(b'{"i": 0}\n{"i": 1}\n{"i": 2, "tor')
    assert repair_tail(p) == len(b'{"i": 2, "tor')
    p.write_bytes(b'{"i": 0}\n{"i": 1}\n{"i": 2, "tor')
    with AppendWriter(p, fsync_every=2) as w:
        w.write({"i": 2})
        w.write({"i": 3})
        w.write({"i": 4})
    assert w.repaired_bytes > 0
    assert [r["i"] for _, r in read_rows(p)] == [0, 1, 2, 3, 4]


def test_append_writer_rows_survive_sigkill(tmp_path):
    p = tmp_path / "gen.jsonl"
    script = textwrap.dedent(f"""
        import os, signal
        from finetune_cli.jsonl import AppendWriter
        with AppendWriter({str(p)!r}, fsync_every=10) as w:
            for i in range(25):
                w.write({{"i": i}})
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", script])
    assert [r["i"] for _, r in read_rows(p)] == list(range(25))  # flushed rows are kept


def test_dumps_keeps_unicode(tmp_path):
    p = tmp_path / "u.jsonl"
    write_rows_atomic(p, [{"t": "fit like, quine? 你好"}])
    assert "你好".encode() in p.read_bytes()
    assert orjson.loads(p.read_bytes())["t"].endswith("你好")
    assert not os.listdir(tmp_path) == []


def test_a_utf8_bom_at_the_start_is_accepted(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": 2}\n')
    assert [row for _, row in read_rows(p)] == [{"a": 1}, {"a": 2}]
    j = tmp_path / "bom.json"
    j.write_bytes(b'\xef\xbb\xbf["t"]')
    assert read_json(j) == ["t"]
