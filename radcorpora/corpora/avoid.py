"""`--avoid BUILD`, declared once for the corpora that draw their own evaluation split
(radimagenet-vqa's benchmark, mmrad-ivl's benchmark): no patient (or, where the source names no
patient, no source image) of BUILD's training split goes into the evaluation split drawn, with
identity through the namespaces `radcorpora leakage` uses (MIMIC-CXR and its derivatives share
one). The setting holds the keys themselves, not the path, so the fingerprint follows the content;
the manifest records their digest and counts (a MIMIC training split names ~65k patients), and
`training_identities(BUILD)` gives the lists again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, model_serializer, model_validator

from radcorpora.schemas.identity import TRAIN_SPLITS, patient_key, source_key
from radcorpora.spec.corpus import Cli
from radcorpora.store.folder import (
    BuildFolderError,
    all_shards,
    open_shard,
    read_columns,
    read_manifest,
)


class AvoidList(BaseModel):
    """Whom a build keeps out of its evaluation split. Serialised for the manifest and the
    fingerprint as the build's name, the counts and a sha256 over both sorted lists: the lists
    themselves (ids of a possibly credentialed dataset) go only to build/local.json, which is
    never pushed (`model_dump(context={"local": True})`), for `adjudicate apply` to rebuild with."""

    build: str = ""
    patients: list[str] = Field(default_factory=list)
    images: list[str] = Field(default_factory=list)
    patient_count: int = 0
    image_count: int = 0
    sha256: str = ""

    @model_serializer(mode="wrap")
    def _compact(self, handler: Any, info: Any) -> dict[str, Any]:
        data = handler(self)
        if not (info.context or {}).get("local"):
            data.pop("patients", None)
            data.pop("images", None)
        return data

    @model_validator(mode="after")
    def _lists_present(self) -> AvoidList:
        if (self.patient_count or self.image_count) and not (self.patients or self.images):
            raise ValueError(f"--avoid {self.build}: the manifest keeps only the digest of its id lists and "
                             "build/local.json (this machine's record) is missing them: give --avoid BUILD again")
        return self

    @classmethod
    def of(cls, build: str, patients: set[str], images: set[str]) -> AvoidList:
        listed = {"patients": sorted(patients), "images": sorted(images)}
        digest = hashlib.sha256(json.dumps(listed, separators=(",", ":")).encode()).hexdigest()
        return cls(build=build, **listed, patient_count=len(patients), image_count=len(images), sha256=digest)


def training_identities(build: Path) -> AvoidList:
    """The namespaced patient ids and source image ids of every row in a training split of
    `build` (any config); images are read from no shard."""
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
    return AvoidList.of(build.name, patients, images)


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _parse(text: str) -> AvoidList:
    return training_identities(Path(text))


AvoidSetting = Annotated[AvoidList, Cli(flag="--avoid", parse=_parse, metavar="BUILD")]
"""The settings field type; declare the field as `avoid: AvoidSetting = avoid_field()`."""


def avoid_field() -> Any:
    return Field(default_factory=AvoidList, description=(
        "A build whose training split must not meet this build's evaluation split: none of its patients (images, "
        "where a source names no patient) is drawn into it, identity as `radcorpora leakage` reads it"))


def avoided_patients(avoid: AvoidList) -> frozenset[str]:
    return frozenset(avoid.patients)


def avoided_images(avoid: AvoidList) -> frozenset[str]:
    return frozenset(avoid.images)
