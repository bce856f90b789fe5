"""A small GEMeX-ThinkVG source (HF Parquet layout) and its GEMeX JSONL twin over the demo
MIMIC-CXR-JPG images. Every region box sits on what the image shows: a finding's box is the
extent of the bright blob the demo MIMIC writer painted for it (measured from the pixels, as the
MS-CXR demo does), a normal region's box is the anatomy `draw_cxr` painted (Chest ImaGenome
demo `region_boxes`). Boxes are written as integers on the 224 x 224 grid, the frame the reader
assumes by default; reasoning text names them as `(region [x1, y1, x2, y2])`.

Per frontal image: one closed question per finding found (or a normal one, and one about both
lungs when no finding is in a lung), one about the trachea, an open question,
a single-choice question about the bones and a multi-choice question about the diaphragm and
abdomen, so every image has steps in all four groups. Rows are written in the order open,
multi, closed, single (not the merge order) so a reader must sort them. Deliberately bad rows:
one question with an inverted box and one naming a region outside the mapping (`left breast`),
counted in the returned dict.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from radcorpora.demo.chest_imagenome import Row, image_rows, region_boxes
from radcorpora.schemas.cxr import CxrImage, StudyReport

GRID = 224
# Demo MIMIC finding label -> (GEMeX region, noun for the question, what the reasoning says).
FINDING_REGIONS: dict[str, tuple[str, str, str]] = {
    "Pleural Effusion": ("left costophrenic angle", "a pleural effusion",
                         "fluid blunts the left costophrenic angle"),
    "Cardiomegaly": ("cardiac region", "cardiomegaly", "the cardiac silhouette is wider than half the chest"),
    "Lung Opacity": ("right upper lung zone", "a lung opacity", "a focal dense area sits in the right upper zone"),
    "Pneumothorax": ("left apical zone", "a pneumothorax", "a lucent rim without lung markings lies at the left apex"),
    "Support Devices": ("mediastinum", "a support device", "a thin dense line runs down the mediastinum"),
    "Edema": ("right mid lung zone", "pulmonary edema", "hazy perihilar density fills the right mid zone"),
    "Consolidation": ("right lower lung zone", "consolidation", "a dense area fills the right lower zone"),
    "Atelectasis": ("left mid lung zone", "atelectasis", "a flat dense band crosses the left mid zone"),
    "Lung Lesion": ("left mid lung zone", "a lung nodule", "a small round density projects over the left mid zone"),
}
QUESTION_TYPES = {"closed": "closed_ended_questions", "open": "open_ended_questions",
                  "single": "single_choice_questions", "multi": "multi_choice_questions"}
JSONL_NAMES = {"closed": "closed_ended_question.jsonl", "open": "open_ended_question.jsonl",
               "single": "single_choice_question.jsonl", "multi": "multi_choice_question.jsonl"}
WRITE_ORDER = ("open", "multi", "closed", "single")


def grid_corners(box: tuple[float, float, float, float]) -> list[int]:
    """Normalised xyxy -> integer corners on the 224 grid, rounded outwards (covers the box)."""
    x1, y1, x2, y2 = box
    return [max(0, math.floor(x1 * GRID + 1e-9)), max(0, math.floor(y1 * GRID + 1e-9)),
            min(GRID, math.ceil(x2 * GRID - 1e-9)), min(GRID, math.ceil(y2 * GRID - 1e-9))]


def _region(name: str, corners: Sequence[int]) -> str:
    return f"({name} [{', '.join(str(int(v)) for v in corners)}])"


def _report_text(report: str | StudyReport | None) -> str:
    if isinstance(report, StudyReport):
        return " ".join(part for part in (report.findings, report.impression) if part)
    return report or ""


def plan_questions(mimic_images: Sequence[CxrImage | Row]) -> list[dict]:
    """Every demo question (frontal images only), in write order; each a dict with `kind`,
    `image_path`, `question`, `answer`, `choices`, `reasoning` and `regions` [(name, corners)]."""
    from radcorpora.demo.mimic_cxr import FINDING_BOXES
    from radcorpora.demo.ms_cxr import blob_box

    plans: list[dict] = []
    frontal = [row for row, view in image_rows(mimic_images) if view in ("PA", "AP")]
    for number, (dicom_id, subject, study, path, _, _, _) in enumerate(frontal):
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
        height, width = pixels.shape
        anatomy = {name: grid_corners(box) for name, box in region_boxes(dicom_id).items()}
        found = []
        for label, (region, noun, seen) in FINDING_REGIONS.items():
            blob = blob_box(pixels, FINDING_BOXES[label])
            if blob is not None:
                x, y, w, h = blob
                found.append((region, noun, seen, grid_corners((x / width, y / height, (x + w) / width,
                                                                (y + h) / height))))
        rel = f"/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg"
        questions: dict[str, list[dict]] = {kind: [] for kind in WRITE_ORDER}

        def add(kind: str, question: str, answer: str | list[str], reasoning: str, regions: list, choices=(),
                questions: dict[str, list[dict]] = questions, rel: str = rel) -> None:
            questions[kind].append({"kind": kind, "image_path": rel, "question": question, "answer": answer,
                                    "choices": list(choices), "reasoning": reasoning, "regions": regions})

        for region, noun, seen, corners in found:
            add("closed", f"Is there {noun} in this chest X-ray?", "Yes.",
                f"Looking at the {region} {_region(region, corners)}, {seen}. This is {noun}, so yes.",
                [(region, corners)])
        if not found:
            left, right = anatomy["left costophrenic angle"], anatomy["right costophrenic angle"]
            both = [min(left[0], right[0]), min(left[1], right[1]), max(left[2], right[2]), max(left[3], right[3])]
            add("closed", "Is there a pleural effusion in this chest X-ray?", "No.",
                f"Both costophrenic angles are sharp {_region('bilateral costophrenic angle', both)}, so there is "
                "no pleural effusion.", [("bilateral costophrenic angle", both)])
        lung_regions = {"left costophrenic angle", "right upper lung zone", "left apical zone", "right mid lung zone",
                        "right lower lung zone", "left mid lung zone"}
        if found and not any(region in lung_regions for region, *_ in found):
            left, right = anatomy["left lung"], anatomy["right lung"]
            both = [min(left[0], right[0]), min(left[1], right[1]), max(left[2], right[2]), max(left[3], right[3])]
            add("closed", "Are both lungs fully included in the image?", "Yes.",
                f"Both lungs {_region('bilateral lung', both)} are seen from apex to base.", [("bilateral lung", both)])
        add("closed", "Is the trachea midline?", "Yes.",
            f"The trachea {_region('trachea', anatomy['trachea'])} runs straight down the middle of the neck, "
            "so it is midline.", [("trachea", anatomy["trachea"])])
        heart = anatomy["cardiac silhouette"]
        if found:
            region, noun, seen, corners = found[0]
            add("open", "Where is the main abnormality located?", region,
                f"Scanning the chest, {seen} {_region(region, corners)}. The abnormality is in the {region}.",
                [(region, corners)])
        else:
            add("open", "How does the heart look?", "Normal in size.",
                f"The heart {_region('cardiac region', heart)} measures less than half the chest width, so its "
                "size is normal.", [("cardiac region", heart)])
        choices = ["A: No fracture", "B: Rib fracture", "C: Vertebral fracture", "D: Clavicle fracture"]
        add("single", "Which describes the bones? " + " ".join(choices), "A",
            f"The spine {_region('spine', anatomy['spine'])} is aligned and the right clavicle "
            f"{_region('right clavicle', anatomy['right clavicle'])} is intact; no fracture is seen.",
            [("spine", anatomy["spine"]), ("right clavicle", anatomy["right clavicle"])], choices)
        choices = ["A: Right hemidiaphragm is smooth", "B: Free air under the diaphragm", "C: Abdomen is unremarkable"]
        add("multi", "Which statements are true? " + " ".join(choices), ["A", "C"],
            f"The right hemidiaphragm {_region('right hemidiaphragm', anatomy['right hemidiaphragm'])} is smooth "
            f"and the upper abdomen {_region('abdomen', anatomy['abdomen'])} shows no free air.",
            [("right hemidiaphragm", anatomy["right hemidiaphragm"]), ("abdomen", anatomy["abdomen"])], choices)
        if number == 0:  # the reader must reject this row: x1 > x2
            lung = anatomy["right lung"]
            bad = [lung[2], lung[1], lung[0], lung[3]]
            questions["closed"].append(
                {"kind": "closed", "image_path": rel, "question": "Is the right lung clear?", "answer": "Yes.",
                 "choices": [], "reasoning": f"The right lung {_region('right lung', bad)} shows no focal density.",
                 "regions": [("right lung", bad)], "bad": "box_inverted"})
        if number == 1:  # a region the mapping does not know: the aggregation must reject it
            corners = anatomy["left lung"]
            questions["closed"].append(
                {"kind": "closed", "image_path": rel, "question": "Is there a breast shadow?", "answer": "Yes.",
                 "choices": [], "reasoning": f"A soft density overlies the left breast {_region('left breast', corners)}.",
                 "regions": [("left breast", corners)], "bad": "region_outside_mapping"})
        for kind in WRITE_ORDER:
            plans.extend(questions[kind])
    return plans


def _counts(plans: list[dict]) -> dict[str, int]:
    return {"images": len({p["image_path"] for p in plans}), "rows": len(plans),
            "bad_box_rows": sum(p.get("bad") == "box_inverted" for p in plans),
            "unknown_region_rows": sum(p.get("bad") == "region_outside_mapping" for p in plans),
            **{f"rows_{kind}": sum(p["kind"] == kind for p in plans) for kind in QUESTION_TYPES}}


def write_demo_gemex_thinkvg(root: Path, mimic_images: Sequence[CxrImage | Row],
                             reports: Mapping[str, str | StudyReport] | None = None) -> dict[str, int]:
    """Write `root/data/train-00000-of-00001.parquet` (columns question_type, image_path with a
    leading `/`, question, response `<answer>..</answer>`, thinkVG) for the frontal demo MIMIC
    images. `reports` is unused by the Parquet (ThinkVG ships none) and accepted for symmetry."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    del reports
    plans = plan_questions(mimic_images)
    table = pa.table({
        "question_type": [QUESTION_TYPES[p["kind"]] for p in plans],
        "image_path": [p["image_path"] for p in plans],
        "question": [p["question"] for p in plans],
        "response": [f"<answer>{', '.join(p['answer']) if isinstance(p['answer'], list) else p['answer']}</answer>"
                     for p in plans],
        "thinkVG": [p["reasoning"] for p in plans],
    })
    out = Path(root) / "data"
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "train-00000-of-00001.parquet")
    return _counts(plans)


def write_demo_gemex_jsonl(root: Path, mimic_images: Sequence[CxrImage | Row],
                           reports: Mapping[str, str | StudyReport] | None = None) -> dict[str, int]:
    """Write the four GEMeX `*_question.jsonl` files (no trailing newline, as upstream) with the
    same questions; `ori_report` from `reports` (study_id -> text or StudyReport)."""
    reports = reports or {}
    plans = plan_questions(mimic_images)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[str]] = {kind: [] for kind in QUESTION_TYPES}
    row_ids: dict[str, int] = {}
    for plan in plans:
        kind = plan["kind"]
        rel = plan["image_path"].lstrip("/")
        study = rel.split("/")[2][1:]
        record = {"question": plan["question"], "type": "abnormality", "answer": plan["answer"],
                  "reason": plan["reasoning"], "visual_regions": [name for name, _ in plan["regions"]],
                  "visual_locations": [list(corners) for _, corners in plan["regions"]], "image_path": rel,
                  "ori_report": _report_text(reports.get(study)), "q_id": len(rows[kind]),
                  "row_id": f"row_{row_ids.setdefault(rel, len(row_ids))}"}
        if plan["choices"]:
            record["choices"] = plan["choices"]
        rows[kind].append(json.dumps(record))
    for kind, lines in rows.items():
        (root / JSONL_NAMES[kind]).write_text("\n".join(lines), encoding="utf-8")
    return _counts(plans)
