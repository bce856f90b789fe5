"""Small CheXpert v1.0 and CheXpert-Plus sources in their upstream layouts, drawn like the MIMIC
demo (each positive label a blob at its own place), so labels can be learnt from pixels.

Both share one plan of patients and studies, as the real releases share images: train patients
`patient00001...`, validation patients from `patient64541`, and (CheXpert only, via CheXlocalize's
`test_labels.csv`) test patients from `patient64741`. Validation and test labels are certain
(0.0 / 1.0 / empty), as in the radiologist-labelled upstream sets. Each writer lists one image
whose file was never written, so rejects are exercised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from radcorpora.demo.mimic_cxr import (
    CSV_VALUE,
    csv_bytes,
    draw_study_image,
    findings_sentences,
    impression_sentences,
    plan_labels,
)
from radcorpora.ops.sampling import row_rng
from radcorpora.schemas.cxr import CHEXPERT_LABELS

SMALL = "CheXpert-v1.0-small"
CSV_HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS)
PLUS_TABLE = "df_chexpert_plus_240401.csv"
PLUS_HEADER = ("path_to_image", "path_to_dcm", "frontal_lateral", "ap_pa", "deid_patient_id",
               "patient_report_date_order", "report", "section_narrative", "section_clinical_history",
               "section_history", "section_comparison", "section_technique", "section_procedure_comments",
               "section_findings", "section_impression", "section_end_of_impression", "section_summary",
               "section_accession_number", "age", "sex", "race", "ethnicity", "interpreter_needed",
               "insurance_type", "recent_bmi", "deceased", "split")
# folder (split name in paths), first patient number, number of patients
PATIENT_GROUPS = (("train", 1, 9), ("valid", 64541, 3), ("test", 64741, 2))


@dataclass(frozen=True)
class DemoImage:
    folder: str  # train | valid | test
    patient: str  # patientNNNNN
    study: int
    view_number: int
    view: str  # PA | AP | LATERAL
    sex: str  # Male | Female
    age: int
    states: dict[str, str]  # label -> state of the study

    @property
    def relative(self) -> str:
        kind = "lateral" if self.view == "LATERAL" else "frontal"
        return f"{self.folder}/{self.patient}/study{self.study}/view{self.view_number}_{kind}.jpg"


def demo_plan(folders: tuple[str, ...] = ("train", "valid", "test")) -> list[DemoImage]:
    """Every image of the shared plan, in path order."""
    images: list[DemoImage] = []
    for folder, first, count in PATIENT_GROUPS:
        if folder not in folders:
            continue
        for number in range(first, first + count):
            patient = f"patient{number:05d}"
            rng = row_rng(0, "demo-chexpert", patient, "patient")
            sex, age = rng.choice(("Male", "Female")), rng.randint(19, 90)
            for study in range(1, 2 + (rng.random() < 0.4)):
                srng = row_rng(0, "demo-chexpert", f"{patient}/study{study}", "study")
                views = srng.choice((["AP"], ["PA", "LATERAL"], ["AP"], ["AP", "LATERAL"]))
                states = plan_labels(srng, allow_uncertain=folder == "train")
                for v, view in enumerate(views, start=1):
                    images.append(DemoImage(folder, patient, study, v, view, sex, age, states))
    return images


def _csv_row(image: DemoImage, path: str) -> tuple:
    kind = "Lateral" if image.view == "LATERAL" else "Frontal"
    return (path, image.sex, image.age, kind, "" if image.view == "LATERAL" else image.view,
            *(CSV_VALUE[image.states[label]] for label in CHEXPERT_LABELS))


def write_demo_chexpert(root: Path) -> dict[str, int]:
    """Write `root/CheXpert-v1.0-small/` with train.csv, valid.csv, the CheXlocalize-style
    test_labels.csv and JPEG images. Returns counts."""
    dataset = Path(root) / SMALL
    rows: dict[str, list[tuple]] = {"train": [], "valid": [], "test": []}
    counts = {"images": 0, "missing_jpg_rows": 0}
    for image in demo_plan():
        target = dataset / image.relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(draw_study_image(image.relative, image.states, image.view))
        counts["images"] += 1
        if image.folder == "test":
            rows["test"].append((image.relative, *(CSV_VALUE[image.states[label]] for label in CHEXPERT_LABELS)))
        else:
            rows[image.folder].append(_csv_row(image, f"{SMALL}/{image.relative}"))
    ghost = next(i for i in demo_plan(("train",)) if i.view != "LATERAL")
    rows["train"].insert(1, _csv_row(ghost, f"{SMALL}/train/{ghost.patient}/study{ghost.study}/view9_frontal.jpg"))
    counts["missing_jpg_rows"] = 1
    (dataset / "train.csv").write_bytes(csv_bytes(CSV_HEADER, rows["train"]))
    (dataset / "valid.csv").write_bytes(csv_bytes(CSV_HEADER, rows["valid"]))
    (dataset / "test_labels.csv").write_bytes(csv_bytes(("Path", *CHEXPERT_LABELS), rows["test"]))
    counts.update({f"{split}_rows": len(r) for split, r in rows.items()})
    return counts


END_OF_IMPRESSION = ("SUMMARY CODE {code}. THE ATTENDING RADIOLOGIST HAS REVIEWED THESE IMAGES AND ENDORSES "
                     "THE REPORT ABOVE.")


def _plus_sections(image: DemoImage, study_index: int) -> dict[str, str]:
    """Report pieces of one study, ALL CAPS as in the release; the layout varies by study."""
    findings = " ".join(findings_sentences(image.states)).upper()
    impression = " ".join(f"{n}. {s}" for n, s in enumerate(impression_sentences(image.states), start=1)).upper()
    normal = image.states["No Finding"] == "positive"
    code = "1-NORMAL" if normal else "2-ABNORMAL, NEW FINDING"
    views = "PORTABLE AP CHEST" if image.view == "AP" else "CHEST, PA AND LATERAL"
    sections = {"section_narrative": f"{views}.", "section_history": "SHORTNESS OF BREATH.",
                "section_comparison": "NONE." if image.study == 1 else "PRIOR CHEST RADIOGRAPH.",
                "section_findings": "", "section_impression": "",
                "section_end_of_impression": END_OF_IMPRESSION.format(code=code), "section_summary": code}
    layout = 2 if study_index == 2 else (0, 1, 3)[study_index % 3]
    if layout == 0:
        sections["section_findings"], sections["section_impression"] = findings, impression
    elif layout in (1, 3):
        sections["section_impression"] = f"{findings} {impression}" if layout == 3 else impression
    # layout 2: the findings sit only in the end-of-impression block (a real quirk of the table)
    if layout == 2:
        sections["section_end_of_impression"] = f"{findings} " + END_OF_IMPRESSION.format(code=code)
    return sections


def _report(sections: dict[str, str], accession: str) -> str:
    parts = [f"NARRATIVE:\n{sections['section_narrative']}", f"HISTORY: {sections['section_history']}",
             f"COMPARISON: {sections['section_comparison']}"]
    if sections["section_findings"]:
        parts.append(f"FINDINGS:\n{sections['section_findings']}")
    if sections["section_impression"]:
        parts.append(f"IMPRESSION:\n{sections['section_impression']}")
    parts += [sections["section_end_of_impression"], f"SUMMARY:\n{sections['section_summary']}",
              f"ACCESSION NUMBER: {accession}"]
    return "\n\n".join(parts)


def write_demo_chexpert_plus(root: Path) -> dict[str, int]:
    """Write `root/` with df_chexpert_plus_240401.csv, the PNG release images under `PNG/` and
    `chexbert_labels/{report,findings,impression}_fixed.json`. Returns counts."""
    root = Path(root)
    rows, labels = [], {"report_fixed": [], "findings_fixed": [], "impression_fixed": []}
    counts = {"images": 0, "missing_image_rows": 0, "reports_from_end_of_impression": 0}
    studies: dict[str, int] = {}
    for image in demo_plan(("train", "valid")):
        study_key = f"{image.patient}/study{image.study}"
        study_index = studies.setdefault(study_key, len(studies))
        target = root / "PNG" / Path(image.relative).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(draw_study_image(image.relative, image.states, image.view, fmt="PNG"))
        counts["images"] += 1
        sections = _plus_sections(image, study_index)
        counts["reports_from_end_of_impression"] += not (sections["section_findings"] or sections["section_impression"])
        rows.append(_plus_row(image, image.relative, sections, study_index))
        record = {"path_to_image": image.relative}
        values = {"positive": 1.0, "negative": 0.0, "uncertain": -1.0, "not_mentioned": None}
        labels["report_fixed"].append({**record, **{k: values[image.states[k]] for k in CHEXPERT_LABELS}})
        labels["findings_fixed"].append({**record, **{k: values[image.states[k]] for k in CHEXPERT_LABELS}})
        labels["impression_fixed"].append({**record, **{k: values[image.states[k]] if image.states[k] in (
            "positive", "uncertain") else None for k in CHEXPERT_LABELS}})
    ghost = demo_plan(("train",))[0]
    missing = f"train/{ghost.patient}/study{ghost.study}/view8_frontal.jpg"
    rows.insert(2, _plus_row(ghost, missing, _plus_sections(ghost, 0), 0))
    counts["missing_image_rows"] = 1
    (root / PLUS_TABLE).write_bytes(csv_bytes(PLUS_HEADER, rows))
    (root / "chexbert_labels").mkdir(parents=True, exist_ok=True)
    for name, records in labels.items():
        text = "".join(json.dumps(r) + "\n" for r in records)
        (root / "chexbert_labels" / f"{name}.json").write_text(text, encoding="utf-8")
    counts["rows"] = len(rows)
    return counts


def _plus_row(image: DemoImage, path: str, sections: dict[str, str], study_index: int) -> tuple:
    accession = f"{9000000 + study_index * 37:d}"
    values = {**sections, "path_to_image": path, "path_to_dcm": path[:-4] + ".dcm",
              "frontal_lateral": "Lateral" if image.view == "LATERAL" else "Frontal",
              "ap_pa": "" if image.view == "LATERAL" else image.view, "deid_patient_id": image.patient,
              "patient_report_date_order": image.study, "report": _report(sections, accession),
              "section_clinical_history": "", "section_technique": "", "section_procedure_comments": "",
              "section_accession_number": accession, "age": f"{image.age:.1f}", "sex": image.sex,
              "race": "Unknown", "ethnicity": "Unknown", "interpreter_needed": "No", "insurance_type": "Unknown",
              "recent_bmi": "", "deceased": "No", "split": image.folder}
    return tuple(values[column] for column in PLUS_HEADER)
