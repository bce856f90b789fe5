"""`radcorpora train`: fine-tune a reference model on a build (needs the [train] extra).

Supervised fine-tuning on the build's training config, or preference (DPO) training where that
config's loss intent is "preference" (`radcorpora dpo`'s ct-reasoning-dpo builds), or where the
argument is TRL preference JSONL (a file, or a folder holding preference-train.jsonl, as
`radcorpora export --format trl` writes). Runs under `accelerate launch -m radcorpora train ...`
too (docs/training.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from radcorpora.commands.reference import _loss_intent, _model_errors, _recipe, train_stack
from radcorpora.commands.ui import fail, say
from radcorpora.reference_models.model_families import MODEL_HELP
from radcorpora.registry import spec_of_build
from radcorpora.store.folder import MANIFEST, BuildFolderError

# training settings, shared with `radcorpora check` (a resume with another value is refused)
LORA = typer.Option(None, "--lora/--full", help="LoRA adapters, or every weight (default: the preset's)")
QLORA = typer.Option(False, "--qlora", help="LoRA on a 4-bit base (bitsandbytes; CUDA GPU only)")
BF16 = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast (default: where a CUDA GPU has it; CPU allowed)")
GRADIENT_CHECKPOINTING = typer.Option(False, "--gradient-checkpointing",
                                      help="Recompute activations in the backward pass (less memory, slower)")
REPORT_TO = typer.Option("none", "--report-to", help="Trackers for TrainingArguments.report_to: none, tensorboard, "
                                                     "wandb, mlflow, ... (comma-separated)")


def train_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder (a preference config trains with DPO), or TRL preference "
                                               "JSONL: a file, or a folder with preference-train.jsonl"),
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", help="Output folder (weights, training log, checkpoints)"),
    config: str | None = typer.Option(None, "--config", help="Config to train on (default: the corpus' training config)"),
    preset: str | None = typer.Option(None, "--preset", help="rad-ace | radimagenet-vqa | radvlm | tiny-check | "
                                                             "tiny-lora | dpo | tiny-dpo"),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1,
                                         help="Stop after this many optimiser steps in all (alignment steps included)"),
    text_only: bool = typer.Option(False, "--text-only", help="Withhold the images (the shortcut twin: the corpus' "
                                                             "text-only rendering, as `check` trains it)"),
    variant: str | None = typer.Option(None, "--variant", help="Which of the corpus' renderings to train on (e.g. "
                                                               "mmrad-ivl: crops, no-crops, text-only; default: the "
                                                               "image model's, or the text-only twin's with --text-only)"),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and batch order"),
    lora: bool | None = LORA,
    qlora: bool = QLORA,
    bf16: bool | None = BF16,
    gradient_checkpointing: bool = GRADIENT_CHECKPOINTING,
    report_to: str = REPORT_TO,
    workers: int = typer.Option(0, "--workers", min=0, help="Data-loader processes (results do not depend on it)"),
) -> None:
    """Fine-tune a reference model on a build's training split; resumes from the last checkpoint."""
    train_stack()
    from radcorpora.reference_models.check import CheckConfig, sft_config
    from radcorpora.reference_models.data import (
        alignment_examples,
        training_examples,
        training_texts,
    )
    from radcorpora.reference_models.models import resolve_model
    from radcorpora.reference_models.sft import train

    try:
        check = CheckConfig(model=model, preset=preset, max_steps=max_steps, seed=seed,
                            **training_settings(lora, qlora, bf16, gradient_checkpointing, report_to))
        if variant and not (build_dir / MANIFEST).exists():
            raise BuildFolderError("--variant: preference pairs come in one rendering; give it for a build's SFT configs")
        if not (build_dir / MANIFEST).exists():
            return _train_preference_files(build_dir, check, out, text_only)
        spec = spec_of_build(build_dir)
        trained = config or (spec.evaluation.train_config if spec.evaluation else _preference_config(spec))
        if trained in spec.records and spec.config(trained).loss == "preference":
            if variant:
                raise BuildFolderError(f"--variant: `{trained}` holds preference pairs, which come in one rendering")
            return _train_preference_build(build_dir, trained, check, out, text_only)
        recipe = _recipe(build_dir)
        try:
            chosen = recipe.chosen_variant(variant, text_only)
        except KeyError as exc:
            raise BuildFolderError(f"--variant: {exc.args[0]}") from None
        text_only = text_only or not chosen.images
        settings = sft_config(check, recipe)
        render = spec.config(config).conversation if config in spec.records else None  # --config's own shape
        examples = training_examples(build_dir, recipe, config, variant=chosen, render=render)
        base = _resolve(lambda: resolve_model(model, out, lambda: training_texts(build_dir, recipe, config, render=render),
                                              seed=seed))
        say(f"training {model} ({settings.method}) on {len(examples)} examples of {build_dir} ({chosen.name})"
            f"{' with images withheld' if text_only else ''}")
        intent = _loss_intent(build_dir, trained)  # refuses an evaluation-only config
        result = train(base, examples, out, settings, text_only=text_only, log=say,
                       alignment_rows=alignment_examples(build_dir, recipe),
                       loss=chosen.loss or intent,  # a rendering that cuts the answer into turns says its own
                       workers=workers, variant=recipe.rendering(chosen))
    except _model_errors() as exc:
        fail(exc)
    _done(result, out)


def training_settings(lora: bool | None, qlora: bool, bf16: bool | None, gradient_checkpointing: bool,
                      report_to: str) -> dict:
    """The training flags as CheckConfig fields, refused here (exit 2, one line) where this machine
    cannot run them: --qlora without a CUDA GPU or bitsandbytes, --bf16 on a GPU without bf16."""
    from radcorpora.reference_models.sft import SFTConfig, TrainingError, mixed_precision

    if qlora and lora is False:
        raise TrainingError("--qlora and --full contradict each other (QLoRA trains adapters)")
    method = "qlora" if qlora else None if lora is None else "lora" if lora else "full"
    mixed_precision(SFTConfig(method=method or "lora", bf16=bf16))
    return {"method": method, "bf16": bf16, "gradient_checkpointing": gradient_checkpointing, "report_to": report_to}


def _preference_config(spec) -> str | None:
    """A corpus without a training recipe (ct-reasoning-dpo) trains on its one preference config."""
    found = [c.name for c in spec.configs if c.loss == "preference"]
    return found[0] if len(found) == 1 else None


def _resolve(make):
    """Build or find the base model; under `accelerate launch` the main process builds a tiny one
    first and the others then reuse it."""
    from radcorpora.reference_models.sft import process_state

    with process_state().main_process_first():
        return make()


def _preference_settings(check, name: str):
    from radcorpora.reference_models.check import sft_config

    default = "tiny-dpo" if check.model == "tiny" else "dpo"
    return sft_config(check.model_copy(update={"preset": check.preset or default}), None)


def _train_preference_files(source: Path, check, out: Path, text_only: bool) -> None:
    from radcorpora.reference_models.models import resolve_model
    from radcorpora.reference_models.preference import (
        pair_texts,
        preference_source,
        read_trl_jsonl,
        train_preference,
    )

    path = preference_source(source)
    if path is None:
        raise BuildFolderError(f"{source}: neither a build folder ({MANIFEST}) nor TRL preference JSONL "
                               "(a .jsonl file, or a folder with preference-train.jsonl)")
    pairs = read_trl_jsonl(path, text_only)
    settings = _preference_settings(check, str(path))
    base = _resolve(lambda: resolve_model(check.model, out, lambda: pair_texts(pairs), seed=check.seed))
    say(f"preference training {check.model} ({settings.method}, DPO) on {len(pairs)} pairs of {path}"
        f"{' with images withheld' if text_only else ''}")
    _done(train_preference(base, pairs, out, settings, log=say, text_only=text_only), out)


def _train_preference_build(build_dir: Path, config: str, check, out: Path, text_only: bool) -> None:
    from radcorpora.reference_models.models import resolve_model
    from radcorpora.reference_models.preference import (
        pair_texts,
        read_parquet_pairs,
        train_preference,
    )
    from radcorpora.store.folder import config_shards

    shards = config_shards(build_dir, config).get("train")
    if not shards:
        raise BuildFolderError(f"{build_dir}: no {config}/train shards to train on")
    pairs = read_parquet_pairs(shards, text_only)
    settings = _preference_settings(check, config)
    base = _resolve(lambda: resolve_model(check.model, out, lambda: pair_texts(pairs), seed=check.seed))
    say(f"preference training {check.model} ({settings.method}, DPO) on {len(pairs)} pairs of {build_dir} ({config})"
        f"{' with images withheld' if text_only else ''}")
    _done(train_preference(base, pairs, out, settings, log=say, text_only=text_only), out)


def _done(result, out: Path) -> None:
    from radcorpora.reference_models.sft import process_state

    if not process_state().is_main_process:
        return
    loss = (f"loss {result.first_loss:.4f} -> {result.last_loss:.4f}" if result.first_loss is not None
            and result.last_loss is not None else "no loss logged")
    say(f"trained: {result.steps} steps, {loss}, {result.samples_per_second} samples/s; weights in {out}", "green")
