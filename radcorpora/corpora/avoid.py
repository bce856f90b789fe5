"""`--avoid BUILD`, declared once for the corpora that draw their own evaluation split
(radimagenet-vqa's benchmark, mmrad-ivl's benchmark): no patient (or, where the source names no
patient, no source image) of BUILD's training split goes into the evaluation split drawn, with
identity through the namespaces `radcorpora leakage` uses (MIMIC-CXR and its derivatives share
one). The setting holds the keys themselves, not the path: the fingerprint follows the content,
and the manifest says exactly whom the build kept out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from radcorpora.schemas.identity import TRAIN_SPLITS, patient_key, source_key
from radcorpora.spec.corpus import Cli
from radcorpora.store.folder import (
    BuildFolderError,
    all_shards,
    open_shard,
    read_columns,
    read_manifest,
)


def training_identities(build: Path) -> dict[str, Any]:
    """{build, patients, images}: the namespaced patient ids and source image ids of every row in
    a training split of `build` (any config), sorted; images are read from no shard."""
    build = Path(build)
    if not build.exists():
        raise BuildFolderError(f"--avoid {build}: no such build folder")
    read_manifest(build)
    patients: set[str] = set()
    images: set[str] = set()
    shards = [s for s in all_shards(build) if s.split in TRAIN_SPLITS]
    if not shards:
        raise BuildFolderError(f"--avoid {build}: the build holds no training split")
    for shard in shards:
        names = open_shard(shard.path).schema_arrow
        lineage = names.field("lineage").type if "lineage" in names.names else None
        if lineage is None:
            raise BuildFolderError(f"--avoid {build}: {shard.rel(build)} has no lineage column")
        leaves = {f.name for f in lineage}
        columns = [f"lineage.{n}" for n in ("source_dataset", "source_id", "patient_id") if n in leaves]
        columns += ["subject_id"] if "subject_id" in names.names else []
        table = read_columns(shard.path, columns).to_pydict()
        count = len(next(iter(table.values()))) if table else 0
        for n in range(count):
            source = table.get("source_dataset", [None] * count)[n]
            patient = patient_key(source, (table.get("patient_id") or [None] * count)[n]
                                  or _text((table.get("subject_id") or [None] * count)[n]))
            image = source_key(source, table.get("source_id", [None] * count)[n])
            if patient:
                patients.add(patient)
            if image:
                images.add(image)
    return {"build": build.name, "patients": sorted(patients), "images": sorted(images)}


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _parse(text: str) -> dict[str, Any]:
    return training_identities(Path(text))


AvoidSetting = Annotated[dict[str, Any], Cli(flag="--avoid", parse=_parse, metavar="BUILD")]
"""The settings field type; declare the field as `avoid: AvoidSetting = avoid_field()`."""


def avoid_field() -> Any:
    return Field(default_factory=dict, description=(
        "A build whose training split must not meet this build's evaluation split: none of its patients (images, "
        "where a source names no patient) is drawn into it, identity as `radcorpora leakage` reads it"))


def avoided_patients(avoid: dict[str, Any]) -> frozenset[str]:
    return frozenset(avoid.get("patients") or ())


def avoided_images(avoid: dict[str, Any]) -> frozenset[str]:
    return frozenset(avoid.get("images") or ())
