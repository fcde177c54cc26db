"""Options of ``ft card`` and ``ft push`` (no heavy imports: ``ft --help`` reads these)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import opt, split_list
from ..errors import ConfigError

WHAT = ("adapter", "merged", "gguf", "dataset")


@dataclass
class CardConfig:
    path: str = opt(help="A run (runs/NAME), a merged or exported directory (ft merge --out), or an ft gen JSONL.",
                    required=True, positional=True)
    out: str | None = opt(None, "Where to write the card; none = PATH/README.md (a dataset: DATA.README.md); "
                                "'-' = stdout.", short="-o")
    eval: str | None = opt(None, "ft eval's output directory (results.json), or a folder of them: the newest "
                                 "that evaluated this run is used. None = look under ./eval.")
    repo: str | None = opt(None, "Hub repo id used in the card's how-to-run snippets (user/name); none = the "
                                 "directory's name.")


@dataclass
class PushConfig:
    path: str = opt(help="A run, a merged/exported directory or an ft gen JSONL to publish.", required=True,
                    positional=True)
    repo: str = opt(help="Hub repository id, user/name.", required=True)
    private: bool = opt(False, "Create the repository private (an existing repository keeps its visibility).")
    what: list[str] = opt([], "What to upload (comma-separated): adapter, merged, gguf, dataset; none = all that "
                              "PATH holds.")
    revision: str | None = opt(None, "Branch to push to; none = main. Created from main when missing.")
    eval: str | None = opt(None, "ft eval's output (results.json) whose gates must have passed; none = look "
                                 "under ./eval for results of this run.")
    force: bool = opt(False, "Push although eval gates failed, or into a repository holding other files.")

    @property
    def kinds(self) -> list[str]:
        """--what split on commas, lower-cased, each once, in order."""
        return split_list(self.what, lower=True)

    def validate(self) -> None:
        """Checks; never changes a value."""
        bad = [k for k in self.kinds if k not in WHAT]
        if bad:
            raise ConfigError(f"option --what: unknown {bad[0]!r}", hint=f"one of {', '.join(WHAT)}")
        if self.repo is not None and (self.repo.count("/") != 1 or not all(self.repo.split("/"))):
            raise ConfigError(f"option --repo: {self.repo!r} is not user/name")
