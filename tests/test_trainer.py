"""Reference training through transformers' Trainer: the batch plan (alignment first, --max-steps
in all, independent of loader workers), LoRA resume, bf16 and gradient checkpointing on CPU,
settings refused on resume, the command-line flags, and two processes under torchrun."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from typer.testing import CliRunner

from radcorpora.cli import app
from radcorpora.corpora.radimagenet_vqa.spec import SPEC as RADIMAGENET_VQA
from radcorpora.reference_models import sft
from radcorpora.reference_models.data import alignment_examples, training_examples, training_texts
from radcorpora.reference_models.models import build_tiny, load_model

RECIPE = RADIMAGENET_VQA.evaluation


@pytest.fixture(scope="module")
def tiny(demo_build, tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny") / "base", training_texts(demo_build, RECIPE), vocab_size=600)


@pytest.fixture(scope="module")
def examples(demo_build):
    return training_examples(demo_build, RECIPE)


def _quick(**update) -> sft.SFTConfig:
    return sft.PRESETS["tiny-lora"].model_copy(update={"max_steps": 4, "batch_size": 4, "log_every": 1,
                                                       "warmup_steps": 1, **update})


def _losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_max_steps_counts_the_alignment_steps():
    check = sft.PRESETS["tiny-check"]  # 720 steps, 150 of them on captions
    assert sft.step_split(check, 2304, 100) == (150, 570)  # the demo check keeps its schedule
    assert sft.step_split(check.model_copy(update={"max_steps": 40}), 2304, 100) == (20, 20)  # was 150 + 1
    assert sft.step_split(check.model_copy(update={"max_steps": 1}), 2304, 100) == (0, 1)
    assert sft.step_split(check, 2304, 0) == (0, 720)  # no captions: every step on the corpus
    lora = sft.PRESETS["tiny-lora"]  # no max_steps: 3 epochs of 2304 / 8
    assert sft.step_split(lora, 2304, 0) == (0, 3 * 288)
    assert sft.step_split(lora, 2304, 0, processes=2) == (0, 3 * 144)
    config = check.model_copy(update={"batch_size": 3, "grad_accum": 2})
    plan = sft._plan(config, (10, 7), (2, 3), processes=2)
    assert len(plan) == (2 + 3) * 2 * 2
    assert {s for micro in plan[:8] for s, _ in micro} == {1} and {s for micro in plan[8:] for s, _ in micro} == {0}
    assert plan == sft._plan(config, (10, 7), (2, 3), processes=2)  # seeded


def test_train_command_stops_at_max_steps_in_all(demo_build, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(demo_build), "--model", "tiny", "--out", str(out),
                                      "--preset", "tiny-check", "--max-steps", "4"])
    assert result.exit_code == 0, result.output
    trained = json.loads((out / "train_result.json").read_text())
    assert trained["steps"] == 4 and trained["alignment_steps"] == 2  # min(150, 4 // 2)
    assert trained["examples_seen"] == 4 * 16
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [4]
    assert (out / "model/config.json").exists() and not list(out.glob("checkpoint-*"))


def test_results_do_not_depend_on_loader_workers(tiny, examples, demo_build, tmp_path):
    captions = alignment_examples(demo_build, RECIPE)
    config = _quick(max_steps=3, alignment_steps=1, method="full", learning_rate=1e-3)
    inline = sft.train(tiny, examples, tmp_path / "inline", config, alignment_rows=captions)
    workers = sft.train(tiny, examples, tmp_path / "workers", config, alignment_rows=captions, workers=2)
    assert inline.alignment_steps == 1 and inline.steps == 3
    assert _losses(tmp_path / "inline") == _losses(tmp_path / "workers")
    a = load_model(tmp_path / "inline/model")[0].state_dict()
    b = load_model(tmp_path / "workers/model")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert workers.examples_seen == inline.examples_seen == 3 * 4


def test_killed_lora_run_resumes_to_the_same_adapter(tiny, examples, tmp_path):
    from safetensors.torch import load_file

    config = _quick(max_steps=5, save_every=2, keep_checkpoints=2)
    straight = sft.train(tiny, examples, tmp_path / "straight", config)

    class Killed(Exception):
        pass

    def kill_at_step_3(message: str) -> None:
        if message.startswith("step 3/"):
            raise Killed

    with pytest.raises(Killed):
        sft.train(tiny, examples, tmp_path / "killed", config, log=kill_at_step_3)
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*")) == ["checkpoint-2"]
    said: list[str] = []
    resumed = sft.train(tiny, examples, tmp_path / "killed", config, log=said.append)
    assert said[0] == "resuming from checkpoint-2"
    assert _losses(tmp_path / "killed") == pytest.approx(_losses(tmp_path / "straight"), rel=1e-5)  # log cut back to 2
    assert resumed.steps == straight.steps == 5 and resumed.examples_seen == straight.examples_seen
    a = load_file(tmp_path / "straight/adapter/adapter_model.safetensors")
    b = load_file(tmp_path / "killed/adapter/adapter_model.safetensors")
    assert a.keys() == b.keys() and any("lm_head" in k for k in a)  # the trainable head came back too
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_bf16_on_cpu_and_gradient_checkpointing_are_settings(tiny, examples, tmp_path):
    plain = sft.train(tiny, examples, tmp_path / "plain", _quick(max_steps=2))
    checkpointed = sft.train(tiny, examples, tmp_path / "gc", _quick(max_steps=2, gradient_checkpointing=True))
    # recomputing activations changes memory, not the arithmetic
    assert _losses(tmp_path / "gc") == pytest.approx(_losses(tmp_path / "plain"), rel=1e-4)
    assert checkpointed.config.gradient_checkpointing and not plain.config.gradient_checkpointing
    half = sft.train(tiny, examples, tmp_path / "bf16", _quick(max_steps=2, bf16=True))
    assert half.config.bf16 and all(math.isfinite(x) for x in _losses(tmp_path / "bf16"))
    assert _losses(tmp_path / "bf16") != _losses(tmp_path / "plain")  # autocast did run in bf16
    assert _losses(tmp_path / "bf16")[0] == pytest.approx(_losses(tmp_path / "plain")[0], rel=0.05)
    for changed in ({"bf16": False}, {"gradient_checkpointing": True}, {"report_to": "tensorboard"}):
        with pytest.raises(sft.SettingsChanged, match="other settings"):
            sft.train(tiny, examples, tmp_path / "bf16", _quick(max_steps=2, **{"bf16": True, **changed}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_flags_the_machine_cannot_run_exit_2(demo_build, tmp_path):
    runner = CliRunner()
    base = ["--model", "tiny", "--out", str(tmp_path / "run")]
    qlora = runner.invoke(app, ["train", str(demo_build), *base, "--qlora"])
    assert qlora.exit_code == 2 and "--qlora needs a CUDA GPU" in qlora.output
    assert len(qlora.output.strip().splitlines()) == 1
    check = runner.invoke(app, ["check", str(demo_build), "--qlora"])
    assert check.exit_code == 2 and "--qlora needs a CUDA GPU" in check.output
    both = runner.invoke(app, ["train", str(demo_build), *base, "--qlora", "--full"])
    assert both.exit_code == 2 and "contradict" in both.output
    tracker = runner.invoke(app, ["train", str(demo_build), *base, "--preset", "tiny-lora", "--max-steps", "1",
                                  "--report-to", "no-such-tracker"])
    assert tracker.exit_code == 2 and "no-such-tracker" in tracker.output, tracker.output


def test_train_command_flags_reach_the_run(demo_build, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(demo_build), "--model", "tiny", "--out", str(out), "--preset",
                                      "tiny-check", "--lora", "--bf16", "--gradient-checkpointing", "--max-steps", "2",
                                      "--text-only"])
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "run_settings.json").read_text())["config"]
    assert (settings["method"], settings["bf16"], settings["gradient_checkpointing"]) == ("lora", True, True)
    assert (out / "adapter/adapter_config.json").exists()
    again = CliRunner().invoke(app, ["train", str(demo_build), "--model", "tiny", "--out", str(out), "--preset",
                                     "tiny-check", "--lora", "--max-steps", "2", "--text-only"])
    assert again.exit_code == 2 and "other settings" in again.output


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"],
    # on a machine without GPUs, `--cpu --num_processes 2` starts one process; --multi_gpu starts two on gloo
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port"],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_under_torchrun(demo_build, tmp_path, launcher):
    """The same entry point under `accelerate launch` and torchrun: two CPU processes on gloo."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = str(29500 + (os.getpid() + len(launcher)) % 1000)
    done = subprocess.run([sys.executable, *LAUNCHERS[launcher], port, "-m", "radcorpora", "train", str(demo_build),
                           "--model", "tiny", "--out", str(out), "--preset", "tiny-lora", "--max-steps", "3"],
                          check=False, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "train_result.json").read_text())
    assert result["processes"] == 2 and result["steps"] == 3
    assert result["examples_seen"] == 3 * 8 * 2  # each process its own share of every step
    assert math.isfinite(result["last_loss"])
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in logged] == [3]  # tiny-lora logs every 10 steps and the last; one writer
    assert (done.stdout + done.stderr).count("trained: 3 steps") == 1
    assert (out / "adapter/adapter_model.safetensors").exists() and not list(out.glob("*.partial"))


def test_check_settings_go_over_the_preset():
    from radcorpora.reference_models.check import CheckConfig, sft_config

    plain = sft_config(CheckConfig(), RECIPE)
    assert plain == sft.PRESETS["tiny-check"].model_copy(update={"seed": 0})  # the tiny model's preset, untouched
    over = sft_config(CheckConfig(max_steps=40, method="lora", bf16=True, gradient_checkpointing=True,
                                  report_to="wandb", seed=3), RECIPE)
    assert (over.max_steps, over.method, over.bf16, over.gradient_checkpointing, over.report_to, over.seed) == \
        (40, "lora", True, True, "wandb", 3)
    assert over.learning_rate == sft.PRESETS["tiny-check"].learning_rate
    assert sft_config(CheckConfig(model="hf:/x"), RECIPE) == sft.PRESETS[RECIPE.preset].model_copy(update={"seed": 0})
