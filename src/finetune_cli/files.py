"""File modes of what ft writes.

    umask_modes(out_dir)     # after save_pretrained: model.safetensors 0644 like the files beside it

safetensors writes through a private temp file and keeps its mode 0600, so a merged model or adapter
came out readable by its owner only while the JSON beside it followed the umask: a server running as
another user could read the config and not the weights.
"""

from __future__ import annotations

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
