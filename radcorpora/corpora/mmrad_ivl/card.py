"""Card text of mmrad-ivl: the method, the figures as the paper reports them, the audits."""

from __future__ import annotations

from typing import Any

from radcorpora.publish.card import llm_section
from radcorpora.sources.gemex import INFO as GEMEX
from radcorpora.sources.mimic_cxr import INFO as MIMIC
from radcorpora.spec.card import CardContent

MMRAD_BIBTEX = """@article{zhao2026mmradivl,
  title   = {Thinking Like a Radiologist: A Dataset for Anatomy-Guided Interleaved Vision Language Reasoning
             in Chest X-ray Interpretation},
  author  = {Zhao, Yichen and Peng, Zelin and Yang, Piao and Yang, Xiaokang and Shen, Wei},
  journal = {arXiv preprint arXiv:2602.12843},
  year    = {2026}
}"""

USAGE = """```python
from datasets import load_dataset

ivl = load_dataset("path/or/repo")   # train / benchmark / validation / test
row = ivl["train"][0]                # images[0] full CXR, images[1:] crops; prompt, response, steps, report
```

`prompt` holds one `<image>` (the full image); `response` holds one `<image>` per group step, in the
order of `images[1:]`, each followed by the group's box in pixels of the stored image and its text,
then the report. The public MMRad-IVL example layout (JSONL `{prompt, response, images}` plus image
files) comes from `radcorpora export BUILD --format mmrad-ivl-jsonl --out DIR`."""


def _figures(manifest: dict[str, Any]) -> str:
    f = manifest.get("figures") or {}
    if not f:
        return "No figures recorded."
    lines = ["| figure | this build | paper (MMRad-IVL-22K) |", "| --- | --- | --- |",
             f"| traces | {f.get('traces')} | 21,994 |",
             f"| mean steps per trace | {f.get('mean_steps_per_trace')} | 2.3 |",
             f"| mean rationale words | {f.get('mean_rationale_words')} | 160 |",
             f"| share of steps grounded | {f.get('steps_grounded_share')} | 1.0 |"]
    groups = ", ".join(f"{g}: {n}" for g, n in (f.get("steps_per_group") or {}).items())
    splits = ", ".join(f"{s}: {v['traces']}" for s, v in (f.get("splits") or {}).items())
    out = "\n".join(lines) + f"\n\nSteps per group: {groups or 'none'}. Traces per split: {splits}."
    fid = manifest.get("fidelity") or {}
    if fid.get("sample"):
        out += (f"\n\nFidelity audit ({fid.get('judge')}, 1-5, seeded sample of {fid['sample']}): mean "
                f"{fid.get('mean')}, share >= 4 {fid.get('share_ge_4')}.")
        human = fid.get("human_agreement")
        if human:
            out += (f" Against a human expert on {human['traces']} traces: exact {human.get('exact')}, within one "
                    f"{human.get('within_one')}, quadratic-weighted kappa {human.get('weighted_kappa')}.")
    return out


def mmrad_ivl_card(manifest: dict[str, Any]) -> CardContent:
    return CardContent(
        pretty_name="MMRad-IVL (radcorpora build)",
        summary=(
            "Interleaved image-text reasoning for chest X-rays, rebuilt with radcorpora following Zhao et al. "
            "(MMRad-IVL-22K). Each GEMeX-ThinkVG reasoning trace is summarised by an LLM into region steps, "
            "checked by the same model against the MIMIC-CXR report (self-reflection, every change recorded), "
            "cross-audited by other models with disagreements settled by a person, aggregated into four "
            "anatomical groups (mediastinal, lung, bone, other) with texts merged and boxes unioned, and each "
            "group's box cropped from the original image. The split is MIMIC-CXR's official one (patient-"
            "disjoint); a 5 % benchmark is held out of train, stratified by number of steps."),
        licence={"license": "other", "license_name": "physionet-credentialed-health-data-1.5.0",
                 "license_link": "https://physionet.org/content/mimic-cxr-jpg/view-license/2.1.0/"},
        licence_text=(f"{MIMIC.licence} GEMeX-ThinkVG: {GEMEX.licence} Licence class: credentialed: never push this "
                      "build to a public repository, and send it only to LLM providers your data use agreement "
                      "covers (--approve-credentialed)."),
        citations=[MMRAD_BIBTEX, GEMEX.citation, MIMIC.citation],
        task_categories=["image-text-to-text", "visual-question-answering"],
        tags=["medical", "radiology", "chest-x-ray", "interleaved", "chain-of-thought", "grounding", "radcorpora"],
        usage=USAGE,
        sections={"Figures": _figures(manifest), "LLM stages": llm_section(manifest)},
    )
