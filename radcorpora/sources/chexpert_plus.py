"""Reader for CheXpert-Plus (Stanford AIMI; research-use agreement).

On disk: `df_chexpert_plus_240401.csv` (one row per image: `path_to_image`, view columns,
`section_*` report pieces, demographics, `split`), the images either as JPG at
`<path_to_image>` or, in the PNG release, at `PNG/<path_to_image with .png>` (found per image),
and CheXbert labels in `chexbert_labels/{report,findings,impression}_fixed.json` (JSON Lines,
one object per image keyed by `path_to_image`, values 1.0 / 0.0 / -1.0 / null).

Report text: findings = `section_findings`, impression = `section_impression`. Only when both
are empty does `section_end_of_impression` stand in as the impression: it is mostly a summary
code line and an attestation, so it is a last resort (counted), never appended to real text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from radcorpora.schemas.cxr import CHEXPERT_LABELS, CxrImage, LabelValue, Split, StudyReport
from radcorpora.sources.base import SourceInfo, SourceScan, cell, inside, read_csv_rows
from radcorpora.sources.chexpert import (
    LabelValueError,
    chexpert_sex,
    chexpert_view,
    label_states,
    patient_and_study,
)
from radcorpora.sources.errors import SourceError

INFO = SourceInfo(
    name="chexpert-plus",
    title="CheXpert-Plus",
    licence_class="restricted",
    licence=("Stanford University AIMI Dataset Research Use Agreement: registration required; "
             "non-commercial research use only; no redistribution of the data."),
    citation="""@article{chambon2024chexpertplus,
  title   = {CheXpert Plus: Augmenting a Large Chest X-ray Dataset with Text Radiology Reports, Patient
             Demographics and Additional Image Formats},
  author  = {Chambon, Pierre and Delbrouck, Jean-Benoit and Sounack, Thomas and Huang, Shih-Cheng and
             Chen, Zhihong and Varma, Maya and Truong, Steven QH and Chuong, Chu The and Langlotz, Curtis P.},
  journal = {arXiv preprint arXiv:2405.19538},
  year    = {2024}
}""",
    labels=CHEXPERT_LABELS,
)

TABLE_GLOB = "df_chexpert_plus_*.csv"
REQUIRED = ("path_to_image", "frontal_lateral", "ap_pa", "section_findings", "section_impression", "split")
SPLITS: dict[str, Split] = {"train": "train", "valid": "validation", "validation": "validation", "test": "test"}
LABEL_FILES = ("report_fixed", "findings_fixed", "impression_fixed")


@dataclass
class ChexpertPlusScan(SourceScan[CxrImage]):
    """CheXpert-Plus images (in `records`, also `images`), reports and CheXbert labels, both keyed
    by image id (`path_to_image`)."""

    reports: dict[str, StudyReport] = field(default_factory=dict)
    labels: dict[str, dict[str, LabelValue]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def images(self) -> list[CxrImage]:
        return self.records


def _table(root: Path, scan: ChexpertPlusScan) -> Path:
    hits = sorted(p for p in root.glob(TABLE_GLOB) if p.is_file()) + sorted(
        p for p in root.glob(TABLE_GLOB + ".gz") if p.is_file())
    if not hits:
        raise SourceError(f"{root}: no CheXpert-Plus table found (looked for {TABLE_GLOB}, e.g. df_chexpert_plus_240401.csv)")
    if len(hits) > 1:
        scan.warnings.append(f"several CheXpert-Plus tables; reading the newest name {hits[-1].name}")
    return hits[-1]


def _image_path(root: Path, image_id: str) -> Path | None:
    """The JPG at `<path>` or the PNG-release file at `PNG/<path>.png`, whichever exists."""
    jpg = root / image_id
    if os.path.exists(jpg):
        return jpg
    png = root / "PNG" / Path(image_id).with_suffix(".png")
    return png if os.path.exists(png) else None


def report_text(row: dict) -> tuple[str | None, str | None, bool]:
    """(findings, impression, from_end_of_impression) of one table row, whitespace collapsed."""
    def text(column: str) -> str | None:
        value = cell(row, column)
        return " ".join(value.split()) if value else None

    findings, impression = text("section_findings"), text("section_impression")
    if findings or impression:
        return findings, impression, False
    end = text("section_end_of_impression")
    return None, end, end is not None


def scan_chexpert_plus(root: Path, label_file: str = "report_fixed") -> ChexpertPlusScan:
    """Read the CheXpert-Plus table into images and reports, and the CheXbert labels from
    `chexbert_labels/<label_file>.json`. Missing images and bad rows are rejected with file and
    line; a missing column raises SourceError; missing label files only warn (reports need none)."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: CheXpert-Plus folder does not exist")
    label_file = label_file.removesuffix(".json")
    scan = ChexpertPlusScan(info=INFO, root=root)
    table = _table(root, scan)
    scan.files["table"] = str(table)
    known: set[str] = set()
    for line, row in read_csv_rows(table, REQUIRED):
        image_id = (cell(row, "path_to_image") or "").replace("\\", "/").lstrip("/")
        ids = patient_and_study(image_id) if image_id else None
        if ids is None:
            scan.reject(table, line, "unexpected_path", f"path_to_image={image_id!r}")
            continue
        if image_id in known:
            scan.reject(table, line, "duplicate_image", image_id)
            continue
        split = SPLITS.get((cell(row, "split") or "").lower())
        if split is None:
            scan.reject(table, line, "bad_split", f"split={cell(row, 'split')!r}")
            continue
        if inside(root, image_id) is None:
            scan.reject(table, line, "image_outside_source", f"{image_id}: not a path inside {root}")
            continue
        path = _image_path(root, image_id)
        if path is None:
            scan.reject(table, line, "image_file_missing",
                        f"neither {root / image_id} nor {root / 'PNG' / Path(image_id).with_suffix('.png')} exists")
            continue
        known.add(image_id)
        scan.counts["images_png" if path.suffix == ".png" else "images_jpg"] += 1
        subject_id, study_id = ids
        image = CxrImage(source=INFO.name, image_id=image_id, subject_id=subject_id, study_id=study_id,
                         path=str(path), view=chexpert_view(cell(row, "frontal_lateral"), cell(row, "ap_pa"), image_id),
                         split=split, sex=chexpert_sex(cell(row, "sex")), licence_class=INFO.licence_class)
        scan.records.append(image)
        findings, impression, from_end = report_text(row)
        if findings is None and impression is None:
            scan.counts["images_without_report_text"] += 1
            continue
        scan.counts["reports_from_end_of_impression"] += from_end
        scan.reports[image_id] = StudyReport(source=INFO.name, subject_id=subject_id, study_id=study_id,
                                             findings=findings, impression=impression, file=f"{table}:{line}")
    scan.records.sort(key=lambda i: (i.subject_id, i.study_id or "", i.image_id))
    scan.counts["images"] = len(scan.records)
    scan.counts["reports"] = len(scan.reports)
    _read_labels(scan, root / "chexbert_labels" / f"{label_file}.json", known)
    return scan


def _json_records(path: Path) -> Iterator[tuple[int, object]]:
    """(line, object or decode error) of a JSON Lines file, streamed; a JSON array is accepted too
    (line = item index + 1)."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.read(1)
            while first.isspace():
                first = handle.read(1)
            handle.seek(0)
            if first == "[":
                try:
                    items = json.load(handle)
                except json.JSONDecodeError as exc:
                    raise SourceError(f"{path}: not valid JSON ({exc})") from exc
                yield from enumerate(items if isinstance(items, list) else [items], start=1)
                return
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    yield number, json.loads(raw)
                except json.JSONDecodeError as exc:
                    yield number, exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot read ({exc})") from exc


def _read_labels(scan: ChexpertPlusScan, path: Path, known: set[str]) -> None:
    if not path.is_file():
        present = sorted(p.name for p in path.parent.glob("*.json")) if path.parent.is_dir() else []
        scan.warnings.append(f"{path}: CheXbert label file not found (present: {', '.join(present) or 'none'}); "
                             "images have no labels")
        return
    scan.files["labels"] = str(path)
    for line, record in _json_records(path):
        if isinstance(record, json.JSONDecodeError):
            scan.reject(path, line, "bad_json_line", str(record))
            continue
        if not isinstance(record, dict) or not isinstance(record.get("path_to_image"), str):
            scan.reject(path, line, "no_path_to_image", "each line must be an object with path_to_image")
            continue
        image_id = record["path_to_image"].replace("\\", "/").lstrip("/")
        if image_id in scan.labels:
            scan.reject(path, line, "duplicate_image", image_id)
            continue
        missing = [label for label in CHEXPERT_LABELS if label not in record]
        if missing:
            scan.counts["label_records_with_missing_keys"] += 1
        try:
            scan.labels[image_id] = label_states(record, f"{path.name} line {line}")
        except LabelValueError as exc:
            scan.reject(path, line, "bad_label_value", str(exc))
            continue
        if image_id not in known:
            scan.counts["label_records_without_image"] += 1
    scan.counts["images_without_labels"] = len(known - scan.labels.keys())
