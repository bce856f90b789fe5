"""`radcorpora check`: a build proven against a trained model and its text-only twin."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from radcorpora.commands.options import APPROVE, CACHE
from radcorpora.commands.reference import _judge, _model_errors, _recipe, train_stack
from radcorpora.commands.train import (
    BF16,
    GRADIENT_CHECKPOINTING,
    LORA,
    QLORA,
    REPORT_TO,
    training_settings,
)
from radcorpora.commands.ui import console, fail, say
from radcorpora.reference_models.model_families import MODEL_HELP


def check_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    model: str = typer.Option("tiny", "--model", help=MODEL_HELP),
    margin: float = typer.Option(5.0, "--margin", help="Points the image model must beat the text-only twin by"),
    preset: str | None = typer.Option(None, "--preset", help="Training preset (default: tiny-check for tiny)"),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Stop after this many optimiser steps"),
    eval_limit: int | None = typer.Option(None, "--eval-limit", min=1, help="Evaluate the first N held-out rows only"),
    judge: str | None = typer.Option(None, "--judge", help="PROVIDER:MODEL of an LLM judge (also scores conversation "
                                                            "configs, reported next to the check)"),
    cache: Path | None = CACHE,
    seed: int = typer.Option(0, "--seed", help="Seed of both training runs"),
    approve_credentialed: list[str] = APPROVE,
    variant: list[str] = typer.Option([], "--variant", help="Train and compare only these of the corpus' variants "
                                                           "(repeat; must hold both sides of its contrast; default: all, "
                                                           "e.g. mmrad-ivl: crops, no-crops, text-only)"),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, help="Cap every generated answer at N "
                                                                                   "tokens (quick runs; default: the "
                                                                                   "corpus' budgets)"),
    lora: bool | None = LORA,
    qlora: bool = QLORA,
    bf16: bool | None = BF16,
    gradient_checkpointing: bool = GRADIENT_CHECKPOINTING,
    report_to: str = REPORT_TO,
) -> None:
    """Train on the build, and on the build with images withheld; exit 0 only when the image model
    beats its text-only twin by the margin on the held-out config."""
    train_stack()
    if not run_check_command(build_dir, model, margin, preset, max_steps, eval_limit, judge, cache, seed, approve_credentialed,
                             variants=variant, max_new_tokens=max_new_tokens,
                             training=(lora, qlora, bf16, gradient_checkpointing, report_to)):
        raise typer.Exit(1)


def run_check_command(build_dir: Path, model: str, margin: float, preset: str | None = None, max_steps: int | None = None,
                      eval_limit: int | None = None, judge: str | None = None, cache: Path | None = None, seed: int = 0,
                      approve_credentialed: list[str] | None = None, variants: list[str] | None = None,
                      max_new_tokens: int | None = None, training: tuple | None = None) -> bool:
    from radcorpora.engine.lifecycle import library_versions
    from radcorpora.reference_models.check import CheckConfig, run_check

    try:
        settings = training_settings(*training) if training else {}  # --lora/--full/--qlora/--bf16/...
        report = run_check(build_dir, CheckConfig(model=model, margin=margin, preset=preset, max_steps=max_steps,
                                                  eval_limit=eval_limit, seed=seed, **settings), _recipe(build_dir),
                           judge=_judge(judge, cache, 8, approve_credentialed), log=say, versions=library_versions(),
                           variants=variants, max_new_tokens=max_new_tokens)
    except _model_errors() as exc:
        fail(exc)
    contrast = report["contrast"]
    names = list(report["variants"])
    table = Table(title=f"reference check: {report['corpus']} ({report['metric']}; {contrast['model']} vs "
                        f"{contrast['baseline']})")
    for column in ("", *names):
        table.add_column(column)
    table.add_row(report["metric"], *(str(report["variants"][n]["score"]) for n in names))
    for cell in report["image"]["metrics"].get("by_task_and_type", {}):
        table.add_row(cell, *(str(report["variants"][n]["metrics"].get("by_task_and_type", {}).get(cell, ""))
                              for n in names))
    for name in report.get("judged_configs", {}):  # LLM-judged configs, beside the check (not part of it)
        scores = [report["variants"][n].get("judged_configs", {}).get(name, {}).get("score") for n in names]
        table.add_row(f"{name} (judge, 0-100)", *(str(x) for x in scores))
    console.print(table)
    say(f"reference check {'passed' if report['passed'] else 'FAILED'}: {contrast['model']} - {contrast['baseline']} "
        f"gap {report['gap']:+} points (margin {report['margin']}), {report['seconds']} s; report in "
        f"{build_dir / 'build' / 'reference_check.json'}", "green" if report["passed"] else "bold red")
    return bool(report["passed"])
