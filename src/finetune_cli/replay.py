"""``ft replay``: general-chat rows from the base model's own answers, to mix into a persona's training data.

    ft replay --model smollm2-135m --persona doric --out datasets/replay.jsonl --n 300
    ft train --model smollm2-135m --data datasets/doric.jsonl --data datasets/replay.jsonl:0.25

A persona's data teaches the voice on the persona's topics; asked anything else, a tuned small model
drifts off the question, runs on without EOS and loops — worst under greedy decoding, which servers use.
Replay is the usual cure (mix general chat back in); offline there is no general dataset, so ft builds one
from the model being tuned: everyday prompts (facts, arithmetic, how-to, writing, small talk, language,
advice, code — generated from templates, never ft eval's own general prompts or probes) answered greedily
by the base model. Only answers that stopped on EOS, do not loop and are at most --max-words long are kept:
the tuned model learns to answer the question and to stop from the base's own best behaviour, and its
general distribution stays near the base's. With a persona (``--frame persona``, the default) each answer is
framed by an opener and a closer from the persona's phrase bank, and the row carries the persona's system
prompt, as ``ft gen``'s rows do; ``--frame none`` keeps the plain answers and no system prompt.
Rows are ft's messages JSONL with ``meta`` (prompt id, kind, model, decoding, tokens); ``OUT.config.json``
records the resolved config.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .config import config_record, opt
from .errors import ConfigError, DataError
from .jsonl import write_json_atomic, write_rows_atomic
from .ui import Reporter

# (kind, template, {slot: fillers}): every combination is a prompt. Broad on purpose: what a user might ask a
# chat model on any day, none of it on a persona's topics.
_TEMPLATES: list[tuple[str, str, dict[str, list[str]]]] = [
    ("fact", "Which city is the capital of {country}, and what is it known for?",
     {"country": ["Japan", "Canada", "Italy", "Kenya", "Peru", "Norway", "Egypt", "Australia", "Spain", "Brazil",
                  "Germany", "India", "Mexico", "Ireland", "Portugal", "Greece", "Chile", "Poland"]}),
    ("fact", "What does the {organ} do in the human body?",
     {"organ": ["heart", "liver", "kidney", "lungs", "stomach", "skin", "brain", "spleen"]}),
    ("fact", "Can you explain what {concept} is in simple words?",
     {"concept": ["gravity", "inflation", "a volcano", "an atom", "electricity", "a black hole", "democracy",
                  "evaporation", "a rainbow", "DNA", "an eclipse", "a vaccine", "the internet", "a tide"]}),
    ("fact", "Why {question}?",
     {"question": ["is the sky blue", "do leaves change colour in autumn", "do cats purr", "does ice float",
                   "do we get hiccups", "is the sea salty", "do onions make you cry", "do birds migrate",
                   "does bread go stale", "do stars twinkle"]}),
    ("fact", "Who {deed}?",
     {"deed": ["painted the Mona Lisa", "invented the telephone", "discovered penicillin", "wrote Pride and "
               "Prejudice", "composed the Four Seasons", "proposed the theory of relativity", "built the first "
               "successful aeroplane"]}),
    ("arithmetic", "Can you work out {a} {op} {b} for me?",
     {"a": ["14", "23", "48", "67", "120", "9"], "op": ["plus", "minus", "multiplied by"], "b": ["6", "11", "19", "32"]}),
    ("arithmetic", "Calculate {p}% of {q}, please.", {"p": ["10", "25", "50", "20"], "q": ["80", "300", "64", "1,000"]}),
    ("arithmetic", "How many {small} are there in {n} {big}?",
     {"small": ["seconds", "days", "hours"], "n": ["two", "five"], "big": ["weeks", "minutes", "days"]}),
    ("arithmetic", "If one {item} costs {price} pounds, how much do {k} of them cost?",
     {"item": ["notebook", "loaf of bread", "ticket", "plant pot"], "price": ["3", "4.50", "12"],
      "k": ["three", "seven"]}),
    ("how-to", "How do I {task}?",
     {"task": ["make a good cup of tea", "clean a cast iron pan", "get a coffee stain out of a shirt",
               "start running as a beginner", "learn to juggle", "grow tomatoes on a balcony", "unblock a sink",
               "iron a shirt", "save money on groceries", "write a good CV", "bake a simple loaf of bread",
               "prepare for a job interview", "keep houseplants alive", "back up the photos on my phone",
               "fold a fitted sheet", "cook fluffy rice", "sharpen a kitchen knife", "make a paper aeroplane",
               "stop procrastinating", "remember names better", "set up a fish tank", "paint a room"]}),
    ("how-to", "Give me {k} tips for {activity}.",
     {"k": ["three", "five"], "activity": ["studying for an exam", "a long flight", "a first camping trip",
                                           "working from home", "keeping a kitchen tidy", "learning a language",
                                           "public speaking", "cycling in the rain"]}),
    ("code", "How do I {task} in {lang}?",
     {"task": ["join a list of words into one string", "read a text file line by line", "count the words in a sentence",
               "check if a number is even", "remove duplicates from a list", "get today's date"],
      "lang": ["Python", "JavaScript"]}),
    ("writing", "Write a {form} about {subject}.",
     {"form": ["short poem", "two-line rhyme", "limerick", "three-sentence story", "short product description"],
      "subject": ["the sea", "a lost cat", "a rainy Monday", "a new bicycle", "the first snow", "a lighthouse",
                  "a cup of coffee", "an old pair of boots"]}),
    ("writing", "Write a short email to {recipient} {matter}.",
     {"recipient": ["my landlord", "a colleague", "my child's teacher", "a customer"],
      "matter": ["about a broken heater", "to reschedule a meeting", "to say thank you", "to ask for a day off"]}),
    ("writing", "Summarize the story of {story} in two sentences.",
     {"story": ["Cinderella", "Hamlet", "The Three Little Pigs", "Little Red Riding Hood", "Moby Dick",
                "Snow White", "The Tortoise and the Hare"]}),
    ("writing", "Suggest a name for a {business}.",
     {"business": ["coffee shop", "dog grooming service", "bookshop", "cycling club", "podcast about gardening"]}),
    ("small-talk", "{opening}",
     {"opening": ["Hello! How's it going?", "I'm feeling a bit tired today.", "Tell me a joke about penguins.",
                  "What should I cook for dinner tonight?", "I finally finished my exams!",
                  "Any ideas for a birthday present for my dad?", "It's so hot today.",
                  "What's a good film for a quiet evening?", "I can't decide what to do on my day off.",
                  "Do you like music?", "Thanks for your help earlier!", "Goodnight!"]}),
    ("language", "How do you say '{phrase}' in {lang}?",
     {"phrase": ["good night", "where is the station", "please", "I'm hungry"],
      "lang": ["French", "German", "Italian"]}),
    ("language", "What does the word '{word}' mean?",
     {"word": ["ephemeral", "ubiquitous", "serendipity", "meticulous", "candid", "frugal", "benevolent"]}),
    ("language", "Give me a synonym for '{word}'.", {"word": ["big", "quick", "sad", "clever", "tired", "angry"]}),
    ("advice", "Should I {choice}?",
     {"choice": ["take the bus or walk to work", "buy a new phone or repair my old one", "learn guitar or piano",
                 "rent or buy a flat", "study in the morning or at night", "get a cat or a dog"]}),
    ("advice", "What should I know before {event}?",
     {"event": ["adopting a cat", "buying a used car", "moving to a new city", "running my first 10k",
                "starting a vegetable garden", "renting my first flat"]}),
    ("list", "Name three {things}.",
     {"things": ["fruits that grow on trees", "countries in South America", "musical instruments with strings",
                 "animals that live in the desert", "planets larger than Earth", "famous bridges"]}),
]


def replay_prompts(n: int, seed: int = 0) -> list[dict]:
    """``n`` everyday prompts (``{"id", "kind", "prompt"}``), a seeded sample spread over the kinds, none a
    near-copy (rapidfuzz ratio ≥ 0.8) of ft eval's general prompts or probes: what ft eval measures stays unseen."""
    import itertools

    from rapidfuzz import fuzz

    from .evaluate.prompts import held_out_texts

    held = held_out_texts()
    by_kind: dict[str, list[dict]] = {}
    for kind, template, slots in _TEMPLATES:
        names = list(slots)
        for values in itertools.product(*(slots[s] for s in names)):
            text = template.format(**dict(zip(names, values)))
            if any(fuzz.ratio(text.lower(), h) >= 80 for h in held):
                continue
            by_kind.setdefault(kind, []).append({"kind": kind, "prompt": text})
    rng = random.Random(seed)
    for items in by_kind.values():
        rng.shuffle(items)
    out: list[dict] = []
    pools = [list(v) for _, v in sorted(by_kind.items())]
    while len(out) < n and any(pools):  # round robin over kinds: a small n still covers every kind
        for pool in pools:
            if pool and len(out) < n:
                out.append(pool.pop())
    for i, r in enumerate(out):
        r["id"] = f"replay-{i:04d}"
    return out


@dataclass
class ReplayConfig:
    model: str = opt(help="The model to be tuned (directory, .gguf, alias, hub id) or a run (its base model).",
                     short="-m", required=True)
    out: str = opt(help="Where the rows go (messages JSONL; OUT.config.json beside it).", short="-o", required=True)
    n: int = opt(300, "Prompts to answer, at most the ~360 ft has (kept rows are fewer: only answers that stop, "
                      "do not loop and are short).", ge=1)
    persona: str = opt("doric", "--frame persona: the persona whose phrase bank frames each answer and whose "
                                "system prompt the rows carry (name or .toml).")
    frame: str = opt("persona", "persona: an opener and a closer from the persona's phrase bank around the "
                                "base's answer; none: the plain answer.", choices=("persona", "none"))
    max_words: int = opt(150, "Keep answers of at most this many words.", ge=5)
    max_new_tokens: int = opt(256, "Tokens per answer at most (an answer that hits it is dropped).", ge=8)
    batch_size: int = opt(0, "Prompts generated at once; 0 = chosen from the device's memory.", ge=0)
    seed: int = opt(0, "Seed for the prompt sample and the frames.")
    trust_remote_code: bool = opt(False, "Run the model's own Python code (auto_map); without it such a model is "
                                         "refused.")


def frame_answer(answer: str, persona, rng: random.Random) -> str:
    """The persona's opener and closer around ``answer`` (its phrase bank, as ``ft gen``'s template provider
    fills them)."""
    from .gen.template_provider import _say

    bank = persona.bank
    fill = {"topic": "that", "thing": "it", "lang": "English"}
    return " ".join([_say(rng.choice(bank.openers), fill, bank.words, rng), answer.strip(),
                     _say(rng.choice(bank.closers), fill, bank.words, rng)])


def run(cfg: ReplayConfig, reporter: Reporter) -> dict:
    from collections import Counter

    from .evaluate.generate import generate
    from .evaluate.metrics import is_loop
    from .models import load_for_inference
    from .persona import load_persona
    from .rundir import RunDir

    persona = load_persona(cfg.persona) if cfg.frame == "persona" else None
    if persona is not None and persona.bank is None:
        raise ConfigError(f"option --persona {cfg.persona}: no phrase bank to frame answers with",
                          hint="pass --frame none for plain answers")
    run_dir = RunDir.find(cfg.model)  # None: a model, not a run
    name = (run_dir.record().get("base_model") if run_dir else None) or cfg.model
    prompts = replay_prompts(cfg.n, cfg.seed)
    loaded = load_for_inference(name, trust_remote_code=cfg.trust_remote_code)
    reporter.info(f"ft replay: {len(prompts)} everyday prompts, greedy answers by {loaded.name}")
    gens = generate(loaded.model, loaded.tokenizer, [[{"role": "user", "content": p["prompt"]}] for p in prompts],
                    eos_ids=loaded.eos_token_ids, max_new_tokens=cfg.max_new_tokens, temperature=0.0,
                    batch_size=cfg.batch_size, seed=cfg.seed)
    system = [{"role": "system", "content": persona.system_prompt}] if persona and persona.system_prompt else []
    rows, dropped = [], Counter()
    for p, g in zip(prompts, gens):
        text = g.text.strip()
        if not g.stopped_on_eos:
            dropped["ran to the token limit"] += 1
        elif not text:
            dropped["empty"] += 1
        elif is_loop(text):
            dropped["loops"] += 1
        elif len(text.split()) > cfg.max_words:
            dropped[f"over {cfg.max_words} words"] += 1
        else:
            rng = random.Random(f"{cfg.seed}:{p['id']}")
            answer = frame_answer(text, persona, rng) if persona else text
            rows.append({"messages": system + [{"role": "user", "content": p["prompt"]},
                                               {"role": "assistant", "content": answer}],
                         "meta": {"id": p["id"], "bucket": "replay", "kind": p["kind"], "model": name,
                                  "decoding": "greedy", "n_tokens": g.n_tokens,
                                  "frame": f"persona-{persona.name}" if persona else "none"}})
    if not rows:
        raise DataError(f"no answer kept out of {len(prompts)} (" + ", ".join(f"{k} {v}" for k, v in dropped.items())
                        + ")", path=cfg.out, hint="raise --max-new-tokens or --max-words")
    write_rows_atomic(cfg.out, rows)
    write_json_atomic(f"{cfg.out}.config.json", config_record(cfg))
    kinds = Counter(r["meta"]["kind"] for r in rows)
    reporter.table("kept by kind", ["kind", "rows"], [[k, v] for k, v in sorted(kinds.items())])
    if dropped:
        reporter.info("  dropped    " + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())))
    reporter.result(f"wrote {len(rows)} replay rows ({len(rows) / len(prompts):.0%} of {len(prompts)}) → {cfg.out}"
                    f"  (mix: ft train --data PERSONA.jsonl --data {cfg.out}:0.25)")
    return {"out": cfg.out, "rows": len(rows), "prompts": len(prompts), "dropped": dict(dropped),
            "kinds": dict(kinds)}
