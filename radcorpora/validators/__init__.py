"""Record-level and corpus-level checks -> a validation report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from radcorpora.ops.image_check import ImageCheck
from radcorpora.validators.layout import BuildFolderError, read_manifest
from radcorpora.validators.rad_ace_cot import validate_rad_ace_cot
from radcorpora.validators.radimagenet_vqa import validate_radimagenet_vqa
from radcorpora.validators.report import ValidationReport

VALIDATORS: dict[str, Callable[..., ValidationReport]] = {
    "radimagenet-vqa": validate_radimagenet_vqa,
    "rad-ace-cot": validate_rad_ace_cot,
}


def validate_build(build: Path, image_check: ImageCheck = "full") -> ValidationReport:
    """Run the checks of the corpus recorded in the build's manifest.

    `image_check` is how hard every distinct image is checked; a build validates itself at the
    level it read its sources with, `radcorpora validate` decodes in full unless told otherwise."""
    manifest = read_manifest(build)
    corpus = manifest.get("corpus")
    if corpus not in VALIDATORS:
        raise BuildFolderError(f"{build}: no validator for corpus {corpus!r}")
    return VALIDATORS[corpus](build, image_check=image_check)


__all__ = ["VALIDATORS", "BuildFolderError", "ValidationReport", "validate_build"]
