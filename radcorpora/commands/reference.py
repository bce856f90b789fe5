"""`radcorpora train / evaluate / check`: reference models on a build (needs the [train] extra)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from radcorpora.commands.options import (
    APPROVE,
    CACHE,
    CONCURRENCY,
)
from radcorpora.commands.ui import USER_ERRORS, console, fail, say
from radcorpora.registry import spec_of_build
from radcorpora.store.folder import BuildFolderError

TRAIN_MISSING = ("the reference-model commands need the training stack: "
                 "pip install torch==2.13.0 'radcorpora[train]' (or a CUDA torch on a GPU machine)")


def train_stack() -> None:
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers
    except ImportError as exc:
        fail(RuntimeError(f"{TRAIN_MISSING} ({exc})"))
    # our own progress lines say where training is; transformers' bars for every save and load of
    # the checkpoints in between would bury them
    transformers.utils.logging.disable_progress_bar()


def _model_errors() -> tuple[type[Exception], ...]:
    from radcorpora.reference_models.models import ModelSpecError
    from radcorpora.reference_models.sft import TrainingError

    return (*USER_ERRORS, ModelSpecError, TrainingError)


def _judge(spec: str | None, cache: Path | None, concurrency: int, approve_credentialed: list[str] | None = None):
    if spec is None:
        return None
    from radcorpora.llm.limits import RunnerLimits
    from radcorpora.llm.session import LLMSession, LLMSettings
    from radcorpora.reference_models.judge import Judge

    return Judge(spec, LLMSession(LLMSettings(limits=RunnerLimits(concurrency=concurrency),
                                              cache_path=str(cache) if cache else None,
                                              approve_credentialed=list(approve_credentialed or []))))


def _recipe(build_dir: Path):

    spec = spec_of_build(build_dir)
    if spec.evaluation is None:
        raise BuildFolderError(f"{build_dir}: corpus {spec.name!r} has no reference-model recipe")
    return spec.evaluation


def _loss_intent(build_dir: Path, config: str) -> str:
    """The trained config's loss intent, as the corpus declares it (and the exports carry it)."""

    spec = spec_of_build(build_dir)
    loss = spec.config(config).loss if config in spec.records else "all_assistant"
    if loss == "none":
        raise BuildFolderError(f"{build_dir}: config {config!r} is evaluation-only (loss intent 'none'); train on another")
    return loss


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


def evaluate_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    adapter: Path = typer.Option(..., "--adapter", help="A `radcorpora train` output folder, or a peft adapter folder"),
    config: str | None = typer.Option(None, "--config", help="Held-out config (default: the corpus' evaluation config)"),
    judge: str | None = typer.Option(None, "--judge", help="PROVIDER:MODEL of an LLM judge (open answers, criteria, "
                                                            "conversation scores)"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate the first N rows only"),
    out: Path | None = typer.Option(None, "--out", help="Where metrics.json and predictions.jsonl go (default: --adapter)"),
    cache: Path | None = CACHE,
    concurrency: int = CONCURRENCY,
    approve_credentialed: list[str] = APPROVE,
) -> None:
    """Evaluate a trained model with the corpus' own metrics; per-sample predictions next to them."""
    train_stack()
    from radcorpora.reference_models.data import evaluation_rows
    from radcorpora.reference_models.evaluate import EVALUATORS
    from radcorpora.reference_models.sft import load_trained
    from radcorpora.store.atomic import write_json, write_jsonl
    from radcorpora.store.folder import read_manifest

    try:
        recipe = _recipe(build_dir)
        rows = evaluation_rows(build_dir, recipe, config, limit)
        model, processor, trained = load_trained(adapter)
        text_only = bool(trained and trained.text_only)
        render = recipe.prompt_renderer(read_manifest(build_dir)) if recipe.prompt_renderer else None
        evaluator = EVALUATORS[recipe.evaluator]
        metrics, samples = evaluator.run(model, processor, rows, text_only=text_only,
                                         judge=_judge(judge, cache, concurrency, approve_credentialed), render=render)
    except _model_errors() as exc:
        fail(exc)
    target = out or (adapter if (adapter / "train_result.json").exists() else adapter.parent)
    write_json(target / "metrics.json", metrics)
    write_jsonl(target / "predictions.jsonl", samples)
    primary = evaluator.primary(metrics)
    say(f"{recipe.evaluator}: {primary} {metrics[primary]} on {len(samples)} rows"
        f"{' (images withheld: text-only model)' if text_only else ''}; metrics and predictions in {target}")
    Console().print_json(data=metrics)


def check_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    model: str = typer.Option("tiny", "--model", help="tiny, or hf:<local checkpoint path>"),
    margin: float = typer.Option(5.0, "--margin", help="Points the image model must beat the text-only twin by"),
    preset: str | None = typer.Option(None, "--preset", help="Training preset (default: tiny-check for tiny)"),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Stop after this many optimiser steps"),
    eval_limit: int | None = typer.Option(None, "--eval-limit", min=1, help="Evaluate the first N held-out rows only"),
    judge: str | None = typer.Option(None, "--judge", help="PROVIDER:MODEL of an LLM judge (also scores conversation "
                                                            "configs, reported next to the check)"),
    cache: Path | None = CACHE,
    seed: int = typer.Option(0, "--seed", help="Seed of both training runs"),
    approve_credentialed: list[str] = APPROVE,
) -> None:
    """Train on the build, and on the build with images withheld; exit 0 only when the image model
    beats its text-only twin by the margin on the held-out config."""
    train_stack()
    if not run_check_command(build_dir, model, margin, preset, max_steps, eval_limit, judge, cache, seed, approve_credentialed):
        raise typer.Exit(1)


def run_check_command(build_dir: Path, model: str, margin: float, preset: str | None = None, max_steps: int | None = None,
               eval_limit: int | None = None, judge: str | None = None, cache: Path | None = None, seed: int = 0,
               approve_credentialed: list[str] | None = None) -> bool:
    from radcorpora.engine.lifecycle import library_versions
    from radcorpora.reference_models.check import CheckConfig, run_check

    try:
        report = run_check(build_dir, CheckConfig(model=model, margin=margin, preset=preset, max_steps=max_steps,
                                                  eval_limit=eval_limit, seed=seed), _recipe(build_dir),
                           judge=_judge(judge, cache, 8, approve_credentialed), log=say, versions=library_versions())
    except _model_errors() as exc:
        fail(exc)
    table = Table(title=f"reference check: {report['corpus']} ({report['metric']})")
    for column in ("", "image model", "text-only twin"):
        table.add_column(column)
    table.add_row(report["metric"], str(report["image"]["score"]), str(report["text_only"]["score"]))
    for cell, value in report["image"]["metrics"].get("by_task_and_type", {}).items():
        table.add_row(cell, str(value), str(report["text_only"]["metrics"]["by_task_and_type"].get(cell, "")))
    for name in report.get("judged_configs", {}):  # LLM-judged configs, beside the check (not part of it)
        scores = [report[v].get("judged_configs", {}).get(name, {}).get("score") for v in ("image", "text_only")]
        table.add_row(f"{name} (judge, 0-100)", *(str(x) for x in scores))
    console.print(table)
    say(f"reference check {'passed' if report['passed'] else 'FAILED'}: gap {report['gap']:+} points "
        f"(margin {report['margin']}), {report['seconds']} s; report in {build_dir / 'build' / 'reference_check.json'}",
        "green" if report["passed"] else "bold red")
    return bool(report["passed"])
