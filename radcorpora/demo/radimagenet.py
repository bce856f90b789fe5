"""A small RadImageNet-format source tree whose pixels carry the labels.

Each region has its own body outline (skull ring, lung fields, long bones...), and each
pathology is a blob at a position and size specific to it, so a model can learn region and
lesion from the image alone. Normal images have no blob. Folder names follow the RadImageNet
release (`CT/lung/nodule`, `MR/af/...`), some needing the default label map.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from radcorpora.ops.sampling import row_rng

SIZE = 224
# (modality folder, anatomy folder, [pathology folders]) - "normal" is added to each.
DEMO_CLASSES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("CT", "abd", ("liver_lesion", "ascites", "renal_lesion")),
    ("CT", "lung", ("nodule", "airspace_opacity", "bronchiectasis")),
    ("MR", "af", ("achilles_pathology", "plantar_fascia_pathology", "hematoma")),
    ("MR", "brain", ("acute_infarct", "edema", "pituitary_lesion")),
    ("MR", "hip", ("labral_pathology", "osseous_lesion", "soft_tissue_mass")),
    ("MR", "knee", ("acl_pathology", "meniscal_abnormality", "fracture")),
    ("MR", "shoulder", ("supraspinatus_pathology", "post_op", "calcific_tendinosis")),
    ("MR", "spine", ("disc_pathology", "scoliosis", "facet_arthropathy")),
)
SPLIT_SHARES = (("train", 0.6), ("val", 0.2), ("test", 0.2))


def _draw_region(draw: ImageDraw.ImageDraw, anatomy: str, jitter: tuple[int, int]) -> None:
    dx, dy = jitter
    c = SIZE // 2
    if anatomy == "abd":
        draw.ellipse((20 + dx, 40 + dy, 204 + dx, 190 + dy), fill=110)
        draw.ellipse((60 + dx, 70 + dy, 120 + dx, 120 + dy), fill=150)  # liver-like organ
        draw.rectangle((105 + dx, 150 + dy, 119 + dx, 185 + dy), fill=230)  # vertebra
    elif anatomy == "lung":
        draw.ellipse((15 + dx, 35 + dy, 209 + dx, 195 + dy), fill=120)
        draw.ellipse((35 + dx, 55 + dy, 105 + dx, 175 + dy), fill=25)
        draw.ellipse((119 + dx, 55 + dy, 189 + dx, 175 + dy), fill=25)
    elif anatomy == "af":
        draw.polygon([(60 + dx, 20 + dy), (100 + dx, 20 + dy), (100 + dx, 150 + dy), (200 + dx, 170 + dy),
                      (200 + dx, 205 + dy), (60 + dx, 205 + dy)], fill=130)
    elif anatomy == "brain":
        draw.ellipse((25 + dx, 20 + dy, 199 + dx, 204 + dy), fill=235)
        draw.ellipse((37 + dx, 32 + dy, 187 + dx, 192 + dy), fill=105)
    elif anatomy == "hip":
        draw.rectangle((20 + dx, 60 + dy, 204 + dx, 200 + dy), fill=90)
        draw.ellipse((70 + dx, 70 + dy, 130 + dx, 130 + dy), fill=220)
        draw.polygon([(110 + dx, 110 + dy), (130 + dx, 100 + dy), (175 + dx, 210 + dy), (150 + dx, 215 + dy)], fill=220)
    elif anatomy == "knee":
        draw.rectangle((85 + dx, 5 + dy, 139 + dx, 100 + dy), fill=220)
        draw.rectangle((85 + dx, 120 + dy, 139 + dx, 219 + dy), fill=220)
        draw.ellipse((145 + dx, 80 + dy, 175 + dx, 120 + dy), fill=200)
    elif anatomy == "shoulder":
        draw.ellipse((100 + dx, 60 + dy, 190 + dx, 150 + dy), fill=215)
        draw.arc((30 + dx, 20 + dy, 200 + dx, 190 + dy), 180, 300, fill=235, width=10)
    elif anatomy == "spine":
        for i in range(6):
            top = 12 + i * 35 + dy
            draw.rectangle((c - 28 + dx, top, c + 28 + dx, top + 26), fill=210)


def draw_image(anatomy: str, pathology_index: int | None, key: str, seed: int = 0) -> bytes:
    """One PNG: region outline + (for abnormal images) a lesion placed by pathology."""
    rng = row_rng(seed, "demo-radimagenet", key)
    image = Image.new("L", (SIZE, SIZE), 8)
    draw = ImageDraw.Draw(image)
    _draw_region(draw, anatomy, (rng.randint(-6, 6), rng.randint(-6, 6)))
    if pathology_index is not None:
        angle = 2 * math.pi * pathology_index / 3 + rng.uniform(-0.15, 0.15)
        radius = 55
        cx, cy = SIZE / 2 + radius * math.cos(angle), SIZE / 2 + radius * math.sin(angle)
        r = 10 + 5 * pathology_index + rng.uniform(-1.5, 1.5)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255 if pathology_index != 1 else 0,
                     outline=255, width=2)
    pixels = np.asarray(image, dtype=np.int16)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 6, pixels.shape)
    pixels = np.clip(pixels + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_demo_radimagenet(root: Path, images_per_class: int = 10, seed: int = 0, us_images: int = 3,
                           pixels_carry_labels: bool = True) -> dict[str, int]:
    """Write `root/radiology_ai/...` and the three split CSVs; returns images per split.

    With `pixels_carry_labels=False` every image shows a region and lesion drawn at random (seeded
    by its path), whatever its folder says: a corpus whose answers do not depend on its images,
    which the reference check must fail."""
    classes = [(anatomy, index) for _, anatomy, pathologies in DEMO_CLASSES for index in (*range(len(pathologies)), None)]
    tree = root / "radiology_ai"
    rows: dict[str, list[tuple[str, str]]] = {name: [] for name, _ in SPLIT_SHARES}
    for modality, anatomy, pathologies in DEMO_CLASSES:
        for p_index, pathology in enumerate((*pathologies, "normal")):
            folder = tree / modality / anatomy / pathology
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(images_per_class):
                name = f"{anatomy}-{pathology}{i:06d}.png"
                rel = f"radiology_ai/{modality}/{anatomy}/{pathology}/{name}"
                drawn = (anatomy, None if pathology == "normal" else p_index)
                if not pixels_carry_labels:
                    drawn = row_rng(seed, "demo-radimagenet-shuffled", rel).choice(classes)
                (folder / name).write_bytes(draw_image(*drawn, rel, seed))
                position = i / images_per_class
                split = "train" if position < 0.6 else "val" if position < 0.8 else "test"
                rows[split].append((rel, f"{anatomy}-{pathology}"))
    us = tree / "US" / "thyroid"
    us.mkdir(parents=True, exist_ok=True)
    for i in range(us_images):
        (us / f"us-thyroid{i:06d}.png").write_bytes(draw_image("abd", None, f"us{i}", seed))
        rows["train"].append((f"radiology_ai/US/thyroid/us-thyroid{i:06d}.png", "us-thyroid"))
    for split, entries in rows.items():
        with open(root / f"RadiologyAI_{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "label"])
            writer.writerows(sorted(entries))
    return {split: len(entries) for split, entries in rows.items()}
