"""Card text of the rad-ace-cot corpus."""

from __future__ import annotations

from typing import Any

from radcorpora.publish.card import llm_section
from radcorpora.spec.card import CardContent

RAD_ACE_BIBTEX = """@misc{ates2025radace,
  title  = {RAD-ACE: Multimodal Large Language Models as Radiology Assistants},
  author = {Ate{\\c{s}}, Can A. and Erg{\\"u}n, Abdullah E. and {\\c{C}}oban, Emre},
  year   = {2025},
  note   = {Hacettepe University}
}"""

PUBMEDVISION_BIBTEX = """@misc{chen2024huatuogptvision,
  title  = {HuatuoGPT-Vision, Towards Injecting Medical Visual Knowledge into Multimodal LLMs at Scale},
  author = {Chen, Junying and Gui, Chi and Ouyang, Ruyi and Gao, Anningzhe and Chen, Shunian and Chen, Guiming Hardy and Wang, Xidong and Zhang, Ruifei and Cai, Zhenyang and Ji, Ke and Yu, Guangjun and Wan, Xiang and Wang, Benyou},
  year   = {2024},
  eprint = {2406.19280},
  archivePrefix = {arXiv}
}"""

VQA_RAD_BIBTEX = """@article{lau2018vqarad,
  title   = {A dataset of clinically generated visual questions and answers about radiology images},
  author  = {Lau, Jason J. and Gayen, Soumya and Ben Abacha, Asma and Demner-Fushman, Dina},
  journal = {Scientific Data},
  volume  = {5},
  pages   = {180251},
  year    = {2018}
}"""

USAGE = """```python
from datasets import load_dataset

cot = load_dataset("path/or/repo")              # train / validation: images, question, cot_output, ...
vqa_rad = load_dataset("path/or/repo", "eval")  # VQA-RAD test questions with their images (if built)
```

`conversations` is LLaVA style (one `<image>` per image, then the question; the gpt turn is the
whole `<think>...</think><answer>...</answer>` text). `think` and `answer` hold the two sections.
The public RAD-ACE CSV layout (filename, modality, cot_output, question) comes from
`radcorpora export rad-ace-csv BUILD_DIR --out FILE.csv`."""


def rad_ace_cot_card(manifest: dict[str, Any]) -> CardContent:
    return CardContent(
        pretty_name="RAD-ACE-CoT (radcorpora build)",
        summary=(
            "Chain-of-thought supervision for radiology VLMs, rebuilt with radcorpora following "
            "Ateş et al. (RAD-ACE). CT and MR samples of PubMedVision are turned, one reasoning-model "
            "call each, from (image findings, question) into a first-person reading of the image: "
            "`<think>step-by-step</think><answer>conclusion</answer>`. Every sample passed the format, "
            "length and source-leak checks (no mention of a caption, description or report); optional "
            "verifier models checked answer consistency, with disagreements settled by a person."
        ),
        licence={"license": "other", "license_name": "pubmedvision-apache-2.0-and-vqa-rad-cc0-1.0",
                 "license_link": "https://huggingface.co/datasets/FreedomIntelligence/PubMedVision"},
        licence_text=(
            "Images and findings come from PubMedVision (apache-2.0; images are PubMed Central figures "
            "under their articles' licences). The `eval` config embeds VQA-RAD (cc0-1.0). The generated "
            "reasoning is model output: check the terms of the model provider you used before "
            "redistributing. Licence class: public."
        ),
        citations=[RAD_ACE_BIBTEX, PUBMEDVISION_BIBTEX, VQA_RAD_BIBTEX],
        task_categories=["visual-question-answering", "image-text-to-text"],
        tags=["medical", "radiology", "ct", "mri", "chain-of-thought", "reasoning", "radcorpora"],
        usage=USAGE,
        sections={"LLM stages": llm_section(manifest)},
    )
