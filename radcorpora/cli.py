"""`radcorpora` command line: build | validate | demo | publish."""

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
from radcorpora.prompts.loader import TemplateError
from radcorpora.publish.push import PublishError, plan_push, push_build
from radcorpora.sources.errors import SourceError
from radcorpora.validators import BuildFolderError, ValidationReport, validate_build

app = typer.Typer(help="Build, validate and publish radiology vision-language corpora.", no_args_is_help=True)
build_app = typer.Typer(help="Build a corpus from upstream sources.", no_args_is_help=True)
app.add_typer(build_app, name="build")
console = Console(stderr=True)



class ImageCheckChoice(str, enum.Enum):
    crc = "crc"
    full = "full"


USER_ERRORS = (SourceError, BuildStateError, TemplateError, BuildFolderError, PublishError)


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


def _finish_build(outcome) -> None:
    manifest = outcome.manifest
    if outcome.state == "complete":
        console.print(f"{outcome.out}: build already complete; nothing to do.")
    elif outcome.report is not None:
        print_report(outcome.report, console)
    splits = ", ".join(f"{c}/{s}={n}" for c, ss in manifest.get("splits", {}).items() for s, n in ss.items())
    console.print(f"rows: {splits}; rejected source rows: {manifest.get('rejected_rows', 0)} "
                  f"(see {outcome.out / 'build' / 'rejects.jsonl'})")
    if not (manifest.get("validation") or {}).get("valid", False):
        raise typer.Exit(1)


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


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for the demo sources and builds"),
    images_per_class: int = typer.Option(12, "--images-per-class", min=5),
    workers: int = typer.Option(_default_workers(), "--workers", min=1),
) -> None:
    """Write small RadImageNet-format sources, build and validate radimagenet-vqa from them."""
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
    _finish_build(outcome)
    console.print(f"[green]demo corpus:[/] {outcome.out}  (load with datasets.load_dataset('{outcome.out}', 'benchmark'))")


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
