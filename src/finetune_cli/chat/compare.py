"""The models a chat talks to, and one answer from each: several adapters on one base share one copy of it.

    cands = load_candidates(["runs/doric", "runs/bard", "merged/doric"], device="cpu")
    stream = answer(cands[0], [{"role": "user", "content": "Fit like?"}], Settings())
    for piece in stream: ...

An adapter whose base is already loaded for another adapter is added to that model (peft ``load_adapter``)
and picked with ``set_adapter`` before it answers: one base in memory however many adapters share it.
An adapter alone on its base is folded into it in memory (``merge_lora_for_inference``, as ft eval does)
unless ``merge_adapters=False``: the same answers, without peft's extra work per layer and token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError


@dataclass
class Settings:
    """What the in-chat commands change; every candidate answers with the same settings and seed."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    greedy: bool = False
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    seed: int = 0
    system: str | None = None   # set by --system or /system TEXT; else each candidate's run prompt
    use_system: bool = True

    def describe(self) -> str:
        how = "greedy" if self.greedy or self.temperature == 0 else \
            f"sampling (temperature {self.temperature:g}, top-p {self.top_p:g}, seed {self.seed})"
        return f"{how}, at most {self.max_new_tokens} tokens"


@dataclass
class Candidate:
    name: str
    kind: str                   # base | adapter | merged | gguf
    model: Any
    tokenizer: Any
    eos_ids: list[int]
    run_system: str | None = None   # the system prompt the run trained with
    adapter_name: str | None = None  # set before answering when several adapters share the model
    history: list[dict] = field(default_factory=list)  # user/assistant turns, no system turn

    def system_prompt(self, settings: Settings) -> str | None:
        return (settings.system or self.run_system) if settings.use_system else None

    def messages(self, settings: Settings, history: list[dict] | None = None) -> list[dict]:
        system = self.system_prompt(settings)
        turns = self.history if history is None else history
        return ([{"role": "system", "content": system}] if system else []) + turns


def _adapter_source(source: str, base: str | None) -> tuple[Path, str, dict] | None:
    """(adapter dir, base model, run.json) when ``source`` is an adapter, a run with one, or a checkpoint."""
    p = Path(source).expanduser()
    if not p.is_dir():
        return None
    from ..rundir import RunDir

    rd = RunDir.find(p)
    run = rd.record() if rd else {}
    target = rd.adapter if rd and rd.path.resolve() == p.resolve() and rd.adapter.is_dir() else p
    if not (target / "adapter_config.json").is_file():
        return None
    acfg = json.loads((target / "adapter_config.json").read_text())
    base_name = base or run.get("base_model") or acfg.get("base_model_name_or_path")
    return (target, base_name, run) if base_name else None


def load_candidates(sources: list[str], *, base: str | None = None, device: str | None = None,
                    trust_remote_code: bool = False, on_load=None, merge_adapters: bool = True) -> list[Candidate]:
    """Load every source as ``ft eval`` would (``models.load_for_inference``), sharing bases between adapters."""
    from transformers import AutoTokenizer

    from ..chat_template import set_thinking
    from ..models import _prepare_tokenizer, load_for_inference

    out: list[Candidate] = []
    shared: dict[str, Candidate] = {}  # base model -> the first candidate that loaded it with an adapter
    for i, source in enumerate(sources):
        adapter = _adapter_source(source, base)
        owner = shared.get(adapter[1]) if adapter else None
        if adapter and owner is not None:
            target, _, run = adapter
            tok = AutoTokenizer.from_pretrained(str(target), trust_remote_code=trust_remote_code)
            set_thinking(tok, run.get("thinking"))
            rows = owner.model.get_input_embeddings().weight.shape[0]
            if len(tok) <= rows:  # the same vocabulary: a second adapter on the loaded base
                name = f"c{i}"
                try:
                    owner.model.load_adapter(str(target), adapter_name=name)
                except (OSError, ValueError, RuntimeError) as e:
                    raise ConfigError(f"{target}: could not load the adapter onto {adapter[1]} "
                                      f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
                cand = Candidate(run.get("name") or Path(source).name or source, "adapter", owner.model, tok,
                                 _prepare_tokenizer(tok), run.get("system_prompt"), adapter_name=name)
                out.append(cand)
                if on_load:
                    on_load(cand, True)
                continue
        loaded = load_for_inference(source, base=base, device=device, trust_remote_code=trust_remote_code)
        cand = Candidate(loaded.name, loaded.kind, loaded.model, loaded.tokenizer, loaded.eos_token_ids,
                         loaded.system_prompt, adapter_name="default" if loaded.kind == "adapter" else None)
        if adapter and loaded.kind == "adapter":
            shared[adapter[1]] = cand
        out.append(cand)
        if on_load:
            on_load(cand, False)
    if merge_adapters:
        from ..evaluate.generate import merge_lora_for_inference

        for c in out:
            if c.adapter_name is not None and sum(o.model is c.model for o in out) == 1:
                model, info = merge_lora_for_inference(c.model)
                if info["adapter"] == "merged":
                    c.model, c.adapter_name = model, None
    seen: dict[str, int] = {}
    for c in out:  # names head the columns and the JSON lines: make them unique
        seen[c.name] = seen.get(c.name, 0) + 1
        if seen[c.name] > 1:
            c.name = f"{c.name}#{seen[c.name]}"
    return out


def answer(cand: Candidate, messages: list[dict], settings: Settings):
    """A ``TokenStream`` of ``cand``'s reply to ``messages`` (iterate it to generate)."""
    from ..evaluate.generate import TokenStream

    if cand.adapter_name is not None and hasattr(cand.model, "set_adapter"):
        cand.model.set_adapter(cand.adapter_name)
    return TokenStream(cand.model, cand.tokenizer, messages, eos_ids=cand.eos_ids,
                       max_new_tokens=settings.max_new_tokens,
                       temperature=0.0 if settings.greedy else settings.temperature, top_p=settings.top_p,
                       repetition_penalty=settings.repetition_penalty, seed=settings.seed)
