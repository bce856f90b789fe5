"""PubMedVision (FreedomIntelligence/PubMedVision): streamed from its top-level JSON arrays.

Each `PubMedVision_*.json` is one ~700 MB JSON array of `{id, image: [paths], conversations:
[{from, value}], modality, body_part}`; it is parsed item by item with ijson, never loaded whole.
`modality` is free text written by a model, so CT and MR are recognised by a tolerant matcher and
every distinct value met is reported with how it was classified.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ijson

from radcorpora.schemas.common import Reject
from radcorpora.sources.base import inside, is_file
from radcorpora.sources.errors import SourceError

FILES = {
    "alignment": "PubMedVision_Alignment_VQA.json",
    "instruction": "PubMedVision_InstructionTuning_VQA.json",
}
IMAGE_TAG = re.compile(r"<image>\s*")

_CT = re.compile(r"computed\s*tomograph|\b(?:ct|cta|cect|ncct|hrct|mdct|cbct)\b|\bct[- ]?(?:scan|angiograph)", re.I)
_MR = re.compile(r"magnetic\s*resonance|\b(?:mri|mr|mra|mrcp|fmri|mrv)\b|\bmr[- ]?(?:imaging|angiograph)", re.I)
_HYBRID = re.compile(r"\bpet\b|positron|spect|single[- ]photon|scintigra", re.I)


def modality_class(value: str | None) -> str | None:
    """'CT', 'MR' or None. Hybrids with nuclear medicine (PET-CT, SPECT-CT) and values naming
    both CT and MR are not taken: their images are not plain CT/MR slices."""
    if not value:
        return None
    ct, mr = bool(_CT.search(value)), bool(_MR.search(value))
    if ct == mr or _HYBRID.search(value):
        return None
    return "CT" if ct else "MR"


@dataclass(frozen=True)
class PubMedVisionSample:
    id: str
    images: tuple[Path, ...]
    image_names: tuple[str, ...]  # as written in the record
    question: str  # first human turn, <image> tags removed
    description: str  # the first gpt turn: the model-written image description
    modality: str  # CT | MR
    modality_text: str  # the record's own value
    body_part: str
    file: str
    row: int


@dataclass
class PubMedVisionScan:
    root: Path
    file: Path
    samples: list[PubMedVisionSample] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    modality_values: Counter = field(default_factory=Counter)  # "value -> class" counts
    counts: Counter = field(default_factory=Counter)


def find_file(source: Path, subset: str) -> Path:
    source = Path(source)
    if source.is_file():
        return source
    if not source.is_dir():
        raise SourceError(f"{source}: PubMedVision folder does not exist")
    if subset not in FILES:
        raise SourceError(f"unknown PubMedVision subset {subset!r}; use one of {', '.join(FILES)}")
    path = source / FILES[subset]
    if not path.exists():
        present = sorted(p.name for p in source.glob("PubMedVision_*.json"))
        raise SourceError(f"{path}: not found (present: {present or 'no PubMedVision_*.json files'})")
    return path


def _first_pair(conversations: Any) -> tuple[str, str] | None:
    if not isinstance(conversations, list):
        return None
    human = next((t for t in conversations if isinstance(t, dict) and t.get("from") == "human"), None)
    gpt = next((t for t in conversations if isinstance(t, dict) and t.get("from") == "gpt"), None)
    if not human or not gpt or not isinstance(human.get("value"), str) or not isinstance(gpt.get("value"), str):
        return None
    return IMAGE_TAG.sub("", human["value"]).strip(), gpt["value"].strip()


def iter_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(row, record) from a top-level JSON array, streamed."""
    with open(path, "rb") as handle:
        try:
            for row, record in enumerate(ijson.items(handle, "item", use_float=True)):
                yield row, record
        except ijson.JSONError as exc:
            raise SourceError(f"{path}: not a JSON array of records ({exc})") from exc


def scan_pubmedvision(source: Path, subset: str = "alignment", limit: int | None = None) -> PubMedVisionScan:
    """CT/MR samples of one PubMedVision file, with rejects for everything not taken."""
    path = find_file(source, subset)
    root = path.parent
    scan = PubMedVisionScan(root=root, file=path)
    for row, record in iter_records(path):
        scan.counts["records"] += 1
        where = f"{path.name}"
        if not isinstance(record, dict):
            scan.rejects.append(Reject(source=where, row=str(row), reason="not_an_object", detail=str(record)[:80]))
            continue
        modality_text = str(record.get("modality") or "")
        modality = modality_class(modality_text)
        scan.modality_values[f"{modality_text or '(missing)'} -> {modality or 'skipped'}"] += 1
        if modality is None:
            scan.counts["not_ct_mr"] += 1
            continue
        record_id = record.get("id")
        images = record.get("image")
        pair = _first_pair(record.get("conversations"))
        if not isinstance(record_id, str) or not record_id:
            scan.rejects.append(Reject(source=where, row=str(row), reason="missing_id", detail="record has no id"))
            continue
        if isinstance(images, str):
            images = [images]
        if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
            scan.rejects.append(Reject(source=where, row=str(row), reason="missing_image", detail=f"{record_id}: no image list"))
            continue
        if pair is None or not pair[0] or not pair[1]:
            scan.rejects.append(Reject(source=where, row=str(row), reason="no_question_answer",
                                       detail=f"{record_id}: conversations lack a human and a gpt turn"))
            continue
        outside = [name for name in images if inside(root, name) is None]
        if outside:
            scan.rejects.append(Reject(source=where, row=str(row), reason="image_outside_source",
                                       detail=f"{record_id}: {', '.join(outside[:3])} is not a path inside {root}"))
            continue
        paths = tuple(root / name for name in images)
        absent = [name for name, p in zip(images, paths) if not is_file(p)]
        if absent:
            scan.rejects.append(Reject(source=where, row=str(row), reason="image_file_missing",
                                       detail=f"{record_id}: {', '.join(absent[:3])}"))
            continue
        scan.samples.append(PubMedVisionSample(
            id=record_id, images=paths, image_names=tuple(images), question=pair[0], description=pair[1],
            modality=modality, modality_text=modality_text, body_part=str(record.get("body_part") or ""),
            file=path.name, row=row))
        scan.counts[f"kept_{modality}"] += 1
        if limit is not None and len(scan.samples) >= limit:
            break
    if scan.counts["records"] == 0:
        raise SourceError(f"{path}: the array holds no records")
    if not scan.samples:
        values = ", ".join(f"{v} ({n})" for v, n in scan.modality_values.most_common(8))
        reasons = Counter(r.reason for r in scan.rejects)
        raise SourceError(f"{path}: no usable CT/MR sample among {scan.counts['records']} records "
                          f"(modality values met: {values}; rejected: {dict(reasons) or 'none'})")
    return scan
