"""``ft train --method dpo|orpo`` on tiny random models: the margin rises on held-out pairs, the adapter reloads
in plain peft with the same logits, ORPO runs, --from starts from the SFT adapter; weighted --data mixing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_cli.cli import app
from test_train import ANS, QS, write_data

FAST = ["--max-len", "96", "--batch-size", "4", "--grad-accum", "1", "--quiet", "--backend", "hf"]
LOOP = "Aye, I'll tell ye the same thing, but I'll tell ye the same thing."


def write_pairs(path: Path, n: int = 24) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            k = i % len(QS)
            f.write(json.dumps({"prompt": [{"role": "system", "content": "Speak Doric."},
                                           {"role": "user", "content": QS[k]}],
                                "chosen": [{"role": "assistant", "content": ANS[k]}],
                                "rejected": [{"role": "assistant", "content": LOOP}],
                                "meta": {"id": f"p{i}"}}) + "\n")
    return path


def train(*args: str, code: int = 0):
    res = CliRunner().invoke(app, ["train", *args])
    assert res.exit_code == code, (res.output, res.exception)
    return res


def seq_logp(model, tok, prompt: list[dict], answer: str):
    """Summed log-probability of the answer's tokens (its end-of-turn included) after the prompt."""
    import torch

    head = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
    ids = tok(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
    n = len(tok(head, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
    return lp[n - 1:].sum().item(), logits


def margins(model, tok, pairs: list[dict]) -> float:
    out = []
    for p in pairs:
        c, _ = seq_logp(model, tok, p["prompt"], p["chosen"][0]["content"])
        r, _ = seq_logp(model, tok, p["prompt"], p["rejected"][0]["content"])
        out.append(c - r)
    return sum(out) / len(out)


def test_dpo_raises_the_held_out_margin_and_reloads_in_plain_peft(tiny_model, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs = write_pairs(tmp_path / "pairs.jsonl")
    train("--model", str(tiny_model), "--method", "dpo", "--data", str(pairs), "--max-steps", "12", "--lr", "5e-3",
          "--val-split", "0.25", "--eval-steps", "6", "--name", "dpo", *FAST)
    run = json.loads(Path("runs/dpo/run.json").read_text())
    assert run["status"] == "completed" and run["method"] == "dpo" and run["adapter"] == "lora"
    assert run["best_checkpoint"] and run["eval_margins"][-1] > run["eval_margins"][0]
    # the best checkpoint is the one with the largest held-out margin (accuracy saturates too early to choose)
    assert run["best_eval_margin"] == max(run["eval_margins"])
    assert run["best_checkpoint"].endswith(f"checkpoint-{6 * (run['eval_margins'].index(max(run['eval_margins'])) + 1)}")
    # metrics.jsonl follows the preference as it trains: each step's margin and accuracy, each evaluation's
    # held-out margin (the same numbers run.json keeps), and the tokens TRL counted (the prompt with each answer)
    rows = [json.loads(line) for line in Path("runs/dpo/metrics.jsonl").read_text().splitlines()]
    steps, evals = [r for r in rows if "loss" in r], [r for r in rows if "eval_loss" in r]
    assert steps and all({"margin", "accuracy", "logps_chosen", "logps_rejected"} <= r.keys() for r in steps)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in steps)
    assert [r["eval_margin"] for r in evals] == pytest.approx(run["eval_margins"])
    assert [r["eval_accuracy"] for r in evals] == pytest.approx(run["eval_accuracies"])
    seen = [r["tokens_seen"] for r in steps]
    assert seen[0] > 0 and seen == sorted(seen) and seen[-1] > seen[0]
    held = json.loads(Path("runs/dpo/heldout_pairs.json").read_text())
    assert len(held) == 6 and Path("runs/dpo/heldout.jsonl").is_file()
    assert not Path("runs/dpo/adapter/ref").exists()  # TRL's frozen reference copy is not shipped

    tok = AutoTokenizer.from_pretrained("runs/dpo/adapter")
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    before = margins(base, tok, held)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32),
                                      "runs/dpo/adapter").eval()
    after = margins(tuned, tok, held)
    print(f"held-out chosen-over-rejected margin (nats): base {before:.3f} → DPO {after:.3f}")
    assert after > before + 1.0

    from finetune_cli.models import load_for_inference

    loaded = load_for_inference("runs/dpo", device="cpu")
    _, want = seq_logp(tuned, tok, held[0]["prompt"], "Aye.")
    _, got = seq_logp(loaded.model, loaded.tokenizer, held[0]["prompt"], "Aye.")
    assert torch.allclose(got, want, atol=1e-5)


def test_orpo_runs_a_few_steps_and_reports_to_tensorboard(tiny_model, tmp_path):
    """The preference stage logs to the tracker --report-to names, as SFT does (event files read back)."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", 12)
    tb = importlib.util.find_spec("tensorboard") is not None  # the dev group has it; without it: no tracker
    train("--model", str(tiny_model), "--method", "orpo", "--adapter", "dora", "--data", str(pairs),
          "--max-steps", "3", "--val-split", "0.25", "--name", "orpo", "--logging-steps", "1",
          *(["--report-to", "tensorboard"] if tb else []), *FAST)
    run = json.loads(Path("runs/orpo/run.json").read_text())
    assert run["status"] == "completed" and run["global_step"] == 3 and run["adapter"] == "dora"
    assert Path("runs/orpo/adapter/adapter_model.safetensors").is_file()
    if tb:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = list(Path("runs/orpo/tensorboard").rglob("events.out.tfevents.*"))
        assert events
        acc = EventAccumulator(str(events[0].parent))
        acc.Reload()
        assert len(acc.Scalars("train/loss")) == 3


def test_from_run_starts_from_the_sft_adapter(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    data = write_data(tmp_path / "sft.jsonl", 12)
    train("--model", str(tiny_model), "--data", str(data), "--max-steps", "3", "--lr", "1e-2", "--val-split", "0",
          "--name", "sft", *FAST)
    pairs = write_pairs(tmp_path / "pairs.jsonl", 8)
    from finetune_cli.train import preference

    seen = {}
    real = preference._trainer

    def spy(cfg, setup, model, *a, **kw):
        seen["B"] = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_B.default" in k}
        return real(cfg, setup, model, *a, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(preference, "_trainer", spy)
    try:
        # no --model: the SFT run names its base
        train("--method", "dpo", "--from", "runs/sft", "--data", str(pairs),
              "--max-steps", "1", "--val-split", "0", "--name", "dpo-from", *FAST)
    finally:
        mp.undo()
    sft = load_file("runs/sft/adapter/adapter_model.safetensors")
    sft_b = {k: v for k, v in sft.items() if "lora_B" in k}
    assert sft_b and len(seen["B"]) == len(sft_b)
    for k, v in sft_b.items():  # the DPO run began exactly where the SFT run ended
        assert torch.equal(seen["B"][k.replace("lora_B.weight", "lora_B.default.weight")], v)
    run = json.loads(Path("runs/dpo-from/run.json").read_text())
    assert run["from_run"] == "runs/sft" and run["status"] == "completed"
    sft_run = json.loads(Path("runs/sft/run.json").read_text())
    assert run["base_model_arg"] == sft_run["base_model_arg"] and run["base_model"] == sft_run["base_model"]

    # --model naming another model than the run's base is refused before a run directory is made
    other = tmp_path / "other-model"
    other.mkdir()
    res = train("--model", str(other), "--method", "dpo", "--from", "runs/sft", "--data", str(pairs),
                "--name", "dpo-other", *FAST, code=2)
    assert "was trained on" in res.output and "leave --model out" in res.output
    assert not Path("runs/dpo-other").exists()
    # the run's own base, named as it was, is accepted (checked without training: a missing pairs file)
    res = train("--model", str(tiny_model), "--method", "dpo", "--from", "runs/sft", "--data", "none.jsonl",
                "--name", "dpo-same", *FAST, code=1)
    assert "none.jsonl" in res.output and "was trained on" not in res.output


def test_model_is_required_without_from():
    res = train("--data", "x.jsonl", code=2)
    assert "missing required option --model" in res.output
    res = train("--method", "dpo", "--from", "nowhere", "--data", "x.jsonl", code=2)
    assert "option --from nowhere: not an ft run" in res.output


def test_from_without_a_preference_method_is_refused(tiny_model, tmp_path):
    res = train("--model", str(tiny_model), "--from", "runs/x", "--data", "x.jsonl", code=2)
    assert "--from needs --method dpo or orpo" in res.output


def test_weighted_data_makes_up_its_share_of_the_mixture_and_is_recorded(tiny_model, tmp_path):
    from finetune_cli.train.data import load_inputs

    persona = write_data(tmp_path / "persona.jsonl", 80)
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"General question {i}?"},
                                                        {"role": "assistant", "content": f"Answer {i}."}]}) + "\n"
                               for i in range(50)))
    mixed = load_inputs([str(persona), f"{general}:0.2"], seed=1)
    n_general = sum(c.source.startswith(str(general)) for c in mixed.conversations)
    assert n_general == 20 and len(mixed.conversations) == 100  # 20% of the mixture, all 80 persona rows
    assert len({c.source for c in mixed.conversations if c.source.startswith(str(general))}) == 20  # no repeats
    again = load_inputs([str(persona), f"{general}:0.2"], seed=1)
    assert [c.source for c in again.conversations] == [c.source for c in mixed.conversations]  # seeded
    small = load_inputs([str(persona), f"{general}:0.6"], seed=1)  # 120 wanted from 50 rows: copies + sample
    assert sum(c.source.startswith(str(general)) for c in small.conversations) == 120

    train("--model", str(tiny_model), "--data", str(persona), "--data", f"{general}:0.2", "--max-steps", "1",
          "--val-split", "0", "--name", "mix", *FAST)
    files = json.loads(Path("runs/mix/data.json").read_text())["files"]
    assert files[1] == {"path": str(general), "sha256": files[1]["sha256"], "rows": 20, "rows_read": 50,
                        "weight": 0.2}
    assert json.loads(Path("runs/mix/run.json").read_text())["train_rows"] == 100
    res = train("--model", str(tiny_model), "--data", f"{persona}:0.5", "--data", f"{general}:0.6", code=2)
    assert "summing below 1" in res.output


def test_sft_weight_keeps_the_chosen_answers_likely(tiny_model, tmp_path):
    """Plain DPO can lower the chosen answers' own log-probability along with the rejected ones' (seen on an
    H100: SmolLM2's chosen log-probability fell while the margin rose). --sft-weight adds TRL's language-model
    loss on the chosen side (RPO): after the same steps the held-out chosen answers are more likely than under
    plain DPO, and the margin still rises."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs = write_pairs(tmp_path / "pairs.jsonl")
    common = ["--model", str(tiny_model), "--method", "dpo", "--data", str(pairs), "--max-steps", "8", "--lr",
              "5e-3", "--val-split", "0.25", "--eval-steps", "8", *FAST]
    train(*common, "--name", "plain")
    train(*common, "--name", "rpo", "--sft-weight", "1")
    assert json.loads(Path("runs/rpo/run.json").read_text())["sft_weight"] == 1.0
    held = json.loads(Path("runs/rpo/heldout_pairs.json").read_text())
    tok = AutoTokenizer.from_pretrained("runs/rpo/adapter")

    def chosen_logp(name):
        m = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
        if name:
            m = PeftModel.from_pretrained(m, f"runs/{name}/adapter")
        m.eval()
        return sum(seq_logp(m, tok, p["prompt"], p["chosen"][0]["content"])[0] for p in held) / len(held), \
            margins(m, tok, held)

    (base_c, base_m), (plain_c, plain_m), (rpo_c, rpo_m) = chosen_logp(None), chosen_logp("plain"), chosen_logp("rpo")
    print(f"held-out chosen log-prob: base {base_c:.1f}, DPO {plain_c:.1f}, DPO + LM loss {rpo_c:.1f}; "
          f"margin {base_m:.2f} → {plain_m:.2f} / {rpo_m:.2f}")
    assert rpo_c > plain_c + 1.0 and rpo_m > base_m
    train("--model", str(tiny_model), "--method", "orpo", "--data", str(pairs), "--sft-weight", "1", *FAST, code=2)


def test_dpo_from_a_run_that_added_tokens_reads_their_trained_rows(tiny_llama3, tmp_path):
    """As on SmolLM2 (ft adds a pad) or with ChatML on Llama 3 (its markers): SFT adds tokens whose rows PEFT's
    trainable tokens hold. TRL's fused DPO head reads the LM head's weight and bias past that wrapper: it must
    see the trained rows (its log-probs equal the model's own forward) and not fail on the missing bias."""
    import torch
    from peft.utils.other import TrainableTokensWrapper
    from trl.trainer.utils import add_fused_lm_head

    from finetune_cli.train import preference
    from finetune_cli.train.config import TrainConfig

    data = write_data(tmp_path / "sft.jsonl", 12)
    train("--model", str(tiny_llama3), "--data", str(data), "--chat-template", "chatml", "--max-steps", "2",
          "--lr", "1e-2", "--val-split", "0", "--name", "sft", *FAST)
    assert json.loads(Path("runs/sft/run.json").read_text())["added_tokens"]
    pairs = write_pairs(tmp_path / "pairs.jsonl", 8)
    train("--method", "dpo", "--from", "runs/sft", "--data", str(pairs), "--max-steps", "2", "--val-split", "0",
          "--name", "dpo", *FAST)  # failed with "'TrainableTokensWrapper' object has no attribute 'bias'"
    assert json.loads(Path("runs/dpo/run.json").read_text())["status"] == "completed"

    from finetune_cli.ui import NULL

    model, tok, _ = preference.load_from_run(TrainConfig(from_run="runs/sft", method="dpo"), NULL)
    head = model.get_output_embeddings()
    assert isinstance(head, TrainableTokensWrapper)
    with torch.no_grad():  # trained rows far from the base's, so reading the base's rows would show
        for delta in head.token_adapter.trainable_tokens_delta.values():
            delta += 3.0
    preference._head_with_added_tokens(model)
    add_fused_lm_head(model.get_base_model(), outputs=())
    preference._plain_torch_head("cpu")
    ids = torch.tensor([tok.encode("Aye, fit like the day?")])
    model.eval()
    with torch.no_grad():
        want = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1).gather(1, ids[0, 1:, None])[:, 0]
        got = model(input_ids=ids, labels=ids, fused_lm_head=True).log_probs[0]
    assert torch.allclose(got, want, atol=1e-5)
