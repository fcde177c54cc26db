"""``ft chat``: talk to a model as it was trained to talk, streamed; or several side by side.

    ft chat runs/doric                          # the run's template and system prompt; /help for commands
    ft chat --compare smollm2-135m runs/doric merged/doric --greedy
    printf 'Fit like?\\nWhit time is it?\\n' | ft chat runs/doric --json    # one JSON line per prompt

A terminal on stdin gets the chat (prompt_toolkit: line editing, history in $FT_HOME/chat_history).
Otherwise every line of stdin (or every row of --input) is one prompt, answered on its own, with no
history between prompts: scripts get the same answer for the same line.
"""

from __future__ import annotations

import sys

from ..config import text_or_file
from ..errors import ConfigError
from ..ui import Reporter
from .compare import Candidate, Settings, answer, load_candidates
from .config import ChatConfig


def _prompts(cfg: ChatConfig):
    """(messages without a system turn, the row's own system turn, the prompt's text) per prompt, lazily."""
    if cfg.input:
        from ..evaluate.prompts import load_prompts

        for p in load_prompts(cfg.input):
            yield p.turns, p.system, p.turns[-1]["content"]
        return
    for line in sys.stdin:
        if line.strip():
            yield [{"role": "user", "content": line.strip()}], None, line.strip()


def answer_prompts(cfg: ChatConfig, cands: list[Candidate], settings: Settings, reporter: Reporter) -> int:
    """Scripted use: each prompt to each model; answers stream to stdout (or one JSON line each with --json),
    status lines to stderr. Returns how many answers hit the token limit."""
    import orjson

    from .render import status

    out = reporter.data_stdout() if reporter.json_mode else None
    hit_limit = 0
    for turns, row_system, text in _prompts(cfg):
        for cand in cands:
            messages = cand.messages(settings, turns)
            if row_system and settings.use_system and not settings.system:
                messages = [{"role": "system", "content": row_system}] + turns
            stream = answer(cand, messages, settings)
            if out is not None:
                for _ in stream:
                    pass
                out.write(orjson.dumps({"prompt": text, "candidate": cand.name, "answer": stream.text,
                                        "tokens": stream.n_tokens, "stopped_on_eos": stream.stopped_on_eos,
                                        "tokens_per_s": round(stream.tokens_per_s, 1)},
                                       option=orjson.OPT_APPEND_NEWLINE))
                out.flush()
            else:
                if len(cands) > 1:
                    sys.stdout.write(f"## {cand.name}\n")
                for piece in stream:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                sys.stdout.write("\n")
                sys.stdout.flush()
                reporter.info(f"[{cand.name}: {status(stream)[0]}]")
            hit_limit += not stream.stopped_on_eos
    return hit_limit


def run(cfg: ChatConfig, reporter: Reporter):
    scripted = cfg.input is not None or not sys.stdin.isatty()
    if reporter.json_mode and not scripted:
        raise ConfigError("option --json: it is for scripted use; pipe prompts into ft chat or pass --input FILE")
    settings = Settings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, greedy=cfg.greedy,
                        top_p=cfg.top_p, repetition_penalty=cfg.repetition_penalty, seed=cfg.seed,
                        system=text_or_file(cfg.system), use_system=cfg.use_system)
    from ..models import quiet_hf

    quiet_hf()

    def loaded(c: Candidate, shared: bool) -> None:
        how = "on the base already loaded" if shared else ""
        reporter.info(f"loaded {c.name} ({c.kind}{', ' + how if how else ''})")

    cands = load_candidates(cfg.models, base=cfg.base, device=None if cfg.device == "auto" else cfg.device,
                            trust_remote_code=cfg.trust_remote_code, on_load=loaded,
                            merge_adapters=cfg.merge_adapter)
    if scripted:
        hit = answer_prompts(cfg, cands, settings, reporter)
        if hit:
            reporter.warn(f"{hit} answer(s) hit the {settings.max_new_tokens}-token limit without an end-of-turn "
                          "token")
        return None
    from .repl import chat

    chat(cands, settings, reporter)
    return None
