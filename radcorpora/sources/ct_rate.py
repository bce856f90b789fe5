"""Reader for CT-RATE (HF `ibrahimhamamci/CT-RATE`, gated; chest CT volumes with reports).

On disk (FORMATS.md §14a; the folder may sit inside a `dataset/` folder):
```
train/train_<pid>/train_<pid>_<scan>/train_<pid>_<scan>_<recon>.nii.gz   (newer release: train_fixed/)
valid/valid_<pid>/valid_<pid>_<scan>/valid_<pid>_<scan>_<recon>.nii.gz   (newer release: valid_fixed/)
radiology_text_reports/train_reports.csv, validation_reports.csv
metadata/train_metadata.csv, validation_metadata.csv
multi_abnormality_labels/train_predicted_labels.csv, valid_predicted_labels.csv
```
Checked against the authors' loaders (CT-CLIP `scripts/data_inference_nii.py`,
`data_preprocess/preprocess_ctrate_valid.py`): `VolumeName` is the file name with `.nii.gz` and
the join key of every table; reports carry `Findings_EN` / `Impressions_EN` (+ `ClinicalInformation_EN`,
`Technique_EN`), "Not given." standing for no text; HU = stored x `RescaleSlope` + `RescaleIntercept`
from the metadata; `XYSpacing` is a list string ("[0.75, 0.75]") and `ZSpacing` a number.

One report per scan: the reconstructions `_1`, `_2` of scan `train_1_a` share one report, kept
once with every reconstruction in `volumes`. Volume files are found by name anywhere below the
split's folder, so the nesting does not matter; when both `train/` and `train_fixed/` hold a
volume, the `_fixed` copy (re-written headers) is used. Spacing and rescale come from the
metadata CSV (XYSpacing read as DICOM PixelSpacing [row, column]: i = column, j = row), not the
headers. Whether the `_fixed` volumes already store HU is not known (FORMATS.md open item 12):
each volume records the folder it came from (`layout`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from radcorpora.schemas.ct import CtReport, CtVolumeFile
from radcorpora.sources.base import NotANumber, SourceInfo, SourceScan, cell, number, read_csv_rows
from radcorpora.sources.errors import SourceError

LABELS: tuple[str, ...] = (
    "Medical material", "Arterial wall calcification", "Cardiomegaly", "Pericardial effusion",
    "Coronary artery wall calcification", "Hiatal hernia", "Lymphadenopathy", "Emphysema", "Atelectasis",
    "Lung nodule", "Lung opacity", "Pulmonary fibrotic sequela", "Pleural effusion", "Mosaic attenuation pattern",
    "Peribronchial thickening", "Consolidation", "Bronchiectasis", "Interlobular septal thickening",
)

INFO = SourceInfo(
    name="ct-rate",
    title="CT-RATE",
    licence_class="restricted",
    licence=("CT-RATE (Hugging Face ibrahimhamamci/CT-RATE, gated access): believed CC BY-NC-SA 4.0; "
             "non-commercial research use; check the dataset page before redistributing volumes."),
    citation="""@article{hamamci2024developing,
  title   = {Developing Generalist Foundation Models from a Multimodal Dataset for 3D Computed Tomography},
  author  = {Hamamci, Ibrahim Ethem and Er, Sezgin and Almas, Furkan and Simsek, Ayse Gulnihan and Esirgun,
             Sevval Nil and Dogan, Irem and Dasdelen, Muhammed Furkan and Wittmann, Bastian and Simsar, Enis
             and Simsar, Mehmet and others},
  journal = {arXiv preprint arXiv:2403.17834},
  year    = {2024}
}""",
    labels=LABELS,
)

# split, volume folder prefix, reports, metadata, labels (first existing name wins)
SPLITS = (
    ("train", "train", ("train_reports.csv",), ("train_metadata.csv",), ("train_predicted_labels.csv",)),
    ("validation", "valid", ("validation_reports.csv", "valid_reports.csv"),
     ("validation_metadata.csv", "valid_metadata.csv"),
     ("valid_predicted_labels.csv", "validation_predicted_labels.csv")),
)
REPORTS_DIR, METADATA_DIR, LABELS_DIR = "radiology_text_reports", "metadata", "multi_abnormality_labels"
VOLUME_NAME = re.compile(r"^(?P<prefix>[a-z]+)_(?P<pid>\d+)_(?P<scan>[a-z]+)_(?P<recon>\d+)\.nii(?:\.gz)?$")
NOT_GIVEN = {"not given.", "not given", "nan", "none"}
METADATA_COLUMNS = ("VolumeName", "RescaleSlope", "RescaleIntercept", "XYSpacing", "ZSpacing")
REPORT_COLUMNS = ("VolumeName", "Findings_EN", "Impressions_EN")


@dataclass(frozen=True)
class _Metadata:
    slope: float
    intercept: float
    spacing: tuple[float, float, float]


@dataclass
class CtRateScan(SourceScan[CtReport]):
    """CT-RATE reports, one per scan (in `records`), and the tables read."""

    files: dict[str, str] = field(default_factory=dict)  # "<split> reports|metadata|labels" -> path

    @property
    def reports(self) -> list[CtReport]:
        return self.records


def find_dataset_dir(root: Path) -> Path:
    """The folder holding `radiology_text_reports/`: `root` or `root/dataset`."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: CT-RATE folder does not exist")
    for candidate in (root, root / "dataset"):
        if (candidate / REPORTS_DIR).is_dir():
            return candidate
    raise SourceError(f"{root}: no {REPORTS_DIR}/ folder here or in dataset/")


def _first(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def text_cell(row: dict, column: str) -> str | None:
    """A report cell, None when empty or CT-RATE's "Not given." placeholder."""
    value = cell(row, column)
    return None if value is None or value.lower() in NOT_GIVEN else value


def parse_xy_spacing(value: object) -> tuple[float, float]:
    """`"[0.75, 0.75]"` (DICOM PixelSpacing: row, column) -> (row, column) in mm; NotANumber otherwise."""
    text = str(value if value is not None else "").strip().strip("[]()").strip()
    parts = [p for p in re.split(r"[,\s\\]+", text) if p]
    if len(parts) != 2:
        raise NotANumber("XYSpacing", value, "two spacings like [0.75, 0.75]")
    row, col = (number(p, "XYSpacing") for p in parts)
    if row <= 0 or col <= 0:
        raise NotANumber("XYSpacing", value, "two spacings > 0")
    return row, col


def volume_index(dataset: Path, prefix: str) -> dict[str, tuple[str, str]]:
    """File name -> (path relative to the dataset folder, layout folder) for every NIfTI below
    `<prefix>/` and `<prefix>_fixed/`; the `_fixed` copy wins."""
    index: dict[str, tuple[str, str]] = {}
    for layout in (prefix, f"{prefix}_fixed"):
        top = dataset / layout
        if not top.is_dir():
            continue
        for folder, dirs, files in os.walk(top):
            dirs.sort()
            for name in sorted(files):
                if name.endswith((".nii.gz", ".nii")):
                    rel = PurePosixPath(*Path(folder, name).relative_to(dataset).parts).as_posix()
                    index[name] = (rel, layout)
    return index


def scan_ct_rate(root: Path) -> CtRateScan:
    """Read the reports, metadata and labels of both splits into one CtReport per scan. Bad rows
    (no volume name, no text, bad metadata numbers, missing volume file, duplicates) are rejects
    with file and line; a missing required column is a SourceError."""
    dataset = find_dataset_dir(root)
    scan = CtRateScan(info=INFO, root=dataset)
    for split, prefix, report_names, metadata_names, label_names in SPLITS:
        reports = _first(dataset / REPORTS_DIR, report_names)
        if reports is None:
            scan.warnings.append(f"{dataset / REPORTS_DIR}: no {report_names[0]}; the {split} split is empty")
            continue
        scan.files[f"{split} reports"] = str(reports)
        metadata, bad_metadata = _read_metadata(scan, _first(dataset / METADATA_DIR, metadata_names), split)
        labels = _read_labels(scan, _first(dataset / LABELS_DIR, label_names), split)
        index = volume_index(dataset, prefix)
        if not index:
            scan.warnings.append(f"{dataset}: no volumes under {prefix}/ or {prefix}_fixed/")
        _read_reports(scan, reports, split, metadata, bad_metadata, labels, index)
    if not scan.files:
        raise SourceError(f"{dataset}: no CT-RATE report CSV could be read")
    scan.records.sort(key=lambda r: (r.split, r.patient_id, r.scan_id))
    scan.counts["scans"] = len(scan.records)
    scan.counts["volumes"] = sum(len(r.volumes) for r in scan.records)
    return scan


def _read_metadata(scan: CtRateScan, path: Path | None, split: str
                   ) -> tuple[dict[str, _Metadata], dict[str, str]]:
    good: dict[str, _Metadata] = {}
    bad: dict[str, str] = {}
    if path is None:
        scan.warnings.append(f"no {split} metadata CSV: spacing and rescale come from the NIfTI headers")
        return good, bad
    scan.files[f"{split} metadata"] = str(path)
    for line, row in read_csv_rows(path, METADATA_COLUMNS):
        name = cell(row, "VolumeName")
        if name is None:
            scan.reject(path, line, "no_volume_name")
            continue
        if name in good or name in bad:
            scan.reject(path, line, "duplicate_metadata", f"{name} already has a metadata row")
            continue
        try:
            slope = number(row.get("RescaleSlope"), "RescaleSlope")
            if slope == 0:
                raise NotANumber("RescaleSlope", row.get("RescaleSlope"), "a non-zero number")
            intercept = number(row.get("RescaleIntercept"), "RescaleIntercept")
            xy_row, xy_col = parse_xy_spacing(row.get("XYSpacing"))
            z = number(row.get("ZSpacing"), "ZSpacing")
            if z <= 0:
                raise NotANumber("ZSpacing", row.get("ZSpacing"), "a spacing > 0")
        except NotANumber as exc:
            scan.reject(path, line, "bad_metadata", exc.detail)
            bad[name] = f"{path.name} line {line}: {exc.detail}"
            continue
        good[name] = _Metadata(slope, intercept, (xy_col, xy_row, z))
    return good, bad


def _read_labels(scan: CtRateScan, path: Path | None, split: str) -> dict[str, dict[str, bool]]:
    labels: dict[str, dict[str, bool]] = {}
    if path is None:
        scan.warnings.append(f"no {split} multi-abnormality labels CSV")
        return labels
    scan.files[f"{split} labels"] = str(path)
    rows = read_csv_rows(path, ("VolumeName",))
    for line, row in rows:
        name = cell(row, "VolumeName")
        if name is None:
            scan.reject(path, line, "no_volume_name")
            continue
        states: dict[str, bool] = {}
        try:
            for column in row:
                if column in ("VolumeName", None):
                    continue
                value = number(row.get(column), column)
                if value not in (0.0, 1.0):
                    raise NotANumber(column, row.get(column), "0 or 1")
                states[column] = value == 1.0
        except NotANumber as exc:
            scan.reject(path, line, "bad_label_value", exc.detail)
            continue
        if name in labels:
            scan.reject(path, line, "duplicate_labels", f"{name} already has a labels row")
            continue
        labels[name] = states
    return labels


@dataclass
class _ScanParts:
    file: str
    line: int
    texts: dict[str, str | None]
    patient_id: str
    volumes: list[CtVolumeFile] = field(default_factory=list)
    labels: dict[str, bool] | None = None


def _read_reports(scan: CtRateScan, path: Path, split: str, metadata: dict[str, _Metadata],
                  bad_metadata: dict[str, str], labels: dict[str, dict[str, bool]],
                  index: dict[str, tuple[str, str]]) -> None:
    scans: dict[str, _ScanParts] = {}
    seen: set[str] = set()
    for line, row in read_csv_rows(path, REPORT_COLUMNS):
        scan.counts[f"rows_{split}"] += 1
        name = cell(row, "VolumeName")
        if name is None:
            scan.reject(path, line, "no_volume_name")
            continue
        match = VOLUME_NAME.match(name)
        if match is None:
            scan.reject(path, line, "bad_volume_name", f"{name!r} is not <split>_<patient>_<scan>_<recon>.nii.gz")
            continue
        if name in seen:
            scan.reject(path, line, "duplicate_volume", f"{name} listed twice")
            continue
        seen.add(name)
        texts = {"findings": text_cell(row, "Findings_EN"), "impression": text_cell(row, "Impressions_EN"),
                 "clinical_information": text_cell(row, "ClinicalInformation_EN"),
                 "technique": text_cell(row, "Technique_EN")}
        if texts["findings"] is None and texts["impression"] is None:
            scan.reject(path, line, "no_report_text", f"{name}: Findings_EN and Impressions_EN are empty")
            continue
        if name in bad_metadata:
            scan.reject(path, line, "volume_metadata_rejected", f"{name}: {bad_metadata[name]}")
            continue
        found = index.get(name)
        if found is None:
            scan.reject(path, line, "volume_file_missing", f"{name} is in no {match['prefix']}/ folder")
            continue
        meta = metadata.get(name)
        if meta is None:
            scan.counts["volumes_without_metadata"] += 1
        volume = CtVolumeFile(
            volume_id=name.split(".nii")[0], path=found[0], layout=found[1],
            rescale_slope=meta.slope if meta else None, rescale_intercept=meta.intercept if meta else None,
            spacing=meta.spacing if meta else None)
        scan_id = f"{match['prefix']}_{match['pid']}_{match['scan']}"
        parts = scans.get(scan_id)
        if parts is None:
            parts = scans[scan_id] = _ScanParts(str(path), line, texts, f"{match['prefix']}_{match['pid']}")
        elif parts.texts != texts:
            scan.counts["reconstruction_report_differs"] += 1
            scan.warnings.append(f"{path.name} line {line}: {name}'s report differs from its scan's first "
                                 f"reconstruction (line {parts.line}); the first is kept")
        parts.volumes.append(volume)
        if parts.labels is None and name in labels:
            parts.labels = labels[name]
    for scan_id, parts in scans.items():
        scan.records.append(CtReport(
            source=INFO.name, scan_id=scan_id, patient_id=parts.patient_id, split=split,
            licence_class=INFO.licence_class, volumes=tuple(sorted(parts.volumes, key=lambda v: v.volume_id)),
            labels=parts.labels or {}, file=parts.file, row=str(parts.line), **parts.texts))
