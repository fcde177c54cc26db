"""``ft train`` end to end on tiny random models (CPU, seconds each): loss, weights, methods, eval, resume."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from finetune_cli.cli import app

QS = ["Fit like?", "Tell me about the harbour.", "What is the capital of France?",
      "Write a two-line poem about rain.", "How are the bairns?", "Explain a compiler."]
ANS = ["Aye, nae bad, loon.", "The quine gaed doon tae the harbour.", "Paris is the capital, ye ken.",
       "Rain falls soft on silver streets.", "The bairns are fine, muckle thanks.",
       "It turns source code intae machine instructions."]
FAST = ["--max-len", "96", "--batch-size", "4", "--grad-accum", "1", "--quiet"]


def write_data(path: Path, n: int = 24, *, sharegpt: bool = False) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            k = i % len(QS)
            if sharegpt:
                row = {"conversations": [{"from": "human", "value": QS[k]}, {"from": "gpt", "value": ANS[k]}]}
            else:
                row = {"messages": [{"role": "system", "content": "Speak Doric."},
                                    {"role": "user", "content": QS[k]}, {"role": "assistant", "content": ANS[k]}],
                       "meta": {"id": f"r{i}"}}
            f.write(json.dumps(row) + "\n")
    return path


def train(*args: str, code: int = 0):
    res = CliRunner().invoke(app, ["train", *args])
    assert res.exit_code == code, (res.output, res.exception)
    return res


def run_json(name: str) -> dict:
    return json.loads(Path("runs", name, "run.json").read_text())


def metrics(name: str) -> list[dict]:
    return [orjson.loads(ln) for ln in Path("runs", name, "metrics.jsonl").read_bytes().splitlines()]


@pytest.fixture
def capture_trainer(monkeypatch):
    """Keep the Trainer that run.py builds, to compare in-memory weights with what was saved."""
    from finetune_cli.train import backend_hf

    box = {}
    real = backend_hf.build_trainer

    def spy(*a, **kw):
        box["trainer"] = real(*a, **kw)
        return box["trainer"]

    monkeypatch.setattr(backend_hf, "build_trainer", spy)
    return box


@pytest.mark.slow
def test_loss_falls_and_run_records_are_complete(tiny_model, tmp_path):
    data = write_data(tmp_path / "doric.jsonl", 40)
    res = train("--model", str(tiny_model), "--data", str(data), "--max-steps", "24", "--lr", "1e-2",
                "--val-split", "0.1", "--eval-steps", "6", "--name", "e2e", "--json", *FAST)
    out = json.loads(res.stdout)
    assert out["status"] == "completed" and out["global_step"] == 24
    rows = metrics("e2e")
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(evals) == 4 and evals[-1] < evals[0] - 0.1          # held-out loss falls
    assert out["final_loss"] < out["first_loss"] - 0.3
    run = run_json("e2e")
    assert run["best_eval_loss"] == pytest.approx(min(evals))
    assert run["best_checkpoint"] == f"checkpoints/checkpoint-{6 * (evals.index(min(evals)) + 1)}"
    assert (run["eos_token"], run["pad_token"], run["system_prompt"]) == ("<|im_end|>", "<|pad|>", "Speak Doric.")
    assert run["base_model"] == str(Path(tiny_model).resolve()) and run["versions"]["transformers"]
    assert out["masking"]["eos_trained_examples"] == out["masking"]["chat_examples"] == 40
    d = Path("runs/e2e")
    for f in ("config.json", "data.json", "metrics.jsonl", "loss.png", "heldout.jsonl", "adapter/adapter_config.json",
              "adapter/adapter_model.safetensors", "adapter/chat_template.jinja", "adapter/tokenizer.json"):
        assert (d / f).is_file(), f
    data_json = json.loads((d / "data.json").read_text())
    assert data_json["rows"] if "rows" in data_json else data_json["examples"] == 40
    assert data_json["files"][0]["sha256"] and 0 < data_json["masked_share"] < 1
    held = [json.loads(ln) for ln in (d / "heldout.jsonl").read_text().splitlines()]
    assert len(held) == run["val_rows"] == 4 and held[0]["messages"][-1]["role"] == "assistant"
    assert all(h["messages"][0]["role"] == "system" for h in held)  # held-out rows keep their system turn
    assert 0 < data_json["train_rows_without_system"] < 36         # --system-dropout 0.25 by default
    assert all(r["tokens_per_s"] and r["lr"] is not None for r in rows if "loss" in r)
    assert (d / "loss.png").read_bytes()[:4] == b"\x89PNG"
    from tests.test_merge import is_pickle

    adapter = [p for p in (d / "adapter").rglob("*") if p.is_file()]
    assert not [p.name for p in adapter if is_pickle(p)]             # training_args.bin stays in checkpoints/
    assert len({p.stat().st_mode & 0o777 for p in adapter}) == 1     # safetensors' 0600 fixed


@pytest.mark.slow
def test_lora_changes_adapter_not_base_and_reloads_with_same_logits(tiny_llama3, tmp_path, capture_trainer):
    """Llama-3 vocabulary + ChatML: two tokens added (trained rows only), a reserved pad; ShareGPT input."""
    import torch
    from safetensors.torch import load_file

    from finetune_cli.models import load_for_inference

    data = write_data(tmp_path / "sg.jsonl", 16, sharegpt=True)
    train("--model", str(tiny_llama3), "--data", str(data), "--chat-template", "chatml", "--max-steps", "6",
          "--lr", "1e-2", "--val-split", "0", "--name", "lora", *FAST)
    run = run_json("lora")
    assert run["added_tokens"] == ["<|im_start|>", "<|im_end|>"] and run["chat_template"] == "chatml"
    assert run["pad_token"].startswith("<|reserved_special_token_") and run["eos_token"] == "<|im_end|>"

    model = capture_trainer["trainer"].model.eval()
    base = load_file(str(Path(tiny_llama3) / "model.safetensors"))
    state = model.state_dict()
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    assert torch.equal(state[f"{q}.base_layer.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    assert state[f"{q}.lora_B.default.weight"].abs().sum() > 0       # LoRA B starts at zero: it trained
    emb = model.get_input_embeddings()
    old_rows = base["model.embed_tokens.weight"]
    assert torch.equal(emb.original_module.weight[: old_rows.shape[0]], old_rows)  # existing rows untouched
    saved = load_file("runs/lora/adapter/adapter_model.safetensors")
    assert not any("embed_tokens.weight" in k for k in saved)      # only the new rows, not the whole matrix
    assert any("trainable_tokens" in k for k in saved)

    loaded = load_for_inference("runs/lora", device="cpu")
    assert loaded.kind == "adapter" and loaded.tokenizer.chat_template == model_template(loaded)
    ids = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "Fit like?"}],
                                               add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        want = model(input_ids=ids["input_ids"]).logits
        got = loaded.model(input_ids=ids["input_ids"]).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert loaded.eos_token_ids[0] == loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")


def model_template(loaded) -> str:
    return (loaded.adapter_dir / "chat_template.jinja").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dora", "rslora"])
def test_dora_and_rslora_train(method, tiny_pad_eos, tmp_path):
    """DoRA on a tokenizer whose pad == eos; rsLoRA on `--model tiny` (built once in FT_HOME)."""
    data = write_data(tmp_path / "d.jsonl", 16)
    model = str(tiny_pad_eos) if method == "dora" else "tiny"
    res = train("--model", model, "--data", str(data), "--method", method, "--max-steps", "8",
                "--lr", "1e-2", "--val-split", "0", "--name", method, "--json", *FAST)
    out = json.loads(res.stdout)
    assert out["final_loss"] < out["first_loss"]
    cfg = json.loads(Path("runs", method, "adapter", "adapter_config.json").read_text())
    assert cfg["use_dora"] is (method == "dora") and cfg["use_rslora"] is (method == "rslora")
    assert cfg["lora_alpha"] == (16 if method == "rslora" else 32)
    assert out["pad_token"] != out["eos_token"] == "<|im_end|>"   # pad == eos in the model: fixed


@pytest.mark.slow
def test_base_model_without_template_gets_chatml_and_trains(tiny_base, tmp_path):
    data = write_data(tmp_path / "d.jsonl", 12)
    text = tmp_path / "essay.txt"
    text.write_text("On the Harbour\n" + " ".join(ANS * 12))
    (tmp_path / "system.txt").write_text("Ye speak Doric.\n")
    res = train("--model", str(tiny_base), "--data", str(data), "--data", str(text), "--max-steps", "4",
                "--system", f"@{tmp_path / 'system.txt'}",
                "--chunk-tokens", "64", "--chunk-overlap", "8", "--text-header", "first-line",
                "--val-split", "0", "--name", "base", "--json", *FAST)
    out = json.loads(res.stdout)
    run = run_json("base")
    assert run["chat_template"] == "chatml" and out["eos_token"] == "<|im_end|>"
    assert run["system_prompt"] == "Ye speak Doric."
    assert "<|im_start|>" in Path("runs/base/adapter/chat_template.jinja").read_text()
    data_json = json.loads(Path("runs/base/data.json").read_text())
    assert data_json["examples"] > 12                             # the essay became several chunks
    assert out["global_step"] == 4


@pytest.mark.slow
def test_full_fine_tuning_saves_a_model_that_loads(tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    from finetune_cli.models import load_for_inference

    data = write_data(tmp_path / "d.jsonl", 8)
    res = train("--model", str(tiny_model), "--data", str(data), "--method", "full", "--max-steps", "2",
                "--val-split", "0", "--name", "full", "--json", *FAST)
    assert json.loads(res.stdout)["output"].endswith("model") and run_json("full")["learning_rate"] == 2e-5
    before = load_file(str(Path(tiny_model) / "model.safetensors"))
    after = load_file("runs/full/model/model.safetensors")
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
    loaded = load_for_inference("runs/full", device="cpu")
    assert loaded.kind == "merged" and loaded.system_prompt == "Speak Doric."


@pytest.mark.slow
def test_early_stopping_keeps_and_marks_the_best_checkpoint(tiny_model, tmp_path, capture_trainer):
    """Validation answers share no tokens with training: eval loss rises from the first eval on."""
    import torch
    from safetensors.torch import load_file

    data = write_data(tmp_path / "d.jsonl", 24)
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "你好"},
                                                    {"role": "assistant", "content": "こんにちは 你好 ¿Qué tal?"}]})
                           + "\n" for _ in range(4)))
    train("--model", str(tiny_model), "--data", str(data), "--val-file", str(val), "--max-steps", "40",
          "--lr", "2e-2", "--eval-steps", "2", "--early-stopping", "2", "--save-total-limit", "1", "--name", "es",
          *FAST)
    run = run_json("es")
    evals = [(r["step"], r["eval_loss"]) for r in metrics("es") if "eval_loss" in r]
    best_step = min(evals, key=lambda x: x[1])[0]
    assert run["global_step"] < 40 and len(evals) == evals.index(min(evals, key=lambda x: x[1])) + 3
    assert run["best_checkpoint"] == f"checkpoints/checkpoint-{best_step}"
    assert Path("runs/es", run["best_checkpoint"]).is_dir()        # kept despite --save-total-limit 1
    final = load_file("runs/es/adapter/adapter_model.safetensors")
    best = load_file(f"runs/es/{run['best_checkpoint']}/adapter_model.safetensors")
    assert final.keys() == best.keys() and all(torch.equal(final[k], best[k]) for k in final)


@pytest.mark.slow
def interrupt_after_checkpoint(monkeypatch, step: int):
    """Ctrl-C right after the checkpoint of ``step``; returns a function that undoes it."""
    from finetune_cli.train import callbacks

    real = callbacks.make

    def interrupting(run_dir, reporter, total):
        from transformers import TrainerCallback

        class Interrupt(TrainerCallback):
            def on_save(self, args, state, control, **kw):
                if state.global_step == step:
                    raise KeyboardInterrupt

        return real(run_dir, reporter, total) + [Interrupt()]

    monkeypatch.setattr(callbacks, "make", interrupting)
    return lambda: monkeypatch.setattr(callbacks, "make", real)


@pytest.mark.slow
def test_resume_equals_uninterrupted(tiny_model, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    data = write_data(tmp_path / "d.jsonl", 20)
    common = ["--model", str(tiny_model), "--data", str(data), "--max-steps", "8", "--eval-steps", "4",
              "--lr", "1e-2", "--val-split", "0", "--dropout", "0.1", *FAST]
    train(*common, "--name", "whole")
    undo = interrupt_after_checkpoint(monkeypatch, 4)
    train(*common, "--name", "split", code=130)
    assert run_json("split")["status"] == "stopped" and not Path("runs/split/adapter").exists()
    undo()
    train(*common, "--name", "split", "--resume")

    a = load_file("runs/whole/adapter/adapter_model.safetensors")
    b = load_file("runs/split/adapter/adapter_model.safetensors")
    assert all((a[k] - b[k]).abs().max() < 1e-5 for k in a)
    la = [r["loss"] for r in metrics("whole") if "loss" in r]
    lb = [r["loss"] for r in metrics("split") if "loss" in r]
    assert lb == pytest.approx(la, abs=1e-5) and len(lb) == len(la)  # the interrupted tail was trimmed
    assert run_json("split")["status"] == "completed" and run_json("split")["global_step"] == 8
    assert run_json("split")["train_loss"] == pytest.approx(run_json("whole")["train_loss"], rel=1e-6)


@pytest.mark.slow
def test_resume_passes_over_a_damaged_last_checkpoint(tiny_model, tmp_path, monkeypatch):
    """The newest checkpoint's trainer_state.json was cut short: --resume says so, resumes from the one
    before, and ends where an uninterrupted run does."""
    from safetensors.torch import load_file

    data = write_data(tmp_path / "d.jsonl", 20)
    common = ["--model", str(tiny_model), "--data", str(data), "--max-steps", "8", "--eval-steps", "2",
              "--lr", "1e-2", "--val-split", "0", *FAST]
    train(*common, "--name", "whole")
    undo = interrupt_after_checkpoint(monkeypatch, 6)
    train(*common, "--name", "split", code=130)
    undo()
    state = Path("runs/split/checkpoints/checkpoint-6/trainer_state.json")
    state.write_text(state.read_text()[:40])
    res = train(*common, "--name", "split", "--resume")
    assert "checkpoint-6 is damaged (trainer_state.json" in res.output
    assert "resuming from checkpoint-4 instead" in res.output
    a = load_file("runs/whole/adapter/adapter_model.safetensors")
    b = load_file("runs/split/adapter/adapter_model.safetensors")
    assert all((a[k] - b[k]).abs().max() < 1e-5 for k in a)
    assert run_json("split")["train_loss"] == pytest.approx(run_json("whole")["train_loss"], rel=1e-6)


def test_intact_checkpoint_passes_over_truncated_weights_and_state(tmp_path):
    import torch
    from safetensors.torch import save_file

    from finetune_cli.rundir import RunDir

    rd = RunDir(tmp_path / "r")
    for step in (2, 4, 6):
        cp = rd.checkpoints / f"checkpoint-{step}"
        cp.mkdir(parents=True)
        save_file({"w": torch.ones(64)}, cp / "adapter_model.safetensors")
        torch.save({"state": torch.ones(64)}, cp / "optimizer.pt")
        (cp / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert rd.intact_checkpoint() == (rd.checkpoints / "checkpoint-6", [])
    opt = rd.checkpoints / "checkpoint-6" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:-100])
    w = rd.checkpoints / "checkpoint-4" / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-8])
    cp, passed = rd.intact_checkpoint()
    assert cp == rd.checkpoints / "checkpoint-2"
    assert [p.split(" (")[0] for p in passed] == ["checkpoint-6 is damaged", "checkpoint-4 is damaged"]
    assert "optimizer.pt" in passed[0] and "adapter_model.safetensors" in passed[1]


@pytest.mark.parametrize("packing", ["--packing", "--no-packing"])
def test_tokens_seen_counts_every_non_pad_token_once(tiny_model, tmp_path, packing):
    """ft counts tokens on the device and reads the count only when it logs: one epoch, logged every 2
    steps, must end at the data's token count, padded or padding-free."""
    data = write_data(tmp_path / "d.jsonl", 16)  # 4 steps of 4: one epoch
    train("--model", str(tiny_model), "--data", str(data), "--epochs", "1", "--logging-steps", "2",
          "--val-split", "0", "--name", "tok", packing, *FAST)
    rows = [r for r in metrics("tok") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 4]
    assert rows[-1]["tokens_seen"] == json.loads(Path("runs/tok/data.json").read_text())["tokens"]


def test_tokens_seen_survive_a_checkpoint_between_log_steps(tiny_model, tmp_path, monkeypatch):
    """Logged every 3 steps, saved every 4: the count saved at step 4 was never logged, yet a resumed run
    logs the same counts as an uninterrupted one."""
    data = write_data(tmp_path / "d.jsonl", 20)
    common = ["--model", str(tiny_model), "--data", str(data), "--max-steps", "8", "--eval-steps", "4",
              "--logging-steps", "3", "--val-split", "0", *FAST]
    train(*common, "--name", "whole")
    undo = interrupt_after_checkpoint(monkeypatch, 4)
    train(*common, "--name", "split", code=130)
    undo()
    train(*common, "--name", "split", "--resume")
    seen = [(r["step"], r["tokens_seen"]) for r in metrics("whole") if "loss" in r]
    assert [s for s, _ in seen] == [1, 3, 6]
    assert [(r["step"], r["tokens_seen"]) for r in metrics("split") if "loss" in r] == seen
    # the mean loss over all 8 steps, step 4's (saved, never logged) included
    assert run_json("split")["train_loss"] == pytest.approx(run_json("whole")["train_loss"], rel=1e-6)


def test_a_log_written_a_step_later_equals_the_stock_log(tiny_model, tmp_path, monkeypatch):
    """A step that only logs does not wait for the device: its row is written at the next step. The rows
    (step, epoch, loss, grad norm, lr, tokens seen), the evaluations between them, every checkpoint's log
    history and the run's losses equal those of the stock Trainer, which reads them at once."""
    import time

    from transformers import TrainerCallback

    from finetune_cli.train import backend_hf, callbacks

    seen = []  # (step, the log's time by the Trainer's clock, the host's time just before and just after)

    class Watch(TrainerCallback):
        clock = None  # set by ft's Trainer, as for ft's own metrics callback

        def on_log(self, args, state, control, logs=None, **kw):
            if "loss" in logs:
                before = time.perf_counter()
                seen.append((state.global_step, self.clock(), before, time.perf_counter()))

    make = callbacks.make
    monkeypatch.setattr(callbacks, "make", lambda *a: make(*a) + [Watch()])
    data = write_data(tmp_path / "d.jsonl", 30)
    args = ["--model", str(tiny_model), "--data", str(data), "--max-steps", "9", "--logging-steps", "1",
            "--eval-steps", "4", "--val-split", "0.2", *FAST]
    train(*args, "--name", "deferred")
    # a row written a step later is timed when its step ended (tokens/s not flattered), others when written
    assert [s for s, *_ in seen] == list(range(1, 10))
    assert all(a[1] <= b[1] for a, b in zip(seen, seen[1:]))
    for step, done, before, after in seen:
        assert done < before if step not in (4, 8, 9) else before <= done <= after, (step, seen)
    real = backend_hf.trainer_class
    monkeypatch.setattr(backend_hf, "trainer_class",
                        lambda: type("StockLogs", (real(),), {"deferred_log": lambda self: False}))
    train(*args, "--name", "stock")

    def same(a: list[dict], b: list[dict]) -> None:
        kept = lambda r: {k: v for k, v in r.items()  # noqa: E731  (timings and memory differ run to run)
                          if not any(t in k for t in ("per_s", "runtime", "peak_mem"))}
        assert [sorted(kept(r)) for r in a] == [sorted(kept(r)) for r in b]
        for x, y in zip(a, b):
            assert kept(x) == pytest.approx(kept(y), rel=1e-6)

    rows = metrics("deferred")
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 10))  # every step once, in order
    assert [r["step"] for r in rows if "eval_loss" in r] == [4, 8, 9]
    same(rows, metrics("stock"))
    for step in (4, 8):
        history = [json.loads(Path(f"runs/{n}/checkpoints/checkpoint-{step}/trainer_state.json").read_text())
                   ["log_history"] for n in ("deferred", "stock")]
        same(*history)
    assert [run_json("deferred")[k] for k in ("first_loss", "final_loss", "best_eval_loss")] == pytest.approx(
        [run_json("stock")[k] for k in ("first_loss", "final_loss", "best_eval_loss")], rel=1e-6)


def test_non_finite_loss_stops_the_run_with_a_clear_error(tiny_model, tmp_path, monkeypatch):
    """The stock Trainer hides a NaN loss from its logs (logging_nan_inf_filter) and trains on; ft stops."""
    from finetune_cli.train import callbacks

    real = callbacks.make

    def poisoning(run_dir, reporter, total):
        import torch
        from transformers import TrainerCallback

        class Poison(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kw):
                if state.global_step == 3:
                    with torch.no_grad():
                        next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))

        return real(run_dir, reporter, total) + [Poison()]

    monkeypatch.setattr(callbacks, "make", poisoning)
    data = write_data(tmp_path / "d.jsonl", 20)
    res = train("--model", str(tiny_model), "--data", str(data), "--max-steps", "10", "--logging-steps", "2",
                "--val-split", "0", "--name", "nan", *FAST, code=1)
    assert "training loss became nan at step 4" in res.output
    run = run_json("nan")
    assert run["status"] == "failed" and run["global_step"] == 4 and not Path("runs/nan/adapter").exists()


def test_resume_with_different_options_is_refused(tiny_model, tmp_path):
    run = Path("runs/x")
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    (run / "config.json").write_text(json.dumps({"config": {"lr": 0.5}}))
    res = train("--model", str(tiny_model), "--data", "d.jsonl", "--name", "x", "--resume", code=2)
    assert "options differ" in res.output and "lr" in res.output


def test_most_conversations_cut_by_max_len_is_an_error(tiny_model, tmp_path):
    """At --max-len 48, most of the 20 conversations lose their final end-of-turn token; the error counts them and
    names the length that fits them all, as the model's own chat template tokenizes them."""
    from transformers import AutoTokenizer

    data = write_data(tmp_path / "d.jsonl", 20)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    lengths = [len(tok.apply_chat_template(json.loads(line)["messages"], tokenize=True, return_dict=True)["input_ids"])
               for line in data.read_text().splitlines()]
    over = sum(n > 48 for n in lengths)
    assert over > 10  # most: the data is built so
    res = train("--model", str(tiny_model), "--data", str(data), "--max-len", "48", "--system-dropout", "0",
                "--name", "cut", "--quiet", code=2)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"{over} of 20 conversations are longer than --max-len 48" in errors[0]
    assert f"raise --max-len to {max(lengths)}" in errors[0] and "--allow-truncation" in errors[0]
    assert not Path("runs/cut").exists()


@pytest.mark.slow
@pytest.mark.parametrize("max_len, flag, lost", [("54", None, 6), ("48", "--allow-truncation", 13)])
def test_a_few_cut_conversations_warn_and_are_recorded(tiny_model, tmp_path, max_len, flag, lost):
    data = write_data(tmp_path / "d.jsonl", 20)
    res = train("--model", str(tiny_model), "--data", str(data), "--max-len", max_len, "--system-dropout", "0",
                "--max-steps", "1", "--name", "cut", "--batch-size", "4", "--quiet", *([flag] if flag else []))
    assert f"warning: {lost} of 20 conversations are longer than --max-len {max_len}" in res.stderr
    assert run_json("cut")["eos_lost_examples"] == lost and run_json("cut")["status"] == "completed"


def test_dry_run_prints_config_and_writes_nothing(tiny_model):
    res = train("--model", str(tiny_model), "--data", "d.jsonl", "--method", "dora", "--dry-run")
    assert "dora" in res.output and "lr" in res.output and not Path("runs").exists()


@pytest.mark.parametrize("args,code,message", [
    (["--data", "d.jsonl"], 2, "missing required option --model"),
    (["--model", "MODEL", "--data", "missing.jsonl"], 1, "missing.jsonl: no such file"),
    (["--model", "MODEL", "--data", "bad.jsonl"], 1, "bad.jsonl:2: messages: turn 1 (assistant): empty content"),
    (["--model", "MODEL", "--data", "d.jsonl", "--method", "qlora"], 2, "QLoRA needs a CUDA GPU"),
    (["--model", "MODEL", "--data", "d.jsonl", "--backend", "unsloth"], 2, "Unsloth needs a CUDA GPU"),
    (["--model", "nowhere/x/y", "--data", "d.jsonl"], 2, "not a model directory"),
    (["--model", "MODEL", "--data", "d.jsonl", "--resume"], 2, "--resume needs --name"),
    (["--model", "MODEL", "--data", "d.jsonl", "--method", "lorra"], 2, "did you mean 'lora'"),
    (["--model", "MODEL", "--data", "d.jsonl", "--chat-template", "vicuna"], 2, "unknown template 'vicuna'"),
])
def test_bad_inputs_give_one_clear_line(tiny_model, args, code, message):
    write_data(Path("d.jsonl"), 4)
    Path("bad.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}) + "\n")
    res = CliRunner().invoke(app, ["train", *[str(tiny_model) if a == "MODEL" else a for a in args]])
    assert res.exit_code == code, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], res.output
    assert "Traceback" not in res.output
    assert not Path("runs").exists() or not any(Path("runs").iterdir())  # a failed start leaves no run


def check_fails(tiny_model, message: str):
    write_data(Path("d.jsonl"), 4)
    res = CliRunner().invoke(app, ["train", "--model", str(tiny_model), "--data", "d.jsonl", *FAST])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.output, res.output
    assert not Path("runs").exists() or not any(Path("runs").iterdir())  # refused before anything was made


@pytest.mark.parametrize("version", ["4.57.1", "5.18.0"])
def test_a_transformers_outside_the_tested_range_is_refused_at_start(tiny_model, monkeypatch, version):
    import transformers

    monkeypatch.setattr(transformers, "__version__", version)
    check_fails(tiny_model, f"transformers {version} is outside the range ft train is tested with (>=5.0,<=5.17.0)")


@pytest.mark.parametrize("name", ["_maybe_log_save_evaluate", "_get_output_dir"])
def test_a_transformers_without_a_private_name_ft_relies_on_is_refused_at_start(tiny_model, monkeypatch, name):
    from transformers import Trainer

    monkeypatch.delattr(Trainer, name)
    check_fails(tiny_model, f"Trainer has no {name}, which ft's Trainer relies on")


def test_the_tested_transformers_range_is_the_train_extras():
    import tomllib

    from finetune_cli.train.trainer import TESTED

    extra = tomllib.loads(Path(__file__).parents[1].joinpath("pyproject.toml").read_text())
    pins = [d for d in extra["project"]["optional-dependencies"]["train"] if d.startswith("transformers")]
    assert pins == [f"transformers>={TESTED[0]},<={TESTED[1]}"]


def test_model_tiny_command(tmp_path):
    res = CliRunner().invoke(app, ["model", "tiny", str(tmp_path / "m"), "--template", "llama3"])
    assert res.exit_code == 0, res.output
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert "<|eot_id|>" in tok.chat_template and (tmp_path / "m" / "model.safetensors").is_file()
    res = CliRunner().invoke(app, ["model", "tiny", str(tmp_path / "m")])
    assert res.exit_code == 2 and "not an empty directory" in res.output


def test_help_documents_every_panel():
    res = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    assert res.exit_code == 0
    for word in ("Model", "Data", "LoRA", "Optimization", "Eval", "Output", "--val-split", "--chat-template"):
        assert word in res.output


def test_padding_free_batches_never_attend_across_examples(tiny_model):
    """A packed row's logits equal each example run alone, and its loss equals the padded batch's."""
    import torch
    from transformers import AutoModelForCausalLM

    from finetune_cli.train.backend_hf import Collator

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    a = {"input_ids": [5, 17, 300, 42, 9, 2], "labels": [-100, -100, 300, 42, 9, 2]}
    b = {"input_ids": [7, 8, 900, 33, 2], "labels": [-100, -100, 900, 33, 2]}
    packed = Collator(pad_id=3, padding_free=True)([a, b])
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4]]
    assert "attention_mask" not in packed and packed["use_cache"] is False  # a cache disables packed masks
    with torch.no_grad():
        got = model(**{k: v for k, v in packed.items() if k != "labels"}).logits[0]
        alone_a = model(input_ids=torch.tensor([a["input_ids"]])).logits[0]
        alone_b = model(input_ids=torch.tensor([b["input_ids"]])).logits[0]
        assert torch.allclose(got[:6], alone_a, atol=1e-5) and torch.allclose(got[6:], alone_b, atol=1e-5)
        # the loss over the packed row is the loss over the padded batch: same tokens, same targets
        padded = Collator(pad_id=3, padding_free=False)([a, b])
        assert padded["attention_mask"].tolist()[1] == [1] * 5 + [0]
        loss_packed = model(**packed).loss
        loss_padded = model(**padded).loss
    assert torch.allclose(loss_packed, loss_padded, atol=1e-5)


def test_token_batches_group_like_lengths_within_the_budget():
    import random

    from finetune_cli.train.examples import token_batches

    rng = random.Random(0)
    lengths = [rng.randint(50, 600) for _ in range(3000)]
    groups = token_batches(lengths, 16384)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # every example once
    assert all(len(g) * max(lengths[i] for i in g) <= 16384 for g in groups)  # padded cost within the budget
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    assert sum(lengths) / padded > 0.97  # like lengths: almost no padding
    assert len(groups) <= padded / 16384 * 1.05 + 1  # and full batches
    assert token_batches(lengths, 16384) == groups  # deterministic
    assert token_batches([700, 5], 600) == [[1], [0]]  # an example over the budget still gets a batch

    # shared by N processes: a multiple of N groups (else accelerate repeats groups to even the ranks),
    # still every example once and within the budget; the largest groups are the ones halved
    for n in (2, 3, 4, 8):
        split = token_batches(lengths, 16384, n)
        assert len(split) % n == 0 and len(groups) <= len(split) < len(groups) + n
        assert sorted(i for g in split for i in g) == list(range(len(lengths)))
        assert all(len(g) * max(lengths[i] for i in g) <= 16384 for g in split)
    odd = token_batches([10, 10, 10, 50], 30)                        # [[0, 1, 2], [3]]
    assert odd == [[0, 1, 2], [3]] and token_batches([10, 10, 10, 50], 30, 3) == [[0], [1, 2], [3]]
    assert token_batches([50, 60, 70], 60, 2) == [[0], [1], [2]]     # one row each: nothing to halve


@pytest.mark.parametrize("packing", ["--packing", "--no-packing"])
def test_batch_tokens_trains_every_token_once_per_epoch(tiny_model, tmp_path, packing):
    """--batch-tokens: micro-batches by token budget; one epoch sees every non-pad token once and the
    step count is the number of micro-batches (grad accum 1)."""
    data = write_data(tmp_path / "d.jsonl", 24)
    train("--model", str(tiny_model), "--data", str(data), "--epochs", "1", "--logging-steps", "1",
          "--val-split", "0", "--name", "bt", "--batch-tokens", "400", packing, *FAST)
    resolved = json.loads(Path("runs/bt/config.json").read_text())["resolved"]
    groups = resolved["micro_batches_per_epoch"]
    assert 24 / 4 > groups > 1  # more examples per batch than --batch-size 4, fewer steps
    assert resolved["total_steps"] == groups and run_json("bt")["global_step"] == groups
    rows = [r for r in metrics("bt") if "loss" in r]
    assert rows[-1]["tokens_seen"] == json.loads(Path("runs/bt/data.json").read_text())["tokens"]
    assert resolved["padding_free"] is False  # no varlen kernel on CPU: alike rows padded, not one long row


def test_batch_tokens_below_max_len_is_an_error(tiny_model, tmp_path):
    data = write_data(tmp_path / "d.jsonl", 8)
    res = train("--model", str(tiny_model), "--data", str(data), "--batch-tokens", "64", *FAST, code=2)
    assert "--batch-tokens 64 is below --max-len 96" in res.output


def test_training_kernels_keep_sdpa_off_cudnn_only_for_varying_lengths_on_cuda():
    import torch

    from finetune_cli.train.backend_hf import training_kernels

    assert torch.backends.cuda.cudnn_sdp_enabled()
    with training_kernels("cuda", varying_lengths=True):
        assert not torch.backends.cuda.cudnn_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()
    for args in (("cuda", False), ("cpu", True)):
        with training_kernels(*args):
            assert torch.backends.cuda.cudnn_sdp_enabled()


def test_collator_flattens_token_batches():
    from finetune_cli.train.backend_hf import Collator

    rows = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    for pf in (True, False):
        grouped = Collator(pad_id=0, padding_free=pf)([{"group": rows}])
        plain = Collator(pad_id=0, padding_free=pf)(rows)
        assert grouped.keys() == plain.keys()
        assert all(torch_equal(grouped[k], plain[k]) for k in plain)
    from finetune_cli.train.backend_unsloth import Collator as UnslothCollator

    assert UnslothCollator(pad_id=0, padding_free=True)([{"group": rows}])["packed_seq_lengths"].tolist() == [3, 2]


def torch_equal(a, b) -> bool:
    return a == b if not hasattr(a, "tolist") else a.tolist() == b.tolist()


def test_the_loop_skips_its_walks_yet_trains_in_training_mode_and_drops_gradients(tiny_model, tmp_path, monkeypatch):
    """ft's Trainer skips the stock walks over every module and parameter each step (model.train() when
    already training; clipping and zero_grad over frozen parameters too), yet every step after an
    evaluation trains with dropout on, and every step's gradients are dropped."""
    import torch
    from transformers import TrainerCallback

    from finetune_cli.train import callbacks

    real, seen, calls = callbacks.make, [], {"train": 0}
    module_train = torch.nn.Module.train

    def counting(self, mode=True):
        calls["train"] += 1
        return module_train(self, mode)

    monkeypatch.setattr(torch.nn.Module, "train", counting)

    def recording(run_dir, reporter, total):
        class Record(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kw):
                seen.append((state.global_step, all(m.training for m in model.modules()),
                             all(p.grad is None for p in model.parameters()), calls["train"]))

        return real(run_dir, reporter, total) + [Record()]

    monkeypatch.setattr(callbacks, "make", recording)
    data = write_data(tmp_path / "d.jsonl", 40)
    train("--model", str(tiny_model), "--data", str(data), "--max-steps", "8", "--eval-steps", "3",
          "--dropout", "0.1", "--name", "walks", *FAST)
    assert [s for s, *_ in seen] == list(range(1, 9))
    assert all(training and no_grads for _, training, no_grads, _ in seen), seen
    evals = [r["step"] for r in metrics("walks") if "eval_loss" in r]
    assert evals == [3, 6, 8]
    walks = [n for *_, n in seen]
    per_walk = walks[0]  # step 1 starts from eval mode: one full walk
    steps_with_walk = sum(b > a for a, b in zip(walks, walks[1:]))
    assert steps_with_walk == 2 and walks[-1] <= per_walk * 10  # only the steps after the evaluations at 3 and 6 walk


def test_replay_tip_only_for_one_chat_dataset():
    from finetune_cli.train.config import TrainConfig
    from finetune_cli.train.run import replay_tip

    chat = {"chat_examples": 10}
    assert "ft replay" in replay_tip(TrainConfig(model="m", data=["d.jsonl"]), chat)
    assert replay_tip(TrainConfig(model="m", data=["d.jsonl", "g.jsonl:0.2"]), chat) is None  # mixed already
    assert replay_tip(TrainConfig(model="m", data=["d.jsonl"]), {"chat_examples": 0}) is None  # raw text
    assert replay_tip(TrainConfig(model="m", data=["p.jsonl"], method="dpo"), chat) is None


def test_schedule_tip_for_a_small_model_given_few_steps():
    from finetune_cli.train.config import TrainConfig
    from finetune_cli.train.run import schedule_tip

    cfg = TrainConfig(model="m", data=["d"])  # lr 2e-4
    assert "--epochs or --lr" in schedule_tip(cfg, 183, 135_000_000)    # under-trained on SmolLM2-135M
    assert schedule_tip(cfg, 459, 135_000_000) is None                  # 2e-4 × 459: stopped 98%
    assert schedule_tip(TrainConfig(model="m", data=["d"], lr=1e-3), 69, 135_000_000) is None
    assert schedule_tip(cfg, 183, 8_000_000_000) is None                # measured on a small model only
    assert schedule_tip(TrainConfig(model="m", data=["p"], method="dpo"), 20, 135_000_000) is None


def test_train_shows_the_schedule_tip(tiny_model, tmp_path):
    data = write_data(tmp_path / "d.jsonl", 8)
    res = train("--model", str(tiny_model), "--data", str(data), "--max-steps", "2", "--val-split", "0",
                "--name", "tip", *[a for a in FAST if a != "--quiet"])  # the setup lines are what is checked
    assert "2 steps at lr 0.0002 is a short schedule" in res.output


def test_batching_tip_only_for_small_gpu_batches():
    from finetune_cli.train.config import TrainConfig
    from finetune_cli.train.run import batching_tip

    cfg = TrainConfig(model="m", data=["d"], batch_size=8)
    assert "--batch-tokens 16384" in batching_tip(cfg, "cuda", 330)
    assert batching_tip(cfg, "cpu", 330) is None  # no GPU to keep busy
    assert batching_tip(cfg, "cuda", 1024) is None  # 8k-token batches already
    assert batching_tip(TrainConfig(model="m", data=["d"], batch_tokens=16384), "cuda", 330) is None


@pytest.mark.filterwarnings("ignore:`torch.distributed.all_gather_into_tensor` is deprecated:FutureWarning")
def test_a_sharded_gradient_norm_is_logged_like_a_plain_one(tiny_model, tmp_path, monkeypatch):
    """Under FSDP2 the gradient norm is a DTensor, and c10d refuses to gather a DTensor beside plain tensors:
    the deferred log makes it a plain tensor first. One gloo process stands in for the group: the norm comes
    back as a DTensor on its mesh, and the gather is the collective accelerate runs under several processes."""
    import torch
    import torch.distributed as dist
    from accelerate import Accelerator
    from torch.distributed.tensor import DTensor, Partial, init_device_mesh

    data = write_data(tmp_path / "d.jsonl", 30)
    args = ["--model", str(tiny_model), "--data", str(data), "--max-steps", "6", "--logging-steps", "1",
            "--eval-steps", "3", "--val-split", "0.2", *FAST]  # steps 1, 2, 4 and 5 only log: deferred
    train(*args, "--name", "plain")
    clip, gather = Accelerator.clip_grad_norm_, Accelerator.gather

    def collective(self, t):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return gather(self, t)
        out = torch.empty((dist.get_world_size() * t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
        dist.all_gather_into_tensor(out, t.contiguous())  # accelerate's call, with a plain output as it makes
        return out

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        monkeypatch.setattr(Accelerator, "clip_grad_norm_",
                            lambda self, *a, **k: DTensor.from_local(clip(self, *a, **k), mesh, [Partial()]))
        monkeypatch.setattr(Accelerator, "gather", collective)
        train(*args, "--name", "sharded")
    finally:
        dist.destroy_process_group()
    norms = {name: [r["grad_norm"] for r in metrics(name) if "grad_norm" in r] for name in ("plain", "sharded")}
    assert len(norms["plain"]) == 6 and all(n > 0 for n in norms["plain"])
    assert norms["sharded"] == pytest.approx(norms["plain"], rel=1e-6)
