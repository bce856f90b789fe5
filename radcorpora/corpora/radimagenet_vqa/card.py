"""Card text of the radimagenet-vqa corpus."""

from __future__ import annotations

from radcorpora.spec.card import CardContent

RADIMAGENET_BIBTEX = """@article{mei2022radimagenet,
  title   = {RadImageNet: An Open Radiologic Deep Learning Research Dataset for Effective Transfer Learning},
  author  = {Mei, Xueyan and Liu, Zelong and Robson, Philip M and Marinelli, Brett and Huang, Mingqian and Doshi, Amish and Jacobi, Adam and Cao, Chendi and Link, Katherine E and Yang, Thomas and others},
  journal = {Radiology: Artificial Intelligence},
  volume  = {4},
  number  = {5},
  pages   = {e210315},
  year    = {2022}
}"""

RADIMAGENET_VQA_BIBTEX = """@misc{butsanets2025radimagenetvqa,
  title  = {RadImageNet-VQA: A Large-Scale CT and MRI Dataset for Radiologic Visual Question Answering},
  author = {Butsanets, L{\\'e}o and Corbi{\\`e}re, Charles and Khlaut, Julien and Manceron, Pierre and Dancette, Corentin},
  year   = {2025},
  note   = {Raidium}
}"""

USAGE = """```python
from datasets import load_dataset

captions = load_dataset("path/or/repo", "alignment")   # image + caption conversation
instruct = load_dataset("path/or/repo", "instruct")    # image + its nine questions, one row per image
benchmark = load_dataset("path/or/repo", "benchmark")  # one row per question, published layout
```

Each `instruct` row stores its image once and asks all nine questions as one multi-turn
conversation (`questions[i]` describes the i-th human/gpt pair). For one training example per
question without copying image bytes:

```python
from radcorpora.publish.views import QuestionView

examples = QuestionView(instruct["train"])   # len == 9 x images; examples[i] -> one question
example = examples[0]  # {"image", "id", "conversations": [human, gpt], "question_type", "metadata", ...}
```"""


def radimagenet_vqa_card(no_pathology: str, built: set[str] | None = None) -> CardContent:
    """The card text; `built` are the configs that hold rows, so nothing unbuilt is described."""
    built = {"alignment", "instruct", "benchmark"} if built is None else built
    usage = "\n".join(line for line in USAGE.splitlines()
                      if not any(f'"{c}")' in line for c in {"alignment", "instruct", "benchmark"} - built))
    return CardContent(
        pretty_name="RadImageNet-VQA (radcorpora build)",
        summary=(
            "Radiologic visual question answering on RadImageNet CT and MRI images, rebuilt with "
            "radcorpora following Butsanets et al. (RadImageNet-VQA). Per image: one caption "
            "(`alignment`) and nine questions (`instruct`): anatomy open / closed+ / closed- / "
            "multiple choice, abnormality closed, pathology open / closed+ / closed- / multiple "
            "choice, over the paper's 8 regions and their pathologies. "
            + ("`benchmark` holds a stratified sample of test images (region x pathology x normal/abnormal "
               "mix kept), nine questions each. " if "benchmark" in built else
               "No `benchmark` config was built (the source had no test split). ")
            + f"Multiple-choice pathology questions always offer \"{no_pathology}\" "
            "(the answer for normal images) and draw distractors from the image's own region; "
            "closed-negative questions ask about something absent from the image's labels."
        ),
        licence={"license": "other", "license_name": "radimagenet-terms-of-use",
                 "license_link": "https://www.radimagenet.com/"},
        licence_text=(
            "Derived from RadImageNet, which is distributed by request under its own terms of use "
            "(research use). This corpus embeds RadImageNet images and inherits those terms: use it "
            "only if you have been granted access to RadImageNet. The question and caption wording "
            "is radcorpora's own. Licence class: restricted (push to private repositories only)."
        ),
        citations=[RADIMAGENET_BIBTEX, RADIMAGENET_VQA_BIBTEX],
        task_categories=["visual-question-answering", "image-to-text"],
        tags=["medical", "radiology", "ct", "mri", "vqa", "radcorpora"],
        usage=usage,
    )
