"""Reader for MS-CXR (PhysioNet, credentialed): phrases grounded by boxes on MIMIC-CXR-JPG images.

On disk: `MS_CXR_Local_Alignment_v1.0.0.csv` (release v0.1) or `MS_CXR_Local_Alignment_v1.1.0.csv`
(v1.1.0, adds a `split` column train/val/test); the newest version present is read. Columns:
`dicom_id, category_name, label_text, x, y, w, h, image_width, image_height, path`. One row per
(phrase, box): rows are grouped by (dicom_id, label_text) into one finding. Boxes are pixel x, y,
w, h on the original image. They are normalised by the image's real size: the MIMIC-CXR metadata's
Columns x Rows where given, else the JPG's header. The size the row states must equal it; a row
that says otherwise is rejected naming both sizes (an edited or mismatched table would otherwise
scale its boxes wrong without a trace). Subject and study come from `path`
(`files/pNN/p<subject>/s<study>/<dicom_id>.jpg`); the CSV has no patient column. Without a split
column the MIMIC-CXR split of the image is used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from radcorpora.schemas.boxes import Box, BoxError
from radcorpora.schemas.cxr import CxrImage, GroundedFinding, Split
from radcorpora.sources.base import (
    NotANumber,
    SourceInfo,
    SourceScan,
    cell,
    image_size,
    is_file,
    number,
    pixels,
    read_csv_rows,
)
from radcorpora.sources.chest_imagenome import mimic_files_base, mimic_jpg_path
from radcorpora.sources.errors import SourceError

CATEGORIES: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity",
                               "Pleural Effusion", "Pneumonia", "Pneumothorax")
BOX_COLUMNS = ("x", "y", "w", "h")
COLUMNS = ("dicom_id", "category_name", "label_text", *BOX_COLUMNS, "image_width", "image_height", "path")
SPLITS: dict[str, Split] = {"train": "train", "val": "validation", "valid": "validation", "validate": "validation",
                            "validation": "validation", "test": "test"}
_PATH = re.compile(r"p(\d+)/s(\d+)/([^/]+)\.(?:jpg|dcm)$")
_VERSION = re.compile(r"_v(\d+)\.(\d+)\.(\d+)\.csv$")

INFO = SourceInfo(
    name="ms-cxr",
    title="MS-CXR",
    licence_class="credentialed",
    licence=("PhysioNet Credentialed Health Data License 1.5.0: credentialing, training and the signed data use "
             "agreement are required; no redistribution. Images come from MIMIC-CXR-JPG under the same terms."),
    citation="""@inproceedings{boecking2022mscxr,
  title     = {Making the Most of Text Semantics to Improve Biomedical Vision-Language Processing},
  author    = {Boecking, Benedikt and Usuyama, Naoto and Bannur, Shruthi and Castro, Daniel C. and Schwaighofer, Anton
               and Hyland, Stephanie and Wetscherek, Maria and Naumann, Tristan and Nori, Aditya and
               Alvarez-Valle, Javier and Poon, Hoifung and Oktay, Ozan},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2022}
}""",
    labels=CATEGORIES,
)


@dataclass
class MsCxrScan(SourceScan[GroundedFinding]):
    """`images` (sorted) and `findings` (= records: label = category, phrase = label_text)."""

    images: list[CxrImage] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def findings(self) -> list[GroundedFinding]:
        return self.records


def find_table(root: Path) -> Path:
    """The newest `MS_CXR_Local_Alignment_v*.csv` (by version number, then name)."""
    root = Path(root)
    if root.is_file():
        return root
    if not root.is_dir():
        raise SourceError(f"{root}: MS-CXR folder does not exist")
    tables = sorted(root.glob("MS_CXR_Local_Alignment_*.csv"))
    if not tables:
        raise SourceError(f"{root}: no MS_CXR_Local_Alignment_*.csv (looked for _v1.1.0.csv and _v1.0.0.csv)")

    def version(path: Path) -> tuple[tuple[int, ...], str]:
        match = _VERSION.search(path.name)
        return (tuple(int(g) for g in match.groups()) if match else (-1,), path.name)
    return max(tables, key=version)


def scan_ms_cxr(root: Path, mimic_root: Path, mimic_splits: Mapping[str, str] | None = None,
                mimic_sizes: Mapping[str, tuple[int, int]] | None = None) -> MsCxrScan:
    """Read MS-CXR boxes grouped per (image, phrase). `mimic_sizes`: dicom_id -> (Columns, Rows)
    from the MIMIC-CXR metadata; an image without one is measured from its JPG header. Rejects
    (file, line): a coordinate or stated size that is not a number, a size that is not the
    image's (`image_size_mismatch`), a box the Box type refuses, a path that does not name the
    row's dicom_id, an image without a split, a missing or unreadable JPG, a phrase whose rows
    disagree on category. Missing columns: SourceError."""
    table = find_table(root)
    base = mimic_files_base(mimic_root)
    scan = MsCxrScan(info=INFO, root=table.parent)
    scan.files["table"] = str(table)
    mimic_splits = mimic_splits or {}
    mimic_sizes = mimic_sizes or {}
    images: dict[str, CxrImage] = {}
    bad_images: set[str] = set()
    groups: dict[tuple[str, str], tuple[str, list[Box], int]] = {}
    for line, row in read_csv_rows(table, COLUMNS):
        dicom_id, category, phrase, rel = (cell(row, k) for k in ("dicom_id", "category_name", "label_text", "path"))
        if not (dicom_id and category and phrase and rel):
            scan.reject(table, line, "missing_value", f"dicom_id={dicom_id!r} category_name={category!r} "
                                                      f"label_text={phrase!r} path={rel!r}")
            continue
        if dicom_id in bad_images:
            scan.reject(table, line, "image_rejected", f"{dicom_id}: rejected on an earlier line")
            continue
        image = images.get(dicom_id)
        if image is None:
            image = _image(scan, table, line, row, dicom_id, rel, base, mimic_splits, mimic_sizes)
            if image is None:
                bad_images.add(dicom_id)
                continue
            images[dicom_id] = image
        try:
            stated = pixels(row.get("image_width"), "image_width"), pixels(row.get("image_height"), "image_height")
        except NotANumber as exc:
            scan.reject(table, line, "image_size_not_a_number", f"{table.name} line {line}: {dicom_id}: {exc.detail}")
            continue
        if stated != (image.width, image.height):
            measured = "MIMIC-CXR metadata" if dicom_id in mimic_sizes else f"header of {Path(image.path).name}"
            scan.reject(table, line, "image_size_mismatch",
                        f"{table.name} line {line}: {dicom_id}: the row says {stated[0]}x{stated[1]}, the image is "
                        f"{image.width}x{image.height} ({measured})")
            continue
        try:
            box = Box.from_pixels_xywh(*[number(row.get(k), k) for k in BOX_COLUMNS], image.width, image.height)
        except (BoxError, NotANumber) as exc:
            scan.reject(table, line, f"box_{exc.reason}", f"{table.name} line {line}: {dicom_id} {phrase!r}: {exc.detail}")
            continue
        key = (dicom_id, phrase)
        if key in groups and groups[key][0] != category:
            scan.reject(table, line, "category_mismatch", f"{phrase!r} on {dicom_id}: {category} here, "
                                                          f"{groups[key][0]} on line {groups[key][2]}")
            continue
        groups.setdefault(key, (category, [], line))[1].append(box)
    for (dicom_id, phrase), (category, boxes, _) in sorted(groups.items()):
        scan.records.append(GroundedFinding(image=images[dicom_id], label=category, phrase=phrase,
                                            boxes=tuple(sorted(boxes, key=lambda b: b.xyxy))))
    used = {f.image.image_id for f in scan.records}
    scan.images = sorted((images[i] for i in used), key=lambda i: (i.subject_id, i.study_id or "", i.image_id))
    scan.counts["images"] = len(scan.images)
    scan.counts["phrases"] = len(scan.records)
    scan.counts["boxes"] = sum(len(f.boxes) for f in scan.records)
    return scan


def _image(scan: MsCxrScan, table: Path, line: int, row: dict, dicom_id: str, rel: str, base: Path,
           mimic_splits: Mapping[str, str], mimic_sizes: Mapping[str, tuple[int, int]]) -> CxrImage | None:
    match = _PATH.search(rel.replace("\\", "/"))
    if match is None or match.group(3) != dicom_id:
        scan.reject(table, line, "bad_path", f"path {rel!r} is not files/pNN/p<subject>/s<study>/{dicom_id}.jpg")
        return None
    subject, study = match.group(1), match.group(2)
    if "split" in row:
        value = cell(row, "split")
        split = SPLITS.get((value or "").lower())
        if split is None:
            scan.reject(table, line, "bad_split", f"{dicom_id}: split {value!r}")
            return None
    else:
        split = SPLITS.get(str(mimic_splits.get(dicom_id, "")).lower())
        if split is None:
            scan.reject(table, line, "no_split", f"{dicom_id}: no split column and no MIMIC-CXR split for it")
            return None
    path = mimic_jpg_path(base, rel)
    if not is_file(path):
        scan.reject(table, line, "image_file_missing", f"{path} does not exist")
        return None
    size = mimic_sizes.get(dicom_id)
    if size is None:
        try:
            size = image_size(path)
        except SourceError as exc:
            scan.reject(table, line, "image_unreadable", str(exc))
            return None
    width, height = size
    return CxrImage(source=INFO.name, image_id=dicom_id, subject_id=subject, study_id=study, path=str(path),
                    split=split, width=width, height=height, licence_class=INFO.licence_class)
