"""Options several commands share, and the small helpers they call."""

from __future__ import annotations

import enum
import os
from pathlib import Path

import typer

from radcorpora.commands.corpus import LLM_OPTIONS, run_build_command
from radcorpora.registry import corpus


class ImageCheckChoice(str, enum.Enum):
    crc = "crc"
    full = "full"


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _llm_option(name: str):
    """One of the LLM client's options, the same as the generated build commands take."""
    return next(p.default for p in LLM_OPTIONS if p.name == name)


CONCURRENCY, CACHE, APPROVE = (_llm_option(n) for n in ("concurrency", "cache", "approve_credentialed"))
WORKERS = typer.Option(default_workers(), "--workers", min=1, help="Worker processes (or Ray tasks) for chunks")


def build_named(name: str, sources: dict[str, Path | None], settings, out: Path, *, workers: int = 1,
                llm_settings=None, exit_on_invalid: bool = True, overwrite: bool = False) -> bool:
    """A local build of a registered corpus with the summary screen (adjudication, the demo)."""
    return run_build_command(corpus(name), sources, settings, out, workers=workers, overwrite=overwrite,
                             llm=llm_settings, exit_on_invalid=exit_on_invalid)
