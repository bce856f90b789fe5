"""A small Chest ImaGenome silver source over demo MIMIC-CXR-JPG images: split CSVs with their
index column, one scene graph per frontal image whose 29 region boxes follow the anatomy
`draw_cxr` paints (lungs, heart, spine, with the same per-image jitter), an `images_to_avoid.csv`
entry, lateral images listed without a scene graph (as upstream), and one region pushed out of
the image that the reader must reject.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from radcorpora.ops.sampling import row_rng
from radcorpora.schemas.cxr import CxrImage

# Regions in the drawn frame before jitter (normalised xyxy; image left = patient right).
_RIGHT_LUNG, _LEFT_LUNG = (0.15, 0.15, 0.47, 0.82), (0.53, 0.15, 0.85, 0.82)


def _lung_parts(side: str, x1: float, y1: float, x2: float, y2: float) -> dict[str, tuple[float, ...]]:
    height = y2 - y1
    lateral_x = (x1, x1 + 0.4 * (x2 - x1)) if side == "right" else (x2 - 0.4 * (x2 - x1), x2)
    medial_x = (x2 - 0.35 * (x2 - x1), x2) if side == "right" else (x1, x1 + 0.35 * (x2 - x1))
    return {
        f"{side} lung": (x1, y1, x2, y2),
        f"{side} upper lung zone": (x1, y1, x2, y1 + height / 3),
        f"{side} mid lung zone": (x1, y1 + height / 3, x2, y1 + 2 * height / 3),
        f"{side} lower lung zone": (x1, y1 + 2 * height / 3, x2, y2),
        f"{side} hilar structures": (medial_x[0], y1 + 0.35 * height, medial_x[1], y1 + 0.6 * height),
        f"{side} apical zone": (x1, y1, x2, y1 + height / 6),
        f"{side} costophrenic angle": (lateral_x[0], y2 - 0.15 * height, lateral_x[1], y2),
        f"{side} hemidiaphragm": (x1, y2 - 0.06, x2, y2 + 0.04),
        f"{side} clavicle": (x1, y1 - 0.05, x2, y1 + 0.03),
    }


ANATOMY: dict[str, tuple[float, ...]] = {
    **_lung_parts("right", *_RIGHT_LUNG),
    **_lung_parts("left", *_LEFT_LUNG),
    "trachea": (0.47, 0.02, 0.53, 0.30),
    "spine": (0.47, 0.02, 0.53, 0.95),
    "aortic arch": (0.50, 0.22, 0.60, 0.32),
    "mediastinum": (0.40, 0.15, 0.62, 0.80),
    "upper mediastinum": (0.42, 0.15, 0.58, 0.40),
    "svc": (0.42, 0.22, 0.47, 0.42),
    "cardiac silhouette": (0.42, 0.45, 0.70, 0.78),
    "cavoatrial junction": (0.42, 0.40, 0.48, 0.47),
    "right atrium": (0.42, 0.50, 0.52, 0.75),
    "carina": (0.47, 0.28, 0.53, 0.34),
    "abdomen": (0.15, 0.82, 0.85, 0.99),
}
Row = tuple[str, str, str, str, int, int, str]  # dicom_id, subject, study, path, width, height, split


def region_boxes(dicom_id: str) -> dict[str, tuple[float, float, float, float]]:
    """Each region as drawn on this image: `draw_cxr` shifts the anatomy by a per-image jitter
    drawn first from its row rng (keyed by the dicom_id), replayed here."""
    rng = row_rng(0, "demo-cxr", dicom_id, "draw")
    jx, jy = rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02)
    return {name: (min(max(x1 + jx, 0.0), 1.0), min(max(y1 + jy, 0.0), 1.0), min(max(x2 + jx, 0.0), 1.0),
                   min(max(y2 + jy, 0.0), 1.0)) for name, (x1, y1, x2, y2) in ANATOMY.items()}


def image_rows(images: Sequence[CxrImage | Row]) -> list[tuple[Row, str]]:
    rows = []
    for image in images:
        if isinstance(image, CxrImage):
            row = (image.image_id, image.subject_id, image.study_id or "", image.path, image.width or 0,
                   image.height or 0, image.split)
            rows.append((row, image.view))
        else:
            rows.append((tuple(image), "PA"))
    return sorted(rows)


def write_demo_chest_imagenome(root: Path, mimic_images: Sequence[CxrImage | Row]) -> dict[str, int]:
    """Write `root/silver_dataset/...` for the given MIMIC images (CxrImage, or tuples of
    dicom_id, subject, study, path, width, height, split; tuples count as frontal)."""
    silver = Path(root) / "silver_dataset"
    (silver / "splits").mkdir(parents=True, exist_ok=True)
    (silver / "scene_graph").mkdir(parents=True, exist_ok=True)
    header = ("", "subject_id", "study_id", "dicom_id", "path", "ViewPosition")
    by_split: dict[str, list[tuple]] = {"train": [], "valid": [], "test": []}
    counts = {"images": 0, "scene_graphs": 0, "without_scene_graph": 0, "images_to_avoid": 0, "bad_boxes": 0}
    avoid: list[tuple] = []
    frontal = [(row, view) for row, view in image_rows(mimic_images) if view in ("PA", "AP") and row[4] and row[5]]
    for row, view in image_rows(mimic_images):
        dicom_id, subject, study, _, width, height, split = row
        name = {"train": "train", "validation": "valid", "validate": "valid", "test": "test"}[split]
        rel = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.dcm"
        by_split[name].append((subject, study, dicom_id, rel, view))
        counts["images"] += 1
        if (row, view) not in frontal:
            counts["without_scene_graph"] += 1
            continue
        if (row, view) == frontal[-1] and len(frontal) > 2:
            avoid.append((subject, study, dicom_id, rel))
            counts["images_to_avoid"] += 1
        objects = []
        for region, (x1, y1, x2, y2) in region_boxes(dicom_id).items():
            if (row, view) == frontal[0] and region == "right clavicle":
                y1, y2 = -0.2, -0.05  # drawn above the image: the reader must reject it
                counts["bad_boxes"] += 1
            ox1, oy1, ox2, oy2 = round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height)
            objects.append({
                "object_id": f"{dicom_id}_{region}", "x1": round(x1 * 224), "y1": round(y1 * 224),
                "x2": round(x2 * 224), "y2": round(y2 * 224), "width": round((x2 - x1) * 224),
                "height": round((y2 - y1) * 224), "bbox_name": region, "synsets": [], "name": region.title(),
                "original_x1": ox1, "original_y1": oy1, "original_x2": ox2, "original_y2": oy2,
                "original_width": ox2 - ox1, "original_height": oy2 - oy1})
        rng = row_rng(0, "demo-chest-imagenome", dicom_id, "graph")
        graph = {"image_id": dicom_id, "viewpoint": view, "patient_id": int(subject), "study_id": int(study),
                 "gender": rng.choice("FM"), "age_decile": f"{rng.randint(3, 8)}0-{rng.randint(3, 8)}9",
                 "reason_for_exam": "___ year old with shortness of breath", "StudyOrder": 1,
                 "StudyDateTime": "2150-01-01 00:00:00 UTC", "objects": objects, "attributes": [],
                 "relationships": []}
        (silver / "scene_graph" / f"{dicom_id}_SceneGraph.json").write_text(json.dumps(graph, indent=1),
                                                                             encoding="utf-8")
        counts["scene_graphs"] += 1
    for name, rows in by_split.items():
        _write_csv(silver / "splits" / f"{name}.csv", header, [(i, *r) for i, r in enumerate(rows)])
    _write_csv(silver / "splits" / "images_to_avoid.csv", ("subject_id", "study_id", "dicom_id", "path"), avoid)
    return counts


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")
