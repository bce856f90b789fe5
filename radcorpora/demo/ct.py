"""Small CT-RATE-, AMOS-MM- and AbdomenAtlas 3.0-format sources: 32 x 32 x 16 int16 NIfTI volumes
with one lesion each at a planned place, and reports that name the lesion and its place, so a model
can learn the text from the voxels.

Every volume is drawn in HU on the same grid: air (-1000) outside, a body ellipse of soft tissue
(40 HU) on slices 2..13 only (slices 0, 1, 14, 15 are air, so the body extent is known), then the
source's organs and a spherical lesion (radius 2 voxels). Stored values need the rescale to be HU:
- CT-RATE: stored = HU + 1024, header without scaling and with a wrong 1 mm grid; the metadata CSV
  gives RescaleIntercept -1024 and the true spacing (0.75, 0.75, 1.5), as FORMATS says the release's
  headers cannot be trusted.
- AMOS-MM: header scl_slope 0.5, scl_inter -1024 (stored = 2 x (HU + 1024)), RAS grid.
- AbdomenAtlas: header scl_slope 1, scl_inter -1024, LPS grid (a display-orientation check).
The affines are RAS for CT-RATE and AMOS-MM (i grows towards the patient's right, j anterior,
k superior) and LPS for AbdomenAtlas (i left, j posterior, k superior).

Each writer adds one row whose volume file is never written and one whose report is empty, so the
readers' rejects are exercised. The nibabel .nii.gz writer is deterministic (gzip mtime 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from radcorpora.demo.mimic_cxr import csv_bytes
from radcorpora.sources.ct_rate import LABELS as CT_RATE_LABELS

SHAPE = (32, 32, 16)
BODY_SLICES = (2, 13)
AIR, SOFT, LUNG, LIVER, KIDNEY, PANCREAS = -1000, 40, -850, 60, 30, 45
LESION_RADIUS = 2


@dataclass(frozen=True)
class Lesion:
    centre: tuple[int, int, int]  # voxel (i, j, k) in the stored array
    hu: int
    organ: str
    phrase: str  # how the report names it


@dataclass(frozen=True)
class DemoScan:
    scan_id: str
    lesion: Lesion
    recons: int = 1
    split: str = "train"


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")


def _ellipse(ci: float, cj: float, ri: float, rj: float) -> np.ndarray:
    i, j, k = _grid()
    return (((i - ci) / ri) ** 2 + ((j - cj) / rj) ** 2 <= 1) & (k >= BODY_SLICES[0]) & (k <= BODY_SLICES[1])


def _sphere(centre: tuple[int, int, int], radius: float = LESION_RADIUS) -> np.ndarray:
    i, j, k = _grid()
    return (i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2 <= radius ** 2


def draw_hu(organs: list[tuple[np.ndarray, int]], lesion: Lesion) -> np.ndarray:
    """HU volume: air, the body ellipse, organs in order, then the lesion."""
    hu = np.full(SHAPE, AIR, dtype=np.int16)
    hu[_ellipse(15.5, 15.5, 13, 10)] = SOFT
    for mask, value in organs:
        hu[mask] = value
    hu[_sphere(lesion.centre)] = lesion.hu
    return hu


def _save(path: Path, stored: np.ndarray, affine: np.ndarray, slope: float | None, inter: float | None) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(stored.astype(np.int16), affine)
    image.header.set_data_dtype(np.int16)
    image.header.set_xyzt_units("mm")
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    nib.save(image, str(path))


def _side(i: int) -> str:
    return "right" if i >= 16 else "left"  # RAS: i grows towards the patient's right


def _level(k: int) -> str:
    return "upper" if k >= 8 else "lower"  # k grows towards superior


# --- CT-RATE -------------------------------------------------------------------------------------

CT_RATE_SCANS = (
    DemoScan("train_1_a", Lesion((23, 15, 5), 60, "lung", "right lower lobe"), recons=2),
    DemoScan("train_1_b", Lesion((8, 17, 11), 55, "lung", "left upper lobe")),
    DemoScan("train_2_a", Lesion((9, 14, 5), 70, "lung", "left lower lobe")),
    DemoScan("valid_1_a", Lesion((22, 17, 11), 65, "lung", "right upper lobe"), recons=2, split="validation"),
    DemoScan("valid_2_a", Lesion((10, 15, 6), 60, "lung", "left lower lobe"), split="validation"),
)
CT_RATE_MISSING = "train_3_a"  # listed in every table, volume never written
CT_RATE_EMPTY = "train_4_a"  # volume written, Findings "Not given." and no impression
CT_RATE_SPACING = (0.75, 0.75, 1.5)
CT_RATE_INTERCEPT = -1024.0
REPORT_HEADER = ("VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN")
METADATA_HEADER = ("VolumeName", "Manufacturer", "SeriesDescription", "RescaleSlope", "RescaleIntercept",
                   "RescaleType", "XYSpacing", "ZSpacing", "Rows", "Columns", "NumberofSlices", "PatientSex",
                   "PatientAge")


def chest_hu(lesion: Lesion, recon: int = 1) -> np.ndarray:
    lungs = _ellipse(9, 16, 5, 7) | _ellipse(22, 16, 5, 7)
    hu = draw_hu([(lungs, LUNG)], lesion)
    if recon == 2:  # a sharper kernel: a fixed +-4 HU texture inside the body
        i, j, k = _grid()
        hu = np.where(hu > AIR, hu + ((i + j + k) % 3 - 1) * 4, hu).astype(np.int16)
    return hu


def ct_rate_findings(lesion: Lesion) -> str:
    return (f"A {(2 * LESION_RADIUS + 1) * CT_RATE_SPACING[0]:.0f} mm solid nodule is seen in the {lesion.phrase}. "
            "The remaining lung parenchyma is clear. No pleural effusion. Mediastinal structures are normal.")


def write_demo_ct_rate(root: Path) -> dict[str, int]:
    """Write `root/dataset/` in the CT-RATE layout: train volumes under `train/`, validation
    volumes under `valid_fixed/` (both layouts), reports, metadata and labels CSVs. Returns counts."""
    dataset = Path(root) / "dataset"
    wrong_header = np.diag([1.0, 1.0, 1.0, 1.0])  # the true grid is only in the metadata
    rows: dict[str, dict[str, list[tuple]]] = {s: {"reports": [], "metadata": [], "labels": []}
                                               for s in ("train", "validation")}
    counts = {"volumes": 0, "scans": 0, "report_rows": 0}
    plan = list(CT_RATE_SCANS) + [DemoScan(CT_RATE_MISSING, Lesion((23, 16, 9), 60, "lung", "right upper lobe")),
                                  DemoScan(CT_RATE_EMPTY, Lesion((9, 16, 9), 60, "lung", "left upper lobe"))]
    for scan in plan:
        prefix, pid, _scan = scan.scan_id.split("_")
        folder = "train" if prefix == "train" else "valid_fixed"
        table = rows[scan.split]
        counts["scans"] += scan.scan_id not in (CT_RATE_MISSING, CT_RATE_EMPTY)
        for recon in range(1, scan.recons + 1):
            name = f"{scan.scan_id}_{recon}.nii.gz"
            if scan.scan_id != CT_RATE_MISSING:
                stored = chest_hu(scan.lesion, recon).astype(np.int32) - int(CT_RATE_INTERCEPT)
                _save(dataset / folder / f"{prefix}_{pid}" / scan.scan_id / name, stored, wrong_header, None, None)
                counts["volumes"] += scan.scan_id != CT_RATE_EMPTY
            if scan.scan_id == CT_RATE_EMPTY:
                findings, impression = "Not given.", ""
            else:
                findings = ct_rate_findings(scan.lesion)
                impression = f"Solitary pulmonary nodule in the {scan.lesion.phrase}; follow-up CT advised."
            table["reports"].append((name, "Cough for three weeks.", "Non-contrast chest CT, 1.5 mm slices.",
                                     findings, impression))
            table["metadata"].append((name, "DemoVendor", "CHEST", 1, int(CT_RATE_INTERCEPT), "HU",
                                      f"[{CT_RATE_SPACING[1]}, {CT_RATE_SPACING[0]}]", CT_RATE_SPACING[2],
                                      SHAPE[1], SHAPE[0], SHAPE[2], "M" if int(pid) % 2 else "F", "061Y"))
            table["labels"].append((name, *(int(label == "Lung nodule") for label in CT_RATE_LABELS)))
            counts["report_rows"] += 1
    names = {"train": ("train_reports.csv", "train_metadata.csv", "train_predicted_labels.csv"),
             "validation": ("validation_reports.csv", "validation_metadata.csv", "valid_predicted_labels.csv")}
    for split, (reports, metadata, labels) in names.items():
        for folder, name, header, key in (("radiology_text_reports", reports, REPORT_HEADER, "reports"),
                                          ("metadata", metadata, METADATA_HEADER, "metadata"),
                                          ("multi_abnormality_labels", labels, ("VolumeName", *CT_RATE_LABELS),
                                           "labels")):
            (dataset / folder).mkdir(parents=True, exist_ok=True)
            (dataset / folder / name).write_bytes(csv_bytes(header, rows[split][key]))
    return counts


# --- AMOS-MM -------------------------------------------------------------------------------------

AMOS_SCALE = (0.5, -1024.0)  # header scl_slope, scl_inter
AMOS_SPACING = (0.8, 0.8, 2.5)
AMOS_CASES = (
    DemoScan("amos_0001", Lesion((21, 17, 8), 5, "liver", "right hepatic lobe")),
    DemoScan("amos_0002", Lesion((9, 11, 6), -5, "kidney", "left kidney")),
    DemoScan("amos_0003", Lesion((22, 18, 10), 0, "liver", "right hepatic lobe"), split="validation"),
)
AMOS_MISSING, AMOS_EMPTY = "amos_0004", "amos_0005"


def abdomen_hu(lesion: Lesion) -> np.ndarray:
    organs = [(_ellipse(21, 18, 6, 5), LIVER), (_ellipse(9, 11, 3, 2.5), KIDNEY), (_ellipse(24, 11, 3, 2.5), KIDNEY)]
    return draw_hu(organs, lesion)


def amos_report(case: DemoScan, variant: int) -> dict:
    """Findings per region; the impression as a string, a list of sentences or a dict of regions."""
    organ = "liver" if case.lesion.organ == "liver" else "kidneys"
    abdomen = (f"A well-defined hypodense lesion about 3 mm across is seen in the {case.lesion.phrase}. "
               f"The remaining {organ} and the other solid organs are unremarkable.")
    impression = f"Hypodense lesion in the {case.lesion.phrase}, likely a cyst."
    value: object = {0: impression, 1: [impression, "No other acute abnormality."],
                     2: {"chest": "", "abdomen": impression, "pelvis": ""}}[variant % 3]
    return {"findings": {"chest": "The lung bases are clear.", "abdomen": abdomen, "pelvis": ""}, "impression": value}


def amos_questions(case: DemoScan) -> list[dict]:
    where = case.lesion.phrase
    organ_options = {"A": "Spleen", "B": "Liver", "C": "Kidney", "D": "Pancreas"}
    answer = "B" if case.lesion.organ == "liver" else "C"
    return [
        {"question": "Which organ contains the focal lesion?", "options": organ_options, "answer": answer,
         "reasoning": f"The only focal abnormality is the hypodense lesion in the {where}."},
        {"question": "What is the attenuation of the lesion relative to the surrounding tissue?",
         "options": {"A": "Hyperdense", "B": "Hypodense", "C": "Isodense", "D": "Calcified"}, "answer": "B",
         "reasoning": "It is darker than the surrounding parenchyma."},
    ]


def write_demo_amos_mm(root: Path, split_qa: bool = False) -> dict[str, int]:
    """Write `root/` in the AMOS-MM layout: `dataset.json` (reports and QA; with `split_qa` the QA
    goes to a separate `vqa.json` of the same structure) and `imagesTr/`, `imagesVa/`."""
    root = Path(root)
    affine = np.diag([*AMOS_SPACING, 1.0])
    reports: dict[str, list] = {"training": [], "validation": [], "testing": []}
    qa: dict[str, list] = {"training": [], "validation": []}
    counts = {"volumes": 0, "scans": 0, "questions": 0}
    plan = list(AMOS_CASES) + [DemoScan(AMOS_MISSING, Lesion((21, 17, 8), 5, "liver", "right hepatic lobe")),
                               DemoScan(AMOS_EMPTY, Lesion((9, 11, 6), -5, "kidney", "left kidney"))]
    for n, case in enumerate(plan):
        key, folder = ("training", "imagesTr") if case.split == "train" else ("validation", "imagesVa")
        image = f"./{folder}/{case.scan_id}.nii.gz"
        if case.scan_id != AMOS_MISSING:
            stored = (abdomen_hu(case.lesion).astype(np.float64) - AMOS_SCALE[1]) / AMOS_SCALE[0]
            _save(root / folder / f"{case.scan_id}.nii.gz", np.rint(stored), affine, *AMOS_SCALE)
        report = amos_report(case, n)
        if case.scan_id == AMOS_EMPTY:
            report = {"findings": {"chest": "", "abdomen": "", "pelvis": ""}, "impression": ""}
        questions = amos_questions(case)
        item = {"image": image, "meta": {"spacing": list(AMOS_SPACING)}, "labels": {"report": report}}
        if split_qa:
            qa[key].append({"image": image, "meta": item["meta"], "labels": {"qa": questions}})
        else:
            item["labels"]["qa"] = questions
        reports[key].append(item)
        if case.scan_id not in (AMOS_MISSING, AMOS_EMPTY):
            counts["volumes"] += 1
            counts["scans"] += 1
            counts["questions"] += len(questions)
    reports["testing"].append({"image": "./imagesTs/amos_0006.nii.gz", "meta": {"spacing": list(AMOS_SPACING)}})
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(reports, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    if split_qa:
        (root / "vqa.json").write_text(json.dumps(qa, indent=2) + "\n", encoding="utf-8")
    return counts


# --- AbdomenAtlas 3.0 ----------------------------------------------------------------------------

ATLAS_SCALE = (1.0, -1024.0)
ATLAS_SPACING = (0.8, 0.8, 2.0)
# LPS grid: i grows towards the patient's left, j posterior, k superior.
ATLAS_CASES = (
    DemoScan("BDMAP_00000001", Lesion((15, 12, 7), 10, "pancreas", "pancreatic body")),
    DemoScan("BDMAP_00000002", Lesion((22, 20, 6), -5, "kidney", "left kidney")),
    DemoScan("BDMAP_00000003", Lesion((10, 13, 9), 5, "liver", "right hepatic lobe"), split="test"),
)
ATLAS_MISSING, ATLAS_EMPTY = "BDMAP_00000004", "BDMAP_00000005"
ATLAS_HEADER = ("BDMAP ID", "structured report", "narrative report", "fusion structured report",
                "fusion narrative report", "radiologist note")


def atlas_hu(lesion: Lesion) -> np.ndarray:
    organs = [(_ellipse(10, 13, 6, 5), LIVER), (_ellipse(15, 12, 4, 1.5), PANCREAS),
              (_ellipse(22, 20, 3, 2.5), KIDNEY), (_ellipse(8, 20, 3, 2.5), KIDNEY)]
    return draw_hu(organs, lesion)


def atlas_reports(case: DemoScan) -> tuple[str, str]:
    structured = (f"FINDINGS: {case.lesion.organ.capitalize()}: a hypodense lesion (about 3 mm) in the "
                  f"{case.lesion.phrase}. Other organs: normal. IMPRESSION: {case.lesion.organ} lesion.")
    narrative = (f"There is a small hypodense lesion in the {case.lesion.phrase}, about 3 mm across. "
                 "The remaining abdominal organs are unremarkable.")
    return structured, narrative


def write_demo_abdomen_atlas(root: Path) -> dict[str, int]:
    """Write `root/` like the AbdomenAtlas3.0Mini download: `AbdomenAtlas3.0.csv`,
    `image_only/<BDMAP ID>/ct.nii.gz` and `TrainTestIDS/IID_train.csv`, `IID_test.csv`."""
    root = Path(root)
    affine = np.diag([-ATLAS_SPACING[0], -ATLAS_SPACING[1], ATLAS_SPACING[2], 1.0])
    rows, ids = [], {"train": [], "test": []}
    counts = {"volumes": 0, "scans": 0}
    plan = list(ATLAS_CASES) + [DemoScan(ATLAS_MISSING, Lesion((10, 13, 9), 5, "liver", "right hepatic lobe")),
                                DemoScan(ATLAS_EMPTY, Lesion((15, 12, 7), 10, "pancreas", "pancreatic body"))]
    for case in plan:
        if case.scan_id != ATLAS_MISSING:
            stored = atlas_hu(case.lesion).astype(np.int32) - int(ATLAS_SCALE[1])
            _save(root / "image_only" / case.scan_id / "ct.nii.gz", stored, affine, *ATLAS_SCALE)
        structured, narrative = ("", "") if case.scan_id == ATLAS_EMPTY else atlas_reports(case)
        rows.append((case.scan_id, structured, narrative, structured, narrative, ""))
        ids[case.split].append((case.scan_id,))
        if case.scan_id not in (ATLAS_MISSING, ATLAS_EMPTY):
            counts["volumes"] += 1
            counts["scans"] += 1
    root.mkdir(parents=True, exist_ok=True)
    (root / "AbdomenAtlas3.0.csv").write_bytes(csv_bytes(ATLAS_HEADER, rows))
    (root / "TrainTestIDS").mkdir(exist_ok=True)
    for split, name in (("train", "IID_train.csv"), ("test", "IID_test.csv")):
        (root / "TrainTestIDS" / name).write_bytes(csv_bytes(("BDMAP ID",), ids[split]))
    return counts
