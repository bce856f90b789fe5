"""radimagenet-vqa, declared once (Butsanets et al., RadImageNet-VQA)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radcorpora.corpora.radimagenet_vqa import build as rvqa
from radcorpora.corpora.radimagenet_vqa import records as rvqa_schema
from radcorpora.corpora.radimagenet_vqa.evaluation import EVALUATION
from radcorpora.corpora.radimagenet_vqa.card import radimagenet_vqa_card
from radcorpora.corpora.radimagenet_vqa.rules import CORPUS_RULES
from radcorpora.schemas.taxonomy import radimagenet_vqa_taxonomy
from radcorpora.spec.corpus import ConfigSpec, CorpusSpec, DemoSpec, SourceOption, fixed_licence
from radcorpora.spec.preview import PlotSpec, PreviewSpec


def _demo_radimagenet(root: Path, options: dict[str, Any]) -> dict[str, Path]:
    from radcorpora.demo.radimagenet import write_demo_radimagenet

    source = root / "radimagenet"
    if not (source / "radiology_ai").exists():
        write_demo_radimagenet(source, images_per_class=options.get("images_per_class", 12))
    return {"source": source}


SPEC = CorpusSpec(
    name="radimagenet-vqa",
    title="RadImageNet-VQA",
    summary="RadImageNet CT/MR tree -> captions, nine questions per image, a stratified benchmark",
    settings=rvqa.RadImageNetVQAConfig,
    configs=(
        ConfigSpec("alignment", rvqa_schema.AlignmentRecord, "one caption conversation per image",
                   ("train", "validation")),
        ConfigSpec("instruct", rvqa_schema.InstructRecord, "the nine questions of an image, one row per image",
                   ("train", "validation"), default=True),
        ConfigSpec("benchmark", rvqa_schema.BenchmarkRecord, "stratified test images, one row per question",
                   ("test",), loss="none"),
    ),
    sources=(SourceOption("source", "--source", "Folder holding radiology_ai/ and RadiologyAI_*.csv", required=True),),
    licence_class=fixed_licence(rvqa.LICENCE_CLASS),
    prepare=rvqa.prepare,
    run=rvqa.run,
    rules=CORPUS_RULES,
    row_rules=rvqa_schema.ROW_RULES,
    card=lambda manifest: radimagenet_vqa_card(radimagenet_vqa_taxonomy().no_pathology_answer,
                                               {c for c, splits in (manifest.get("splits") or {}).items()
                                                if any(splits.values())}),
    evaluation=EVALUATION,
    demo=DemoSpec(_demo_radimagenet, lambda: rvqa.make_settings(benchmark_images=100), check=True),
    preview=PreviewSpec(plots=(
        PlotSpec("pathology", "metadata.pathology"), PlotSpec("region", "metadata.location"),
        PlotSpec("modality", "metadata.modality"), PlotSpec("abnormal", "metadata.is_abnormal"),
        PlotSpec("questions per type", "questions[].question_type", configs=("instruct",)),
        PlotSpec("questions per type", "question_type", configs=("benchmark",)),
        PlotSpec("questions per slot", "metadata.question_id", configs=("benchmark",)),
        PlotSpec("conversation rounds", "conversations", "length", divide=2))),
)
