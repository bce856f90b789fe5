"""Fine-tuning on a built corpus through transformers' Trainer: LoRA or QLoRA through peft (or
every weight, for a random-init tiny base), loss on the assistant tokens the corpus' loss intent
marks, gradient accumulation, cosine schedule with warmup, bf16, gradient checkpointing, the
usual trackers (`report_to`) and multi-process runs under `accelerate launch`.

What the Trainer does not give, and this module adds: a deterministic batch plan (every
micro-batch fixed in advance from the seed, so a resumed run sees exactly the batches an
uninterrupted one would, whatever the loader's worker count), alignment steps on the corpus'
captions before its own rows, a run folder that refuses a resume with other settings
(`run_settings.json`), `train_log.jsonl` (one line per logged step) and `train_result.json`.

Examples come from a build's LLaVA-style `conversations` (`human`/`gpt` turns, `<image>`
placeholders) and its image column(s); `collate.collate` turns them into batches. The text-only
twin sees the same conversations with the images withheld: the shortcut test every build is
checked against.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import BaseModel, Field
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from radcorpora.reference_models.collate import TrainingError, collate
from radcorpora.reference_models.models import load_model, load_processor
from radcorpora.store.atomic import write_json, write_text

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",  # language tower
                  "qkv", "attn.proj", "mlp.0", "mlp.2"]  # vision tower and merger
QLORA_INSTALL = "pip install 'bitsandbytes>=0.45' (CUDA only)"


class SFTConfig(BaseModel):
    """A training recipe. Every field is a setting: a run folder refuses a resume with another value.

    Steps: with `max_steps`, the run is `max_steps` optimiser steps in all, alignment included;
    alignment takes `min(alignment_steps, max_steps // 2)` of them (so a shortened run still
    spends at least half its steps on the corpus; `tiny-check`'s 720 keep their 150). Without
    it, `alignment_steps` come first and the corpus gets `epochs` passes after them.
    """

    # "lora": low-rank adapters on a frozen base (real checkpoints). "qlora": the same on a 4-bit
    # base (bitsandbytes, CUDA only). "full": every weight trains; for the random-init tiny model,
    # where adapters over frozen random weights learn from pixels far more slowly (measured: 43% vs
    # 52% on the demo benchmark after the same 700 steps).
    method: Literal["lora", "qlora", "full"] = "lora"
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(TARGET_MODULES))
    modules_to_save: list[str] = Field(default_factory=list)  # e.g. ["lm_head"] where the base is random
    learning_rate: float = 2e-4
    batch_size: int = Field(2, ge=1)  # per process
    grad_accum: int = Field(4, ge=1)
    epochs: float = Field(2.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # optimiser steps in all (alignment included); overrides epochs
    # Optimizer steps at the start drawn from the corpus' alignment data (captions) instead: the
    # LLaVA-style alignment stage, which makes a model ground its answers in the image before it
    # learns question priors (a random-init model otherwise settles on the priors).
    alignment_steps: int = Field(0, ge=0)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = 0.01
    max_length: int = Field(2048, ge=16)
    seed: int = 0
    save_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(1, ge=1)
    log_every: int = Field(10, ge=1)
    bf16: bool | None = None  # None: where a CUDA GPU has it; True: bf16 autocast (CPU too); False: fp32
    gradient_checkpointing: bool = False
    report_to: str = "none"  # TrainingArguments.report_to: none, tensorboard, wandb, ... (comma-separated)
    dpo_beta: float = Field(0.1, gt=0)  # preference training only: DPO's KL strength


class SettingsChanged(TrainingError):
    """The output folder holds a run made with other settings."""


PRESETS: dict[str, SFTConfig] = {
    # RAD-ACE recipe (paper, section 3.2): r 16, alpha 16 on both towers, lr 2e-4, 2 x 4, 2 epochs.
    "rad-ace": SFTConfig(),
    # RadImageNet-VQA: short answers, many questions per image; a lower rate and one epoch.
    "radimagenet-vqa": SFTConfig(learning_rate=1e-4, batch_size=4, grad_accum=4, epochs=1.0, warmup_steps=100,
                                 max_length=1024),
    # RadVLM (paper: full fine-tuning of LLaVA-OneVision 7B, 1 epoch); as LoRA here, lr 1e-4, 1 epoch.
    "radvlm": SFTConfig(learning_rate=1e-4, batch_size=4, grad_accum=4, epochs=1.0, warmup_steps=100, max_length=2048),
    # The tiny random-init model of the build check: the head and both towers learn from scratch.
    "tiny-check": SFTConfig(method="full", learning_rate=2e-3, batch_size=16, grad_accum=1, max_steps=720,
                            alignment_steps=150, warmup_steps=20, weight_decay=0.0, max_length=512, save_every=200),
    # The same tiny model through LoRA adapters, the head and embeddings trainable (the base is random).
    "tiny-lora": SFTConfig(lora_r=16, lora_alpha=32, modules_to_save=["lm_head", "embed_tokens"],
                           learning_rate=3e-3, batch_size=8, grad_accum=1, epochs=3.0, warmup_steps=10,
                           weight_decay=0.0, max_length=512, save_every=100),
    # Preference (DPO) training of a real checkpoint: LoRA, the low rate DPO wants, one epoch.
    "dpo": SFTConfig(learning_rate=5e-6, batch_size=2, grad_accum=4, epochs=1.0, warmup_steps=10, max_length=4096),
    # DPO on the tiny model (a smoke run: every weight, a rate at which a few pairs move it).
    "tiny-dpo": SFTConfig(method="full", learning_rate=1e-3, batch_size=2, grad_accum=1, epochs=1.0, warmup_steps=0,
                          weight_decay=0.0, max_length=1024, save_every=100, log_every=1),
}


class TrainResult(BaseModel):
    out: str
    method: str
    base_model: str
    text_only: bool
    steps: int  # optimiser steps in all, alignment included
    examples_seen: int  # rows (or preference pairs) trained on in all, every process together
    seconds: float  # of the last session (a resumed run counts from its resume)
    first_loss: float | None  # mean loss over the first logged window (`log_every` steps)
    last_loss: float | None  # ... and over the last one
    samples_per_second: float
    tokens_per_second: float
    config: SFTConfig
    alignment_steps: int = 0
    processes: int = 1
    objective: str = "sft"  # "sft" or "dpo"
    variant: str | None = None  # the corpus' rendering of its rows trained on (`evaluate` asks with it by default)


WEIGHTS = {"lora": "adapter", "qlora": "adapter", "full": "model"}  # folder under `out` holding the trained weights
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


# ---- the run folder (shared with preference training) ----

def checkpoints(out: Path) -> list[Path]:
    """Complete Trainer checkpoints, oldest first (the Trainer writes `trainer_state.json` last)."""
    found = [(int(m.group(1)), p) for p in Path(out).glob("checkpoint-*")
             if (m := _CHECKPOINT.match(p.name)) and (p / "trainer_state.json").exists()]
    return [p for _, p in sorted(found)]


def process_state() -> Any:
    """accelerate's view of this process (one, or one of `accelerate launch`'s / torchrun's). On a
    machine without CUDA it must be asked for CPU processes, or it sees a lone one; the Trainer's
    own (`use_cpu`) is then this same shared state."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def open_run(out: Path, settings: dict[str, Any], method: str) -> TrainResult | None:
    """Refuse a folder holding a run with other settings; return a finished run as it is; record
    the settings of a new one. The main process goes first (the others read what it wrote)."""
    state = process_state()
    settings_path = out / "run_settings.json"
    with state.main_process_first():
        out.mkdir(parents=True, exist_ok=True)
        if settings_path.exists():
            if json.loads(settings_path.read_text()) != settings:
                raise SettingsChanged(f"{out}: holds a run with other settings ({settings_path}); "
                                      "use a new output folder")
            if (out / "train_result.json").exists() and (out / WEIGHTS[method]).exists():
                return TrainResult.model_validate_json((out / "train_result.json").read_text())
        elif state.is_main_process:
            write_json(settings_path, settings)
    return None


def resume_point(out: Path, log: Callable[[str], None] | None) -> Path | None:
    """The last complete checkpoint, if any; the training log is cut back to it (the steps after
    it are trained, and logged, again)."""
    found = checkpoints(out)
    resume = found[-1] if found else None
    log_path = out / "train_log.jsonl"
    state = process_state()
    if state.is_main_process and log_path.exists():
        done = int(resume.name.split("-")[1]) if resume else 0
        kept = [line for line in log_path.read_text().splitlines() if line and json.loads(line)["step"] <= done]
        write_text(log_path, "".join(line + "\n" for line in kept))
    state.wait_for_everyone()
    if resume is not None and log and state.is_main_process:
        log(f"resuming from {resume.name}")
    return resume


class RunLog(TrainerCallback):
    """`train_log.jsonl` (step, loss, lr, seconds) at every logged step and at the last one, a
    progress line through `log`; no checkpoint at the last step (the weights are saved instead)."""

    def __init__(self, path: Path, log: Callable[[str], None] | None):
        self.path, self.log, self.started = path, log, time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
            control.should_save = False
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:  # (the run's summary: "train_loss")
            return
        line = {"step": state.global_step, "loss": round(float(logs["loss"]), 5),
                "lr": logs.get("learning_rate"), "seconds": round(time.time() - self.started, 2)}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(line) + "\n")
        if self.log:
            self.log(f"step {state.global_step}/{state.max_steps} loss {float(logs['loss']):.4f}")


def mixed_precision(config: SFTConfig) -> bool:
    """Whether to train under bf16 autocast; refuses what the hardware cannot do."""
    cuda = torch.cuda.is_available()
    if config.method == "qlora":
        if not cuda:
            raise TrainingError("--qlora needs a CUDA GPU (bitsandbytes 4-bit); on this machine use --lora or --full")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise TrainingError(f"--qlora needs bitsandbytes: {QLORA_INSTALL} ({exc})") from None
    if config.bf16 is None:
        return cuda and torch.cuda.is_bf16_supported()
    if config.bf16 and cuda and not torch.cuda.is_bf16_supported():
        raise TrainingError(f"--bf16: this GPU ({torch.cuda.get_device_name()}) has no bf16; use --no-bf16")
    return config.bf16


def trainer_arguments(config: SFTConfig, out: Path, total_steps: int, bf16: bool,
                      unused_parameters: bool | None = None) -> dict[str, Any]:
    """TrainingArguments of a run, common to SFT and DPO. `unused_parameters`: whether DDP must
    look for parameters without gradients (a text-only run leaves the vision tower unused)."""
    return dict(
        output_dir=str(out), max_steps=total_steps, gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate, weight_decay=config.weight_decay, lr_scheduler_type="cosine",
        warmup_steps=min(config.warmup_steps, total_steps // 2), max_grad_norm=1.0, optim="adamw_torch",
        logging_strategy="steps", logging_steps=config.log_every, logging_nan_inf_filter=False,
        save_strategy="steps", save_steps=config.save_every, save_total_limit=config.keep_checkpoints,
        seed=config.seed, data_seed=config.seed, bf16=bf16, use_cpu=not torch.cuda.is_available(),
        **_checkpointing(config.gradient_checkpointing),
        report_to=[r.strip() for r in config.report_to.split(",") if r.strip()] or "none",
        disable_tqdm=True, include_num_input_tokens_seen="non_padding", ddp_find_unused_parameters=unused_parameters,
        save_only_model=False, label_names=["labels"],
    )


def _checkpointing(enabled: bool) -> dict[str, Any]:
    """Activation (gradient) checkpointing, under the argument name this transformers uses."""
    if not enabled:
        return {}
    name = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
            else "gradient_checkpointing")
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}}


def save_weights(trainer: Trainer, processor: Any, folder: Path, with_processor: bool) -> None:
    """The trained weights (adapter or model), put in place atomically: a killed run never leaves
    half of them. Every process takes part (FSDP gathers the shards); the main one writes."""
    state = process_state()
    tmp = folder.with_name(folder.name + ".partial")
    if state.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    state.wait_for_everyone()
    trainer.save_model(str(tmp))
    state.wait_for_everyone()
    if state.is_main_process:
        if with_processor:
            processor.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
    state.wait_for_everyone()


def losses(trainer: Trainer) -> tuple[float | None, float | None]:
    """First and last logged loss of the whole run (the log history survives a resume)."""
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return (logged[0], logged[-1]) if logged else (None, None)


def finish_run(out: Path, result: TrainResult) -> TrainResult:
    state = process_state()
    if state.is_main_process:
        write_text(out / "train_result.json", result.model_dump_json(indent=2))
        for old in checkpoints(out) + list(out.glob("checkpoint-*")):
            shutil.rmtree(old, ignore_errors=True)
    state.wait_for_everyone()
    return result


def load_base(model_path: Path, config: SFTConfig, bf16: bool = False) -> tuple[Any, Any]:
    """(base model, processor): the frozen base of a LoRA run in bf16 under bf16 (half the memory;
    the trainable weights stay fp32, see `fp32_trainable`), a 4-bit base for QLoRA, prepared for
    k-bit training; fp32 otherwise."""
    if config.method == "lora":
        return load_model(model_path, torch.bfloat16 if bf16 else None)
    if config.method != "qlora":
        return load_model(model_path)
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=compute)
    model = AutoModelForImageTextToText.from_pretrained(model_path, quantization_config=quantization, dtype=compute,
                                                        device_map={"": process_state().local_process_index})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    return model, load_processor(model_path)


def fp32_trainable(model: Any) -> Any:
    """Trainable weights in fp32 over a bf16 base (peft upcasts the adapters, not the
    `modules_to_save` copies): the optimiser never steps bf16 weights."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return model


def lora_config(config: SFTConfig) -> LoraConfig:
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.target_modules, modules_to_save=config.modules_to_save or None)


# ---- supervised fine-tuning ----

def full_model(model_path: Path, resume: Path | None) -> Any:
    """A whole model to train: the base, or the checkpoint it resumes from."""
    if full_weights_in(resume):
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(resume, dtype=torch.float32)
    else:
        model = load_model(model_path)[0]
    return model.requires_grad_(True)


def full_weights_in(checkpoint: Path | None) -> bool:
    """Whether a checkpoint holds a whole model that `from_pretrained` reads (the Trainer's own
    loader reads a VLM's saved keys under the wrong names: transformers 5's renamed modules)."""
    return checkpoint is not None and (checkpoint / "config.json").exists() and any(checkpoint.glob("*.safetensors"))


def _trainable(model_path: Path, config: SFTConfig, resume: Path | None, bf16: bool) -> tuple[Any, Any]:
    """The model to train: a LoRA model is built the same way on a fresh start and on a resume
    (the Trainer then loads the checkpoint's adapter into it); a full one is read from the
    checkpoint it resumes from."""
    torch.manual_seed(config.seed)
    if config.method == "full":
        return full_model(model_path, resume), load_processor(model_path)
    model, processor = load_base(model_path, config, bf16)
    model = fp32_trainable(get_peft_model(model, lora_config(config)))
    if config.gradient_checkpointing:
        model.enable_input_require_grads()
    return model, processor


def _run_settings(model_path: Path, config: SFTConfig, text_only: bool, examples: int,
                  alignment_examples: int, loss: str, processes: int, variant: str | None = None) -> dict[str, Any]:
    settings = {"base_model": str(Path(model_path).resolve()), "text_only": text_only, "examples": examples,
                "alignment_examples": alignment_examples, "config": config.model_dump(mode="json"),
                "processes": processes}
    if variant is not None:  # absent when not given: a run folder made before it resumes as it was
        settings["variant"] = variant
    return settings if loss == "all_assistant" else {**settings, "loss": loss}


def step_split(config: SFTConfig, examples: int, alignment_examples: int, processes: int = 1) -> tuple[int, int]:
    """(alignment steps, corpus steps) of a run; see SFTConfig for the rule."""
    alignment = config.alignment_steps if alignment_examples else 0
    if config.max_steps:
        alignment = min(alignment, config.max_steps // 2)
        return alignment, config.max_steps - alignment
    per_epoch = math.ceil(examples / (config.batch_size * config.grad_accum * processes))
    return alignment, max(1, math.ceil(per_epoch * config.epochs))


def _plan(config: SFTConfig, sizes: tuple[int, int], steps: tuple[int, int], processes: int = 1
          ) -> list[list[tuple[int, int]]]:
    """Micro-batches of (source, index): source 1 (alignment rows) for the first `steps[0]`
    optimiser steps, source 0 (training rows) for the `steps[1]` after; seeded shuffles, so a
    resumed run sees exactly the batches an uninterrupted one would. Each optimiser step takes
    `grad_accum x processes` micro-batches in a row (accelerate deals them out round-robin)."""
    rng = random.Random(config.seed)
    plan: list[list[tuple[int, int]]] = []
    for source, source_steps in ((1, steps[0]), (0, steps[1])):
        micro_batches = source_steps * config.grad_accum * processes
        start = len(plan)
        while sizes[source] and len(plan) - start < micro_batches:
            epoch = [(source, i) for i in range(sizes[source])]
            rng.shuffle(epoch)
            plan += [epoch[i:i + config.batch_size] for i in range(0, len(epoch), config.batch_size)]
        del plan[start + micro_batches:]
    return plan


class _PlannedBatches(torch.utils.data.Dataset):
    """Item i: micro-batch i of the plan (its rows and the loss intent they train under)."""

    def __init__(self, plan: list[list[tuple[int, int]]], sources: tuple[Sequence[dict[str, Any]], ...],
                 losses: tuple[str, str]):
        self.plan, self.sources, self.losses = plan, sources, losses

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> dict[str, Any]:
        micro = self.plan[i]
        source = micro[0][0]
        return {"rows": [self.sources[source][j] for _, j in micro], "loss": self.losses[source]}


@dataclass
class _Collator:
    processor: Any
    text_only: bool
    max_length: int

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        (item,) = items
        return collate(self.processor, item["rows"], self.text_only, self.max_length, item["loss"])


class RunTrainer:
    """Trainer mixin (SFT and DPO): skip the Trainer's own weight loading on resume where the model
    was already read from that checkpoint (`full_weights_in`; optimiser, schedule and RNG still
    come from it), and count no FLOPs (transformers walks every parameter on every micro-batch for
    a figure nobody here reads: about 2 ms a step, a tenth of a tiny-model step)."""

    loaded_from: Path | None = None

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if self.loaded_from is None or Path(resume_from_checkpoint) != self.loaded_from:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        return 0


class _PlanTrainer(RunTrainer, Trainer):
    """Trainer over the batch plan, in order: one planned micro-batch per loader item."""

    def __init__(self, *args: Any, workers: int = 0, loaded_from: Path | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.workers, self.loaded_from = workers, loaded_from

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        loader = torch.utils.data.DataLoader(self.train_dataset, batch_size=1, shuffle=False,
                                             collate_fn=self.data_collator, num_workers=self.workers,
                                             pin_memory=torch.cuda.is_available())
        return self.accelerator.prepare(loader)


def train(model_path: Path, rows: Sequence[dict[str, Any]], out: Path, config: SFTConfig,
          text_only: bool = False, log: Callable[[str], None] | None = None,
          alignment_rows: Sequence[dict[str, Any]] | None = None, loss: str = "all_assistant",
          workers: int = 0, variant: str | None = None) -> TrainResult:
    """Fine-tune the checkpoint at `model_path` on `rows` (after the alignment steps on
    `alignment_rows`, when given; those train every assistant turn, `rows` their `loss` intent);
    weights saved to `out/adapter` (LoRA) or `out/model` (full). A run killed after a checkpoint
    resumes from it when started again with the same `out` and settings; a finished run is
    returned as it is. `workers`: data-loader processes (not a setting: results do not depend on
    it). `variant`: the name of the corpus' rendering `rows` come in, recorded with the run. Under
    `accelerate launch` every process calls this; each trains its share of each step."""
    out = Path(out)
    if not len(rows):
        raise TrainingError("no training examples")
    processes = process_state().num_processes
    alignment_rows = alignment_rows if alignment_rows is not None and config.alignment_steps else []
    bf16 = mixed_precision(config)
    settings = _run_settings(model_path, config, text_only, len(rows), len(alignment_rows), loss, processes, variant)
    finished = open_run(out, settings, config.method)
    if finished is not None:
        return finished
    resume = resume_point(out, log)
    steps = step_split(config, len(rows), len(alignment_rows), processes)
    plan = _plan(config, (len(rows), len(alignment_rows)), steps, processes)
    total_steps = len(plan) // (config.grad_accum * processes)
    model, processor = _trainable(model_path, config, resume, bf16)
    loaded_from = resume if config.method == "full" and full_weights_in(resume) else None
    try:
        arguments = TrainingArguments(per_device_train_batch_size=1, remove_unused_columns=False,
                                      **trainer_arguments(config, out, total_steps, bf16, True if text_only else None))
        trainer = _PlanTrainer(model=model, args=arguments, data_collator=_Collator(processor, text_only, config.max_length),
                               train_dataset=_PlannedBatches(plan, (rows, alignment_rows), (loss, "all_assistant")),
                               callbacks=[RunLog(out / "train_log.jsonl", log)], workers=workers,
                               loaded_from=loaded_from)
        trainer.remove_callback(PrinterCallback)  # our log lines instead of its dicts
    except (ValueError, ImportError, RuntimeError) as exc:  # e.g. an unknown or uninstalled --report-to
        raise TrainingError(f"cannot set up training: {exc}") from None
    seconds, step, done_before, tokens_now = run_and_save(trainer, processor, out, config.method, resume)
    micro = config.grad_accum * processes
    seen = sum(len(m) for m in plan[:step * micro])
    seen_now = seen - sum(len(m) for m in plan[:done_before * micro])
    first_loss, last_loss = losses(trainer)
    result = TrainResult(out=str(out), method=config.method, base_model=settings["base_model"], text_only=text_only,
                         steps=step, examples_seen=seen, seconds=round(seconds, 2), first_loss=first_loss,
                         last_loss=last_loss, samples_per_second=round(seen_now / seconds, 2) if seconds else 0.0,
                         tokens_per_second=round(tokens_now / seconds, 1) if seconds else 0.0, config=config,
                         alignment_steps=steps[0], processes=processes, variant=variant)
    return finish_run(out, result)


def run_and_save(trainer: Any, processor: Any, out: Path, method: str, resume: Path | None
                 ) -> tuple[float, int, int, int]:
    """Train (from the `resume` checkpoint where given) and save the weights; then this process's
    seconds, the steps in all, the steps done before it, and the input tokens it saw itself (for
    the rates in TrainResult)."""
    started = time.time()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.time() - started
    save_weights(trainer, processor, out / WEIGHTS[method], with_processor=method == "full")
    done_before = int(resume.name.split("-")[1]) if resume else 0
    tokens = trainer.state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    return seconds, trainer.state.global_step, done_before, tokens


def load_trained(folder: Path, dtype: torch.dtype | None = None) -> tuple[Any, Any, TrainResult | None]:
    """(model, processor, how it was trained) from a `train` output folder, or from a bare adapter
    folder (its base is the path peft recorded). A QLoRA adapter goes on the unquantised base."""
    folder = Path(folder)
    for root in (folder, folder.parent):
        if (root / "train_result.json").exists():
            result = TrainResult.model_validate_json((root / "train_result.json").read_text())
            weights = root / WEIGHTS[result.method]
            if result.method == "full":
                model, processor = load_model(weights, dtype)
            else:
                model, processor = load_model(Path(result.base_model), dtype)
                model = PeftModel.from_pretrained(model, weights)
            return model, processor, result
    config_path = folder / "adapter_config.json"
    if not config_path.exists():
        raise TrainingError(f"{folder}: neither a `radcorpora train` output folder nor a peft adapter folder")
    base = json.loads(config_path.read_text()).get("base_model_name_or_path")
    if not base or not Path(base).exists():
        raise TrainingError(f"{config_path}: base model {base!r} is not a folder on this machine")
    model, processor = load_model(Path(base), dtype)
    return PeftModel.from_pretrained(model, folder), processor, None
