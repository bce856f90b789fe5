"""Small PubMedVision- and VQA-RAD-format sources for the rad-ace-cot demo.

`PubMedVision_Alignment_VQA.json` is one top-level JSON array in the published record shape
(id, image list, LLaVA conversations, modality, body_part), with CT and MR records to keep, other
modalities to skip, a multi-image record and a record whose image file is missing. The VQA-RAD
sample follows the Hub Parquet mirror (`data/test-00000-of-00001.parquet`). All text is ours.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from radcorpora.demo.radimagenet import draw_image

# (modality value as PubMedVision writes it, body_part, anatomy for drawing, lesion index or None,
#  question, findings)
CASES: tuple[tuple[str, str, str, int | None, str, str], ...] = (
    ("Computed Tomography (CT)", "Abdomen", "abd", 0, "What is the abnormality in the liver?",
     "Axial contrast-enhanced CT of the abdomen shows a well-defined hypodense lesion in the right hepatic lobe "
     "measuring about 3.2 cm. The lesion shows no internal enhancement. The spleen and kidneys appear unremarkable."),
    ("Computed Tomography (CT)", "Abdomen", "abd", 1, "Is there free fluid in the abdomen?",
     "Axial CT of the abdomen demonstrates a moderate amount of free fluid surrounding the liver and in the "
     "paracolic gutters. The bowel loops are centrally displaced. No focal liver lesion is seen."),
    ("Computed Tomography (CT)", "Chest", "lung", 0, "Describe the finding in the right lung.",
     "Axial CT of the chest in lung window shows a solitary round nodule of about 12 mm in the right upper lobe "
     "with smooth margins. The remaining lung parenchyma is clear and there is no pleural effusion."),
    ("Computed Tomography (CT)", "Chest", "lung", 1, "What does the opacity in the lungs suggest?",
     "Axial chest CT shows patchy airspace opacity with air bronchograms in the left lower lobe. The airways "
     "are patent and there is a small adjacent pleural effusion."),
    ("Magnetic Resonance Imaging (MRI)", "Brain", "brain", 0, "What is seen in the left hemisphere?",
     "Axial diffusion-weighted MRI of the brain shows an area of restricted diffusion in the left middle "
     "cerebral artery territory involving cortex and subcortical white matter. There is no midline shift."),
    ("Magnetic Resonance Imaging (MRI)", "Brain", "brain", 2, "Where is the lesion located?",
     "Coronal T1-weighted MRI after contrast shows an enhancing mass of about 1.5 cm arising from the pituitary "
     "gland and extending into the suprasellar cistern. The optic chiasm is mildly elevated."),
    ("Magnetic Resonance Imaging (MRI)", "Knee", "knee", 0, "What is the condition of the anterior cruciate ligament?",
     "Sagittal proton-density MRI of the knee shows discontinuity of the anterior cruciate ligament fibres with "
     "surrounding oedema. A joint effusion is present. The posterior cruciate ligament is intact."),
    ("Magnetic Resonance Imaging (MRI)", "Knee", "knee", 1, "Is the medial meniscus normal?",
     "Sagittal MRI of the knee shows a linear high signal extending to the inferior articular surface of the "
     "posterior horn of the medial meniscus, in keeping with a tear. The articular cartilage is preserved."),
    ("MRI", "Spine", "spine", 0, "What is seen at the lumbar disc level?",
     "Sagittal T2-weighted MRI of the lumbar spine shows a posterior disc protrusion at the L4-L5 level "
     "narrowing the spinal canal. The other discs show normal height and signal."),
    ("MR", "Shoulder", "shoulder", 0, "What is the abnormality of the rotator cuff?",
     "Coronal fat-suppressed MRI of the shoulder shows a full-thickness tear of the supraspinatus tendon with "
     "retraction of about 1 cm. The humeral head is well seated in the glenoid."),
    ("CT", "Pelvis", "hip", 1, "What is seen in the femoral head?",
     "Coronal CT of the pelvis shows a lytic lesion with a sclerotic rim in the left femoral head measuring "
     "about 2 cm. The hip joint space is preserved and there is no fracture."),
    ("Computed Tomography", "Abdomen", "abd", 2, "What is the finding in the kidney?",
     "Axial contrast-enhanced CT shows a heterogeneously enhancing mass in the lower pole of the right kidney "
     "measuring about 4 cm. The renal vein appears patent. The left kidney is normal."),
    ("Magnetic Resonance Imaging (MRI)", "Ankle", "af", 0, "What is wrong with the Achilles tendon?",
     "Sagittal T2-weighted MRI of the ankle shows thickening of the Achilles tendon with intrasubstance high "
     "signal about 4 cm above its insertion. There is no complete tear."),
    ("Computed Tomography (CT)", "Chest", "lung", None, "Is the chest CT normal?",
     "Axial CT of the chest shows clear lungs without nodules or consolidation. The heart size is normal and "
     "there is no pleural or pericardial effusion."),
    ("Magnetic Resonance Imaging (MRI)", "Brain", "brain", None, "Are there any abnormalities in the brain?",
     "Axial T2-weighted MRI of the brain shows normal grey and white matter signal. The ventricles are of normal "
     "size and there is no mass or haemorrhage."),
    ("Computed Tomography (CT)", "Abdomen", "abd", None, "Describe the liver.",
     "Axial CT of the abdomen shows a liver of normal size with homogeneous attenuation. No focal lesion or "
     "biliary dilatation is present."),
)
# Records a CT/MR filter must skip: (modality, body_part)
OTHER_MODALITIES = (("Digital Photography", "Skin"), ("X-ray", "Chest"), ("Microscopy Images", "Cell"),
                    ("Positron Emission Tomography (PET)", "Whole Body"))


def _jpeg(anatomy: str, lesion: int | None, key: str) -> bytes:
    png = draw_image(anatomy, lesion, key)
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(png)) as image:
        image.convert("L").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_demo_pubmedvision(root: Path, repeats: int = 2) -> dict[str, int]:
    """The demo JSON array and its images; returns counts of what was written."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    records = []
    n = 0
    for r in range(repeats):
        for i, (modality, body_part, anatomy, lesion, question, findings) in enumerate(CASES):
            n += 1
            names = [f"images/pmc_{n}_0.jpg"]
            if i % 5 == 0:  # a multi-image figure
                names.append(f"images/pmc_{n}_1.jpg")
            for k, name in enumerate(names):
                (root / name).write_bytes(_jpeg(anatomy, lesion, f"pmv{n}-{k}"))
            records.append({
                "id": f"Alignment_VQA_{n}", "image": names,
                "conversations": [{"from": "human", "value": question if r == 0 else f"{question} Please explain."},
                                  {"from": "gpt", "value": findings}],
                "modality": modality, "body_part": body_part})
    for modality, body_part in OTHER_MODALITIES:
        n += 1
        name = f"images/pmc_{n}_0.jpg"
        (root / name).write_bytes(_jpeg("abd", None, f"other{n}"))
        records.append({"id": f"Alignment_VQA_{n}", "image": [name],
                        "conversations": [{"from": "human", "value": "What is shown?"},
                                          {"from": "gpt", "value": "A figure from a publication."}],
                        "modality": modality, "body_part": body_part})
    n += 1
    records.append({"id": f"Alignment_VQA_{n}", "image": [f"images/pmc_{n}_0.jpg"],  # file absent on purpose
                    "conversations": [{"from": "human", "value": "What is seen?"},
                                      {"from": "gpt", "value": "Axial CT shows a normal study."}],
                    "modality": "Computed Tomography (CT)", "body_part": "Head"})
    (root / "PubMedVision_Alignment_VQA.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    return {"records": len(records), "ct_mr": len(CASES) * repeats + 1}


VQA_RAD_QUESTIONS = (
    ("brain", 0, "is there evidence of an infarct?", "yes"),
    ("brain", None, "is this image abnormal?", "no"),
    ("lung", 0, "where is the nodule located?", "right upper lobe"),
    ("lung", None, "is there a pleural effusion?", "no"),
    ("abd", 0, "what organ is the lesion in?", "liver"),
    ("abd", 2, "is the mass in the kidney?", "yes"),
    ("knee", 0, "which ligament is torn?", "anterior cruciate ligament"),
    ("spine", 0, "at what level is the disc protrusion?", "l4-l5"),
)


def write_demo_vqa_rad(root: Path) -> int:
    """A VQA-RAD test sample in the Hub mirror's Parquet layout."""
    rows = [{"image": {"bytes": _jpeg(anatomy, lesion, f"vqarad{i}"), "path": f"synpic{50000 + i}.jpg"},
             "question": question, "answer": answer}
            for i, (anatomy, lesion, question, answer) in enumerate(VQA_RAD_QUESTIONS)]
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("question", pa.string()), ("answer", pa.string())])
    (root / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "data" / "test-00000-of-00001.parquet")
    return len(rows)
