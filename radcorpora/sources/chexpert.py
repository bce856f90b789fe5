"""Reader for CheXpert v1.0 (Stanford AIMI; research-use agreement).

On disk: `CheXpert-v1.0-small/` (or the full-resolution `CheXpert-v1.0/`) holding `train.csv`,
`valid.csv` and `train|valid/patientNNNNN/studyN/viewK_frontal|lateral.jpg`. The CSV `Path`
column repeats that folder name as its first component (`CheXpert-v1.0-small/train/...`); it is
stripped and the rest resolved against the folder, so either download works wherever it lies.
The CheXlocalize test labels (`test_labels.csv`, `Path` = `test/...`, labels only) give the test
split when present; having no view columns, their views come from the file names.

The label and view helpers here are shared with the other CheXpert-vocabulary readers
(MIMIC-CXR's chexpert CSV, CheXpert-Plus' CheXbert JSON).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from radcorpora.schemas.cxr import CHEXPERT_LABELS, CxrImage, LabelValue, Sex, View
from radcorpora.sources.base import SourceInfo, SourceScan, cell, inside, read_csv_rows
from radcorpora.sources.errors import SourceError

INFO = SourceInfo(
    name="chexpert",
    title="CheXpert v1.0",
    licence_class="restricted",
    licence=("Stanford University School of Medicine CheXpert Dataset Research Use Agreement: "
             "registration required; non-commercial research use only; no redistribution of the images."),
    citation="""@inproceedings{irvin2019chexpert,
  title     = {CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert Comparison},
  author    = {Irvin, Jeremy and Rajpurkar, Pranav and Ko, Michael and Yu, Yifan and Ciurea-Ilcus, Silviana
               and Chute, Chris and Marklund, Henrik and Haghgoo, Behzad and Ball, Robyn and Shpanskaya, Katie
               and Seekins, Jayne and Mong, David A. and Halabi, Safwan S. and Sandberg, Jesse K. and Jones, Ricky
               and Larson, David B. and Langlotz, Curtis P. and Patel, Bhavik N. and Lungren, Matthew P.
               and Ng, Andrew Y.},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  volume    = {33},
  number    = {01},
  pages     = {590--597},
  year      = {2019},
  doi       = {10.1609/aaai.v33i01.3301590}
}""",
    labels=CHEXPERT_LABELS,
)

FOLDER_PREFIX = "CheXpert-v1.0"  # matches CheXpert-v1.0 and CheXpert-v1.0-small
SPLIT_FILES = (("train", ("train.csv", "train.csv.gz")), ("validation", ("valid.csv", "valid.csv.gz")),
               ("test", ("test_labels.csv", "test_labels.csv.gz")))
# Columns the test labels (CheXlocalize) do not carry; train/valid must have them.
DESCRIPTIVE_COLUMNS = ("Sex", "Frontal/Lateral", "AP/PA")

_LABEL_STATES: dict[str, LabelValue] = {
    "1": "positive", "1.0": "positive", "0": "negative", "0.0": "negative", "-0.0": "negative",
    "-1": "uncertain", "-1.0": "uncertain",
}


class LabelValueError(ValueError):
    """A label cell that is none of 1.0 / 0.0 / -1.0 / empty."""


def label_state(value: object) -> LabelValue:
    """CheXpert table value -> label state: 1.0 positive, 0.0 negative, -1.0 uncertain, empty or
    null not mentioned. Anything else raises LabelValueError (the caller rejects the row)."""
    if value is None:
        return "not_mentioned"
    if isinstance(value, bool):
        raise LabelValueError(repr(value))
    if isinstance(value, (int, float)):
        value = repr(float(value))
    text = str(value).strip()
    if not text or text.lower() in ("nan", "null", "none"):
        return "not_mentioned"
    state = _LABEL_STATES.get(text)
    if state is None:
        try:
            state = _LABEL_STATES.get(repr(float(text)))
        except ValueError:
            state = None
    if state is None:
        raise LabelValueError(repr(value))
    return state


def label_states(row: dict, where: str) -> dict[str, LabelValue]:
    """All 14 CheXpert labels of one table row (dict or JSON object); raises LabelValueError
    naming the label at fault."""
    states: dict[str, LabelValue] = {}
    for label in CHEXPERT_LABELS:
        try:
            states[label] = label_state(row.get(label))
        except LabelValueError as exc:
            raise LabelValueError(f"{where}: {label} = {exc}") from None
    return states


_VIEW_FILE = re.compile(r"(?:^|/)view\d+_(frontal|lateral)\.[a-z]+$", re.IGNORECASE)


def chexpert_view(frontal_lateral: str | None, ap_pa: str | None, image_path: str | None = None) -> View:
    """CheXpert's two view columns -> one view: Frontal + AP/PA gives AP or PA (LL stays LL, any
    other projection OTHER, none FRONTAL: frontal, projection unstated); Lateral gives LATERAL.
    When `Frontal/Lateral` is empty or absent (CheXlocalize's test labels have no view columns),
    the file name says it: `viewK_frontal.jpg` is frontal, `viewK_lateral.jpg` lateral. UNKNOWN
    when neither does."""
    kind = (frontal_lateral or "").strip().lower()
    if kind not in ("frontal", "lateral") and image_path:
        match = _VIEW_FILE.search(image_path)
        kind = match.group(1).lower() if match else kind
    projection = (ap_pa or "").strip().upper()
    if kind == "lateral":
        return "LATERAL"
    if kind == "frontal":
        if projection in ("AP", "PA", "LL"):
            return projection  # type: ignore[return-value]
        return "OTHER" if projection else "FRONTAL"
    return "UNKNOWN"


def chexpert_sex(value: str | None) -> Sex:
    text = (value or "").strip().lower()
    return "F" if text in ("female", "f") else "M" if text in ("male", "m") else "unknown"


def patient_and_study(image_id: str) -> tuple[str, str] | None:
    """(`patientNNNNN`, `patientNNNNN/studyN`) from a relative image path, None if it has none."""
    parts = image_id.split("/")
    for i, part in enumerate(parts[:-1]):
        if part.startswith("patient") and i + 1 < len(parts) - 1 and parts[i + 1].startswith("study"):
            return part, f"{part}/{parts[i + 1]}"
    return None


@dataclass
class ChexpertScan(SourceScan[CxrImage]):
    """CheXpert images (in `records`, also `images`) and their labels keyed by image id."""

    labels: dict[str, dict[str, LabelValue]] = field(default_factory=dict)
    csv_files: dict[str, str] = field(default_factory=dict)  # split -> CSV read

    @property
    def images(self) -> list[CxrImage]:
        return self.records


def find_dataset_dir(root: Path) -> Path:
    """The folder holding train.csv: `root` itself, or a `CheXpert-v1.0*` folder inside it."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: CheXpert folder does not exist")
    if any((root / name).is_file() for _, names in SPLIT_FILES[:2] for name in names):
        return root
    for candidate in sorted(root.glob(f"{FOLDER_PREFIX}*")):
        if candidate.is_dir() and any((candidate / n).is_file() for _, names in SPLIT_FILES[:2] for n in names):
            return candidate
    raise SourceError(f"{root}: no CheXpert train.csv or valid.csv found here or in a {FOLDER_PREFIX}*/ folder")


def relative_image_path(path_cell: str) -> str:
    """`CheXpert-v1.0-small/train/p/s/v.jpg` -> `train/p/s/v.jpg`; paths without the prefix kept."""
    text = path_cell.strip().replace("\\", "/").lstrip("/")
    first, _, rest = text.partition("/")
    return rest if first.startswith(FOLDER_PREFIX) and rest else text


def scan_chexpert(root: Path) -> ChexpertScan:
    """Read train.csv, valid.csv (and CheXlocalize test_labels.csv if present) into images and
    per-image labels. Rows whose image is missing or whose cells are bad are rejected with the
    CSV file and line; a missing column raises SourceError."""
    dataset = find_dataset_dir(root)
    scan = ChexpertScan(info=INFO, root=dataset)
    seen: dict[str, str] = {}
    for split, names in SPLIT_FILES:
        csv_path = next((dataset / n for n in names if (dataset / n).is_file()), None)
        if csv_path is None and split == "test":
            csv_path = next((dataset.parent / n for n in names if (dataset.parent / n).is_file()), None)
        if csv_path is None:
            if split != "test":
                scan.warnings.append(f"{dataset}: no {names[0]}; the {split} split is empty")
            continue
        scan.csv_files[split] = str(csv_path)
        required = ("Path", *CHEXPERT_LABELS) if split == "test" else ("Path", *DESCRIPTIVE_COLUMNS,
                                                                       *CHEXPERT_LABELS)
        for line, row in read_csv_rows(csv_path, required):
            _read_row(scan, dataset, csv_path, line, row, split, seen)
    if not scan.csv_files:
        raise SourceError(f"{dataset}: no CheXpert CSV could be read")
    scan.records.sort(key=lambda i: (i.subject_id, i.study_id or "", i.image_id))
    scan.counts["images"] = len(scan.records)
    return scan


def _read_row(scan: ChexpertScan, dataset: Path, csv_path: Path, line: int, row: dict, split: str,
              seen: dict[str, str]) -> None:
    scan.counts[f"rows_{split}"] += 1
    path_cell = cell(row, "Path")
    if path_cell is None:
        scan.reject(csv_path, line, "no_path")
        return
    image_id = relative_image_path(path_cell)
    ids = patient_and_study(image_id)
    if inside(dataset, image_id) is None:
        scan.reject(csv_path, line, "image_outside_source", f"{path_cell}: not a path inside {dataset}")
        return
    if ids is None:
        scan.reject(csv_path, line, "unexpected_path", f"{path_cell}: no patientNNNNN/studyN components")
        return
    if image_id in seen:
        scan.reject(csv_path, line, "duplicate_image", f"{image_id} already listed in {seen[image_id]}")
        return
    try:
        states = label_states(row, f"{csv_path.name} line {line}")
    except LabelValueError as exc:
        scan.reject(csv_path, line, "bad_label_value", str(exc))
        return
    # The image lies below the dataset folder; CheXlocalize test images may sit beside their CSV.
    candidates = [dataset / image_id] + ([csv_path.parent / image_id] if csv_path.parent != dataset else [])
    image_path = next((p for p in candidates if os.path.exists(p)), None)
    if image_path is None:
        scan.reject(csv_path, line, "image_file_missing", f"{candidates[0]} does not exist")
        return
    seen[image_id] = f"{csv_path.name} line {line}"
    view = chexpert_view(cell(row, "Frontal/Lateral"), cell(row, "AP/PA"), image_id)
    if view == "UNKNOWN":
        scan.counts["images_view_unknown"] += 1
    subject_id, study_id = ids
    scan.records.append(CxrImage(
        source=INFO.name, image_id=image_id, subject_id=subject_id, study_id=study_id, path=str(image_path),
        view=view, split=split, sex=chexpert_sex(cell(row, "Sex")), licence_class=INFO.licence_class))
    scan.labels[image_id] = states
