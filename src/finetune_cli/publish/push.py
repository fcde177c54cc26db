"""``ft push``: a run's adapter, a merged model, its GGUFs or an ft gen dataset, to the Hugging Face Hub.

    ft push runs/doric --repo me/doric-lora --dry-run      # every file and its size; nothing sent
    ft push merged/doric --repo me/doric --what merged,gguf --private
    ft push datasets/doric.jsonl --repo me/doric-chats

The token comes from HF_TOKEN or `hf auth login` and goes only into huggingface_hub's request headers:
ft never prints, logs or writes it. Files go up in several commits (each large file on its own, the
small ones and the card last), so a push that is cut off keeps what it finished, and running the same
command again uploads only the files the Hub does not already hold (same path, size and sha256 or git
blob id). Safetensors, GGUF, JSON, tokenizer files and the card only: pickles never leave the machine.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .. import __version__
from ..errors import ConfigError, FtError, GateFailed
from ..files import sha256_file
from ..ui import Reporter
from .card import _size, contents, write_card
from .config import PushConfig
from .sources import PICKLES, Source, read_source

ALLOWED = (".safetensors", ".gguf", ".json", ".jsonl", ".jinja", ".txt", ".model", ".md", ".png")
TOKENIZER_OR_MODEL_SKIP = ("README.md", "training_args.bin")
BIG = 16 * 2 ** 20  # a file this large is committed on its own: an interrupted push keeps it


class HubError(FtError):
    """The Hub refused or could not be reached."""

    exit_code = 1


def _folder(d: Path, prefix: str) -> list[tuple[str, Path]]:
    out = []
    for p in sorted(d.iterdir()):
        if p.is_file() and p.name not in TOKENIZER_OR_MODEL_SKIP and (p.suffix in ALLOWED or p.name == "Modelfile"):
            out.append((prefix + p.name, p))
    return out


def skipped_pickles(src: Source) -> list[Path]:
    dirs = [d for d in (src.adapter_dir, src.model_dir, src.path if src.kind != "dataset" else None) if d]
    return sorted({p for d in dirs for p in d.iterdir() if p.is_file() and p.suffix in PICKLES})


def plan_files(src: Source, what: list[str], staging: Path, repo: str) -> list[tuple[str, Path]]:
    """(path in the repo, local file) for everything pushed, the card included (written under ``staging``).

    The model a user loads sits at the root (merged, else the adapter); the rest in adapter/ and gguf/;
    ft's records in ft/."""
    if src.kind == "dataset":
        if what and what != ["dataset"]:
            raise ConfigError(f"option --what: {src.path} is a dataset", hint="use --what dataset or leave it out")
        files = [(src.path.name, src.path)]
        rej = Path(f"{src.path}.rejects.jsonl")
        if rej.is_file():
            files.append((rej.name, rej))
    else:
        have = contents(src)
        if "dataset" in what:
            raise ConfigError("option --what dataset: push the ft gen JSONL itself",
                              hint=f"ft push DATA.jsonl --repo {repo}-data")
        what = what or have
        missing = [w for w in what if w not in have]
        if missing:
            raise ConfigError(f"option --what: {src.path} holds no {missing[0]}",
                              hint=f"it holds: {', '.join(have) or 'nothing ft can push'}")
        files = []
        root_is = "merged" if "merged" in what else "adapter" if "adapter" in what else None
        if "merged" in what:
            files += _folder(src.model_dir, "")
        if "adapter" in what:
            files += _folder(src.adapter_dir, "" if root_is == "adapter" else "adapter/")
        if "gguf" in what:
            files += [("gguf/" + p.name, p) for p in src.gguf_files()]
            for extra in ("Modelfile", "ft_gguf.json"):
                if (src.gguf_dir / extra).is_file():
                    files.append(("gguf/" + extra, src.gguf_dir / extra))
        if src.run_dir:
            for name in ("run.json", "config.json", "data.json", "metrics.jsonl"):
                if (src.run_dir / name).is_file():
                    files.append(("ft/" + name, src.run_dir / name))
        if src.eval_path:
            files.append(("ft/eval_results.json", src.eval_path))
    readme = src.path / "README.md" if src.kind != "dataset" else None
    if readme and readme.is_file():  # a card the user wrote (or edited after ft card) is pushed as it is
        files.append(("README.md", readme))
        if (src.path / "loss.png").is_file():
            files.append(("loss.png", src.path / "loss.png"))
    else:
        card = write_card(src, staging / "README.md", repo=repo, what=None if src.kind == "dataset" else what)
        files.append(("README.md", card))
        if (staging / "loss.png").is_file():
            files.append(("loss.png", staging / "loss.png"))
    seen: dict[str, Path] = {}
    for rp, p in files:
        seen.setdefault(rp, p)
    return list(seen.items())


def plan(cfg: PushConfig, reporter: Reporter) -> dict:
    """``ft push --dry-run``: every file and its size; no token needed, nothing sent."""
    src = read_source(cfg.path, cfg.eval)
    with tempfile.TemporaryDirectory(prefix="ft-push-") as tmp:
        files = plan_files(src, cfg.kinds, Path(tmp), cfg.repo)
        rows = [{"path": rp, "bytes": p.stat().st_size} for rp, p in files]
    _report_plan(reporter, src, cfg, rows)
    return {"repo": cfg.repo, "repo_type": _repo_type(src), "files": rows, "total_bytes": sum(r["bytes"] for r in rows),
            "gates_failed": src.gates_failed(), "dry_run": True}


def _report_plan(reporter: Reporter, src: Source, cfg: PushConfig, rows: list[dict]) -> None:
    reporter.table(f"ft push {src.path} → {cfg.repo} ({_repo_type(src)})", ["file", "size"],
                   [[r["path"], _size(r["bytes"])] for r in rows] +
                   [["total", _size(sum(r["bytes"] for r in rows))]])
    for p in skipped_pickles(src):
        reporter.warn(f"not uploaded: {p} (a pickle; ft publishes safetensors only)")
    if src.gates_failed():
        reporter.warn(f"eval gates failed in {src.eval_path}: ft push refuses it without --force")


def _repo_type(src: Source) -> str:
    return "dataset" if src.kind == "dataset" else "model"


def git_blob_id(path: Path) -> str:
    h = hashlib.sha1()
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _same(remote, local: Path) -> bool:
    if remote.size != local.stat().st_size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == sha256_file(local)
    return remote.blob_id == git_blob_id(local)


def hub_error(e: BaseException, *, repo: str, endpoint: str, token: str | None) -> FtError:
    """One line for what went wrong talking to the Hub; the token scrubbed from anything quoted."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    again = "run the same command again: it resumes"
    if isinstance(e, OfflineModeIsEnabled):
        msg, hint = "the Hugging Face Hub is unreachable: offline mode is on (HF_HUB_OFFLINE)", \
            "unset HF_HUB_OFFLINE to push"
    elif isinstance(e, (httpx.TransportError, ConnectionError, OSError)) and not isinstance(e, HfHubHTTPError):
        msg, hint = f"cannot reach the Hub at {endpoint} ({type(e).__name__})", f"check the network; {again}"
    elif isinstance(e, HfHubHTTPError) and e.response is not None:
        code = e.response.status_code
        msg, hint = {
            401: ("the Hub refused the token (401 unauthorized)", "set a valid HF_TOKEN or run `hf auth login`"),
            403: (f"no write access to {repo} (403 forbidden)",
                  "use a token with write permission, and a repo under your user or an organisation you write to"),
            404: (f"{repo} or its revision not found (404)", "check --repo and --revision"),
            429: ("the Hub is rate-limiting this token (429 too many requests)", f"wait a few minutes; {again}"),
        }.get(code, (f"the Hub answered {code} ({e.response.reason_phrase})", again))
    else:
        msg, hint = f"push failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", again
    if token:
        msg, hint = msg.replace(token, "***"), hint.replace(token, "***")
    return HubError(msg, hint=hint)


def _batches(todo: list[tuple[str, Path]]) -> list[list[tuple[str, Path]]]:
    """Large files one commit each, then the small ones with the card last: what is finished stays finished."""
    big = [f for f in todo if f[1].stat().st_size >= BIG]
    small = sorted((f for f in todo if f[1].stat().st_size < BIG), key=lambda f: f[0] == "README.md")
    return [[f] for f in big] + ([small] if small else [])


def run(cfg: PushConfig, reporter: Reporter) -> dict:
    src = read_source(cfg.path, cfg.eval)
    failed = src.gates_failed()
    if failed and not cfg.force:
        g = failed[0]
        raise GateFailed(f"eval gate {g['gate']} failed for {g['candidate']} ({g['condition']}) in {src.eval_path}",
                         hint="fix the model, or push anyway with --force")

    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    token = get_token()
    if not token:
        raise ConfigError("no Hugging Face token", hint="set HF_TOKEN or run `hf auth login`")
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    api = HfApi(endpoint=endpoint.rstrip("/"), token=token, library_name="ft", library_version=__version__)
    repo_type = _repo_type(src)
    with tempfile.TemporaryDirectory(prefix="ft-push-") as tmp:
        files = plan_files(src, cfg.kinds, Path(tmp), cfg.repo)
        try:
            user = api.whoami()["name"]
            url = api.create_repo(cfg.repo, repo_type=repo_type, private=cfg.private, exist_ok=True)
            if cfg.revision:
                api.create_branch(cfg.repo, branch=cfg.revision, repo_type=repo_type, exist_ok=True)
            remote = {f.path: f for f in api.list_repo_tree(cfg.repo, repo_type=repo_type, revision=cfg.revision,
                                                             recursive=True) if hasattr(f, "blob_id")}
            mine = {rp for rp, _ in files}
            foreign = sorted(p for p in remote if p not in mine and p != ".gitattributes")
            if foreign and not cfg.force:
                raise HubError(f"{cfg.repo} holds other content ({len(foreign)} file(s) this push does not write, "
                               f"e.g. {foreign[0]})", hint="pick another --repo, or add --force to push beside them")
            todo = [(rp, p) for rp, p in files if rp not in remote or not _same(remote[rp], p)]
            done = len(files) - len(todo)
            if done:
                reporter.info(f"{done} file(s) already on the Hub with the same contents: skipped")
            with reporter.progress("uploading", total=sum(p.stat().st_size for _, p in todo)) as task:
                for batch in _batches(todo):
                    names = ", ".join(rp for rp, _ in batch)
                    api.create_commit(cfg.repo, repo_type=repo_type, revision=cfg.revision,
                                      operations=[CommitOperationAdd(rp, str(p)) for rp, p in batch],
                                      commit_message=f"ft push: {names}"[:200])
                    task.advance(sum(p.stat().st_size for _, p in batch))
        except FtError:
            raise
        except Exception as e:  # noqa: BLE001 - every Hub failure becomes one line
            raise hub_error(e, repo=cfg.repo, endpoint=endpoint, token=token) from None
        rows = [{"path": rp, "bytes": p.stat().st_size, "uploaded": (rp, p) in todo} for rp, p in files]
    for p in skipped_pickles(src):
        reporter.warn(f"not uploaded: {p} (a pickle; ft publishes safetensors only)")
    reporter.result(f"pushed {len(todo)} file(s) ({_size(sum(r['bytes'] for r in rows if r['uploaded']))}), "
                    f"{done} already there, as {user} → {url}")
    return {"repo": cfg.repo, "repo_type": repo_type, "url": str(url), "revision": cfg.revision or "main",
            "uploaded": len(todo), "skipped": done, "files": rows}
