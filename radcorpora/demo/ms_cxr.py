"""A small MS-CXR v1.1.0 source over demo MIMIC-CXR-JPG images. Its boxes are measured from the
pixels: for each MS-CXR category the demo MIMIC writer draws at a fixed place
(`FINDING_BOXES` of the labels in its `POOL`), a bright blob found there becomes a phrase whose
box is the blob's extent, so every box sits on a visible finding.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from radcorpora.demo.chest_imagenome import Row, image_rows
from radcorpora.schemas.cxr import CxrImage

CATEGORIES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity", "Pleural Effusion",
              "Pneumonia", "Pneumothorax")
PHRASES: dict[str, str] = {
    "Atelectasis": "band of atelectasis in the left mid lung",
    "Cardiomegaly": "the heart is enlarged",
    "Consolidation": "consolidation at the right lung base",
    "Edema": "hazy opacity in keeping with edema",
    "Lung Opacity": "focal opacity in the right upper lung",
    "Pleural Effusion": "small left pleural effusion",
    "Pneumonia": "right lower lobe pneumonia",
    "Pneumothorax": "small left apical pneumothorax",
}
HEADER = ("dicom_id", "category_name", "label_text", "x", "y", "w", "h", "image_width", "image_height", "path", "split")
BRIGHT = 200  # blobs are painted at 235; heart 150, spine 170, lungs 40


def blob_box(pixels: np.ndarray, place: tuple[float, float, float, float]) -> tuple[int, int, int, int] | None:
    """Pixel (x, y, w, h) of the bright blob at `place` (normalised xyxy), None if none is there."""
    height, width = pixels.shape
    x1, y1, x2, y2 = place
    cx1, cx2 = int((x1 + 0.3 * (x2 - x1)) * width), int((x2 - 0.3 * (x2 - x1)) * width) + 1
    cy1, cy2 = int((y1 + 0.3 * (y2 - y1)) * height), int((y2 - 0.3 * (y2 - y1)) * height) + 1
    if (pixels[cy1:cy2, cx1:cx2] > BRIGHT).mean() < 0.6:
        return None
    margin = 0.02
    ex1, ey1 = max(int((x1 - margin) * width), 0), max(int((y1 - margin) * height), 0)
    ex2, ey2 = min(int((x2 + margin) * width) + 1, width), min(int((y2 + margin) * height) + 1, height)
    mask = pixels[ey1:ey2, ex1:ex2] > BRIGHT
    blob = np.zeros_like(mask)  # the bright pixels connected to the core (not a neighbouring blob)
    blob[cy1 - ey1:cy2 - ey1, cx1 - ex1:cx2 - ex1] = mask[cy1 - ey1:cy2 - ey1, cx1 - ex1:cx2 - ex1]
    while True:
        grown = blob.copy()
        grown[1:, :] |= blob[:-1, :]
        grown[:-1, :] |= blob[1:, :]
        grown[:, 1:] |= blob[:, :-1]
        grown[:, :-1] |= blob[:, 1:]
        grown &= mask
        if (grown == blob).all():
            break
        blob = grown
    ys, xs = np.nonzero(blob)
    return ex1 + int(xs.min()), ey1 + int(ys.min()), int(xs.max() - xs.min()) + 1, int(ys.max() - ys.min()) + 1


def write_demo_ms_cxr(root: Path, mimic_images: Sequence[CxrImage | Row]) -> dict[str, int]:
    """Write `MS_CXR_Local_Alignment_v1.1.0.csv` under `root` for the frontal demo MIMIC images."""
    from radcorpora.demo.mimic_cxr import FINDING_BOXES, POOL

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows, images = [], set()
    for (dicom_id, subject, study, path, _, _, split), view in image_rows(mimic_images):
        if view not in ("PA", "AP"):
            continue
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
        height, width = pixels.shape
        for category in CATEGORIES:
            if category not in POOL:  # only the drawn labels have places of their own
                continue
            box = blob_box(pixels, FINDING_BOXES[category])
            if box is None:
                continue
            rel = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg"
            split_value = {"validation": "val", "validate": "val"}.get(split, split)
            rows.append((dicom_id, category, PHRASES[category], *box, width, height, rel, split_value))
            images.add(dicom_id)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(sorted(rows))
    (root / "MS_CXR_Local_Alignment_v1.1.0.csv").write_text(buffer.getvalue(), encoding="utf-8")
    return {"rows": len(rows), "images": len(images)}
