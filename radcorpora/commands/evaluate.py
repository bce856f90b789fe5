"""`radcorpora evaluate`: score a trained model, or a served one, with the corpus' own benchmark."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from radcorpora.commands.options import APPROVE, CACHE, CONCURRENCY
from radcorpora.commands.reference import _judge, _model_errors, _recipe, train_stack
from radcorpora.commands.ui import USER_ERRORS, fail, say
from radcorpora.store.folder import BuildFolderError

ENDPOINT_APPROVAL = "endpoint"  # --approve-credentialed endpoint: credentialed rows may go to --endpoint


def evaluate_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    adapter: Path | None = typer.Option(None, "--adapter", help="A `radcorpora train` output folder, or a peft adapter "
                                                                "folder (the model is loaded here)"),
    endpoint: str | None = typer.Option(None, "--endpoint", help="Base URL of an OpenAI-compatible server to evaluate "
                                                                 "instead of --adapter, e.g. http://localhost:8000/v1 "
                                                                 "(vLLM: `vllm serve MODEL`); needs --served-model. The "
                                                                 "prompts are the in-process ones, images sent as base64 "
                                                                 "PNG data URLs; API key from OPENAI_API_KEY (or none)"),
    served_model: str | None = typer.Option(None, "--served-model", help="Model name the --endpoint serves"),
    variant: str | None = typer.Option(None, "--variant", help="Which of the corpus' renderings to ask with (e.g. "
                                                               "mmrad-ivl: crops, no-crops, text-only; default: the "
                                                               "image model's, or text-only for a text-only run)"),
    config: str | None = typer.Option(None, "--config", help="Held-out config (default: the corpus' evaluation config)"),
    split: str | None = typer.Option(None, "--split", help="Split to evaluate (default: the corpus' held-out split, "
                                                           "e.g. test)"),
    judge: str | None = typer.Option(None, "--judge", help="PROVIDER:MODEL of an LLM judge (open answers, criteria, "
                                                            "conversation scores)"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate the first N rows only"),
    out: Path | None = typer.Option(None, "--out", help="Where metrics.json and predictions.jsonl go (default: --adapter; "
                                                        "required with --endpoint)"),
    cache: Path | None = CACHE,
    concurrency: int = CONCURRENCY,
    approve_credentialed: list[str] = APPROVE,
) -> None:
    """Evaluate a trained model (--adapter) or a served one (--endpoint URL --served-model NAME) with
    the corpus' own metrics; per-sample predictions next to them. With --endpoint, credentialed rows
    are sent only with `--approve-credentialed endpoint`."""
    if (adapter is None) == (endpoint is None):
        fail(BuildFolderError("give either --adapter FOLDER or --endpoint URL --served-model NAME"))
    if endpoint is not None and (not served_model or out is None):
        fail(BuildFolderError("--endpoint needs --served-model NAME (the model the server serves) and --out DIR"))
    if adapter is not None:
        train_stack()
    from radcorpora.reference_models.data import evaluation_rows
    from radcorpora.reference_models.endpoint import EndpointError, EndpointGenerator
    from radcorpora.reference_models.evaluate import InProcessGenerator, evaluate
    from radcorpora.store.atomic import write_json, write_jsonl
    from radcorpora.store.folder import read_manifest

    errors = (*USER_ERRORS, EndpointError) if endpoint is not None else (*_model_errors(), EndpointError)
    text_only, trained = False, None
    try:
        recipe = _recipe(build_dir)
        if config is not None and not recipe.scores(config):
            raise BuildFolderError(f"--config {config}: the corpus' metrics score `{recipe.eval_config}` rows only; "
                                   f"evaluate that config (any split with --split), or export `{config}` for your own "
                                   "evaluation")
        rows = evaluation_rows(build_dir, recipe, config, limit, split)
        if endpoint is not None:
            _credentialed_refusal(rows, approve_credentialed, endpoint, read_manifest(build_dir))
            generator = EndpointGenerator(endpoint, served_model or "", concurrency=concurrency)
            target = out
        else:
            from radcorpora.reference_models.sft import load_trained

            model, processor, trained = load_trained(adapter)
            text_only = bool(trained and trained.text_only)
            generator = InProcessGenerator(model, processor)
            target = out or (adapter if (adapter / "train_result.json").exists() else adapter.parent)
        try:
            chosen = recipe.chosen_variant(variant or (trained.variant if trained else None), text_only)
        except KeyError as exc:
            raise BuildFolderError(f"--variant: {exc.args[0]}") from None
        metrics, samples = evaluate(recipe, generator, rows, manifest=read_manifest(build_dir), variant=chosen,
                                    text_only=True if text_only else None,
                                    judge=_judge(judge, cache, concurrency,
                                                 [a for a in approve_credentialed or [] if a != ENDPOINT_APPROVAL]))
    except errors as exc:
        fail(exc)
    write_json(target / "metrics.json", metrics)
    write_jsonl(target / "predictions.jsonl", samples)
    primary = recipe.primary(metrics)
    withheld = text_only or not chosen.images
    say(f"{build_dir.name} ({chosen.name}, {generator.name}): {primary} {metrics[primary]} on {len(samples)} samples"
        f"{' (images withheld: text-only model)' if withheld else ''}; metrics and predictions in {target}")
    Console().print_json(data=metrics)


def _credentialed_refusal(rows, approved: list[str], endpoint: str, manifest: dict | None = None) -> None:
    """Credentialed rows (MIMIC and the like) leave this machine only when the user said so: a row
    whose lineage says so, or any row of a build whose manifest says so."""
    if ENDPOINT_APPROVAL in (approved or []):
        return
    names = getattr(rows, "column_names", None)
    lineage = rows["lineage"] if names and "lineage" in names else [r.get("lineage") for r in rows]
    if (manifest or {}).get("licence_class") == "credentialed" or any(
            (entry or {}).get("licence_class") == "credentialed" for entry in lineage):
        raise BuildFolderError(f"these rows are credentialed (data-use agreement): sending them to {endpoint} needs "
                               f"--approve-credentialed {ENDPOINT_APPROVAL}")
