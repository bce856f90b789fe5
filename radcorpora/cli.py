"""`radcorpora` command line: build | estimate | validate | adjudicate | export | train | evaluate | check |
demo | publish."""

from __future__ import annotations

import enum
import os
import shlex
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from radcorpora.builders.engine import BuildStateError
from radcorpora.llm.errors import ComplianceError, LLMError, ProviderConfigError
from radcorpora.llm.verify import AdjudicationError
from radcorpora.prompts.loader import TemplateError
from radcorpora.publish.push import PublishError, plan_push, push_build
from radcorpora.sources.errors import SourceError
from radcorpora.validators import BuildFolderError, ValidationReport, validate_build

app = typer.Typer(help="Build, validate and publish radiology vision-language corpora.", no_args_is_help=True)
build_app = typer.Typer(help="Build a corpus from upstream sources.", no_args_is_help=True)
app.add_typer(build_app, name="build")
estimate_app = typer.Typer(help="Estimate a build's LLM requests, tokens, cost and time (sends nothing).",
                           no_args_is_help=True)
app.add_typer(estimate_app, name="estimate")
adjudicate_app = typer.Typer(help="Human adjudication of verifier disagreements.", no_args_is_help=True)
app.add_typer(adjudicate_app, name="adjudicate")
export_app = typer.Typer(help="Export a build to other published layouts.", no_args_is_help=True)
app.add_typer(export_app, name="export")
console = Console(stderr=True)



class ImageCheckChoice(str, enum.Enum):
    crc = "crc"
    full = "full"


USER_ERRORS = (SourceError, BuildStateError, TemplateError, BuildFolderError, PublishError, ComplianceError,
               ProviderConfigError, LLMError, AdjudicationError)


def _fail(exc: Exception, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
    raise typer.Exit(code)


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def print_report(report: ValidationReport, out: Console) -> None:
    table = Table(title=f"validation: {report.corpus}")
    for column in ("check", "checked", "violations", "first examples"):
        table.add_column(column)
    for check in report.checks:
        style = "green" if check.passed else "red"
        table.add_row(f"[{style}]{check.name}[/]", str(check.checked), str(check.violations),
                      "\n".join(check.examples[:3]))
    out.print(table)
    for warning in report.warnings:
        out.print(f"[yellow]warning:[/] {warning}")
    verdict = "[green]valid[/]" if report.valid else f"[red]INVALID ({report.violations} violations)[/]"
    out.print(f"{verdict}")


@build_app.command("radimagenet-vqa")
def build_radimagenet_vqa_cmd(
    source: Path = typer.Option(..., "--source", help="Folder holding radiology_ai/ and RadiologyAI_*.csv"),
    out: Path = typer.Option(..., "--out", help="Build folder (a Hub dataset repository)"),
    seed: int = typer.Option(0, "--seed"),
    benchmark_images: int = typer.Option(1000, "--benchmark-images", help="Test images in the benchmark (9 questions each)"),
    label_map: Path | None = typer.Option(None, "--label-map", help="YAML/JSON folder-name map (anatomy, pathology, normal)"),
    templates: Path | None = typer.Option(None, "--templates", help="Your own wording file (same slots as the packaged one)"),
    image_check: ImageCheckChoice = typer.Option("crc", "--image-check",
                                                 help="crc: PNG structure and chunk CRCs (fast); full: decode every pixel"),
    workers: int = typer.Option(_default_workers(), "--workers", min=1),
    images_per_shard: int = typer.Option(2000, "--images-per-shard", min=1),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing build in --out first"),
) -> None:
    """RadImageNet CT/MR tree -> alignment, instruct and benchmark configs."""
    from radcorpora.pipelines.radimagenet_vqa import build_radimagenet_vqa

    try:
        outcome = build_radimagenet_vqa(
            source, out, seed=seed, benchmark_images=benchmark_images, label_map=label_map,
            templates=templates, image_check=image_check.value, workers=workers, images_per_shard=images_per_shard, overwrite=overwrite,
            command=shlex.join(["radcorpora", *sys.argv[1:]]), console=console,
        )
    except USER_ERRORS as exc:
        _fail(exc)
    _finish_build(outcome)


def _finish_build(outcome, exit_on_invalid: bool = True) -> bool:
    """Print the outcome; returns whether the build is valid (or exits 1 when it is not)."""
    manifest = outcome.manifest
    if outcome.state == "complete":
        console.print(f"{outcome.out}: build already complete; nothing to do.")
    elif outcome.report is not None:
        print_report(outcome.report, console)
    splits = ", ".join(f"{c}/{s}={n}" for c, ss in manifest.get("splits", {}).items() for s, n in ss.items())
    console.print(f"rows: {splits}; rejected source rows: {manifest.get('rejected_rows', 0)} "
                  f"(see {outcome.out / 'build' / 'rejects.jsonl'})")
    for warning in manifest.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}")
    valid = bool((manifest.get("validation") or {}).get("valid", False))
    if not valid and exit_on_invalid:
        raise typer.Exit(1)
    return valid


def _llm_settings(concurrency: int, rpm: int | None, tpm: int | None, batch: bool, cache: Path | None,
                  prices: Path | None, approve_credentialed: bool, timeout: float, max_attempts: int):
    from radcorpora.llm.limits import RunnerLimits
    from radcorpora.llm.session import LLMSettings

    return LLMSettings(limits=RunnerLimits(concurrency=concurrency, rpm=rpm, tpm=tpm, timeout_s=timeout,
                                           max_attempts=max_attempts),
                       batch=batch, cache_path=str(cache) if cache else None, prices_path=str(prices) if prices else None,
                       approve_credentialed=approve_credentialed)


def _rad_ace_config(seed: int, llm: str, verify: list[str], max_samples: int | None, subset: str,
                    validation_fraction: float, prompt: Path | None, verify_prompt: Path | None):
    from radcorpora.builders.rad_ace_cot import RadAceCotConfig

    return RadAceCotConfig(seed=seed, llm=llm, verifiers=verify, max_samples=max_samples, subset=subset,
                           validation_fraction=validation_fraction,
                           prompt_path=str(prompt) if prompt else None,
                           verify_prompt_path=str(verify_prompt) if verify_prompt else None)


LLM_HELP = "PROVIDER:MODEL: openai:MODEL (OPENAI_BASE_URL for compatible servers), anthropic:MODEL, azure:DEPLOYMENT, offline"


@build_app.command("rad-ace-cot")
def build_rad_ace_cot_cmd(
    source: Path = typer.Option(..., "--source", help="PubMedVision folder (the JSON files and images/)"),
    out: Path = typer.Option(..., "--out", help="Build folder (a Hub dataset repository)"),
    llm: str = typer.Option(..., "--llm", help=LLM_HELP),
    vqa_rad: Path | None = typer.Option(None, "--vqa-rad", help="VQA-RAD (Hub Parquet mirror or OSF release): adds the eval config"),
    verify: list[str] = typer.Option([], "--verify", help="Verifier model PROVIDER:MODEL (repeat for several)"),
    concurrency: int = typer.Option(8, "--concurrency", min=1),
    rpm: int | None = typer.Option(None, "--rpm", min=1, help="Requests per minute limit"),
    tpm: int | None = typer.Option(None, "--tpm", min=1, help="Tokens per minute limit"),
    batch: bool = typer.Option(False, "--batch", help="Use the provider's batch API (cheaper, up to 24 h)"),
    max_samples: int | None = typer.Option(None, "--max-samples", min=1, help="Seeded subset size (the paper used 12,000)"),
    subset: str = typer.Option("alignment", "--subset", help="alignment | instruction (which PubMedVision file)"),
    seed: int = typer.Option(0, "--seed"),
    validation_fraction: float = typer.Option(0.05, "--validation-fraction", min=0.0, max=0.5),
    prompt: Path | None = typer.Option(None, "--prompt", help="Your own generation prompt file"),
    verify_prompt: Path | None = typer.Option(None, "--verify-prompt", help="Your own verification prompt file"),
    cache: Path | None = typer.Option(None, "--cache", help="Answer cache (default ~/.cache/radcorpora/llm-cache.sqlite)"),
    prices: Path | None = typer.Option(None, "--prices", help="YAML price table overriding the packaged one"),
    approve_credentialed: bool = typer.Option(False, "--approve-credentialed",
                                              help="This provider is approved for credentialed (PhysioNet) data"),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds per request"),
    max_attempts: int = typer.Option(5, "--max-attempts", min=1),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """PubMedVision CT/MR -> <think>/<answer> chains of thought (+ VQA-RAD eval config)."""
    from radcorpora.pipelines.rad_ace_cot import build_rad_ace_cot

    try:
        config = _rad_ace_config(seed, llm, verify, max_samples, subset, validation_fraction, prompt, verify_prompt)
        settings = _llm_settings(concurrency, rpm, tpm, batch, cache, prices, approve_credentialed, timeout, max_attempts)
        outcome = build_rad_ace_cot(source, out, config, settings, vqa_rad=vqa_rad, overwrite=overwrite,
                                    command=shlex.join(["radcorpora", *sys.argv[1:]]), log=console.print)
    except USER_ERRORS as exc:
        _fail(exc)
    _finish_build(outcome)


@estimate_app.command("rad-ace-cot")
def estimate_rad_ace_cot_cmd(
    source: Path = typer.Option(..., "--source"),
    llm: str = typer.Option(..., "--llm", help=LLM_HELP),
    verify: list[str] = typer.Option([], "--verify"),
    max_samples: int | None = typer.Option(None, "--max-samples", min=1),
    subset: str = typer.Option("alignment", "--subset"),
    seed: int = typer.Option(0, "--seed"),
    concurrency: int = typer.Option(8, "--concurrency", min=1),
    rpm: int | None = typer.Option(None, "--rpm", min=1),
    tpm: int | None = typer.Option(None, "--tpm", min=1),
    cache: Path | None = typer.Option(None, "--cache"),
    prices: Path | None = typer.Option(None, "--prices"),
    as_json: bool = typer.Option(False, "--json", help="Print the estimate as JSON"),
) -> None:
    """Dry run: requests, tokens, cost online vs batch and time under the limits. Sends nothing."""
    import json

    from radcorpora.builders import rad_ace_cot as rac
    from radcorpora.llm.cache import AnswerCache, default_cache_path
    from radcorpora.llm.estimate import estimate_stage, total
    from radcorpora.llm.providers import endpoint_for, parse_llm_spec
    from radcorpora.llm.usage import load_prices
    from radcorpora.sources.pubmedvision import scan_pubmedvision

    try:
        config = _rad_ace_config(seed, llm, verify, max_samples, subset, 0.05, None, None)
        settings = _llm_settings(concurrency, rpm, tpm, False, cache, prices, False, 600.0, 5)
        scan = scan_pubmedvision(source, config.subset)
        selected, rejects = rac.select_samples(scan, config)
        table = load_prices(prices)
        cache_path = cache or default_cache_path()
        answer_cache = AnswerCache(cache_path) if cache_path.exists() else None
        stages = []
        for spec, requests in rac.estimate_requests(selected, config).items():
            stage = "cot" if spec == config.llm else "verify"
            stages.append(estimate_stage(spec, requests, rac.EXPECTED_OUTPUT_TOKENS[stage], table, settings.limits,
                                         answer_cache, endpoint_for(parse_llm_spec(spec)[0])))
    except (*USER_ERRORS, ValueError) as exc:
        _fail(exc)
    result = {"corpus": "rad-ace-cot", "samples": len(selected), "rejected_rows": len(scan.rejects) + len(rejects),
              "stages": stages, "total": total(stages), "prices_as_of": table.as_of}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    out = Console()
    table_view = Table(title=f"rad-ace-cot estimate: {len(selected)} samples")
    for column in ("llm", "requests", "already_cached", "estimated_input_tokens", "estimated_output_tokens",
                   "cost_usd_online", "cost_usd_batch", "minutes_online", "limited_by"):
        table_view.add_column(column.replace("_", " "))
    for stage in stages:
        table_view.add_row(*(str(stage[c]) for c in ("llm", "requests", "already_cached", "estimated_input_tokens",
                                                      "estimated_output_tokens", "cost_usd_online", "cost_usd_batch",
                                                      "minutes_online", "limited_by")))
    out.print(table_view)
    out.print(f"total: {result['total']}")


@adjudicate_app.command("apply")
def adjudicate_apply_cmd(
    build_dir: Path = typer.Argument(..., help="A rad-ace-cot build folder"),
    decisions_file: Path = typer.Argument(..., help="The queue file with `decision` filled in, or id,decision lines"),
) -> None:
    """Fold a person's accept/reject decisions on queued samples back into the build."""
    from radcorpora.pipelines.rad_ace_cot import apply_adjudication

    try:
        outcome = apply_adjudication(build_dir, decisions_file, log=console.print)
    except USER_ERRORS as exc:
        _fail(exc)
    _finish_build(outcome)


@export_app.command("rad-ace-csv")
def export_rad_ace_csv_cmd(
    build_dir: Path = typer.Argument(...),
    out: Path = typer.Option(..., "--out", help="CSV file to write"),
) -> None:
    """The public RAD-ACE CSV columns: filename (list), modality, cot_output, question."""
    from radcorpora.publish.rad_ace_csv import export_rad_ace_csv

    try:
        rows = export_rad_ace_csv(build_dir, out)
    except (*USER_ERRORS, ValueError) as exc:
        _fail(exc)
    console.print(f"{rows} rows written to {out}")


@app.command("validate")
def validate_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    image_check: ImageCheckChoice = typer.Option("full", "--image-check", help="full: decode every pixel; crc: PNG chunk CRCs"),
) -> None:
    """Check every record and the corpus rules; exit 0 only when valid."""
    try:
        report = validate_build(build_dir, image_check=image_check.value)
    except USER_ERRORS as exc:
        _fail(exc)
    print_report(report, Console())
    raise typer.Exit(0 if report.valid else 1)


TRAIN_MISSING = ("the reference-model commands need the training stack: "
                 "pip install torch==2.13.0 'radcorpora[train]' (or a CUDA torch on a GPU machine)")


def _train_stack() -> None:
    try:
        import peft
        import torch
        import transformers
    except ImportError as exc:
        _fail(RuntimeError(f"{TRAIN_MISSING} ({exc})"))


def _model_errors() -> tuple[type[Exception], ...]:
    from radcorpora.reference_models.models import ModelSpecError
    from radcorpora.reference_models.sft import TrainingError

    return (*USER_ERRORS, ModelSpecError, TrainingError)


def _judge(spec: str | None, cache: Path | None, concurrency: int):
    if spec is None:
        return None
    from radcorpora.llm.limits import RunnerLimits
    from radcorpora.llm.session import LLMSession, LLMSettings
    from radcorpora.reference_models.judge import Judge

    return Judge(spec, LLMSession(LLMSettings(limits=RunnerLimits(concurrency=concurrency),
                                              cache_path=str(cache) if cache else None)))


@app.command("train")
def train_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    model: str = typer.Option(..., "--model", help="tiny, or hf:<local checkpoint path>"),
    out: Path = typer.Option(..., "--out", help="Output folder (weights, training log, checkpoints)"),
    config: str | None = typer.Option(None, "--config", help="Config to train on (default: the corpus' training config)"),
    preset: str | None = typer.Option(None, "--preset", help="rad-ace | radimagenet-vqa | tiny-check | tiny-lora"),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1),
    text_only: bool = typer.Option(False, "--text-only", help="Withhold the images (the shortcut twin)"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Fine-tune a reference model on a build's training split; resumes from the last checkpoint."""
    _train_stack()
    from radcorpora.reference_models.check import CheckConfig, sft_config
    from radcorpora.reference_models.data import (
        alignment_examples,
        corpus_of,
        training_examples,
        training_texts,
    )
    from radcorpora.reference_models.models import resolve_model
    from radcorpora.reference_models.sft import train

    try:
        corpus = corpus_of(build_dir)
        settings = sft_config(CheckConfig(model=model, preset=preset, max_steps=max_steps, seed=seed), corpus)
        examples = training_examples(build_dir, config)
        base = resolve_model(model, out, lambda: training_texts(build_dir, config), seed=seed)
        console.print(f"training {model} ({settings.method}) on {len(examples)} examples of {build_dir}"
                      f"{' with images withheld' if text_only else ''}")
        result = train(base, examples, out, settings, text_only=text_only, log=console.print,
                       alignment_rows=alignment_examples(build_dir))
    except _model_errors() as exc:
        _fail(exc)
    console.print(f"[green]trained:[/] {result.steps} steps, loss {result.first_loss:.4f} -> {result.last_loss:.4f}, "
                  f"{result.samples_per_second} samples/s; weights in {out}")


@app.command("evaluate")
def evaluate_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    adapter: Path = typer.Option(..., "--adapter", help="A `radcorpora train` output folder, or a peft adapter folder"),
    config: str | None = typer.Option(None, "--config", help="Held-out config (default: the corpus' evaluation config)"),
    judge: str | None = typer.Option(None, "--judge", help="PROVIDER:MODEL of an LLM judge (open answers / criteria)"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate the first N rows only"),
    out: Path | None = typer.Option(None, "--out", help="Where metrics.json and predictions.jsonl go (default: --adapter)"),
    cache: Path | None = typer.Option(None, "--cache", help="LLM answer cache (SQLite)"),
    concurrency: int = typer.Option(8, "--concurrency", min=1),
) -> None:
    """Evaluate a trained model with the corpus' own metrics; per-sample predictions next to them."""
    _train_stack()
    from radcorpora.publish.atomic import write_json, write_jsonl
    from radcorpora.reference_models.data import corpus_of, evaluation_rows
    from radcorpora.reference_models.evaluate import EVALUATORS
    from radcorpora.reference_models.sft import load_trained

    try:
        corpus = corpus_of(build_dir)
        rows = evaluation_rows(build_dir, config, limit)
        model, processor, trained = load_trained(adapter)
        text_only = bool(trained and trained.text_only)
        metrics, samples = EVALUATORS[corpus].run(model, processor, rows, text_only=text_only,
                                                  judge=_judge(judge, cache, concurrency))
    except _model_errors() as exc:
        _fail(exc)
    target = out or (adapter if (adapter / "train_result.json").exists() else adapter.parent)
    write_json(target / "metrics.json", metrics)
    write_jsonl(target / "predictions.jsonl", samples)
    primary = EVALUATORS[corpus].primary(metrics)
    console.print(f"{corpus}: {primary} {metrics[primary]} on {len(samples)} rows"
                  f"{' (images withheld: text-only model)' if text_only else ''}; "
                  f"metrics and predictions in {target}")
    Console().print_json(data=metrics)


@app.command("check")
def check_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    model: str = typer.Option("tiny", "--model", help="tiny, or hf:<local checkpoint path>"),
    margin: float = typer.Option(5.0, "--margin", help="Points the image model must beat the text-only twin by"),
    preset: str | None = typer.Option(None, "--preset"),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1),
    eval_limit: int | None = typer.Option(None, "--eval-limit", min=1),
    judge: str | None = typer.Option(None, "--judge", help="PROVIDER:MODEL of an LLM judge"),
    cache: Path | None = typer.Option(None, "--cache"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train on the build, and on the build with images withheld; exit 0 only when the image model
    beats its text-only twin by the margin on the held-out config."""
    _train_stack()
    if not _run_check(build_dir, model, margin, preset, max_steps, eval_limit, judge, cache, seed):
        raise typer.Exit(1)


def _run_check(build_dir: Path, model: str, margin: float, preset: str | None = None, max_steps: int | None = None,
               eval_limit: int | None = None, judge: str | None = None, cache: Path | None = None, seed: int = 0) -> bool:
    from radcorpora.reference_models.check import CheckConfig, run_check

    try:
        report = run_check(build_dir, CheckConfig(model=model, margin=margin, preset=preset, max_steps=max_steps,
                                                  eval_limit=eval_limit, seed=seed),
                           judge=_judge(judge, cache, 8), log=console.print)
    except _model_errors() as exc:
        _fail(exc)
    table = Table(title=f"reference check: {report['corpus']} ({report['metric']})")
    for column in ("", "image model", "text-only twin"):
        table.add_column(column)
    table.add_row(report["metric"], str(report["image"]["score"]), str(report["text_only"]["score"]))
    for cell, value in report["image"]["metrics"].get("by_task_and_type", {}).items():
        table.add_row(cell, str(value), str(report["text_only"]["metrics"]["by_task_and_type"].get(cell, "")))
    console.print(table)
    verdict = "[green]passed[/]" if report["passed"] else "[bold red]FAILED[/]"
    console.print(f"reference check {verdict}: gap {report['gap']:+} points (margin {report['margin']}), "
                  f"{report['seconds']} s; report in {build_dir / 'build' / 'reference_check.json'}")
    return bool(report["passed"])


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for the demo sources and builds"),
    images_per_class: int = typer.Option(12, "--images-per-class", min=5),
    workers: int = typer.Option(_default_workers(), "--workers", min=1),
    check: bool = typer.Option(True, "--check/--no-check", help="End with the reference check on radimagenet-vqa"),
) -> None:
    """Write small demo sources in the upstream formats, build and validate radimagenet-vqa and
    rad-ace-cot from them, then check radimagenet-vqa against a tiny model trained on it."""
    if check:
        _train_stack()
    from radcorpora.demo.radimagenet import write_demo_radimagenet
    from radcorpora.pipelines.radimagenet_vqa import build_radimagenet_vqa

    source = out / "sources" / "radimagenet"
    if not (source / "radiology_ai").exists():
        counts = write_demo_radimagenet(source, images_per_class=images_per_class)
        console.print(f"demo RadImageNet source written to {source}: {counts}")
    try:
        outcome = build_radimagenet_vqa(source, out / "radimagenet-vqa", benchmark_images=100, workers=workers,
                                        command=f"radcorpora demo --out {out}", console=console)
    except USER_ERRORS as exc:
        _fail(exc)
    valid = _finish_build(outcome, exit_on_invalid=False)
    console.print(f"[green]demo corpus:[/] {outcome.out}  (load with datasets.load_dataset('{outcome.out}', 'benchmark'))")
    valid = _demo_rad_ace_cot(out) and valid
    if check:
        valid = _run_check(out / "radimagenet-vqa", "tiny", margin=5.0) and valid
    if not valid:
        raise typer.Exit(1)


def _demo_rad_ace_cot(out: Path) -> bool:
    """PubMedVision- and VQA-RAD-format demo sources -> rad-ace-cot with the offline stand-in."""
    from radcorpora.builders.rad_ace_cot import RadAceCotConfig
    from radcorpora.demo.pubmedvision import write_demo_pubmedvision, write_demo_vqa_rad
    from radcorpora.llm.session import LLMSettings
    from radcorpora.pipelines.rad_ace_cot import build_rad_ace_cot

    pubmedvision, vqa_rad = out / "sources" / "pubmedvision", out / "sources" / "vqa-rad"
    if not (pubmedvision / "PubMedVision_Alignment_VQA.json").exists():
        pubmedvision.mkdir(parents=True, exist_ok=True)
        console.print(f"demo PubMedVision source written to {pubmedvision}: {write_demo_pubmedvision(pubmedvision)}")
        console.print(f"demo VQA-RAD test sample written to {vqa_rad}: {write_demo_vqa_rad(vqa_rad)} questions")
    config = RadAceCotConfig(llm="offline", verifiers=["offline:verifier"])
    settings = LLMSettings(cache_path=str(out / "llm-cache.sqlite"))
    try:
        outcome = build_rad_ace_cot(pubmedvision, out / "rad-ace-cot", config, settings, vqa_rad=vqa_rad,
                                    command=f"radcorpora demo --out {out}", log=console.print)
    except USER_ERRORS as exc:
        _fail(exc)
    valid = _finish_build(outcome, exit_on_invalid=False)
    console.print(f"[green]demo corpus:[/] {outcome.out}  (offline stand-in answers, not a model's)")
    return valid


@app.command("publish")
def publish_cmd(
    build_dir: Path = typer.Argument(...),
    repo: str = typer.Option(..., "--repo", help="Hub dataset repo id, e.g. org/name"),
    private: bool = typer.Option(True, "--private/--public"),
    allow_public_restricted: bool = typer.Option(False, "--allow-public-restricted"),
    revision: str | None = typer.Option(None, "--revision"),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be pushed, push nothing"),
) -> None:
    """Push a validated build to the Hugging Face Hub (token from HF_TOKEN or `hf auth login`)."""
    try:
        plan = plan_push(build_dir, repo, private, allow_public_restricted)
    except USER_ERRORS as exc:
        _fail(exc)
    console.print(f"{'private' if plan.private else 'public'} push of {len(plan.files)} files to {plan.repo_id}")
    if dry_run:
        for name in plan.files:
            console.print(f"  {name}")
        return
    push_build(build_dir, plan, revision=revision)


if __name__ == "__main__":
    app()
