"""Pieces every corpus pipeline shares: the outcome type, versions and storage for the manifest."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radcorpora import __version__
from radcorpora.validators import ValidationReport


@dataclass
class BuildOutcome:
    out: Path
    state: str  # fresh | resume | complete
    manifest: dict[str, Any]
    report: ValidationReport | None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"radcorpora": __version__, "python": platform.python_version()}
    for name in ("pyarrow", "datasets", "huggingface_hub", "pydantic", "pillow", "openai", "anthropic"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def storage_report(out: Path, source_bytes: int) -> dict[str, Any]:
    per_config = {}
    for folder in sorted((out / "data").glob("*")):
        size = sum(p.stat().st_size for p in folder.glob("*.parquet"))
        per_config[folder.name] = size
    return {"source_image_bytes": source_bytes, "output_bytes": per_config}


