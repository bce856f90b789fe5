"""`radcorpora demo`: demo sources in the upstream formats, every corpus built, checked and previewed."""

from __future__ import annotations

from pathlib import Path

import typer

from radcorpora.commands.check import run_check_command
from radcorpora.commands.folder import demo_preview
from radcorpora.commands.options import (
    WORKERS,
    build_named,
)
from radcorpora.commands.reference import train_stack
from radcorpora.commands.ui import fail, say


def demo_cmd(
    out: Path = typer.Option(..., "--out", help="Folder for the demo sources and builds"),
    images_per_class: int = typer.Option(12, "--images-per-class", min=5, help="Demo RadImageNet images per class"),
    workers: int = WORKERS,
    check: bool = typer.Option(True, "--check/--no-check", help="End with the reference checks"),
) -> None:
    """Write small demo sources in the upstream formats, build and validate every corpus from them
    (LLM stages with the offline stand-in), check the corpora that declare it against a tiny
    model, and write an HTML preview of each build."""
    if out.exists() and not out.is_dir():
        fail(NotADirectoryError(f"--out {out}: is a file; give a folder for the demo sources and builds"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(OSError(f"--out {out}: cannot make the folder ({exc.strerror})"))
    if check:
        train_stack()
    from radcorpora.llm.session import LLMSettings
    from radcorpora.registry import CORPORA

    valid = True
    built = []
    for spec in CORPORA.values():
        if spec.demo is None:
            continue
        try:
            sources = spec.demo.write_sources(out / "sources", {"images_per_class": images_per_class})
        except OSError as exc:  # a full disk, a file where a folder goes
            fail(OSError(f"cannot write the demo sources of {spec.name} under {out / 'sources'}: {exc}"))
        say(f"demo sources of {spec.name}: " + ", ".join(f"{k}={v}" for k, v in sources.items()))
        llm = LLMSettings(cache_path=str(out / "llm-cache.sqlite")) if spec.demo.uses_llm else None
        valid = build_named(spec.name, sources, spec.demo.settings(), out / spec.name, workers=workers,
                            exit_on_invalid=False, llm_settings=llm) and valid
        built.append(spec)
    say(f"demo corpora in {out} (LLM answers come from the offline stand-in, not a model)", "green")
    if check:
        for spec in built:
            if spec.demo and spec.demo.check:
                valid = run_check_command(out / spec.name, "tiny", margin=5.0, max_steps=spec.demo.check_max_steps) and valid
    for spec in built:
        demo_preview(out / spec.name)
    if not valid:
        raise typer.Exit(1)
