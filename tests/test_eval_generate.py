"""Batched generation equals one-by-one generation; EOS stops; held-out loss is the per-token mean."""

import math

import pytest

from finetune_cli.evaluate import generate as G
from finetune_cli.evaluate.generate import Decoding, _trim, generate, heldout_loss, render_prompt

pytestmark = pytest.mark.slow

PROMPTS = [
    [{"role": "user", "content": "Fit like?"}],
    [{"role": "system", "content": "You are a Doric fisherman."},
     {"role": "user", "content": "Write a two-line poem about rain, please, and make it about the harbour."}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Tell me about your work and family and the boats in the harbour at dawn."}],
    [{"role": "user", "content": "Hi"}],
]


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return model, tok


@pytest.fixture(scope="module")
def chatml(tiny_model):
    return _load(tiny_model)


def test_batched_equals_one_by_one_greedy(chatml):
    model, tok = chatml
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    batched = generate(model, tok, PROMPTS, eos_ids=eos, max_new_tokens=24, batch_size=5)
    single = [generate(model, tok, [p], eos_ids=eos, max_new_tokens=24, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    assert all(g.n_tokens == 24 and not g.stopped_on_eos for g in batched)  # random weights: no EOS
    assert len({g.text for g in batched}) > 1  # outputs follow their prompts, in input order


def test_stops_on_any_end_of_turn_id(chatml):
    model, tok = chatml
    first = generate(model, tok, PROMPTS, eos_ids=[tok.eos_token_id], max_new_tokens=3, batch_size=5)
    # make the second greedy token of prompt 0 a stop id: that prompt stops after 2 tokens
    ids = tok(render_prompt(tok, PROMPTS[0]), add_special_tokens=False)["input_ids"]
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=2, do_sample=False)
    stop_id = out[0, -1].item()
    gens = generate(model, tok, PROMPTS, eos_ids=[tok.eos_token_id, stop_id], max_new_tokens=3, batch_size=5)
    assert gens[0].stopped_on_eos and gens[0].n_tokens <= 2
    assert first[0].n_tokens == 3 and not first[0].stopped_on_eos


def test_trim():
    assert _trim([5, 6, 2, 0, 0], {2}) == ([5, 6, 2], True)
    assert _trim([5, 6, 7], {2}) == ([5, 6, 7], False)


def test_sampling_is_reproducible_with_a_seed(chatml):
    model, tok = chatml
    kw = dict(eos_ids=[tok.eos_token_id], max_new_tokens=12, batch_size=5, temperature=1.0, top_p=0.9)
    a = generate(model, tok, PROMPTS, seed=7, **kw)
    b = generate(model, tok, PROMPTS, seed=7, **kw)
    c = generate(model, tok, PROMPTS, seed=8, **kw)
    assert a == b and a != c


def test_llama3_template_without_pad_through_load_for_inference(tiny_llama3):
    from finetune_cli.models import load_for_inference

    loaded = load_for_inference(str(tiny_llama3), device="cpu")
    assert loaded.tokenizer.convert_tokens_to_ids("<|eot_id|>") in loaded.eos_token_ids
    tok = loaded.tokenizer
    batched = generate(loaded.model, tok, PROMPTS[:3], eos_ids=loaded.eos_token_ids, max_new_tokens=10)
    single = [generate(loaded.model, tok, [p], eos_ids=loaded.eos_token_ids, max_new_tokens=10)[0]
              for p in PROMPTS[:3]]
    assert batched == single


def test_heldout_loss_is_mean_over_assistant_tokens(chatml):
    model, tok = chatml
    convs = [p + [{"role": "assistant", "content": a}]
             for p, a in zip(PROMPTS, ["Aye.", "Rain on the harbour\nnets in the grey", "Paris.",
                                       "I fish.", "Hello there, loon, fit like yersel?"])]
    loss, n = heldout_loss(model, tok, convs, batch_size=5)
    parts = [heldout_loss(model, tok, [c], batch_size=1) for c in convs]
    assert n == sum(k for _, k in parts)
    assert loss == pytest.approx(sum(lo * k for lo, k in parts) / n, rel=1e-4)
    # random weights: about log(vocab) nats per token
    assert abs(loss - math.log(len(tok))) < 1.5


def test_a_prompt_past_the_context_is_cut_at_its_start_and_finishes_fast(chatml, monkeypatch):
    from finetune_cli.errors import ConfigError
    from finetune_cli.evaluate.generate import fit_prompt

    model, tok = chatml
    ctx = model.config.max_position_embeddings
    huge = [{"role": "user", "content": "boat " * 2_000_000 + "Fit like?"}]  # 10 MB
    tokenized: list[int] = []  # what makes it fast: only the prompt's tail is ever tokenized, never the 10 MB
    call = type(tok).__call__

    def spy(self, text, *a, **kw):
        tokenized.append(len(text) if isinstance(text, str) else 0)
        return call(self, text, *a, **kw)

    monkeypatch.setattr(type(tok), "__call__", spy)
    gens = generate(model, tok, [huge, PROMPTS[0]], eos_ids=[tok.eos_token_id], max_new_tokens=8, batch_size=2)
    monkeypatch.undo()
    assert tokenized and max(tokenized) <= 32 * ctx  # a window of a few budgets' worth of characters
    assert gens[0].prompt_truncated and gens[0].n_tokens == 8
    assert not gens[1].prompt_truncated
    assert gens[1] == generate(model, tok, [PROMPTS[0]], eos_ids=[tok.eos_token_id], max_new_tokens=8)[0]
    # the end is kept: the question and the assistant header the reply follows
    ids, cut = fit_prompt(tok, render_prompt(tok, huge), ctx - 8)
    assert cut and len(ids) == ctx - 8
    assert tok.decode(ids).endswith("boat Fit like?<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ConfigError, match="--max-new-tokens"):
        generate(model, tok, [PROMPTS[0]], eos_ids=[tok.eos_token_id], max_new_tokens=ctx)


def _with_adapter(path, seed=0):
    """The tiny model under a LoRA adapter whose B is non-zero (a fresh adapter is the identity)."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, tok = _load(path)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return peft.eval(), tok


def test_adapter_merged_in_memory_gives_the_unmerged_greedy_tokens(tiny_model):
    from finetune_cli.evaluate.generate import merge_lora_for_inference

    model, tok = _with_adapter(tiny_model)
    base, _ = _load(tiny_model)
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    unmerged = generate(model, tok, PROMPTS, eos_ids=eos, max_new_tokens=24, batch_size=5)
    assert unmerged != generate(base, tok, PROMPTS, eos_ids=eos, max_new_tokens=24, batch_size=5)  # it matters
    merged, info = merge_lora_for_inference(model)
    assert info["adapter"] == "merged" and info["max_logit_diff"] < 1e-3
    assert not hasattr(merged, "peft_config") and "lora" not in " ".join(n for n, _ in merged.named_modules())
    assert generate(merged, tok, PROMPTS, eos_ids=eos, max_new_tokens=24, batch_size=5) == unmerged


def test_merge_falls_back_when_logits_differ_or_several_adapters(tiny_model):
    from finetune_cli.evaluate.generate import merge_lora_for_inference

    model, _ = _with_adapter(tiny_model)
    same, info = merge_lora_for_inference(model, rtol=0.0)  # no rounding allowed: fp32 merging rounds a little
    assert same is model and info["adapter"] == "unmerged" and "differ" in info["reason"]
    assert not any(getattr(m, "merged", False) for m in model.modules())  # unmerged again
    model.add_adapter("second", model.peft_config["default"])
    assert merge_lora_for_inference(model)[1] == {"adapter": "unmerged", "reason": "several adapters share the base"}
    base, _ = _load(tiny_model)
    assert merge_lora_for_inference(base) == (base, {"adapter": None})


def test_static_cache_and_auto_batch_give_the_same_greedy_tokens(chatml):
    model, tok = chatml
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    plain = generate(model, tok, PROMPTS, eos_ids=eos, max_new_tokens=24, batch_size=2)
    assert generate(model, tok, PROMPTS, eos_ids=eos, max_new_tokens=24, batch_size=2, static_cache=True) == plain
    # --compile auto on CPU: eager
    assert generate(model, tok, PROMPTS, eos_ids=eos, max_new_tokens=24, batch_size=0,
                    decode=Decoding("auto")) == plain
    assert generate(model, tok, PROMPTS, eos_ids=eos, max_new_tokens=24, batch_size=0) == plain


def test_auto_compiles_only_on_cuda_for_big_enough_work_with_a_static_cache():
    big = dict(n_prompts=128, max_new_tokens=256)
    assert G.choose_decode("auto", device_type="cpu", **big) == (False, "the device is cpu; compiled decoding is "
                                                                          "CUDA only")
    compiled, why = G.choose_decode("auto", device_type="cuda", n_prompts=8, max_new_tokens=256)
    assert not compiled and "too little to repay" in why
    assert G.choose_decode("auto", device_type="cuda", **big) == (True, None)
    assert G.choose_decode("auto", device_type="cuda", n_prompts=64, max_new_tokens=256) == (True, None)
    assert G.choose_decode("auto", device_type="cuda", refusal="no static cache", **big) == (False, "no static cache")
    assert G.choose_decode("off", device_type="cuda", **big) == (False, "--compile off")
    assert G.choose_decode("on", device_type="cuda", n_prompts=1, max_new_tokens=1) == (True, None)
    with pytest.raises(G.ConfigError, match="--compile on: cannot decode compiled: the device is cpu"):
        G.choose_decode("on", device_type="cpu", **big)


def test_static_cache_refusal_reads_transformers_own_check(chatml):
    model, _ = chatml
    assert G.static_cache_refusal(model) is None  # Llama takes a static cache

    class NoStaticCache:
        @classmethod
        def _supports_default_dynamic_cache(cls):
            return False

    assert "no static KV cache" in G.static_cache_refusal(NoStaticCache())


def _compiled_fails(monkeypatch, calls):
    """Compiled decoding chosen (on CPU) and failing in model.generate, as a torch.compile error would."""
    monkeypatch.setattr(G, "choose_decode", lambda mode, **kw: (True, None))
    real = G._generate_batch

    def batch(model, enc, gcfg):
        calls.append(gcfg.compile_config is not None)
        if gcfg.compile_config is not None:
            raise RuntimeError("BackendCompilerFailed: inductor said no\nmore detail")
        return real(model, enc, gcfg)

    monkeypatch.setattr(G, "_generate_batch", batch)


def test_a_compile_failure_falls_back_to_eager_once_with_one_warning(chatml, monkeypatch):
    model, tok = chatml
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    plain = generate(model, tok, PROMPTS, eos_ids=eos, max_new_tokens=12, batch_size=2, temperature=0.7, seed=3)
    calls, warned, advanced = [], [], []
    _compiled_fails(monkeypatch, calls)
    decode = Decoding("auto", warn=warned.append)
    gens = generate(model, tok, PROMPTS, eos_ids=eos, max_new_tokens=12, batch_size=2, temperature=0.7, seed=3,
                    decode=decode, on_batch=advanced.append)
    assert gens == plain  # the eager rerun, same seed: what a plain eager run gives
    assert sum(advanced) == len(PROMPTS)  # progress counts each prompt once
    assert warned == ["compiled decoding failed (RuntimeError: BackendCompilerFailed: inductor said no): "
                      "decoding eagerly for the rest of the run"]
    assert decode.record["decode"] == "eager" and "inductor said no" in decode.record["decode_reason"]
    calls.clear()
    assert generate(model, tok, PROMPTS, eos_ids=eos, max_new_tokens=12, batch_size=2, temperature=0.7, seed=3,
                    decode=decode) == plain
    assert calls and not any(calls) and len(warned) == 1  # the rest of the run: eager, no second warning
    assert "failed earlier in this run" in decode.record["decode_reason"]


def test_a_compile_failure_under_on_is_an_error(chatml, monkeypatch):
    model, tok = chatml
    _compiled_fails(monkeypatch, [])
    with pytest.raises(G.FtError, match="compiled decoding failed: RuntimeError: BackendCompilerFailed"):
        generate(model, tok, PROMPTS, eos_ids=[tok.eos_token_id], max_new_tokens=4, decode=Decoding("on"))


def test_compile_option_reads_old_bools():
    from finetune_cli.evaluate.config import compile_mode

    assert [compile_mode(v) for v in (True, False, "true", "0", "AUTO", "on")] == ["on", "off", "on", "off",
                                                                                   "auto", "on"]
    with pytest.raises(G.ConfigError, match="--compile: 'fast' is not one of auto, on, off"):
        compile_mode("fast")
