"""Card text of the radvlm corpus."""

from __future__ import annotations

from typing import Any

from radcorpora.publish.card import llm_section
from radcorpora.spec.card import CardContent

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

from radcorpora.publish.views import training_mix
mix = training_mix("path/or/repo")                # the `all` view: every config's train split, replicas
                                                 # applied, in one seeded order (RadVLM's training mix)
```

Each row stores its image once; `instances` hold the examples asked of it (an image with three
fused VinDr findings has three grounding instances). `replication` is the published training-mix
factor (VinDr grounding x3, detection x2, MS-CXR x3, PadChest-GR x2) on training rows: apply it when
mixing tasks, as `instance_view` does; `test` rows hold each instance once (replication 1). Boxes are normalised `[x1, y1, x2, y2]` (`instances[].boxes`, with the
frame they came from and, for fused VinDr boxes, how many radiologists agreed) and appear in the
answers in RadVLM's text form."""


PRIOR_REMOVAL_TEXT = {
    "llm": "Every report the build uses (report generation, and the facts conversations are written from) was "
           "rewritten by an LLM to keep only what the current image shows; the rule-based prior-study detector "
           "checked every rewrite (a leak was sent back once, then rejected). Reports with nothing current left "
           "are rejected as `prior_removal_nothing_current`.",
    "rules": "References to earlier studies were removed by radcorpora's rule-based detector, sentence by "
             "sentence (a sentence that mentions an earlier study is dropped whole, even when it also names a "
             "current finding); no report text was sent to a language model.",
    "off": "**Prior-study removal was turned off: report texts still refer to earlier studies** "
           "(\"unchanged\", \"compared with the prior\"), which a model that sees one image cannot know.",
}


def _llm_text(manifest: dict[str, Any]) -> dict[str, str]:
    llm = manifest.get("llm") or {}
    mode = llm.get("prior_removal", "off")
    sections = {"Prior-study removal": PRIOR_REMOVAL_TEXT.get(mode, PRIOR_REMOVAL_TEXT["off"])}
    splits = manifest.get("splits") or {}
    if any(c in splits for c in ("conversation", "conversation_grounded")):
        sections["Conversations"] = (
            "`conversation` and `conversation_grounded` hold one LLM-written conversation per image (5-10 rounds, "
            "JSON turns parsed and checked: alternating roles, no empty turn, no prior-study language, no copied "
            "`___` placeholder; grounded ones ask where a finding is and quote only the given boxes). They were "
            "written from the report after prior-study removal, the CheXpert labels, view and sex (and, for "
            "grounded ones, MS-CXR / PadChest-GR phrases with their boxes), not from the pixels. Test sets: "
            "seeded draws from the sources' test splits (published sizes 500 and 155).")
    if llm.get("generator"):
        sections["LLM stages"] = llm_section(manifest)
    return sections


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
        sections=_llm_text(manifest),
    )
