"""Card text of the radvlm corpus."""

from __future__ import annotations

from typing import Any

from radcorpora.publish.card import CardContent

RADVLM_BIBTEX = """@article{deperrois2025radvlm,
  title   = {RadVLM: A Multitask Conversational Vision-Language Model for Radiology},
  author  = {Deperrois, Nicolas and Matsuo, Hidetoshi and Ruip{\\'e}rez-Campillo, Samuel and Vandenhirtz, Moritz and Laguna, Sonia and Ryser, Alain and Fujimoto, Koji and Nishio, Mizuho and Sutter, Thomas M. and Vogt, Julia E. and Kluckert, Jonas and Frauenfelder, Thomas and Bl{\\"u}thgen, Christian and Farshad, Farhad Nooralahzadeh and Krauthammer, Michael},
  journal = {arXiv preprint arXiv:2502.03333},
  year    = {2025}
}"""

SOURCE_CITATIONS = {
    "mimic-cxr": "Johnson et al., MIMIC-CXR-JPG, PhysioNet (credentialed)",
    "chexpert": "Irvin et al., CheXpert, Stanford AIMI (research use agreement)",
    "chexpert-plus": "Chambon et al., CheXpert Plus, Stanford AIMI (research use agreement)",
    "chest-imagenome": "Wu et al., Chest ImaGenome, PhysioNet (credentialed)",
    "vindr-cxr": "Nguyen et al., VinDr-CXR, PhysioNet (credentialed)",
    "ms-cxr": "Boecking et al., MS-CXR, PhysioNet (credentialed)",
    "padchest-gr": "de Castro et al., PadChest-GR, BIMCV (access by request)",
}

USAGE = """```python
from datasets import load_dataset
from radcorpora.publish.views import instance_view

grounding = load_dataset("path/or/repo", "abnormality_grounding")["train"]
examples = instance_view(grounding)              # one example per instance, replicas applied
examples = instance_view(grounding, replicate=False)   # one per instance, no replicas
```

Each row stores its image once; `instances` hold the examples asked of it (an image with three
fused VinDr findings has three grounding instances). `replication` is the published training-mix
factor (VinDr grounding x3, detection x2, MS-CXR x3, PadChest-GR x2): apply it when mixing tasks,
as `instance_view` does. Boxes are normalised `[x1, y1, x2, y2]` (`instances[].boxes`, with the
frame they came from and, for fused VinDr boxes, how many radiologists agreed) and appear in the
answers in RadVLM's text form."""


def radvlm_card(manifest: dict[str, Any]) -> CardContent:
    present = (manifest.get("source") or {}).keys()
    credentialed = manifest.get("licence_class") == "credentialed"
    return CardContent(
        pretty_name="RadVLM instruction data (radcorpora build)",
        summary=(
            "Chest X-ray instruction data rebuilt with radcorpora following Deperrois et al. (RadVLM): report "
            "generation (findings, else impression; frontal views), abnormality classification over the 14 "
            "CheXpert labels, anatomical grounding (Chest ImaGenome, one seeded region per image), abnormality "
            "grounding and detection (VinDr-CXR, radiologists' boxes fused with weighted boxes fusion), and "
            "phrase grounding (MS-CXR, PadChest-GR). Template choices are seeded per row, ids are unique and "
            "stable, every skipped row is in `build/rejects.jsonl`, and no patient is in both train and test "
            "of any task."
        ),
        licence={"license": "other", "license_name": "source-data-use-agreements",
                 "license_link": "https://physionet.org/content/mimic-cxr-jpg/"},
        licence_text=(
            ("**Holds credentialed (PhysioNet) data: share it only with people who hold the same credentials "
             "and data use agreements; never push it to a public repository.** " if credentialed else "")
            + "Each source keeps its own terms: " + "; ".join(SOURCE_CITATIONS[s] for s in sorted(present)
                                                               if s in SOURCE_CITATIONS)
            + ". The instruction wording is radcorpora's own."
        ),
        citations=[RADVLM_BIBTEX],
        task_categories=["image-to-text", "visual-question-answering", "object-detection"],
        tags=["medical", "radiology", "chest-x-ray", "grounding", "radcorpora"],
        usage=USAGE,
    )
