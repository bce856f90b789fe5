"""ct-reasoning, declared once (Li et al., mu^2 Tokenizer: the five-role report-reasoning pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radcorpora.corpora.ct_reasoning import build, conversations
from radcorpora.corpora.ct_reasoning.evaluation import EVALUATION, example
from radcorpora.corpora.ct_reasoning.card import ROLE_COLUMNS, ct_reasoning_card, role_rows
from radcorpora.corpora.ct_reasoning.llm import STAGES
from radcorpora.corpora.ct_reasoning.records import (
    ROW_RULES,
    ReportRewriteRecord,
    ReportThinkingRecord,
    TranslationRecord,
    VqaThinkingRecord,
)
from radcorpora.corpora.ct_reasoning.rules import CORPUS_RULES
from radcorpora.corpora.ct_reasoning.settings import LICENCE_CLASS, CtReasoningSettings
from radcorpora.spec.corpus import ConfigSpec, CorpusSpec, DemoSpec, SourceOption, fixed_licence
from radcorpora.spec.preview import ManifestTable, PlotSpec, PreviewSpec


def write_demo(root: Path, options: dict[str, Any]) -> dict[str, Path]:
    """The demo CT-RATE, AMOS-MM and AbdomenAtlas 3.0 folders (small volumes whose lesion is in the
    pixels and in the report; one missing volume and one empty report each)."""
    from radcorpora.demo.ct import write_demo_abdomen_atlas, write_demo_amos_mm, write_demo_ct_rate

    sources = {"ct_rate": root / "ct-rate", "amos_mm": root / "amos-mm", "abdomen_atlas": root / "abdomen-atlas"}
    for key, writer in (("ct_rate", write_demo_ct_rate), ("amos_mm", write_demo_amos_mm),
                        ("abdomen_atlas", write_demo_abdomen_atlas)):
        if not sources[key].exists():
            writer(sources[key])
    return sources


def demo_settings() -> CtReasoningSettings:
    return CtReasoningSettings(llm="offline", questions_per_report=4, slices=2)


SPEC = CorpusSpec(
    name="ct-reasoning",
    title="CT report reasoning",
    summary="CT-RATE / AMOS-MM / AbdomenAtlas 3.0 reports -> examiner questions with image-style thinking and "
            "answers, gated and refined, and one findings / impression / follow-up narrative per scan",
    settings=CtReasoningSettings,
    configs=(ConfigSpec("vqa_thinking", VqaThinkingRecord, "volume reference, question, thinking, answer",
                        build.SPLITS, default=True, loss="final_assistant", conversation=example),
             ConfigSpec("report_thinking", ReportThinkingRecord, "volume reference, report, narrative in three "
                        "sections", build.SPLITS, loss="final_assistant", conversation=conversations.report_thinking),
             ConfigSpec("report_rewrite", ReportRewriteRecord, "the report paraphrased, meaning kept (--rewrite)",
                        build.SPLITS, conversation=conversations.report_rewrite),
             ConfigSpec("translation", TranslationRecord, "the report translated (--translate LANG)", build.SPLITS,
                        conversation=conversations.translation)),
    sources=(SourceOption("ct_rate", "--ct-rate", "CT-RATE folder (dataset/ with radiology_text_reports/, metadata/, "
                          "train/ or train_fixed/, valid/ or valid_fixed/)"),
             SourceOption("amos_mm", "--amos-mm", "AMOS-MM folder (dataset.json, imagesTr/, imagesVa/)"),
             SourceOption("abdomen_atlas", "--abdomen-atlas", "AbdomenAtlas 3.0 folder (AbdomenAtlas3.0.csv, "
                          "image_only/ or <BDMAP ID>/ct.nii.gz, TrainTestIDS/)")),
    licence_class=fixed_licence(LICENCE_CLASS),
    prepare=build.prepare,
    run=build.run,
    rules=CORPUS_RULES,
    row_rules=ROW_RULES,
    card=ct_reasoning_card,
    llm_stages=STAGES,
    estimate=build.estimate,
    evaluation=EVALUATION,
    demo=DemoSpec(write_demo, demo_settings, uses_llm=True),
    preview=PreviewSpec(plots=(PlotSpec("question focus", "focus"), PlotSpec("question origin", "origin"),
                               PlotSpec("source", "source")),
                        tables=(ManifestTable("Roles", ROLE_COLUMNS, role_rows,
                                              "Per role: items given, requests sent, items kept and rejects by "
                                              "reason (manifest roles and llm.pipeline.stages)"),)),
)
