"""ft push: the real huggingface_hub client against a fake Hub on 127.0.0.1 (tests/fake_hub.py). Files and
contents arrive (LFS and regular), a push cut off half-way finishes on the next run without re-sending what
landed, failed gates and foreign repos are refused, each Hub error is one line, and the token appears in no
output, log or file."""

from __future__ import annotations

import hashlib
import logging

import orjson
import pytest
from typer.testing import CliRunner

from finetune_cli.cli import app
from tests.fake_hub import FakeHub
from tests.test_card import make_records

TOKEN = "hf_fake_token_0123456789"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    with FakeHub(TOKEN) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hc, "ENDPOINT", h.url)  # as if HF_ENDPOINT had been set before huggingface_hub loaded
        monkeypatch.setattr(hc, "HF_HUB_DISABLE_XET", True)  # the legacy LFS protocol, which the fake speaks
        yield h


def push(*args):
    return CliRunner().invoke(app, ["push", *map(str, args)])


def lfs_puts(h):
    return [r["path"] for r in h.requests if r["method"] == "PUT"]


def test_push_run_uploads_files_and_contents(hub, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    r = make_records(tmp_path)
    res = push(r["run"], "--repo", "tester/doric", "--eval", r["eval"], "--json")
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.stdout)
    files = hub.files("tester/doric")
    ad = r["run"] / "adapter"
    assert files["adapter_model.safetensors"] == (ad / "adapter_model.safetensors").read_bytes()
    assert files["adapter_config.json"] == (ad / "adapter_config.json").read_bytes()
    assert files["ft/run.json"] == (r["run"] / "run.json").read_bytes()
    assert files["ft/eval_results.json"] == (r["eval"] / "results.json").read_bytes()
    assert files["loss.png"] == (r["run"] / "loss.png").read_bytes()
    assert not any(p.endswith((".bin", ".pt", ".pkl")) for p in files)  # training_args.bin stayed home
    assert "training_args.bin" in res.stderr and "pickle" in res.stderr
    card = files["README.md"].decode()
    assert card.startswith("---\n") and "from_pretrained('tester/doric')" in card
    # the safetensors went through LFS (batch + PUT), the JSON in the commit itself
    assert any(p == "/lfs-upload/" + hashlib.sha256(files["adapter_model.safetensors"]).hexdigest()
               for p in lfs_puts(hub))
    assert out["uploaded"] == len(files) and out["skipped"] == 0
    # a second run finds everything there: no commit, no upload
    n = len(hub.requests)
    res = push(r["run"], "--repo", "tester/doric", "--eval", r["eval"], "--json")
    assert res.exit_code == 0, res.output
    assert orjson.loads(res.stdout)["uploaded"] == 0
    assert not [q for q in hub.requests[n:] if "/commit/" in q["path"] or q["method"] == "PUT"]
    _no_token(res, caplog, tmp_path)
    assert "huggingface.co" not in caplog.text  # nothing left the machine


def _no_token(res, caplog, tmp_path):
    assert TOKEN not in res.output and TOKEN not in res.stderr and TOKEN not in caplog.text
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert TOKEN.encode() not in p.read_bytes(), p


def test_interrupted_push_resumes_without_resending(hub, tmp_path, monkeypatch, caplog):
    import finetune_cli.publish.push as push_mod

    monkeypatch.setattr(push_mod, "BIG", 100)  # the GGUFs and safetensors each get a commit of their own
    r = make_records(tmp_path)
    # the 2nd commit dies (the network went away after the first file landed)
    commits = {"n": 0}
    orig = hub.server.RequestHandlerClass._dispatch

    def dispatch(self, method, path, body):
        if "/commit/" in path:
            commits["n"] += 1
            if commits["n"] == 2:
                return self._send(500, {"error": "connection reset"})
        return orig(self, method, path, body)

    monkeypatch.setattr(hub.server.RequestHandlerClass, "_dispatch", dispatch)
    res = push(r["merged"], "--repo", "tester/m", "--eval", r["eval"])
    assert res.exit_code == 1 and res.stderr.count("error:") == 1
    assert "500" in res.stderr and "resumes" in res.stderr and "Traceback" not in res.output
    landed = dict(hub.files("tester/m"))
    assert len(landed) == 1
    n = len(hub.requests)
    res = push(r["merged"], "--repo", "tester/m", "--eval", r["eval"], "--json")
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.stdout)
    assert out["skipped"] == 1 and out["uploaded"] == len(out["files"]) - 1
    files = hub.files("tester/m")
    for rp in ("model.safetensors", "gguf/model-f16.gguf", "gguf/model-q4_k_m.gguf", "gguf/Modelfile",
               "gguf/ft_gguf.json", "ft_merge.json"):
        assert files[rp] == (r["merged"] / rp).read_bytes(), rp
    # what landed the first time was not sent again
    (first,) = landed
    assert not [q for q in hub.requests[n:] if q["method"] == "PUT" and
                q["path"].endswith(hashlib.sha256(landed[first]).hexdigest())]
    _no_token(res, caplog, tmp_path)


def test_dry_run_lists_every_file_and_size_and_sends_nothing(hub, tmp_path):
    r = make_records(tmp_path)
    res = push(r["merged"], "--repo", "tester/m", "--what", "gguf", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.stdout)
    sizes = {f["path"]: f["bytes"] for f in out["files"]}
    assert sizes["gguf/model-f16.gguf"] == 104 and sizes["gguf/model-q4_k_m.gguf"] == 44
    assert "model.safetensors" not in sizes and "README.md" in sizes
    assert out["total_bytes"] == sum(sizes.values()) and hub.requests == []
    res = push(r["run"], "--repo", "tester/d", "--dry-run")
    assert res.exit_code == 0 and "adapter_model.safetensors" in res.stdout and "total" in res.stdout


def test_dataset_push_goes_to_a_dataset_repo(hub, tmp_path):
    r = make_records(tmp_path)
    res = push(r["data"], "--repo", "tester/doric-chats")
    assert res.exit_code == 0, res.output
    files = hub.files("tester/doric-chats", repo_type="dataset")
    assert files["doric.jsonl"] == r["data"].read_bytes() and "doric.jsonl.rejects.jsonl" in files
    assert "load_dataset('tester/doric-chats'" in files["README.md"].decode()


def test_refusals_and_hub_errors_are_one_line(hub, tmp_path, monkeypatch, caplog):
    r = make_records(tmp_path, gates_failed=True)
    res = push(r["run"], "--repo", "tester/x", "--eval", r["eval"])
    assert res.exit_code == 1 and "eos_rate<0.9" in res.stderr and "--force" in res.stderr
    assert hub.requests == []
    res = push(r["run"], "--repo", "tester/x", "--what", "gguf", "--force")
    assert res.exit_code == 2 and "holds no gguf" in res.stderr
    # a repository holding something else
    hub.repos["model:tester/other"] = {"private": False, "branches": {"main": {"weights.ckpt": b"x"}}}
    res = push(r["run"], "--repo", "tester/other", "--eval", r["eval"], "--force")
    assert res.exit_code == 0, res.output  # --force: gates and foreign files both accepted
    hub.repos["model:tester/other2"] = {"private": False, "branches": {"main": {"weights.ckpt": b"x"}}}
    (tmp_path / "b").mkdir()
    r2 = make_records(tmp_path / "b")
    res = push(r2["run"], "--repo", "tester/other2", "--eval", r2["eval"])
    assert res.exit_code == 1 and "holds other content" in res.stderr and "weights.ckpt" in res.stderr
    for code, words in ((401, "refused the token"), (403, "no write access"), (404, "not found"),
                        (429, "rate-limiting")):
        hub.fail[r"GET /api/whoami-v2"] = code
        res = push(r2["run"], "--repo", "tester/y")
        assert res.exit_code == 1 and res.stderr.count("error:") == 1 and words in res.stderr, (code, res.stderr)
    monkeypatch.setenv("HF_TOKEN", "")
    res = push(r2["run"], "--repo", "tester/y")
    assert res.exit_code == 2 and "no Hugging Face token" in res.stderr
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    res = push(r2["run"], "--repo", "tester/y", "--debug")
    assert res.exit_code == 1 and "cannot reach the Hub" in res.stderr
    _no_token(res, caplog, tmp_path)
    res = push(r2["run"], "--repo", "not-a-repo")
    assert res.exit_code == 2 and "user/name" in res.stderr


def test_help_imports_no_hub_client():
    from tests.test_cli import imported_modules

    proc, mods = imported_modules(["push", "--help"])
    assert proc.returncode == 0 and "huggingface_hub" not in mods and "torch" not in mods
