"""Commands on a finished build folder: validate, preview, export."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from radcorpora.commands.options import (
    ImageCheckChoice,
    default_workers,
)
from radcorpora.commands.ui import USER_ERRORS, fail, print_report, say
from radcorpora.store.folder import BuildFolderError

LEGACY_EXPORTS = ("rad-ace-csv",)  # `radcorpora export rad-ace-csv BUILD --out FILE`, as before


def export_cmd(
    target: str = typer.Argument(..., metavar="BUILD",
                                 help="A build folder (or, as before: `rad-ace-csv BUILD --out FILE`)"),
    legacy_build: Path | None = typer.Argument(None, hidden=True),
    fmt: str | None = typer.Option(None, "--format",
                                   help="llava | sharegpt | trl | swift, or a corpus' own format (rad-ace-csv)"),
    out: Path = typer.Option(..., "--out", help="Folder to write (created; a previous export there is replaced)"),
    config: str | None = typer.Option(None, "--config", help="Config to export (default: the corpus' default)"),
    split: str | None = typer.Option(None, "--split", help="Split to export (default: every split of the config)"),
    variant: str | None = typer.Option(None, "--variant", help="The rendering of a config stored in its own shape "
                                                               "(e.g. mmrad-ivl: crops, no-crops; default: the "
                                                               "corpus' first)"),
) -> None:
    """Export a build for a trainer: `radcorpora export BUILD --format FORMAT --out DIR`. Each image
    is written once under DIR/images/, the settings in DIR/export_settings.json; which assistant
    turns train comes from the corpus (carried the format's own way)."""
    from radcorpora.registry import export

    if target in LEGACY_EXPORTS:
        return _export_rad_ace_csv(legacy_build, out)
    try:
        if legacy_build is not None:
            raise BuildFolderError(f"unexpected argument {str(legacy_build)!r} after the build folder {target}")
        if not fmt:
            raise BuildFolderError("--format is required (llava, sharegpt, trl, swift, or a corpus' own format)")
        settings = export(Path(target), fmt, out, config=config, split=split, variant=variant)
    except (*USER_ERRORS, ValueError, OSError) as exc:
        fail(exc)
    files = {name: entry for name, entry in settings["files"].items() if "rows" in entry and name != "dataset_info.json"}
    for name, entry in files.items():
        say(f"{entry['rows']} rows -> {out / name}")
    images = settings.get("images") or {}
    if images.get("count"):
        say(f"{images['count']} images under {out / 'images'}")
    say(f"settings: {out / 'export_settings.json'}")


def _export_rad_ace_csv(build_dir: Path | None, out: Path) -> None:
    """The public RAD-ACE CSV columns: filename (list), modality, cot_output, question."""
    from radcorpora.corpora.rad_ace_cot.export_csv import export_rad_ace_csv

    try:
        if build_dir is None:
            raise BuildFolderError("usage: radcorpora export rad-ace-csv BUILD --out FILE")
        if out.exists() and out.is_dir():
            raise BuildFolderError(f"{out}: is a folder; --out names the CSV file to write")
        rows = export_rad_ace_csv(build_dir, out)
    except (*USER_ERRORS, ValueError, OSError) as exc:
        fail(exc)
    say(f"{rows} rows written to {out}")


def validate_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    image_check: ImageCheckChoice = typer.Option("full", "--image-check", help="full: decode every pixel; crc: PNG chunk CRCs"),
    workers: int = typer.Option(default_workers(), "--workers", min=1, help="Shards checked in parallel"),
    deep: bool = typer.Option(False, "--deep", help="Also re-parse every record as an object and check each rule per row"),
) -> None:
    """Check every record and the corpus rules; the result is written back to the build
    (build/validation.json, the manifest, the card). Exit 0 only when valid."""
    from radcorpora.engine.lifecycle import record_validation
    from radcorpora.registry import validate

    try:
        report = validate(build_dir, image_check=image_check.value, workers=workers, deep=deep)
        record_validation(build_dir, report)
    except USER_ERRORS as exc:
        fail(exc)
    print_report(report, Console())
    raise typer.Exit(0 if report.valid else 1)


def preview_cmd(
    build_dir: Path = typer.Argument(..., help="A build folder"),
    out: Path | None = typer.Option(None, "--out", help="HTML file to write (default: BUILD/build/preview.html)"),
    config: str | None = typer.Option(None, "--config", help="Only this config"),
    split: str | None = typer.Option(None, "--split", help="Only this split"),
    samples: int = typer.Option(6, "--samples", min=0, help="Rows shown per config and split"),
    seed: int = typer.Option(0, "--seed", help="Seed of the row sample"),
) -> None:
    """Write one self-contained HTML report of a build (opens offline in any browser): sample rows
    with their boxes drawn, plots, rejects, validation, LLM usage, reference check."""
    from radcorpora.registry import preview

    try:
        result = preview(build_dir, out, config=config, split=split, samples=samples, seed=seed)
    except USER_ERRORS as exc:
        fail(exc)
    say(f"preview of {build_dir} ({result.rows_shown} rows shown, {result.bytes / 1e6:.1f} MB) written to {result.path}")


def demo_preview(build_dir: Path) -> None:
    from radcorpora.registry import preview

    try:
        say(f"preview: {preview(build_dir).path}")
    except USER_ERRORS as exc:
        fail(exc)
