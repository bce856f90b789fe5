"""Reader for MIMIC-CXR-JPG (images, metadata, splits, CheXpert labels) and the MIMIC-CXR reports
(PhysioNet, credentialed).

On disk (MIMIC-CXR-JPG): `files/pNN/p<subject>/s<study>/<dicom_id>.jpg` beside
`mimic-cxr-2.0.0-{metadata,split,chexpert}.csv(.gz)`. Reports come from the MIMIC-CXR project:
`files/pNN/p<subject>/s<study>.txt`, unpacked or inside `mimic-cxr-reports.zip`. Each CSV is read
once into dicts (377k images stay a few seconds). Reports are cut into sections with the official
MIT-LCP rule (`txt/section_parser.py`): a header is newline, one space, upper-case
`[A-Z ()/,-]+`, colon; names are normalised (conclusion -> impression, findings and impression ->
impression, typos...); the last non-empty impression and the last non-empty findings are kept.
"""

from __future__ import annotations

import csv
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from radcorpora.schemas.cxr import (
    CHEXPERT_LABELS,
    CxrImage,
    LabelValue,
    Sex,
    Split,
    StudyReport,
    View,
)
from radcorpora.sources.base import (
    UNREADABLE,
    NotANumber,
    SourceInfo,
    SourceScan,
    find_file,
    open_text,
    pixels,
)
from radcorpora.sources.chexpert import LabelValueError, label_state
from radcorpora.sources.errors import SourceError

INFO = SourceInfo(
    name="mimic-cxr",
    title="MIMIC-CXR-JPG",
    licence_class="credentialed",
    licence=("PhysioNet Credentialed Health Data License 1.5.0: access needs PhysioNet credentialing, "
             "CITI data-research training and the signed data use agreement; no redistribution, and no "
             "sharing of the data with third parties (including online services) not covered by the agreement."),
    citation="""@misc{johnson2024mimiccxrjpg,
  title     = {{MIMIC-CXR-JPG} - chest radiographs with structured labels (version 2.1.0)},
  author    = {Johnson, Alistair and Lungren, Matthew and Peng, Yifan and Lu, Zhiyong and Mark, Roger
               and Berkowitz, Seth and Horng, Steven},
  publisher = {PhysioNet},
  year      = {2024},
  doi       = {10.13026/jsn5-t979}
}
@article{johnson2019mimiccxrjpg,
  title   = {{MIMIC-CXR-JPG}, a large publicly available database of labeled chest radiographs},
  author  = {Johnson, Alistair E. W. and Pollard, Tom J. and Greenbaum, Nathaniel R. and Lungren, Matthew P.
             and Deng, Chih-ying and Peng, Yifan and Lu, Zhiyong and Mark, Roger G. and Berkowitz, Seth J.
             and Horng, Steven},
  journal = {arXiv preprint arXiv:1901.07042},
  year    = {2019}
}
@article{johnson2019mimiccxr,
  title   = {{MIMIC-CXR}, a de-identified publicly available database of chest radiographs with free-text reports},
  author  = {Johnson, Alistair E. W. and Pollard, Tom J. and Berkowitz, Seth J. and Greenbaum, Nathaniel R.
             and Lungren, Matthew P. and Deng, Chih-ying and Mark, Roger G. and Horng, Steven},
  journal = {Scientific Data},
  volume  = {6},
  pages   = {317},
  year    = {2019},
  doi     = {10.1038/s41597-019-0322-0}
}""",
    labels=CHEXPERT_LABELS,
)

PREFIX = "mimic-cxr-2.0.0"  # MIMIC-CXR-JPG 2.1.0 still ships its tables under the 2.0.0 names
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns")
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
LABEL_COLUMNS = ("subject_id", "study_id", *CHEXPERT_LABELS)
SPLITS: dict[str, Split] = {"train": "train", "validate": "validation", "validation": "validation",
                            "val": "validation", "test": "test"}
VIEWS: dict[str, View] = {"PA": "PA", "AP": "AP", "LATERAL": "LATERAL", "LL": "LL", "XTABLE LATERAL": "LATERAL"}
REPORTS_ZIP = "mimic-cxr-reports.zip"
_REPORT_MEMBER = re.compile(r"(?:^|/)p\d+/p(\d+)/s(\d+)\.txt$")


# --- report sections (the official MIT-LCP rule, in our own code) ---------------------------------

SECTION_HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s")
# Header spellings seen in MIMIC-CXR -> canonical name (after lower-casing), as in the official
# normaliser; names not listed fall through to the substring rules in `normalise_section_name`.
SECTION_ALIASES: dict[str, str] = {
    "comparisons": "comparison", "comparison exam": "comparison", "comparison film": "comparison",
    "reference exam": "comparison", "comparision": "comparison", "comparsion": "comparison",
    "comparrison": "comparison", "comparisions": "comparison",
    "clinical history": "history", "clinical information": "history", "patient history": "history",
    "pfi": "history",
    "reason for examination": "indication", "reason for exam": "indication", "clinical indication": "indication",
    "idication": "indication",
    "exam": "examination", "type of examination": "examination",
    "conclusion": "impression", "findings and impression": "impression", "findings/impression": "impression",
    "findings/ impression": "impression", "ndication": "impression", "impresson": "impression",
    "imprression": "impression", "imoression": "impression", "impressoin": "impression",
    "imprssion": "impression", "impresion": "impression", "imperssion": "impression",
    "mpression": "impression", "impession": "impression",
    "chest, two views": "findings", "finding": "findings", "findins": "findings", "findindgs": "findings",
    "findgings": "findings", "findngs": "findings", "findnings": "findings", "finidngs": "findings",
    "reference findings": "findings",
    "recommendation(s)": "recommendations", "recommendation": "recommendations", "wetread": "wet read",
}
MAIN_SECTIONS = ("impression", "findings", "history", "comparison", "addendum")
# Headers that describe the whole study ("PA AND LATERAL CHEST:") hold findings.
STUDY_DESCRIPTION = re.compile(
    r"chest|portable|pa and lateral|lateral and pa|ap and lateral|lateral and ap|frontal and|two views|"
    r"frontal view|pa view|ap view|one view|lateral view|bone window|frontal upright|frontal semi-upright|"
    r"ribs|pa and lat")


def normalise_section_name(header: str) -> str:
    name = header.lower().strip()
    if name in SECTION_ALIASES:
        return SECTION_ALIASES[name]
    for main in MAIN_SECTIONS:
        if main in name:
            return main
    return "findings" if STUDY_DESCRIPTION.search(name) else name


def report_sections(text: str) -> list[tuple[str, str]]:
    """(normalised name, raw text) of each section in order, the text before the first header
    named `preamble`. Like the official parser, the search for the next header resumes after the
    end of the header's own line, so a header glued to its first sentence is not split again."""
    match = SECTION_HEADER.search(text)
    if match is None:
        return [("full report", text)]
    sections = [("preamble", text[:match.start(1)])]
    while match is not None:
        start = match.end()
        newline = text.find("\n", start)
        following = SECTION_HEADER.search(text, newline if newline != -1 else start)
        sections.append((normalise_section_name(match.group(1)), text[start:following.start() if following else len(text)]))
        match = following
    return sections


def collapse(text: str) -> str:
    return " ".join(text.split())


def findings_and_impression(text: str) -> tuple[str | None, str | None]:
    """The last non-empty findings and the last non-empty impression of a report, whitespace
    collapsed, PHI placeholders (`___`) kept as they are."""
    found: dict[str, str] = {}
    for name, body in report_sections(text):
        if name in ("findings", "impression") and body.strip():
            found[name] = collapse(body)
    return found.get("findings"), found.get("impression")


# --- scan ---------------------------------------------------------------------------------------

@dataclass
class MimicCxrScan(SourceScan[CxrImage]):
    """MIMIC-CXR-JPG images (in `records`, also `images`), CheXpert labels per study and
    sectioned reports per study (study ids without the `s`)."""

    labels: dict[str, dict[str, LabelValue]] = field(default_factory=dict)
    reports: dict[str, StudyReport] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # role -> file read

    @property
    def images(self) -> list[CxrImage]:
        return self.records


def find_root(root: Path) -> Path:
    """The folder holding `files/` and the CSVs (the `files/` folder itself is accepted too)."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: MIMIC-CXR-JPG folder does not exist")
    if not (root / "files").is_dir() and root.name == "files" and any(root.parent.glob(f"{PREFIX}-metadata.csv*")):
        return root.parent
    return root


def table_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, list[str | None]]]:
    """(line, stripped cells of `columns` in that order, None when empty) of a CSV (plain or .gz).
    A lean twin of `read_csv_rows` (same errors, same line numbers) without a dict per row: the
    MIMIC tables hold about a million rows together. Missing columns raise SourceError."""
    try:
        handle = open_text(path)
    except OSError as exc:
        raise SourceError(f"{path}: cannot open ({exc})") from exc
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, [])
            missing = [c for c in columns if c not in header]
            if missing:
                raise SourceError(f"{path}: missing column(s) {', '.join(missing)} "
                                  f"(found: {', '.join(header) or 'none'})")
            index = [header.index(c) for c in columns]
            width = max(index) + 1
            for line, row in enumerate(reader, start=2):
                if len(row) < width:
                    row = row + [""] * (width - len(row))
                yield line, [row[i].strip() or None for i in index]
        except UNREADABLE as exc:
            raise SourceError(f"{path}: unreadable after line {reader.line_num} ({exc})") from exc


def _table(root: Path, kind: str, required: bool = True) -> Path | None:
    names = (f"{PREFIX}-{kind}.csv.gz", f"{PREFIX}-{kind}.csv", f"mimic-cxr-*-{kind}.csv.gz", f"mimic-cxr-*-{kind}.csv")
    try:
        return find_file(root, names, f"MIMIC-CXR-JPG {kind} table")
    except SourceError:
        if required:
            raise
        return None


def view_position(value: str | None) -> View:
    """ViewPosition -> view: PA, AP, LATERAL, LL kept; other projections (AP AXIAL, LAO, PA LLD,
    SWIMMERS...) OTHER; empty UNKNOWN."""
    if value is None:
        return "UNKNOWN"
    return VIEWS.get(value.strip().upper(), "OTHER")


def _pixels(value: str | None) -> int | None:
    """An image side from the metadata, None when the cell is no usable size (`inf` included)."""
    try:
        return pixels(value)
    except NotANumber:
        return None


def scan_mimic_cxr(root: Path, reports_root: Path | None = None) -> MimicCxrScan:
    """Read MIMIC-CXR-JPG metadata, splits and CheXpert labels, and the reports (from
    `reports_root`, or from `root` when it holds them). Rejects (with CSV file and line): a
    metadata row whose JPG is missing, an image with no split row, a bad split or label value.
    A study without a label row simply has no labels (counted). Missing columns: SourceError."""
    root = find_root(root)
    scan = MimicCxrScan(info=INFO, root=root)
    split_of = _read_splits(scan, _table(root, "split"))
    sex_of = _read_sexes(scan, root)
    _read_images(scan, root, _table(root, "metadata"), split_of, sex_of)
    label_table = _table(root, "chexpert", required=False)
    if label_table is None:
        scan.warnings.append(f"{root}: no {PREFIX}-chexpert.csv(.gz); images have no labels")
    else:
        _read_labels(scan, label_table)
    _read_reports(scan, root, reports_root)
    studies = {i.study_id for i in scan.records}
    scan.counts["images"] = len(scan.records)
    scan.counts["studies"] = len(studies)
    scan.counts["studies_without_labels"] = len(studies - scan.labels.keys())
    scan.counts["studies_without_report"] = len(studies - scan.reports.keys()) if scan.reports else len(studies)
    return scan


def _read_splits(scan: MimicCxrScan, path: Path) -> dict[str, tuple[Split, str]]:
    scan.files["split"] = str(path)
    split_of: dict[str, tuple[Split, str]] = {}
    for line, (dicom_id, value) in table_rows(path, ("dicom_id", "split")):
        split = SPLITS.get((value or "").lower())
        if dicom_id is None or split is None:
            scan.reject(path, line, "bad_split_row", f"dicom_id={dicom_id!r} split={value!r}")
            continue
        if dicom_id in split_of and split_of[dicom_id][0] != split:
            scan.reject(path, line, "image_in_several_splits", f"{dicom_id}: {split_of[dicom_id][0]} and {split}")
            continue
        split_of[dicom_id] = (split, f"line {line}")
    return split_of


def _read_sexes(scan: MimicCxrScan, root: Path) -> dict[str, Sex]:
    """Optional MIMIC-IV `patients.csv(.gz)` (subject_id, gender) placed under the root."""
    names = [f"{folder}patients.csv{gz}" for folder in ("", "hosp/", "core/") for gz in (".gz", "")]
    path = next((root / n for n in names if (root / n).is_file()), None)
    if path is None:
        return {}
    scan.files["patients"] = str(path)
    sexes: dict[str, Sex] = {}
    for line, (subject, gender) in table_rows(path, ("subject_id", "gender")):
        gender = (gender or "").upper()
        if subject is None:
            scan.reject(path, line, "no_subject_id")
            continue
        sexes[subject] = "F" if gender == "F" else "M" if gender == "M" else "unknown"
    return sexes


def _read_images(scan: MimicCxrScan, root: Path, path: Path, split_of: dict[str, tuple[Split, str]],
                 sex_of: dict[str, Sex]) -> None:
    scan.files["metadata"] = str(path)
    files = str(root / "files")  # plain strings: pathlib joins would dominate a 377k-row pass
    seen: set[str] = set()
    for line, (dicom_id, subject_id, study_id, view, rows, columns) in table_rows(path, METADATA_COLUMNS):
        if not (dicom_id and subject_id and study_id):
            scan.reject(path, line, "missing_id", f"dicom_id={dicom_id!r} subject_id={subject_id!r} study_id={study_id!r}")
            continue
        if dicom_id in seen:
            scan.reject(path, line, "duplicate_image", dicom_id)
            continue
        image_path = f"{files}{os.sep}p{subject_id[:2]}{os.sep}p{subject_id}{os.sep}s{study_id}{os.sep}{dicom_id}.jpg"
        if not os.path.exists(image_path):
            scan.reject(path, line, "image_file_missing", f"{image_path} does not exist")
            continue
        split = split_of.get(dicom_id)
        if split is None:
            scan.reject(path, line, "no_split", f"{dicom_id} has no row in {Path(scan.files['split']).name}")
            continue
        seen.add(dicom_id)
        width, height = _pixels(columns), _pixels(rows)
        if width is None or height is None:
            scan.counts["images_without_size"] += 1
        scan.records.append(CxrImage(
            source=INFO.name, image_id=dicom_id, subject_id=subject_id, study_id=study_id, path=image_path,
            view=view_position(view), split=split[0], width=width, height=height,
            sex=sex_of.get(subject_id, "unknown"), licence_class=INFO.licence_class))
    scan.counts["split_rows_without_image"] = len(split_of.keys() - seen)
    scan.records.sort(key=lambda i: (i.subject_id, i.study_id or "", i.image_id))


def _read_labels(scan: MimicCxrScan, path: Path) -> None:
    scan.files["chexpert"] = str(path)
    subject_of = {i.study_id: i.subject_id for i in scan.records}
    for line, (subject_id, study_id, *values) in table_rows(path, LABEL_COLUMNS):
        if study_id is None:
            scan.reject(path, line, "missing_id", "no study_id")
            continue
        if study_id in scan.labels:
            scan.reject(path, line, "duplicate_study", study_id)
            continue
        if study_id in subject_of and subject_id != subject_of[study_id]:
            scan.reject(path, line, "label_subject_mismatch",
                        f"study {study_id}: subject {subject_id} here, {subject_of[study_id]} in the metadata")
            continue
        try:
            scan.labels[study_id] = {label: label_state(value) for label, value in zip(CHEXPERT_LABELS, values)}
        except LabelValueError:
            bad = [f"{label} = {value!r}" for label, value in zip(CHEXPERT_LABELS, values) if not _valid_label(value)]
            scan.reject(path, line, "bad_label_value", f"{path.name} line {line}: {', '.join(bad)}")
            continue
        if study_id not in subject_of:
            scan.counts["label_rows_without_images"] += 1


def _valid_label(value: str | None) -> bool:
    try:
        label_state(value)
    except LabelValueError:
        return False
    return True


def _report_source(root: Path, reports_root: Path | None) -> Path | None:
    """Where the reports are: a zip, or a folder whose `files/` (or itself) is the pNN tree."""
    given = reports_root is not None
    base = Path(reports_root) if given else root
    if given and not base.exists():
        raise SourceError(f"{base}: MIMIC-CXR reports folder or zip does not exist")
    if base.is_file():
        if base.suffix.lower() != ".zip":
            raise SourceError(f"{base}: expected {REPORTS_ZIP} or a folder holding files/pNN/p<subject>/s<study>.txt")
        return base
    for candidate in (base / "files", base / "mimic-cxr-reports" / "files", base / REPORTS_ZIP):
        if candidate.exists():
            return candidate
    if given and any(p.is_dir() and re.fullmatch(r"p\d\d", p.name) for p in base.iterdir()):
        return base
    if given:
        raise SourceError(f"{base}: no MIMIC-CXR reports found (looked for files/pNN/p<subject>/s<study>.txt "
                          f"and {REPORTS_ZIP})")
    return None


def _report_files(source: Path) -> Iterator[tuple[str, str, str, bytes | Path]]:
    """(subject, study, where, bytes or path) of every report file, in sorted order."""
    if source.is_file():
        try:
            archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError) as exc:
            raise SourceError(f"{source}: not a readable zip ({exc})") from exc
        with archive:
            for name in sorted(archive.namelist()):
                match = _REPORT_MEMBER.search(name)
                if match:
                    try:
                        data = archive.read(name)
                    except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
                        raise SourceError(f"{source}: member {name} unreadable ({exc})") from exc
                    yield match.group(1), match.group(2), f"{source}:{name}", data
        return
    for group in sorted(os.scandir(source), key=lambda e: e.name):
        if not (group.is_dir() and re.fullmatch(r"p\d+", group.name)):
            continue
        for subject in sorted(os.scandir(group.path), key=lambda e: e.name):
            if not (subject.is_dir() and subject.name.startswith("p")):
                continue
            for entry in sorted(os.scandir(subject.path), key=lambda e: e.name):
                if entry.name.startswith("s") and entry.name.endswith(".txt") and entry.is_file():
                    yield subject.name[1:], entry.name[1:-4], entry.path, Path(entry.path)


def _read_reports(scan: MimicCxrScan, root: Path, reports_root: Path | None) -> None:
    source = _report_source(root, reports_root)
    if source is None:
        return
    scan.files["reports"] = str(source)
    for subject_id, study_id, where, content in _report_files(source):
        try:
            raw = content.read_bytes() if isinstance(content, Path) else content
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            scan.reject(where, None, "report_unreadable", str(exc))
            continue
        if study_id in scan.reports:
            scan.reject(where, None, "duplicate_report", f"study {study_id} also in {scan.reports[study_id].file}")
            continue
        findings, impression = findings_and_impression(text)
        if findings is None and impression is None:
            scan.counts["reports_without_findings_or_impression"] += 1
        scan.reports[study_id] = StudyReport(source=INFO.name, subject_id=subject_id, study_id=study_id,
                                             findings=findings, impression=impression, file=where)
    if not scan.reports:
        if reports_root is not None:
            raise SourceError(f"{source}: no report files (s<study>.txt) found")
        del scan.files["reports"]  # the image tree holds no reports: that is the usual JPG layout
    scan.counts["reports"] = len(scan.reports)
