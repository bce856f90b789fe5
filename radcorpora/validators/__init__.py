"""Record-level and corpus-level checks -> a validation report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from radcorpora.validators.layout import BuildFolderError, read_manifest
from radcorpora.validators.radimagenet_vqa import validate_radimagenet_vqa
from radcorpora.validators.report import ValidationReport

VALIDATORS: dict[str, Callable[[Path], ValidationReport]] = {
    "radimagenet-vqa": validate_radimagenet_vqa,
}


def validate_build(build: Path) -> ValidationReport:
    """Run the checks of the corpus recorded in the build's manifest."""
    manifest = read_manifest(build)
    corpus = manifest.get("corpus")
    if corpus not in VALIDATORS:
        raise BuildFolderError(f"{build}: no validator for corpus {corpus!r}")
    return VALIDATORS[corpus](build)


__all__ = ["VALIDATORS", "BuildFolderError", "ValidationReport", "validate_build"]
