"""A small VinDr-CXR source in the PhysioNet layout: real DICOM files written with pydicom (12-bit
pixels, some MONOCHROME1 stored inverted, sizes that differ per image), three radiologists per
train image whose boxes jitter around the same drawn finding (so reader fusion has work to do),
images all readers call `No finding`, a consensus test split, and one inverted box that the
reader must reject. Every finding is drawn as a blob exactly inside its base box.

The train table spells the reader column `rad_id`, the test table `rad_ID` (both occur upstream).
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np

from radcorpora.demo.cxr_drawing import draw_cxr
from radcorpora.ops.sampling import row_rng

# Where each demo class is drawn (normalised xyxy; image left = patient right).
CLASS_BOXES: dict[str, tuple[float, float, float, float]] = {
    "Cardiomegaly": (0.36, 0.44, 0.72, 0.82),
    "Pleural effusion": (0.72, 0.66, 0.86, 0.80),
    "Nodule/Mass": (0.22, 0.26, 0.30, 0.34),
    "Aortic enlargement": (0.50, 0.16, 0.60, 0.28),
    "Pneumothorax": (0.60, 0.16, 0.80, 0.28),
    "Lung Opacity": (0.18, 0.50, 0.32, 0.66),
}
SIZES = ((160, 192), (176, 208), (192, 224), (208, 240))  # (Columns, Rows)
READERS = tuple(f"R{k}" for k in range(1, 18))
LABEL_COLUMNS = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
                 "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
                 "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
                 "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD",
                 "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding")


def _image_id(key: str) -> str:
    return hashlib.sha256(f"demo-vindr/{key}".encode()).hexdigest()[:32]


def _uid(key: str) -> str:
    return "2.25." + str(int(hashlib.sha256(f"demo-vindr-uid/{key}".encode()).hexdigest()[:30], 16))


def write_dicom(path: Path, key: str, pixels: np.ndarray, monochrome1: bool) -> None:
    """A minimal, valid CR DICOM with 12-bit pixels; MONOCHROME1 stores them inverted."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    values = pixels.astype(np.uint16) * 16  # 8 -> 12 bits
    if monochrome1:
        values = 4095 - values
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = _uid(key)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1044.1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid(f"{key}/study")
    ds.SeriesInstanceUID = _uid(f"{key}/series")
    ds.Modality = "CR"
    ds.PatientID = ""
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = values.astype("<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path.write_bytes(buffer.getvalue())


def _jitter(rng, box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, ...]:
    x1, y1, x2, y2 = box
    dx, dy = 0.015 * width, 0.015 * height
    return (round(x1 * width + rng.uniform(-dx, dx), 1), round(y1 * height + rng.uniform(-dy, dy), 1),
            round(x2 * width + rng.uniform(-dx, dx), 1), round(y2 * height + rng.uniform(-dy, dy), 1))


def write_demo_vindr_cxr(root: Path, n_train: int = 12, n_test: int = 4) -> dict[str, int]:
    """Write the demo under `root`; returns what was written (and the one box meant to be rejected)."""
    root = Path(root)
    for folder in ("train", "test", "annotations"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    classes = sorted(CLASS_BOXES)
    counts = {"train_images": 0, "test_images": 0, "no_finding_images": 0, "box_rows": 0, "inverted_boxes": 0,
              "monochrome1_images": 0}
    tables: dict[str, list[tuple]] = {"train": [], "test": []}
    labels: dict[str, list[tuple]] = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for k in range(n):
            image_id = _image_id(f"{split}-{k}")
            rng = row_rng(0, "demo-vindr-cxr", image_id, "plan")
            width, height = SIZES[k % len(SIZES)]
            normal = k % 4 == 3
            found = [] if normal else sorted(rng.sample(classes, rng.randint(1, 2)))
            monochrome1 = k % 3 == 1
            pixels = np.asarray(draw_cxr(image_id, width, height, [CLASS_BOXES[c] for c in found]))
            write_dicom(root / split / f"{image_id}.dicom", image_id, pixels, monochrome1)
            counts[f"{split}_images"] += 1
            counts["monochrome1_images"] += monochrome1
            counts["no_finding_images"] += normal
            readers = sorted(rng.sample(READERS, 3)) if split == "train" else ["R8"]  # test: one consensus
            for reader in readers:
                if normal:
                    tables[split].append((image_id, reader, "No finding", "", "", "", ""))
                for label in found:
                    box = _jitter(row_rng(0, "demo-vindr-cxr", f"{image_id}/{reader}/{label}", "box"),
                                  CLASS_BOXES[label], width, height)
                    tables[split].append((image_id, reader, label, *box))
                    counts["box_rows"] += 1
                labels[split].append((image_id, reader, *(int(c in found or (c == "No finding" and normal))
                                                          for c in LABEL_COLUMNS)))
    # one reader swapped x_min and x_max: the reader must reject this row
    bad = next(i for i, row in enumerate(tables["train"]) if row[2] != "No finding")
    image_id, reader, label, x1, y1, x2, y2 = tables["train"][bad]
    tables["train"][bad] = (image_id, reader, label, x2, y1, x1, y2)
    counts["inverted_boxes"] = 1
    for split, column in (("train", "rad_id"), ("test", "rad_ID")):
        rows = sorted(tables[split], key=lambda r: (r[0], r[1], r[2]))
        _write_csv(root / "annotations" / f"annotations_{split}.csv",
                   ("image_id", column, "class_name", "x_min", "y_min", "x_max", "y_max"), rows)
        header = ("image_id", "rad_id", *(c if split == "train" or c != "Other diseases" else "Other disease"
                                          for c in LABEL_COLUMNS))
        _write_csv(root / "annotations" / f"image_labels_{split}.csv", header, sorted(labels[split]))
    return counts


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")
