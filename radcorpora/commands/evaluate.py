"""`radcorpora evaluate`: score a trained model with the corpus' own metrics."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from radcorpora.commands.options import APPROVE, CACHE, CONCURRENCY
from radcorpora.commands.reference import _judge, _model_errors, _recipe, train_stack
from radcorpora.commands.ui import fail, say


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
