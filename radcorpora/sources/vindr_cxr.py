"""Reader for VinDr-CXR, in both of its published layouts.

PhysioNet (v1.0.0, credentialed): `train/<image_id>.dicom`, `test/<image_id>.dicom`,
`annotations/annotations_{train,test}.csv` (`image_id, rad_id|rad_ID, class_name, x_min, y_min,
x_max, y_max`) and optionally `annotations/image_labels_{train,test}.csv` (one 0/1 column per
label). Kaggle (VinBigData competition, also torchxrayvision's copy): `train.csv` or
`vinbigdata-train.csv(.gz)` (`image_id,class_name,class_id,rad_id,x_min,...`) with images under
`train/` as `.dicom`, `.dcm`, `.png` or `.jpg`; 14 classes, no test split.

Boxes are float pixel xyxy on the original DICOM grid; each image's size is read once from its
DICOM header (or its PNG/JPEG header), or taken from an `image_sizes` mapping. The reader keeps
every radiologist's raw boxes: one GroundedFinding per (image, class) with `readers` naming the
annotator of each box. Fusing them is the builder's job.

VinDr-CXR publishes no patient ids, so `subject_id` is the image id: patient-level split checks
cannot see two images of the same person (the release is one image per study).

An unknown `class_name` stops the scan (SourceError listing every unknown name, with file and
first line): a label outside the published vocabulary means a different release or a broken
file, and guessing its meaning would mislabel boxes.
"""

from __future__ import annotations

import csv
import gc
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

from radcorpora.schemas.boxes import Box, BoxError
from radcorpora.schemas.cxr import CxrImage, GroundedFinding, Split
from radcorpora.sources.base import (
    UNREADABLE,
    NotANumber,
    SourceInfo,
    SourceScan,
    image_size,
    number,
    open_text,
)
from radcorpora.sources.dicom import fit_within, read_dicom_image, read_dicom_size
from radcorpora.sources.errors import SourceError

# PhysioNet release: 22 local labels (boxed) and 6 global labels (image level).
LOCAL_LABELS: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture", "Consolidation",
    "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst",
    "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "Rib fracture", "Other lesion",
)
NO_FINDING = "No finding"
GLOBAL_LABELS: tuple[str, ...] = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", NO_FINDING)
# Kaggle copy: 14 classes, class_id 0..13 in this order, No finding = 14.
KAGGLE_CLASSES: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD", "Infiltration",
    "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis",
)
# Spellings that differ between files of the release, mapped to one name.
LABEL_SPELLINGS: dict[str, str] = {"Other disease": "Other diseases"}
KNOWN_LABELS = frozenset(LOCAL_LABELS + GLOBAL_LABELS + KAGGLE_CLASSES) | frozenset(LABEL_SPELLINGS)

BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
ANNOTATION_COLUMNS = ("image_id", "rad_id", "class_name", *BOX_COLUMNS)
COLUMN_ALIASES = {"rad_ID": "rad_id", "rad_Id": "rad_id"}
IMAGE_SUFFIXES = (".dicom", ".dcm", ".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dicom", ".dcm")
KAGGLE_TABLES = ("train.csv", "vinbigdata-train.csv.gz", "vinbigdata-train.csv")

INFO = SourceInfo(
    name="vindr-cxr",
    title="VinDr-CXR",
    licence_class="credentialed",
    licence=("PhysioNet Credentialed Health Data License 1.5.0 (VinDr-CXR v1.0.0); the Kaggle VinBigData copy "
             "is under the competition's rules. No redistribution."),
    citation="""@article{nguyen2022vindrcxr,
  title   = {{VinDr-CXR}: An open dataset of chest X-rays with radiologist's annotations},
  author  = {Nguyen, Ha Q. and Lam, Khanh and Le, Linh T. and Pham, Hieu H. and Tran, Dat Q. and Nguyen, Dung B.
             and Le, Dung D. and Pham, Chi M. and Tong, Hang T. T. and Dinh, Diep H. and others},
  journal = {Scientific Data},
  volume  = {9},
  pages   = {429},
  year    = {2022},
  doi     = {10.1038/s41597-022-01498-w}
}""",
    labels=LOCAL_LABELS + GLOBAL_LABELS,
)


@dataclass
class VinDrScan(SourceScan[GroundedFinding]):
    """`images` (sorted by id), `annotations` (= records: one finding per (image, class), raw
    reader boxes), `no_finding` (images every reader called normal), `image_labels` (image ->
    reader -> positive labels, from image_labels_*.csv or from box-less global-label rows)."""

    layout: str = ""  # "physionet" | "kaggle"
    images: list[CxrImage] = field(default_factory=list)
    no_finding: set[str] = field(default_factory=set)
    image_labels: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    max_side: int | None = None

    @property
    def annotations(self) -> list[GroundedFinding]:
        return self.records

    def read_image(self, image: CxrImage) -> bytes:
        """The image as stored in a corpus: DICOM converted to PNG (max_side applied), other
        formats as they are on disk."""
        path = Path(image.path)
        if path.suffix.lower() in DICOM_SUFFIXES:
            return read_dicom_image(path, self.max_side).png
        try:
            return path.read_bytes()
        except OSError as exc:
            raise SourceError(f"{path}: cannot read image ({exc})") from exc


def _table(path: Path, columns: Sequence[str], optional: Sequence[str] = ()
           ) -> Iterator[tuple[int, list[str]]]:
    """(line, stripped cells of `columns` + `optional` in that order; '' when empty or absent)
    without a dict per row: the train table has 68k rows. Line 1 is the header."""
    try:
        handle = open_text(path)
    except OSError as exc:
        raise SourceError(f"{path}: cannot open ({exc})") from exc
    with handle:
        reader = csv.reader(handle)
        try:
            header = [COLUMN_ALIASES.get(h.strip().lstrip("\ufeff"), h.strip().lstrip("\ufeff"))
                      for h in next(reader, [])]
            missing = [c for c in columns if c not in header]
            if missing:
                raise SourceError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header) or 'none'})")
            index = [header.index(c) if c in header else -1 for c in (*columns, *optional)]
            width = len(header)
            # an absent optional column reads as the empty cell appended to every row
            index = [i if i >= 0 else width for i in index]
            pick, need = itemgetter(*index), max(index) + 1
            for line, row in enumerate(reader, start=2):
                if len(row) < need:
                    if not row:
                        continue
                    row = row + [""] * (need - len(row))
                yield line, [cell.strip() for cell in pick(row)]
        except UNREADABLE as exc:
            raise SourceError(f"{path}: unreadable after line {reader.line_num} ({exc})") from exc


def _image_files(folder: Path) -> dict[str, str]:
    """image id -> file, from one listing of the folder (first suffix of IMAGE_SUFFIXES wins)."""
    found: dict[str, str] = {}
    if not folder.is_dir():
        return found
    rank = {s: i for i, s in enumerate(IMAGE_SUFFIXES)}
    best: dict[str, int] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, dot, suffix = entry.name.rpartition(".")
            suffix = f".{suffix.lower()}"
            if not dot or suffix not in rank:
                continue
            if stem not in best or rank[suffix] < best[stem]:
                best[stem], found[stem] = rank[suffix], entry.path
    return found


def _layout(root: Path) -> tuple[str, list[tuple[Split, Path]]]:
    annotations = root / "annotations"
    tables = [(split, annotations / f"annotations_{name}.csv") for split, name in (("train", "train"), ("test", "test"))]
    tables = [(s, p) for s, p in tables if p.is_file()]
    if tables:
        return "physionet", tables
    for name in KAGGLE_TABLES:
        if (root / name).is_file():
            return "kaggle", [("train", root / name)]
    raise SourceError(f"{root}: no VinDr-CXR annotation table found (looked for annotations/annotations_train.csv, "
                      f"annotations/annotations_test.csv, {', '.join(KAGGLE_TABLES)})")


def _size_of(path: str) -> tuple[int, int]:
    if path.lower().endswith(DICOM_SUFFIXES):
        return read_dicom_size(Path(path))
    return image_size(path)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a scan allocates ~200k acyclic objects: its
    repeated full passes over them cost more than the scan itself (0.6 s of 1.5 s on 68k rows)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def scan_vindr_cxr(root: Path, max_side: int | None = None,
                   image_sizes: Mapping[str, tuple[int, int]] | None = None) -> VinDrScan:
    """Read the annotation tables (both layouts) into images, per-(image, class) findings with
    every reader's raw boxes, and the set of images all readers found normal.

    `image_sizes` (image id -> (width, height)) skips the header reads where given. `max_side`
    is kept on the scan for `read_image`. Rejects (file and line): a box the Box type refuses,
    a coordinate that is not a finite number (`box_not_a_number`, naming the cell), a finding
    row without coordinates, a row without image or reader id, an image whose file is missing
    or unreadable (all its rows)."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: VinDr-CXR folder does not exist")
    layout, tables = _layout(root)
    scan = VinDrScan(info=INFO, root=root, layout=layout, max_side=max_side)
    with _collector_paused():
        _read(scan, root, tables, image_sizes or {})
    return scan


def _read(scan: VinDrScan, root: Path, tables: list[tuple[Split, Path]],
          image_sizes: Mapping[str, tuple[int, int]]) -> None:
    # image id -> (split, table, first line); (image, class) -> [(reader, coords, line)]
    seen: dict[str, tuple[Split, Path, int]] = {}
    boxes: dict[tuple[str, str], list[tuple[str, tuple[str, str, str, str], int]]] = defaultdict(list)
    said_normal: dict[str, set[str]] = defaultdict(set)
    abnormal_readers: dict[str, set[str]] = defaultdict(set)
    global_labels: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    unknown: dict[str, tuple[Path, int]] = {}
    rows_read = global_rows = 0
    for split, path in tables:
        scan.files[f"annotations_{split}"] = str(path)
        for line, (image_id, reader, label, x1, y1, x2, y2) in _table(path, ANNOTATION_COLUMNS):
            if not image_id or not reader:
                scan.reject(path, line, "missing_id", f"image_id={image_id!r} rad_id={reader!r}")
                continue
            if label not in KNOWN_LABELS:
                unknown.setdefault(label, (path, line))
                continue
            label = LABEL_SPELLINGS.get(label, label)
            first = seen.get(image_id)
            if first is None:
                seen[image_id] = (split, path, line)
            elif first[0] != split:
                scan.reject(path, line, "image_in_several_splits",
                            f"{image_id} is also in {first[1].name} line {first[2]}")
                continue
            rows_read += 1
            if label == NO_FINDING:
                said_normal[image_id].add(reader)
                continue
            abnormal_readers[image_id].add(reader)
            if not (x1 or y1 or x2 or y2) and label in GLOBAL_LABELS:
                global_labels[image_id][reader].add(label)  # an image-level label: it has no box
                global_rows += 1
                continue
            if not (x1 or y1 or x2 or y2):  # some but not all empty: box_not_a_number below
                scan.reject(path, line, "box_missing_coordinates",
                            f"{path.name} line {line}: {label} by {reader} on {image_id} has no box")
                continue
            boxes[(image_id, label)].append((reader, (x1, y1, x2, y2), line))
    scan.counts["annotation_rows"] += rows_read
    scan.counts["global_label_rows"] += global_rows
    if unknown:
        listed = "; ".join(f"{name!r} ({p.name} line {ln})" for name, (p, ln) in sorted(unknown.items()))
        raise SourceError(f"{root}: class_name(s) outside the VinDr-CXR label set: {listed}")
    _read_image_labels(scan, root, global_labels)

    # images: one file lookup per split folder, one header read per image
    folders: dict[str, dict[str, str]] = {}
    images: dict[str, CxrImage] = {}
    original: dict[str, tuple[int, int]] = {}
    for image_id in sorted(seen):
        split, path, line = seen[image_id]
        if split not in folders:
            folders[split] = _image_files(root / split)
        file = folders[split].get(image_id)
        if file is None:
            scan.reject(path, line, "image_file_missing", f"{image_id}: no {split}/{image_id}"
                                                          f"{{{','.join(IMAGE_SUFFIXES)}}}")
            continue
        size = image_sizes.get(image_id)
        if size is None:
            try:
                size = _size_of(file)
            except SourceError as exc:  # DicomError is one
                scan.reject(file, None, "image_unreadable", str(exc))
                continue
        original[image_id] = (int(size[0]), int(size[1]))  # the frame of the table's pixel boxes
        stored = fit_within(*original[image_id], scan.max_side)  # every pixel-unit field: the stored image
        images[image_id] = CxrImage(source=INFO.name, image_id=image_id, subject_id=image_id, path=file,
                                    split=split, width=stored[0], height=stored[1],
                                    view="PA",  # the release holds posteroanterior adult radiographs only
                                    licence_class=INFO.licence_class)
    scan.images = [images[i] for i in sorted(images)]

    for (image_id, label), rows in sorted(boxes.items()):
        image = images.get(image_id)
        if image is None:
            scan.counts["rows_of_rejected_images"] += len(rows)
            continue
        path = seen[image_id][1]
        kept: list[tuple[str, Box]] = []
        for reader, coords, line in rows:
            try:
                box = Box.from_pixels_xyxy(*map(number, coords, BOX_COLUMNS), *original[image_id])
                if original[image_id] != (image.width, image.height):  # normalised corners hold; pixels follow
                    box = box.model_copy(update={"width": image.width, "height": image.height})
            except (BoxError, NotANumber) as exc:
                scan.reject(path, line, f"box_{exc.reason}", f"{path.name} line {line}: {label} by {reader} on "
                                                              f"{image_id}: {exc.detail}")
                continue
            kept.append((reader, box))
        if not kept:
            continue
        kept.sort(key=lambda rb: (rb[0], rb[1].xyxy))  # independent of table row order
        scan.records.append(GroundedFinding(image=image, label=label, boxes=tuple(b for _, b in kept),
                                            readers=tuple(r for r, _ in kept)))
    scan.no_finding = {i for i, readers in said_normal.items() if i in images and not abnormal_readers.get(i)}
    scan.counts["images"] = len(scan.images)
    scan.counts["findings"] = len(scan.records)
    scan.counts["boxes"] = sum(len(f.boxes) for f in scan.records)
    scan.counts["no_finding_images"] = len(scan.no_finding)


def _read_image_labels(scan: VinDrScan, root: Path, from_rows: dict[str, dict[str, set[str]]]) -> None:
    """Optional image_labels_{train,test}.csv: image -> reader -> positive labels. The test file
    has one consensus row per image (its reader column, if any, is kept as it is)."""
    labels: dict[str, dict[str, set[str]]] = {i: {r: set(ls) for r, ls in rs.items()} for i, rs in from_rows.items()}
    for name in ("train", "test"):
        path = root / "annotations" / f"image_labels_{name}.csv"
        if not path.is_file():
            continue
        scan.files[f"image_labels_{name}"] = str(path)
        try:
            with open_text(path) as handle:
                header = next(csv.reader(handle), [])
        except UNREADABLE as exc:
            raise SourceError(f"{path}: unreadable header ({exc})") from exc
        header = [COLUMN_ALIASES.get(h.strip(), h.strip()) for h in header]
        columns = [h for h in header if h in KNOWN_LABELS]
        has_reader = "rad_id" in header
        for line, cells in _table(path, ("image_id", *columns), ("rad_id",) if has_reader else ()):
            image_id, values = cells[0], cells[1:1 + len(columns)]
            reader = cells[-1] if has_reader else "consensus"
            bad = [f"{c}={v!r}" for c, v in zip(columns, values) if v not in ("0", "1", "0.0", "1.0")]
            if not image_id or bad:
                scan.reject(path, line, "bad_image_label_row", f"image_id={image_id!r} {', '.join(bad)}")
                continue
            positive = {LABEL_SPELLINGS.get(c, c) for c, v in zip(columns, values) if v in ("1", "1.0")}
            labels.setdefault(image_id, {}).setdefault(reader or "consensus", set()).update(positive)
    scan.image_labels = {i: {r: tuple(sorted(ls)) for r, ls in sorted(rs.items())} for i, rs in sorted(labels.items())}
    scan.counts["images_with_image_labels"] = len(scan.image_labels)
