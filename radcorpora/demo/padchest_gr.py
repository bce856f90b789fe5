"""A small PadChest-GR source: `grounded_reports_20240819.json`, `master_table.csv` (one row per
(study, label)) and PNGs, either inside `Padchest_GR_files/PadChest_GR.zip.001..003` (one zip cut
into three byte pieces, as upstream) or unpacked in `Padchest_GR_files/`. Positive sentences carry
normalised boxes drawn as blobs exactly there; some also carry a second reader's `extra_boxes`;
negative sentences omit boxes, labels and locations, as upstream often does.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

from radcorpora.demo.cxr_drawing import draw_cxr, encode
from radcorpora.ops.sampling import row_rng

# label -> (box, location, sentence), normalised xyxy (image left = patient right)
FINDINGS: dict[str, tuple[tuple[float, float, float, float], str, str]] = {
    "cardiomegaly": ((0.36, 0.44, 0.72, 0.82), "cardiac", "The heart is enlarged."),
    "pleural effusion": ((0.72, 0.66, 0.86, 0.80), "left costophrenic angle", "Left pleural effusion."),
    "nodule": ((0.22, 0.26, 0.30, 0.34), "right upper lobe", "Nodule in the right upper lobe."),
    "atelectasis": ((0.18, 0.58, 0.34, 0.66), "right lower lobe", "Band of atelectasis at the right base."),
    "scoliosis": ((0.44, 0.30, 0.56, 0.90), "spine", "Scoliosis of the thoracic spine."),
}
NEGATIVES = ("No pneumothorax.", "No consolidation.", "Costophrenic angles are free.")
GROUPS = {"cardiomegaly": "Cardiomegaly", "pleural effusion": "Pleural effusion", "nodule": "Nodule/Mass",
          "atelectasis": "Atelectasis", "scoliosis": "Scoliosis"}
PARTS = 3


def _id(key: str, digits: int = 12) -> str:
    return str(int(hashlib.sha256(f"demo-padchest-gr/{key}".encode()).hexdigest()[:16], 16))[:digits]


def write_demo_padchest_gr(root: Path, split_zip: bool = True, n_studies: int = 12) -> dict[str, int]:
    """Write the demo under `root`; PNGs go into a 3-piece split zip or a plain folder."""
    root = Path(root)
    files = root / "Padchest_GR_files"
    files.mkdir(parents=True, exist_ok=True)
    studies, master, pngs = [], [], {}
    counts = {"studies": 0, "positive_sentences": 0, "negative_sentences": 0, "extra_boxes": 0}
    labels = sorted(FINDINGS)
    for k in range(n_studies):
        study, patient = _id(f"study-{k}"), _id(f"patient-{k // 2}", 10)  # two studies per patient
        image_id = f"{_id(f'image-{k}', 20)}_{study}.png"
        rng = row_rng(0, "demo-padchest-gr", image_id, "plan")
        split = ("train", "train", "train", "validation", "test", "train")[(k // 2) % 6]
        found = sorted(rng.sample(labels, rng.randint(0, 2)))
        findings = []
        for label in found:
            box, location, sentence = FINDINGS[label]
            entry = {"sentence_en": sentence, "sentence_es": f"[es] {sentence}", "abnormal": True,
                     "boxes": [list(box)], "extra_boxes": [], "labels": [label], "locations": [location],
                     "progression": None}
            if rng.random() < 0.5:  # a second reader drew it a little differently
                entry["extra_boxes"] = [[round(v + rng.uniform(-0.01, 0.01), 4) for v in box]]
                counts["extra_boxes"] += 1
            findings.append(entry)
            counts["positive_sentences"] += 1
        for sentence in rng.sample(NEGATIVES, 1 + (not found)):
            findings.append({"sentence_en": sentence, "sentence_es": f"[es] {sentence}", "abnormal": False})
            counts["negative_sentences"] += 1
        studies.append({"StudyID": study, "ImageID": image_id, "findings": findings})
        pngs[image_id] = encode(draw_cxr(image_id, 192, 224, [FINDINGS[label][0] for label in found]))
        sex = rng.choice("FM")
        for label in found or ["normal"]:
            master.append((image_id, study, patient, split, sex, label, GROUPS.get(label, "Normal")))
        counts["studies"] += 1
    (root / "grounded_reports_20240819.json").write_text(json.dumps(studies, indent=1), encoding="utf-8")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("ImageID", "StudyID", "PatientID", "split", "PatientSex_DICOM", "label", "label_group"))
    writer.writerows(master)
    (root / "master_table.csv").write_text(buffer.getvalue(), encoding="utf-8")
    if split_zip:
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
            for name in sorted(pngs):
                zf.writestr(zipfile.ZipInfo(f"PadChest_GR/{name}", date_time=(2024, 8, 19, 0, 0, 0)), pngs[name])
        data = archive.getvalue()
        cut = -(-len(data) // PARTS)
        for part in range(PARTS):
            (files / f"PadChest_GR.zip.{part + 1:03d}").write_bytes(data[part * cut:(part + 1) * cut])
    else:
        for name, data in pngs.items():
            (files / name).write_bytes(data)
    return counts
