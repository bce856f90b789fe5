"""Card text of ct-reasoning: the method, the licence (non-commercial sources), counts per role."""

from __future__ import annotations

from typing import Any

from radcorpora.corpora.ct_reasoning.checks import GATE_RULES
from radcorpora.corpora.ct_reasoning.llm import ROLES
from radcorpora.publish.card import llm_section
from radcorpora.sources.abdomen_atlas import INFO as ATLAS
from radcorpora.sources.amos_mm import INFO as AMOS
from radcorpora.sources.ct_rate import INFO as CT_RATE
from radcorpora.spec.card import CardContent

MU2_BIBTEX = """@inproceedings{li2025mu2tokenizer,
  title     = {{$\\mu^2$} Tokenizer: Differentiable Multi-Scale Multi-Modal Tokenizer for Radiology Report Generation},
  author    = {Li, Siyou and Qin, Pengyao and Wu, Huanan and Nie, Dong and Thirunavukarasu, Arun J. and Yu, Juntao
               and Zhang, Le},
  booktitle = {Medical Image Computing and Computer Assisted Intervention (MICCAI)},
  year      = {2025}
}"""

USAGE = """```python
from datasets import load_dataset

vqa = load_dataset("path/or/repo", "vqa_thinking")        # question, thinking, answer, volume reference
narr = load_dataset("path/or/repo", "report_thinking")    # report + findings / impression / follow-up rationale
row = vqa["train"][0]
row["volume"]["path"], row["volume"]["sha256"]            # the NIfTI file under its source root; slices if built
```

Volumes are referenced, not copied: get them from the source datasets and check the sha256.
`thinking` is written as a reading of the images (it never cites the report); `answer` is the
final content alone; `raw_thinking` is the reasoning model's own reasoning before refinement."""


def roles_section(manifest: dict[str, Any]) -> str:
    roles = manifest.get("roles") or {}
    if not roles:
        return "No role figures recorded."
    lines = ["| role | items in | items out | rejected (reason: n) |", "| --- | --- | --- | --- |"]
    for name in sorted(roles, key=lambda n: ROLES.index(n) if n in ROLES else len(ROLES)):
        figures = roles[name]
        rejected = ", ".join(f"{k}: {v}" for k, v in figures.get("rejected", {}).items()) or "none"
        lines.append(f"| {name} | {figures.get('in')} | {figures.get('out')} | {rejected} |")
    rules = (roles.get("gate") or {}).get("rules") or {}
    if rules:
        lines.append("\nQuality gate rules that need no model (items rejected by each; they run before the LLM verdict):")
        lines += [f"- `{rule}` ({GATE_RULES[rule]}): {n}" for rule, n in rules.items() if rule in GATE_RULES]
    return "\n".join(lines)


ROLE_COLUMNS = ("role", "items in", "requests sent", "from cache or store", "kept", "rejected", "rejected by reason")


def role_rows(manifest: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The preview's per-role table: items each role was given, requests it sent (the rest came
    from the answer cache or the stored outputs of an earlier run), items kept, rejects by reason
    (the gate's no-model rules under "thinking", where they run, and again by rule name)."""
    roles = manifest.get("roles") or {}
    stages = ((manifest.get("llm") or {}).get("pipeline") or {}).get("stages") or {}
    rows = []
    for name in sorted(roles, key=lambda n: ROLES.index(n) if n in ROLES else len(ROLES)):  # pipeline order
        figures, stage = roles[name], stages.get(name) or {}
        rejected = figures.get("rejected") or {}
        reasons = "; ".join(f"{k}: {v}" for k, v in rejected.items()) or "none"
        if name == "gate" and figures.get("rules"):
            reasons += " | no-model rules (at thinking): " + "; ".join(f"{k}: {v}" for k, v in figures["rules"].items())
        rows.append((name, int(figures.get("in", 0)), int(stage.get("sent", 0)),
                     int(stage.get("cached", 0)) + int(stage.get("reused", 0)), int(figures.get("out", 0)),
                     int(sum(rejected.values())), reasons))
    return rows


def ct_reasoning_card(manifest: dict[str, Any]) -> CardContent:
    return CardContent(
        pretty_name="CT report reasoning (radcorpora build)",
        summary=(
            "Question-answer items with reasoning and report-thinking narratives for 3-D CT, rebuilt with radcorpora "
            "following the five-stage pipeline of Li et al. (mu^2 Tokenizer). From each report (CT-RATE, AMOS-MM, "
            "AbdomenAtlas 3.0) an LLM writes the questions an examiner would ask; a reasoning model thinks each "
            "one through as if viewing the scan, its reasoning kept apart from its short answer; a quality gate "
            "(rules that need no model: language, vacuous or repetitive thinking, change words without a "
            "comparison; then an LLM verdict) keeps proper questions with supported answers; the thinking is "
            "rewritten so it never refers to a report (a leak detector checks it: one repair, then a reject); "
            "and the kept items of each scan are merged, in anatomical order, into findings, impression and "
            "follow-up rationale. Rows reference the CT volume (path, sha256, grid) and optionally carry axial "
            "slices. Splits are the sources' official ones."),
        licence={"license": "cc-by-nc-sa-4.0"},
        licence_text=(f"Licence class: restricted (non-commercial). {CT_RATE.licence} {ATLAS.licence} "
                      f"{AMOS.licence} The derived text is a derivative of these reports "
                      "and follows CC BY-NC-SA 4.0 (non-commercial, share alike); the questions, thinking and "
                      "narratives are model output: check your model provider's terms too."),
        citations=[MU2_BIBTEX, CT_RATE.citation, AMOS.citation, ATLAS.citation],
        task_categories=["visual-question-answering", "text-generation"],
        tags=["medical", "radiology", "ct", "3d", "chain-of-thought", "reasoning", "report-generation", "radcorpora"],
        usage=USAGE,
        sections={"Roles": roles_section(manifest), "LLM stages": llm_section(manifest)},
    )
