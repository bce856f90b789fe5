"""Reader for PadChest-GR (BIMCV, access by request): report sentences grounded by boxes.

On disk: `grounded_reports_<date>.json` (a list of studies: `StudyID`, `ImageID`, `findings`
with `sentence_en`, `sentence_es`, `abnormal`, `boxes`, `extra_boxes`, `labels`, `locations`,
`progression`; negative sentences often lack the box and label keys), `master_table.csv` (or
`master_table.csv.zip`; one row per (study, label): `ImageID, StudyID, PatientID, split,
PatientSex_DICOM, label_group`, ...) and the PNGs, either unpacked (`Padchest_GR_files/` or the
root) or still inside `Padchest_GR_files/PadChest_GR.zip.001 ... .NNN`, byte pieces of one zip.
The pieces are read in place through a seekable view over all of them; nothing is joined on disk.

Boxes are normalised xyxy. `boxes` is the first reader's annotation and becomes the finding's
boxes (readers "reader1"); `extra_boxes`, a second reader's, is kept apart in
`PadChestGRScan.second_reader` (same image, label and phrase, readers "reader2") so that a
grounding answer never mixes two annotators' boxes.

An image inside the zip has `CxrImage.path` = `<first piece>::<member name>`; `read_image_bytes`
reads both forms. RadVLM keeps AP/PA images only, using PadChest's `Projection`; the GR master
table is not known to carry it: when it does, other projections are skipped (counted), otherwise
nothing is filtered and a warning says so.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radcorpora.schemas.boxes import Box, BoxError
from radcorpora.schemas.cxr import CxrImage, GroundedFinding, Sex, Split, View
from radcorpora.sources.base import NotANumber, SourceInfo, SourceScan, cell, number, read_csv_rows
from radcorpora.sources.errors import SourceError

FILES_FOLDER = "Padchest_GR_files"
MASTER_COLUMNS = ("ImageID", "StudyID", "PatientID", "split")
SPLITS: dict[str, Split] = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}
FRONTAL: dict[str, View] = {"PA": "PA", "AP": "AP", "AP_HORIZONTAL": "AP"}
_PART = re.compile(r"^(.*\.zip)\.(\d+)$")

INFO = SourceInfo(
    name="padchest-gr",
    title="PadChest-GR",
    licence_class="restricted",
    licence=("PadChest-GR research use agreement (BIMCV, access by request form); no redistribution of the "
             "images or the grounded reports."),
    citation="""@article{castro2025padchestgr,
  title   = {{PadChest-GR}: A Bilingual Chest X-ray Dataset for Grounded Radiology Report Generation},
  author  = {de Castro, Daniel C. and Bustos, Aurelia and Bannur, Shruthi and Hyland, Stephanie L. and
             Bouzid, Kenza and Wetscherek, Maria Teodora and S{\\'a}nchez-Valverde, Maria Dolores and others},
  journal = {NEJM AI},
  year    = {2025}
}""",
)


class MultiPartFile(io.RawIOBase):
    """A read-only, seekable file over byte pieces that concatenate to one file (split zips)."""

    def __init__(self, parts: Sequence[Path]):
        super().__init__()
        self._parts = [Path(p) for p in parts]
        self._sizes = [p.stat().st_size for p in self._parts]
        self._starts = [sum(self._sizes[:i]) for i in range(len(self._sizes))]
        self._size = sum(self._sizes)
        self._pos = 0
        self._handles: dict[int, io.BufferedReader] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            index = max(i for i, start in enumerate(self._starts) if start <= self._pos)
            handle = self._handles.get(index)
            if handle is None:
                handle = self._handles[index] = open(self._parts[index], "rb")  # noqa: SIM115 (closed in close())
            handle.seek(self._pos - self._starts[index])
            want = min(len(view) - done, self._starts[index] + self._sizes[index] - self._pos)
            got = handle.readinto(view[done:done + want])
            if not got:
                break
            done += got
            self._pos += got
        return done

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        super().close()


def zip_parts(first: Path) -> list[Path]:
    """All pieces of the split zip whose first piece (or any piece) is `first`, in order."""
    first = Path(first)
    match = _PART.match(first.name)
    if match is None:
        return [first]
    stem = match.group(1)
    pieces = [(int(m.group(2)), p) for p in first.parent.iterdir() if (m := _PART.match(p.name)) and m.group(1) == stem]
    return [p for _, p in sorted(pieces)]


@contextmanager
def open_split_zip(first: Path) -> Iterator[zipfile.ZipFile]:
    """The zip made of `first`'s pieces, read in place; SourceError if it is not a zip."""
    parts = zip_parts(first)
    try:
        stream = MultiPartFile(parts)
        archive = zipfile.ZipFile(io.BufferedReader(stream, buffer_size=1 << 16))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise SourceError(f"{first}: pieces {', '.join(p.name for p in parts)} do not form a readable zip ({exc})") from exc
    try:
        yield archive
    finally:
        archive.close()
        stream.close()


_OPEN_ARCHIVES: OrderedDict[tuple, tuple[Any, zipfile.ZipFile]] = OrderedDict()
_MAX_OPEN_ARCHIVES = 4


def _archive(first: Path) -> zipfile.ZipFile:
    """The split zip, opened once per process (reading its central directory costs more than a
    member): kept open, keyed by its pieces' size and mtime so a changed zip is opened again."""
    parts = zip_parts(first)
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in parts)
    if key in _OPEN_ARCHIVES:
        _OPEN_ARCHIVES.move_to_end(key)
        return _OPEN_ARCHIVES[key][1]
    manager = open_split_zip(first)
    archive = manager.__enter__()
    _OPEN_ARCHIVES[key] = (manager, archive)
    while len(_OPEN_ARCHIVES) > _MAX_OPEN_ARCHIVES:
        old_manager, _ = _OPEN_ARCHIVES.popitem(last=False)[1]
        old_manager.__exit__(None, None, None)
    return archive


def read_image_bytes(image: CxrImage) -> bytes:
    """The PNG bytes of an image, from its file or from inside the split zip (`pieces::member`)."""
    if "::" in image.path:
        first, member = image.path.rsplit("::", 1)
        try:
            return _archive(Path(first)).read(member)
        except (KeyError, zipfile.BadZipFile, OSError, RuntimeError, EOFError) as exc:
            raise SourceError(f"{first}: member {member} unreadable ({exc})") from exc
    try:
        return Path(image.path).read_bytes()
    except OSError as exc:
        raise SourceError(f"{image.path}: cannot read image ({exc})") from exc


def png_size(header: bytes) -> tuple[int, int] | None:
    """(width, height) from the first 24 bytes of a PNG, None if it is not one."""
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", header[16:24])


@dataclass
class PadChestGRScan(SourceScan[GroundedFinding]):
    """`images`, `findings` (= records, first reader) and `second_reader` (extra_boxes)."""

    images: list[CxrImage] = field(default_factory=list)
    second_reader: list[GroundedFinding] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    projection_filtered: bool = False

    @property
    def findings(self) -> list[GroundedFinding]:
        return self.records


def _master_rows(root: Path, scan: PadChestGRScan):
    plain = root / "master_table.csv"
    if plain.is_file():
        scan.files["master_table"] = str(plain)
        return plain, list(read_csv_rows(plain, MASTER_COLUMNS))
    zipped = root / "master_table.csv.zip"
    if not zipped.is_file():
        raise SourceError(f"{root}: no master_table.csv or master_table.csv.zip")
    scan.files["master_table"] = str(zipped)
    try:
        with zipfile.ZipFile(zipped) as archive:
            names = [n for n in archive.namelist() if n.endswith(".csv") and not n.startswith("__MACOSX")]
            if not names:
                raise SourceError(f"{zipped}: holds no .csv")
            text = archive.read(names[0]).decode("utf-8-sig")
    except (zipfile.BadZipFile, OSError, RuntimeError, EOFError, UnicodeDecodeError) as exc:
        raise SourceError(f"{zipped}: not a readable zip of a UTF-8 CSV ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in MASTER_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise SourceError(f"{zipped}::{names[0]}: missing column(s) {', '.join(missing)} "
                          f"(found: {', '.join(reader.fieldnames or []) or 'none'})")
    try:
        rows = list(enumerate(reader, start=2))
    except csv.Error as exc:
        raise SourceError(f"{zipped}::{names[0]}: unreadable after line {reader.line_num} ({exc})") from exc
    return Path(f"{zipped}::{names[0]}"), rows


def _local_pngs(root: Path) -> dict[str, str]:
    """PNG name -> path in the root, Padchest_GR_files/ and its direct subfolders."""
    found: dict[str, str] = {}
    folders = [root, root / FILES_FOLDER]
    if (root / FILES_FOLDER).is_dir():
        folders += sorted(p for p in (root / FILES_FOLDER).iterdir() if p.is_dir())
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.lower().endswith(".png") and entry.is_file():
                found.setdefault(entry.name, entry.path)
    return found


def _first_piece(root: Path) -> Path | None:
    folder = root / FILES_FOLDER
    for base in (folder, root):
        if not base.is_dir():
            continue
        pieces = sorted(p for p in base.iterdir() if _PART.match(p.name))
        if pieces:
            return zip_parts(pieces[0])[0]
        whole = sorted(base.glob("*.zip"))
        if whole:
            return whole[0]
    return None


def scan_padchest_gr(root: Path) -> PadChestGRScan:
    """Read the grounded reports, the master table and where each PNG is. Rejects: an image not
    in the master table or without its PNG, a finding with a box the Box type refuses (the whole
    sentence: part of a box set would ground the phrase wrongly), a study entry without ImageID.
    Missing master-table columns or an unreadable JSON: SourceError."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: PadChest-GR folder does not exist")
    reports = sorted(root.glob("grounded_reports*.json"))
    if not reports:
        raise SourceError(f"{root}: no grounded_reports_*.json")
    report_path = reports[-1]  # dated names: the last is the newest
    scan = PadChestGRScan(info=INFO, root=root)
    scan.files["grounded_reports"] = str(report_path)
    try:
        studies = json.loads(report_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SourceError(f"{report_path}: not readable JSON ({exc})") from exc
    if not isinstance(studies, list):
        raise SourceError(f"{report_path}: expected a list of studies, got {type(studies).__name__}")

    master_path, master_rows = _master_rows(root, scan)
    has_projection = bool(master_rows) and "Projection" in master_rows[0][1]
    scan.projection_filtered = has_projection
    if not has_projection:
        scan.warnings.append("master table has no Projection column: images are not filtered to AP/PA")
    master: dict[str, dict[str, str | None]] = {}
    for line, row in master_rows:
        image_id = cell(row, "ImageID")
        values = {k: cell(row, k) for k in ("StudyID", "PatientID", "split", "PatientSex_DICOM", "Projection")}
        if image_id is None:
            scan.reject(master_path, line, "missing_id", "no ImageID")
            continue
        known = master.get(image_id)
        if known is None:
            master[image_id] = values | {"line": str(line)}
        elif any(known[k] != values[k] for k in ("StudyID", "PatientID", "split")):
            scan.reject(master_path, line, "master_table_conflict",
                        f"{image_id}: {values} here, { {k: known[k] for k in values} } on line {known['line']}")

    local = _local_pngs(root)
    members: dict[str, str] = {}
    first_piece = _first_piece(root)
    if first_piece is not None:
        scan.files["images_zip"] = str(first_piece)
        with open_split_zip(first_piece) as archive:
            for info in archive.infolist():
                name = info.filename.rsplit("/", 1)[-1]
                if name.lower().endswith(".png") and not info.is_dir():
                    members.setdefault(name, info.filename)
    zip_sizes = _member_sizes(first_piece, members) if members else {}

    images: dict[str, CxrImage] = {}
    for index, study in enumerate(studies):
        where = f"[{index}]"
        if not isinstance(study, dict) or not study.get("ImageID"):
            scan.reject(report_path, where, "missing_id", "study entry without ImageID")
            continue
        image_id = str(study["ImageID"]).strip()
        where = f"[{index}] {image_id}"
        if image_id in images:
            scan.reject(report_path, where, "duplicate_image", f"{image_id} listed twice")
            continue
        row = master.get(image_id)
        if row is None:
            scan.reject(report_path, where, "not_in_master_table", f"{image_id} has no row in {master_path.name}")
            continue
        split = SPLITS.get((row["split"] or "").lower())
        if split is None or not row["PatientID"]:
            scan.reject(report_path, where, "bad_master_row", f"{image_id}: split={row['split']!r} "
                                                              f"PatientID={row['PatientID']!r} (line {row['line']})")
            continue
        view: View = "UNKNOWN"
        if has_projection:
            projection = (row["Projection"] or "").upper()
            if projection not in FRONTAL:
                scan.counts[f"skipped_projection_{projection or 'empty'}"] += 1
                continue
            view = FRONTAL[projection]
        if image_id in local:
            path, size = local[image_id], _file_png_size(local[image_id])
        elif image_id in members:
            path, size = f"{first_piece}::{members[image_id]}", zip_sizes.get(image_id)
        else:
            scan.reject(report_path, where, "image_file_missing", f"{image_id}: not in {FILES_FOLDER}/, the root "
                                                                  "or the split zip")
            continue
        sex_text = (row["PatientSex_DICOM"] or "").upper()
        sex: Sex = "F" if sex_text == "F" else "M" if sex_text == "M" else "unknown"
        image = CxrImage(source=INFO.name, image_id=image_id, subject_id=row["PatientID"],
                         study_id=str(study.get("StudyID") or row["StudyID"] or "") or None, path=path, view=view,
                         split=split, width=size[0] if size else None, height=size[1] if size else None, sex=sex,
                         licence_class=INFO.licence_class)
        images[image_id] = image
        _findings(scan, report_path, where, image, study.get("findings") or [])
    scan.images = sorted(images.values(), key=lambda i: (i.subject_id, i.study_id or "", i.image_id))
    order = {i.image_id: n for n, i in enumerate(scan.images)}
    scan.records.sort(key=lambda f: (order[f.image.image_id], f.phrase or "", f.label))
    scan.second_reader.sort(key=lambda f: (order[f.image.image_id], f.phrase or "", f.label))
    scan.counts["images"] = len(scan.images)
    scan.counts["sentences"] = len(scan.records)
    scan.counts["sentences_with_boxes"] = sum(1 for f in scan.records if f.boxes)
    scan.counts["sentences_with_second_reader"] = len(scan.second_reader)
    return scan


def _boxes(values: object, key: str) -> tuple[Box, ...]:
    if not isinstance(values, list):
        raise BoxError("not_a_list", f"{key} {values!r}")
    boxes = []
    for n, value in enumerate(values):
        if not isinstance(value, (list, tuple)) or len(value) != 4:
            raise BoxError("not_four_numbers", f"{key}[{n}] {value!r}")
        boxes.append(Box.from_normalised(*[number(v, f"{key}[{n}][{i}]") for i, v in enumerate(value)]))
    return tuple(boxes)


def _findings(scan: PadChestGRScan, report_path: Path, where: str, image: CxrImage, findings: object) -> None:
    if not isinstance(findings, list):
        scan.reject(report_path, where, "bad_findings", "findings is not a list")
        return
    for index, finding in enumerate(findings):
        place = f"{where} findings[{index}]"
        if not isinstance(finding, dict) or not str(finding.get("sentence_en") or "").strip():
            scan.reject(report_path, place, "finding_without_sentence", "no sentence_en")
            continue
        raw_labels = finding.get("labels") or []
        if not isinstance(raw_labels, list):
            scan.reject(report_path, place, "bad_labels", f"labels is not a list: {raw_labels!r}"[:200])
            continue
        labels = [str(x) for x in raw_labels if str(x).strip()]
        label = labels[0] if labels else "finding"
        phrase = str(finding["sentence_en"]).strip()
        abnormal = bool(finding.get("abnormal", bool(finding.get("boxes"))))
        try:
            boxes = _boxes(finding.get("boxes") or [], "boxes")
            extra = _boxes(finding.get("extra_boxes") or [], "extra_boxes")
        except (BoxError, NotANumber) as exc:
            scan.reject(report_path, place, f"box_{exc.reason}", f"{report_path.name} {place}: {exc.detail}")
            continue
        scan.records.append(GroundedFinding(image=image, label=label, phrase=phrase, boxes=boxes,
                                            readers=("reader1",) * len(boxes), abnormal=abnormal))
        if extra:
            scan.second_reader.append(GroundedFinding(image=image, label=label, phrase=phrase, boxes=extra,
                                                      readers=("reader2",) * len(extra), abnormal=abnormal))


def _file_png_size(path: str) -> tuple[int, int] | None:
    try:
        with open(path, "rb") as handle:
            return png_size(handle.read(24))
    except OSError:
        return None


def _member_sizes(first_piece: Path, members: dict[str, str]) -> dict[str, tuple[int, int]]:
    """PNG sizes of the zip members, from the first 24 bytes of each."""
    sizes: dict[str, tuple[int, int]] = {}
    with open_split_zip(first_piece) as archive:
        for name, member in members.items():
            try:
                with archive.open(member) as handle:
                    size = png_size(handle.read(24))
            except (zipfile.BadZipFile, OSError, RuntimeError, EOFError):
                size = None
            if size:
                sizes[name] = size
    return sizes
