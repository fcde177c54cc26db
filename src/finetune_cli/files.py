"""Files: the modes of what ft writes, readability checks, content hashes.

    umask_modes(out_dir)     # after save_pretrained: model.safetensors 0644 like the files beside it
    sha256_file(path)        # hex digest, read in 1 MiB blocks

safetensors writes through a private temp file and keeps its mode 0600, so a merged model or adapter
came out readable by its owner only while the JSON beside it followed the umask: a server running as
another user could read the config and not the weights.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def umask_modes(directory: str | Path) -> None:
    """Give every file under ``directory`` written owner-only (0600) the mode a plain ``open`` gives."""
    mode = 0o666 & ~_umask()
    if mode == 0o600:
        return
    for p in Path(directory).rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o777 == 0o600:
            p.chmod(mode)


def unreadable(path: str | Path) -> str | None:
    """Why a file does not read back (JSON, safetensors, or torch's zip format: a truncated or corrupt
    write), else None. Reads only what tells: a safetensors header, a zip's checksums."""
    import json
    import zipfile

    p = Path(path)
    try:
        if p.suffix == ".json":
            json.loads(p.read_bytes())
        elif p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), "pt"):  # checks the header and that the data covers the whole file
                pass
        elif p.suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(p) as z:
                bad = z.testzip()
            if bad:
                return f"{bad} in it fails its checksum"
    except Exception as e:  # noqa: BLE001 - JSON, zip, OS and safetensors' own error: all mean "damaged"
        return (str(e).splitlines()[0] if str(e) else type(e).__name__)[:200]
    return None


def check_readable(path: str | Path) -> None:
    """Raise a DataError that names ``path`` when it does not read back."""
    from .errors import DataError

    problem = unreadable(path)
    if problem is not None:
        raise DataError(f"damaged file ({problem})", path=str(path),
                        hint="write it again (re-run the step that made it)")


def sha256_file(path: str | Path) -> str:
    """The file's SHA-256 (hex), read in 1 MiB blocks: a multi-GB file is never held in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
