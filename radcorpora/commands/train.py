"""`radcorpora train`: fine-tune a reference model on a build (needs the [train] extra)."""

from __future__ import annotations

from pathlib import Path

import typer

from radcorpora.commands.reference import _loss_intent, _model_errors, _recipe, train_stack
from radcorpora.commands.ui import fail, say


def train_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    model: str = typer.Option(..., "--model", help="tiny, or hf:<local checkpoint path>"),
    out: Path = typer.Option(..., "--out", help="Output folder (weights, training log, checkpoints)"),
    config: str | None = typer.Option(None, "--config", help="Config to train on (default: the corpus' training config)"),
    preset: str | None = typer.Option(None, "--preset", help="rad-ace | radimagenet-vqa | tiny-check | tiny-lora"),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Stop after this many optimiser steps"),
    text_only: bool = typer.Option(False, "--text-only", help="Withhold the images (the shortcut twin)"),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and batch order"),
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
        recipe = _recipe(build_dir)
        settings = sft_config(CheckConfig(model=model, preset=preset, max_steps=max_steps, seed=seed), recipe)
        examples = training_examples(build_dir, recipe, config)
        base = resolve_model(model, out, lambda: training_texts(build_dir, recipe, config), seed=seed)
        say(f"training {model} ({settings.method}) on {len(examples)} examples of {build_dir}"
            f"{' with images withheld' if text_only else ''}")
        result = train(base, examples, out, settings, text_only=text_only, log=say,
                       alignment_rows=alignment_examples(build_dir, recipe),
                       loss=_loss_intent(build_dir, config or recipe.train_config))
    except _model_errors() as exc:
        fail(exc)
    say(f"trained: {result.steps} steps, loss {result.first_loss:.4f} -> {result.last_loss:.4f}, "
        f"{result.samples_per_second} samples/s; weights in {out}", "green")
