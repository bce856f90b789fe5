"""A small MIMIC-CXR-JPG + MIMIC-CXR reports source in the upstream layout, whose pixels carry the
labels: every positive CheXpert label is drawn as a bright blob at a place (and size) fixed per
label, so a tiny model can learn the labels from the image alone; uncertain labels are not drawn.

Written: `files/pNN/p<subject>/s<study>/<dicom_id>.jpg`, the gzipped metadata / split / chexpert
tables with their upstream columns, a MIMIC-IV style `patients.csv.gz`, and the reports tree
(`files/pNN/p<subject>/s<study>.txt`, lines starting with one space, `FINAL REPORT`, `___` PHI,
several header layouts). Deliberately bad rows: one image listed in the metadata whose JPG was
never written, one image without a split row, one study without a label row.

The label tables (boxes, phrases) are shared with the CheXpert demo writers.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import random
import textwrap
from collections.abc import Sequence
from pathlib import Path

from radcorpora.demo.cxr_drawing import draw_cxr, encode
from radcorpora.ops.sampling import row_rng
from radcorpora.schemas.cxr import CHEXPERT_LABELS

# Where each drawn label appears (normalised xyxy; image left = patient right).
FINDING_BOXES: dict[str, tuple[float, float, float, float]] = {
    # the drawn pool (POOL below): regions that never overlap, so each label has its own place
    "Pleural Effusion": (0.73, 0.66, 0.87, 0.82),  # left costophrenic angle
    "Cardiomegaly": (0.34, 0.42, 0.72, 0.84),  # a heart far wider than the normal one
    "Lung Opacity": (0.18, 0.20, 0.34, 0.34),  # right upper zone
    "Pneumothorax": (0.60, 0.15, 0.82, 0.28),  # left apex
    "Support Devices": (0.36, 0.04, 0.39, 0.40),  # a long thin line: a tube
    "Edema": (0.18, 0.38, 0.32, 0.52),  # right mid zone
    "Consolidation": (0.14, 0.58, 0.32, 0.76),  # right lower zone
    "Atelectasis": (0.74, 0.42, 0.86, 0.50),  # a flat band, left mid zone
    "Lung Lesion": (0.66, 0.34, 0.73, 0.41),  # a small nodule
    # never drawn by the demo plans, placed for completeness
    "Enlarged Cardiomediastinum": (0.41, 0.12, 0.59, 0.38),
    "Pneumonia": (0.20, 0.60, 0.30, 0.70),
    "Fracture": (0.86, 0.36, 0.91, 0.42),
    "Pleural Other": (0.12, 0.40, 0.16, 0.60),
}
DRAWN_LABELS: tuple[str, ...] = tuple(label for label in CHEXPERT_LABELS if label in FINDING_BOXES)

# (positive, negative, uncertain) sentence per label, in our own words.
PHRASES: dict[str, tuple[str, str, str]] = {
    "Pleural Effusion": ("A small left pleural effusion blunts the costophrenic angle.", "No pleural effusion.",
                         "The left costophrenic angle is slightly blunted, perhaps a trace effusion."),
    "Cardiomegaly": ("The heart is enlarged.", "The heart is not enlarged.",
                     "The cardiac silhouette may be mildly enlarged."),
    "Lung Opacity": ("There is an opacity in the right upper lung.", "The lungs show no focal opacity.",
                     "A faint right upper lung opacity is questioned."),
    "Pneumothorax": ("A small left apical pneumothorax is present.", "There is no pneumothorax.",
                     "A tiny left apical pneumothorax cannot be excluded."),
    "Support Devices": ("A nasogastric tube courses below the diaphragm.", "No lines or tubes are seen.",
                        "A catheter tip may project over the upper chest."),
    "Edema": ("Perihilar haziness reflects mild pulmonary edema.", "There is no pulmonary edema.",
              "Mild interstitial edema is possible."),
    "Consolidation": ("Consolidation fills the right lower lobe.", "No consolidation.",
                      "Right basal consolidation is not excluded."),
    "Atelectasis": ("Plate-like atelectasis is seen in the left mid lung.", "No atelectasis.",
                    "Linear left mid-lung opacity may be atelectasis."),
    "Lung Lesion": ("A 1 cm nodule projects over the left mid lung.", "No pulmonary nodule.",
                    "A possible small nodule over the left mid lung."),
    "Enlarged Cardiomediastinum": ("The mediastinum is widened.", "The mediastinum is of normal width.",
                                   "The mediastinal contour may be slightly widened."),
    "Pneumonia": ("Findings are in keeping with right lower lung pneumonia.", "No evidence of pneumonia.",
                  "Early pneumonia cannot be excluded."),
    "Fracture": ("A healing left rib fracture is noted.", "No displaced rib fracture.",
                 "A left rib fracture is questioned."),
    "Pleural Other": ("There is right apical pleural thickening.", "No pleural thickening.",
                      "Possible right lateral pleural thickening."),
}
POOL = ("Pleural Effusion", "Cardiomegaly", "Lung Opacity", "Pneumothorax", "Support Devices", "Edema",
        "Consolidation", "Atelectasis", "Lung Lesion")
CSV_VALUE = {"positive": "1.0", "negative": "0.0", "uncertain": "-1.0", "not_mentioned": ""}

METADATA_HEADER = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                   "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                   "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning")
SPLIT_HEADER = ("dicom_id", "study_id", "subject_id", "split")
LABEL_HEADER = ("subject_id", "study_id", *sorted(CHEXPERT_LABELS))  # the MIMIC table is alphabetical
VIEW_SIZE = {"PA": (176, 208), "AP": (176, 208), "LATERAL": (192, 208)}  # (width, height)
VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}


def plan_labels(rng: random.Random, allow_uncertain: bool = True) -> dict[str, str]:
    """CheXpert states of one study: normal (No Finding positive) or one or two drawn findings,
    sometimes an uncertain one, a few explicit negatives; the rest not mentioned."""
    states = dict.fromkeys(CHEXPERT_LABELS, "not_mentioned")
    pool = list(POOL)
    rng.shuffle(pool)
    if rng.random() < 0.3:
        states["No Finding"] = "positive"
    else:
        for label in pool[:rng.choice((1, 1, 2))]:
            states[label] = "positive"
        pool = pool[2:]
        if allow_uncertain and rng.random() < 0.4:
            states[pool.pop()] = "uncertain"
    for label in pool[:rng.randint(1, 3)]:
        if states[label] == "not_mentioned":
            states[label] = "negative"
    return states


def finding_boxes(states: dict[str, str]) -> list[tuple[float, float, float, float]]:
    return [FINDING_BOXES[label] for label in DRAWN_LABELS if states.get(label) == "positive"]


def draw_study_image(key: str, states: dict[str, str], view: str, fmt: str = "JPEG") -> bytes:
    width, height = VIEW_SIZE.get(view, VIEW_SIZE["PA"])
    return encode(draw_cxr(key, width, height, finding_boxes(states), lateral=view == "LATERAL"), fmt)


def findings_sentences(states: dict[str, str]) -> list[str]:
    order = {"positive": 0, "uncertain": 1, "negative": 2}
    mentioned = sorted((order[s], label) for label, s in states.items() if s in order and label in PHRASES)
    sentences = [PHRASES[label][{"positive": 0, "negative": 1, "uncertain": 2}[states[label]]]
                 for _, label in mentioned]
    if states["No Finding"] == "positive":
        sentences.append("The lungs are clear and the cardiomediastinal silhouette is normal.")
    return sentences


def impression_sentences(states: dict[str, str]) -> list[str]:
    positives = [PHRASES[label][0] for label in DRAWN_LABELS if states.get(label) == "positive"]
    doubtful = [PHRASES[label][2] for label in DRAWN_LABELS if states.get(label) == "uncertain"]
    return positives + doubtful or ["No acute cardiopulmonary abnormality."]


def deterministic_gzip(path: Path, data: bytes) -> None:
    """gzip with no file name and a zero time stamp, so two writes give identical bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as handle:
        handle.write(data)
    path.write_bytes(buffer.getvalue())


def csv_bytes(header: Sequence[str], rows: Sequence[Sequence[object]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")


def _digits(key: str, first: str) -> str:
    return first + f"{int(hashlib.sha256(key.encode()).hexdigest(), 16) % 10**7:07d}"


def _dicom_id(key: str) -> str:
    digest = hashlib.sha1(key.encode()).hexdigest()
    return "-".join(digest[i:i + 8] for i in range(0, 40, 8))


def _wrap(text: str) -> list[str]:
    return [f" {line}" for line in textwrap.wrap(text, 76)]


PRIOR_SENTENCES = ("", "", "Compared with the prior radiograph, the cardiomediastinal silhouette is unchanged.",
                   "The support devices are again seen in unchanged position.",
                   "", "No significant interval change since the study of ___.")


def _report(kind: str, study_key: str, views: list[str], states: dict[str, str]) -> str:
    """One report in the MIMIC-CXR layout; `kind` picks the header layout."""
    exam = "CHEST (PORTABLE AP)" if views == ["AP"] else "CHEST (PA AND LAT)" if len(views) > 1 else "CHEST (PA)"
    reason = row_rng(0, "demo-mimic-cxr", study_key, "reason").choice(
        ("cough and fever, evaluate for pneumonia", "shortness of breath", "line placement check",
         "follow-up of known effusion", "chest pain"))
    findings = " ".join(findings_sentences(states))
    impression = " ".join(impression_sentences(states))
    prior = row_rng(0, "demo-mimic-cxr", study_key, "prior").choice(PRIOR_SENTENCES)
    if prior:  # real reports often compare with an earlier study; RadVLM removes those statements
        findings = f"{findings} {prior}"
    lines = ["                                 FINAL REPORT"]
    if kind == "addendum":
        lines += [" ADDENDUM:", *_wrap("The findings were discussed with Dr. ___ by telephone at ___ on the "
                                       "day of the study."), " ", " " + "_" * 78, "",
                  "                                 FINAL REPORT"]
    if kind != "combined":
        lines += [f" EXAMINATION:  {exam}", " "]
    lines += [*_wrap(f"INDICATION:  ___ year old with {reason}."), " "]
    if kind in ("full", "addendum"):
        technique = {1: "Portable AP view" if views == ["AP"] else "Single PA view"}.get(len(views), "PA and lateral views")
        lines += [f" TECHNIQUE:  {technique} of the chest.",
                  " ", " COMPARISON:  ___", " ", " FINDINGS:", " ", *_wrap(findings), " ",
                  " IMPRESSION:", " ", *_wrap(impression)]
    elif kind == "impression_only":
        lines += [" COMPARISON:  Chest radiograph from ___.", " ", " IMPRESSION:", " ",
                  *_wrap(findings)]
    else:  # one combined section
        lines += [" FINDINGS AND IMPRESSION:", " ", *_wrap(findings)]
    return "\n".join(lines) + "\n"


REPORT_KINDS = ("full", "impression_only", "combined", "full", "addendum")


def write_demo_mimic_cxr(root: Path, reports_root: Path, n_subjects: int = 12) -> dict[str, int]:
    """Write the demo MIMIC-CXR-JPG tree under `root` and its reports under `reports_root`.
    Subjects are split patient-disjointly (4 of 6 train, 1 validate, 1 test). Returns counts."""
    root, reports_root = Path(root), Path(reports_root)
    metadata, split_rows, label_rows, patients = [], [], [], []
    counts = {"subjects": n_subjects, "studies": 0, "images": 0, "reports": 0, "label_rows": 0,
              "missing_jpg_rows": 0, "images_without_split": 0, "studies_without_labels": 0}
    study_index = 0
    for k in range(n_subjects):
        subject = _digits(f"demo-mimic-subject-{k}", "1")
        rng = row_rng(0, "demo-mimic-cxr", subject, "subject")
        split = ("train", "train", "train", "train", "validate", "test")[k % 6]
        patients.append((subject, rng.choice("FM"), rng.randint(21, 91), 2150 + k, "2014 - 2016", ""))
        date = 21500101 + 10000 * rng.randint(0, 40) + 100 * rng.randint(0, 11) + rng.randint(0, 27)
        for s in range(1 + (rng.random() < 0.5)):
            study = _digits(f"demo-mimic-study-{subject}-{s}", "5")
            srng = row_rng(0, "demo-mimic-cxr", study, "study")
            views = srng.choice((["PA", "LATERAL"], ["AP"], ["PA"], ["PA", "LATERAL"]))
            states = plan_labels(srng)
            study_dir = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
            study_dir.mkdir(parents=True, exist_ok=True)
            time = f"{srng.randint(0, 23) * 10000 + srng.randint(0, 59) * 100 + srng.randint(0, 59)}.{srng.randint(0, 999):03d}"
            procedure = "CHEST (PORTABLE AP)" if views == ["AP"] else "CHEST (PA AND LAT)"
            for v, view in enumerate(views):
                dicom = _dicom_id(f"{study}/{v}")
                width, height = VIEW_SIZE[view]
                (study_dir / f"{dicom}.jpg").write_bytes(draw_study_image(dicom, states, view))
                counts["images"] += 1
                metadata.append((dicom, subject, study, procedure, view, height, width, date + s, time, procedure,
                                 VIEW_MEANING[view], "Erect" if view == "PA" else ""))
                split_rows.append((dicom, study, subject, split))
            if study_index == 0:  # two bad images in the first (train) study
                ghost, orphan = _dicom_id(f"{study}/missing"), _dicom_id(f"{study}/no-split")
                metadata.append((ghost, subject, study, procedure, "PA", 208, 176, date, time, procedure,
                                 VIEW_MEANING["PA"], "Erect"))
                split_rows.append((ghost, study, subject, split))
                (study_dir / f"{orphan}.jpg").write_bytes(draw_study_image(orphan, states, "LATERAL"))
                metadata.append((orphan, subject, study, procedure, "LATERAL", 208, 192, date, time, procedure,
                                 VIEW_MEANING["LATERAL"], ""))
                counts["missing_jpg_rows"] += 1
                counts["images_without_split"] += 1
            if study_index == 3:
                counts["studies_without_labels"] += 1
            else:
                label_rows.append((subject, study, *(CSV_VALUE[states[label]] for label in LABEL_HEADER[2:])))
                counts["label_rows"] += 1
            report_dir = reports_root / "files" / f"p{subject[:2]}" / f"p{subject}"
            report_dir.mkdir(parents=True, exist_ok=True)
            kind = REPORT_KINDS[study_index % len(REPORT_KINDS)]
            (report_dir / f"s{study}.txt").write_text(_report(kind, study, views, states), encoding="utf-8")
            counts["reports"] += 1
            counts["studies"] += 1
            study_index += 1
    prefix = "mimic-cxr-2.0.0"
    deterministic_gzip(root / f"{prefix}-metadata.csv.gz", csv_bytes(METADATA_HEADER, metadata))
    deterministic_gzip(root / f"{prefix}-split.csv.gz", csv_bytes(SPLIT_HEADER, split_rows))
    deterministic_gzip(root / f"{prefix}-chexpert.csv.gz", csv_bytes(LABEL_HEADER, label_rows))
    deterministic_gzip(root / "patients.csv.gz", csv_bytes(
        ("subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"), patients))
    counts["metadata_rows"] = len(metadata)
    return counts
