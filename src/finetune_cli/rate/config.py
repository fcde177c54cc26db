"""``ft rate`` options."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import opt


@dataclass
class RateConfig:
    eval_dir: str = opt(help="A folder ft eval wrote (results.json and outputs.jsonl); verdicts go to "
                             "its ratings.jsonl.", required=True, positional=True)
    port: int = opt(8765, "TCP port of the page.", ge=1, le=65535)
    host: str = opt("127.0.0.1", "Address to listen on. Anything but 127.0.0.1/localhost/::1 exposes the "
                                 "page: every link then carries a random token and requests without it get 403.")
    pairs: int = opt(0, "Pairs per rater (the same pairs for everyone, chosen by --seed, so raters overlap); "
                        "0 = all.", ge=0)
    seed: int = opt(0, "Seed of which pairs are chosen, each rater's order and which answer is on the left.")
    rater: list[str] = opt([], "Print a personal link for this rater (repeat for more); without it each "
                               "rater types a name on the page.")
    summary: bool = opt(False, "Print the results so far (win rates, Bradley–Terry, agreement, kappa with "
                               "the LLM judge) instead of serving the page.")
