"""``ft train`` in several processes (``distributed.py``): 2 CPU processes on gloo through torchrun train
exactly like one process with the same effective batch, write one run, and resume through ``--gpus 2``;
the checks, launch and FSDP/DDP arguments without launching anything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_cli.cli import app
from tests.test_train import metrics, run_json, train, write_data


def torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                           "-m", "finetune_cli", "train", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


VAL = [("Fit like?", "Aye."), ("Tell me about the harbour in winter.", "Cauld, grey and bonny, wi the boats in."),
       ("How are the bairns?", "Fine.")]  # 3 lengths: an odd count that 2 ranks cannot split evenly


def eval_loss_per_example(base: str, checkpoint: str, tokenizer: str) -> float:
    """The mean over the held-out examples of each one's loss, computed directly."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_cli.chat_template import assistant_only_labels

    tok = AutoTokenizer.from_pretrained(tokenizer)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), checkpoint).eval()
    losses = []
    for q, a in VAL:
        ids, labels = assistant_only_labels(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                            max_len=96, train_on="assistant")
        with torch.no_grad():
            losses.append(model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item())
    return sum(losses) / len(losses)


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_effective_batch_and_resume(tiny_model, tmp_path):
    """2 × batch 4 under torchrun == 1 × batch 8: same losses, tokens and weights; eval counts each held-out
    example once; then --gpus 2 --resume equals the uninterrupted run."""
    import torch

    data = write_data(tmp_path / "d.jsonl", 32)
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                    {"role": "assistant", "content": a}]}) + "\n" for q, a in VAL))
    common = ["--model", str(tiny_model), "--data", str(data), "--max-steps", "6", "--eval-steps", "3",
              "--lr", "1e-2", "--max-len", "96", "--grad-accum", "1"]
    p = torchrun(2, *common, "--val-file", str(val), "--batch-size", "4", "--name", "ddp")
    assert p.returncode == 0, p.stderr[-3000:]
    # rank 0 alone prints: the setup, each log step and the result once; rank 1 prints nothing
    assert p.stderr.count("ft train: ddp →") == 1 and p.stderr.count("step 1/6 loss") == 1, p.stderr
    assert "batch 4 × accum 1 × 2 processes = 8 examples per step" in p.stderr
    assert "2 processes (gloo) · DDP" in p.stderr
    assert p.stdout.count("trained ddp") == 1 and "Traceback" not in p.stderr and "[rank1]" not in p.stderr
    assert "find_unused_parameters=True" not in p.stderr            # no graph walk per step

    train(*common, "--val-split", "0", "--batch-size", "8", "--name", "one", "--quiet")
    assert sorted(os.listdir("runs")) == ["ddp", "one"]              # one run dir for two processes
    ddp, one = run_json("ddp"), run_json("one")
    assert (ddp["world_size"], ddp["per_device_batch_size"], ddp["effective_batch_size"]) == (2, 4, 8)
    assert (one["world_size"], one["effective_batch_size"]) == (1, 8)
    assert ddp["status"] == "completed" and ddp["global_step"] == 6 and ddp["distributed"] == "ddp"
    assert ddp["final_loss"] < ddp["first_loss"] - 0.2

    # the Trainer split each batch over the ranks (not duplicated): the same tokens at every step as one
    # process, and after 4 steps of 8 examples exactly the 32 rows' tokens
    rows_ddp, rows_one = ([r for r in metrics(n) if "loss" in r] for n in ("ddp", "one"))
    assert [r["tokens_seen"] for r in rows_ddp] == [r["tokens_seen"] for r in rows_one]
    assert rows_ddp[3]["tokens_seen"] == json.loads(Path("runs/one/data.json").read_text())["tokens"]
    assert [r["loss"] for r in rows_ddp] == pytest.approx([r["loss"] for r in rows_one], abs=1e-4)

    # eval: accelerate repeats an example so both ranks get 2 batches; the repeat is not counted
    evals = [r["eval_loss"] for r in metrics("ddp") if "eval_loss" in r]
    assert len(evals) == 2 and ddp["val_rows"] == 3
    assert evals[0] == pytest.approx(eval_loss_per_example(str(tiny_model), "runs/ddp/checkpoints/checkpoint-3",
                                                           "runs/ddp/adapter"), abs=1e-5)

    # the adapter: same files, tensor names and shapes as one process's, and (gradients averaged over
    # the ranks' padding-free batches) the same values at every checkpoint
    a, b = Path("runs/ddp/adapter"), Path("runs/one/adapter")
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    config = lambda d: {**json.loads((d / "adapter_config.json").read_text()),  # noqa: E731
                        "target_modules": sorted(json.loads((d / "adapter_config.json").read_text())["target_modules"])}
    assert config(a) == config(b)                                    # (PEFT writes a set in hash order)
    ta, tb = tensors(a), tensors(b)
    assert {k: v.shape for k, v in ta.items()} == {k: v.shape for k, v in tb.items()}
    for step in (3, 6):
        ta, tb = (tensors(Path(f"runs/{n}/checkpoints/checkpoint-{step}")) for n in ("ddp", "one"))
        assert all(torch.allclose(ta[k], tb[k], atol=1e-4) for k in ta)
    ckpt = Path("runs/ddp/checkpoints/checkpoint-3")
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()  # per-rank RNG

    # resume with the same number of processes, this time through --gpus 2: equals the uninterrupted run
    shutil.move("runs/ddp/checkpoints/checkpoint-6", "whole-6")
    shutil.rmtree("runs/ddp/adapter")
    res = CliRunner().invoke(app, ["train", *common, "--val-file", str(val), "--batch-size", "4", "--name", "ddp",
                                   "--gpus", "2", "--resume", "--quiet"])
    assert res.exit_code == 0, res.output
    resumed, whole = tensors(Path("runs/ddp/checkpoints/checkpoint-6")), tensors(Path("whole-6"))
    assert all(torch.allclose(resumed[k], whole[k], atol=1e-6) for k in whole)
    assert [r["eval_loss"] for r in metrics("ddp") if "eval_loss" in r] == pytest.approx(evals, abs=1e-6)
    assert [r["step"] for r in metrics("ddp") if "loss" in r] == [1, 2, 3, 4, 5, 6]  # the tail after 3 replaced
    assert run_json("ddp")["status"] == "completed" and sorted(os.listdir("runs")) == ["ddp", "one"]


def test_resume_with_another_number_of_processes_is_refused(tiny_model):
    run = Path("runs/x")
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (run / "run.json").write_text(json.dumps({"world_size": 2}))
    write_data(Path("d.jsonl"), 4)
    res = train("--model", str(tiny_model), "--data", "d.jsonl", "--name", "x", "--resume", code=2)
    assert "trained in 2 process(es), this is 1" in res.output and "--gpus 2" in res.output


@pytest.mark.parametrize("args,cuda,message", [
    (["--fsdp"], False, "FSDP shards over CUDA GPUs"),
    (["--fsdp", "--gpus", "2"], False, "FSDP shards over CUDA GPUs"),      # found before launching
    (["--fsdp"], True, "--fsdp shards the model over several processes"),
    (["--fsdp", "--method", "qlora"], False, "--fsdp does not shard 4-bit QLoRA"),
    (["--fsdp", "--backend", "unsloth"], False, "--fsdp needs --backend hf"),
    (["--gpus", "3"], True, "--gpus 3: only 2 CUDA GPU(s) visible"),
])
def test_what_cannot_work_is_one_clear_line(tiny_model, monkeypatch, args, cuda, message):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    write_data(Path("d.jsonl"), 4)
    res = CliRunner().invoke(app, ["train", "--model", str(tiny_model), "--data", "d.jsonl", *args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], res.output
    assert not Path("runs").exists()


@pytest.mark.parametrize("var,message", [("ACCELERATE_USE_FSDP", "asks for FSDP, which ft sets up itself"),
                                         ("ACCELERATE_USE_DEEPSPEED", "does not configure DeepSpeed")])
def test_accelerate_configs_ft_does_not_drive_are_refused(tiny_model, monkeypatch, var, message):
    monkeypatch.setenv(var, "true")
    write_data(Path("d.jsonl"), 4)
    assert message in train("--model", str(tiny_model), "--data", "d.jsonl", code=2).output


def test_gpus_must_match_the_launcher(tiny_model, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    write_data(Path("d.jsonl"), 4)
    res = train("--model", str(tiny_model), "--data", "d.jsonl", "--gpus", "4", code=2)
    assert "--gpus 4: this process was launched as one of 2" in res.output


SYSTEM = 'Speak "Doric".\nAye — \\ ken?\t✓'  # quotes, a newline, a backslash, a tab, non-ASCII: TOML-escaped


@pytest.mark.parametrize("rc", [0, 2, 1])
def test_gpus_launches_torchrun_with_the_resolved_config(tiny_model, monkeypatch, rc):
    """Values from flags, the environment and the defaults reach the workers as one TOML file; the
    workers' environment loses FT_TRAIN_* (it would override the file); their exit code is ft's."""
    from finetune_cli.config import load_config, to_dict
    from finetune_cli.train.config import TrainConfig

    seen = {}

    def fake_run(cmd, env):
        seen["cmd"], seen["env"] = cmd, env
        seen["toml"] = Path(cmd[cmd.index("--config") + 1]).read_text()
        return subprocess.CompletedProcess(cmd, rc)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setenv("FT_TRAIN_R", "8")
    monkeypatch.setenv("FT_TRAIN_LR", "0.5")
    write_data(Path("d.jsonl"), 4)
    res = CliRunner().invoke(app, ["train", "--model", str(tiny_model), "--data", "d.jsonl", "--gpus", "2",
                                   "--lr", "0.001", "--system", SYSTEM, "--json"])
    assert res.exit_code == rc, res.output
    cmd = seen["cmd"]
    assert cmd[1:6] == ["-m", "finetune_cli.train.distributed", "--standalone", "--nproc_per_node", "2"]
    assert cmd[6:9] == ["-m", "finetune_cli", "train"] and cmd[-1] == "--json"
    assert not any(k.startswith("FT_TRAIN_") for k in seen["env"]) and seen["env"]["FT_HOME"]
    Path("w.toml").write_text(seen["toml"])
    worker = load_config(TrainConfig, "train", config_file="w.toml", environ={}).config
    assert (worker.r, worker.learning_rate, worker.system, worker.gpus) == (8, 0.001, SYSTEM, 2)
    assert worker.name and worker.name.startswith("model-lora-")     # one name, chosen before launching
    expected = load_config(TrainConfig, "train", flags={"model": str(tiny_model), "data": ["d.jsonl"], "gpus": 2,
                                                        "lr": 0.001, "system": SYSTEM, "r": 8,
                                                        "name": worker.name}, environ={}).config
    assert to_dict(worker) == to_dict(expected)
    assert res.stdout == ""                                          # rank 0 prints the JSON, not the launcher
    if rc:
        assert f"failed (exit code {rc}" in res.output


def test_ddp_and_fsdp_arguments(tiny_model, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, TrainingArguments

    from finetune_cli.train.distributed import ddp_args, fsdp_args

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert ddp_args(model)["ddp_find_unused_parameters"] is False
    monkeypatch.setitem(sys.modules, "unsloth", type(sys)("unsloth"))   # Unsloth loaded: plain LoRA is still sure
    assert ddp_args(model)["ddp_find_unused_parameters"] is False
    model.base_model.model.lm_head.weight.requires_grad_(True)     # its fused loss may read lm_head by weight
    assert ddp_args(model)["ddp_find_unused_parameters"] is None
    monkeypatch.delitem(sys.modules, "unsloth")
    assert ddp_args(model)["ddp_find_unused_parameters"] is False
    model.config.num_local_experts = 4                              # a mixture of experts: some get no gradient
    assert ddp_args(model)["ddp_find_unused_parameters"] is None
    kw = fsdp_args(model, activation_checkpointing=True)
    assert kw["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    plugin = TrainingArguments(output_dir="o", use_cpu=True, report_to="none", **kw).fsdp_plugin_args
    assert plugin["fsdp_version"] == 2 and plugin["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
    assert plugin["state_dict_type"] == "FULL_STATE_DICT" and plugin["reshard_after_forward"] is True
    assert plugin["activation_checkpointing"] is True


def test_schedule_counts_each_process_share():
    from finetune_cli.train.config import TrainConfig
    from finetune_cli.train.plan import schedule as _schedule

    cfg = TrainConfig(model="m", data=["d"], batch_size=4, grad_accum=2, epochs=1)
    assert _schedule(cfg, 64, 1)[0] == 8 and _schedule(cfg, 64, 2)[0] == 4 and _schedule(cfg, 64, 4)[0] == 2
    assert _schedule(cfg, 36, 2)[0] == 3                             # 9 micro-batches: 5 on rank 0, 4 on rank 1


@pytest.mark.slow
def test_bad_data_under_two_processes_is_one_clear_line_a_process(tiny_model, tmp_path):
    """Every process finds the bad row after joining its group and says so on one whole line naming the
    file and line (unbuffered, as under some launchers: a line written in pieces interleaved with the other
    process's), leaves its group without a traceback, and the launching command says the run failed."""
    data = write_data(tmp_path / "d.jsonl", 8)
    with open(data, "a") as f:
        f.write('{"messages": "not a list"}\n')
    p = subprocess.run([sys.executable, "-m", "finetune_cli", "train", "--model", str(tiny_model), "--data",
                        str(data), "--max-len", "96", "--batch-size", "2", "--gpus", "2"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.returncode == 1, p.stderr[-3000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    bad = f"error: {data}:9: messages: conversation must be a non-empty list of turns"
    # each process that got to say it (the launcher stops the others once one has failed), then the launcher
    assert errors[-1] == "error: training in 2 processes failed (exit code 1; the error is above)", p.stderr
    assert errors[:-1] and set(errors[:-1]) == {bad}, p.stderr
    assert "Traceback" not in p.stderr


def test_a_failed_run_leaves_its_group_without_waiting(monkeypatch):
    """An error after joining the group destroys it in this process (no barrier: the others may be gone)."""
    import torch.distributed as dist

    from finetune_cli.errors import TrainingError
    from finetune_cli.train import distributed, run
    from finetune_cli.train.config import TrainConfig
    from finetune_cli.ui import Reporter

    def fail(*a):
        raise TrainingError("boom")

    monkeypatch.setattr(distributed, "join", lambda: dist.init_process_group(
        "gloo", store=dist.HashStore(), rank=0, world_size=1))
    monkeypatch.setattr(run, "_run_joined", fail)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as launched; check() only compares --gpus with it
    try:
        with pytest.raises(TrainingError, match="boom"):
            run.run(TrainConfig(model="m", data=["d"]), Reporter(quiet=True))
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_other_ranks_report_nothing(capsys):
    from finetune_cli.train.distributed import Silent

    r = Silent()
    r.info("x")
    r.warn("y")
    r.result("z")
    r.table("t", ["a"], [[1]])
    with r.progress("p", total=3) as task:
        task.advance()
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_help_documents_devices():
    res = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    assert res.exit_code == 0 and "Devices" in res.output and "--gpus" in res.output and "--fsdp" in res.output


def test_gpus_passes_debug_to_the_workers(tiny_model, monkeypatch):
    seen = {}

    def fake_run(cmd, env):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    write_data(Path("d.jsonl"), 4)
    res = CliRunner().invoke(app, ["train", "--model", str(tiny_model), "--data", "d.jsonl", "--gpus", "2",
                                   "--quiet", "--debug"])
    assert res.exit_code == 0, res.output
    assert seen["cmd"][-2:] == ["--quiet", "--debug"]


@pytest.mark.slow
def test_two_processes_split_token_batches_and_see_every_token_once(tiny_model, tmp_path):
    """--batch-tokens under torchrun: the ranks take different like-length micro-batches; over one epoch
    the gathered token count is the data's, and the step count is half the micro-batches. 20 rows make 3
    micro-batches in one process: an odd count, which would make accelerate repeat one so that both ranks
    step together; ft halves the largest into 2 instead, so no token is trained twice."""
    data = write_data(tmp_path / "d.jsonl", 20)
    p = torchrun(2, "--model", str(tiny_model), "--data", str(data), "--epochs", "1", "--max-len", "96",
                 "--grad-accum", "1", "--batch-tokens", "400", "--val-split", "0", "--logging-steps", "1",
                 "--name", "bt")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "≤ 400 tokens × accum 1 × 2 processes = ≤ 800 tokens per step" in p.stderr
    assert "each process takes its own micro-batches" in p.stderr
    resolved = json.loads(Path("runs/bt/config.json").read_text())["resolved"]
    groups = resolved["micro_batches_per_epoch"]
    assert groups == 4 and run_json("bt")["global_step"] == resolved["total_steps"] == 2
    rows = [r for r in metrics("bt") if "loss" in r]
    assert rows[-1]["tokens_seen"] == json.loads(Path("runs/bt/data.json").read_text())["tokens"]
