"""The shared layer never imports a command (docs/architecture.md).

Shared modules are what every command reads: config, records, errors, output, the chat template, model
loading. Everything else under ``finetune_cli`` (train/, evaluate/, merge/, gen/, runs, ...) is a command; a new
package counts as one until it is listed here. Imports inside functions count too: a lazy import of a
command from the shared layer still ties the layers together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import finetune_cli

PACKAGE = Path(finetune_cli.__file__).parent
SHARED = {"__init__", "config", "jsonl", "errors", "ui", "rundir", "chat_template", "attention",
          "models", "tiny", "gguf_pretok", "files", "providers", "command", "persona", "dedup"}


def imported_tops(path: Path) -> set[str]:
    """The top-level ``finetune_cli`` modules and packages that ``path`` imports, anywhere in the file."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    package = ["finetune_cli", *rel[:-1]]  # the package this module sits in (an __init__ sits in itself)
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names = [".".join(base + [node.module])] if node.module else [".".join(base + [a.name])
                                                                               for a in node.names]
            elif (node.module or "").startswith("finetune_cli"):
                names = [node.module]
            else:
                continue
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("finetune_cli")]
        else:
            continue
        out |= {n.split(".")[1] for n in names if n.count(".") >= 1}
    return out


def test_imported_tops_reads_relative_and_lazy_imports(tmp_path):
    train = PACKAGE / "train" / "run.py"
    assert {"config", "rundir"} <= imported_tops(train)
    assert "chat_template" in imported_tops(PACKAGE / "models.py")  # imported inside a function


def test_shared_layer_imports_no_command():
    bad = []
    for name in sorted(SHARED - {"__init__"}):
        path = PACKAGE / f"{name}.py"
        assert path.is_file(), f"{name} is listed as shared but {path} does not exist"
        for top in sorted(imported_tops(path) - SHARED - {"__version__"}):
            bad.append(f"{path.relative_to(PACKAGE.parent)} imports the command {top!r}")
    assert not bad, "the shared layer imports commands:\n" + "\n".join(bad)
