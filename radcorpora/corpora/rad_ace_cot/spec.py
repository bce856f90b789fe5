"""rad-ace-cot, declared once (Ateş et al., RAD-ACE)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radcorpora.corpora.rad_ace_cot import build as rac
from radcorpora.corpora.rad_ace_cot import records as rac_schema
from radcorpora.corpora.rad_ace_cot.evaluation import EVALUATION
from radcorpora.corpora.rad_ace_cot.card import rad_ace_cot_card
from radcorpora.corpora.rad_ace_cot.export_csv import export_rad_ace_csv
from radcorpora.corpora.rad_ace_cot.rules import CORPUS_RULES
from radcorpora.spec.corpus import ConfigSpec, CorpusSpec, DemoSpec, SourceOption, fixed_licence
from radcorpora.spec.preview import PlotSpec, PreviewSpec


def _demo_rad_ace(root: Path, options: dict[str, Any]) -> dict[str, Path]:
    from radcorpora.demo.pubmedvision import write_demo_pubmedvision, write_demo_vqa_rad

    pubmedvision, vqa_rad = root / "pubmedvision", root / "vqa-rad"
    if not (pubmedvision / "PubMedVision_Alignment_VQA.json").exists():
        pubmedvision.mkdir(parents=True, exist_ok=True)
        write_demo_pubmedvision(pubmedvision)
        write_demo_vqa_rad(vqa_rad)
    return {"source": pubmedvision, "vqa_rad": vqa_rad}


SPEC = CorpusSpec(
    name="rad-ace-cot",
    title="RAD-ACE-CoT",
    summary="PubMedVision CT/MR -> <think>/<answer> chains of thought (+ VQA-RAD eval config)",
    settings=rac.RadAceCotConfig,
    configs=(
        ConfigSpec("default", rac_schema.CotRecord, "image(s), question and chain of thought",
                   ("train", "validation"), default=True, loss="final_assistant"),
        ConfigSpec("eval", rac_schema.CotEvalRecord, "VQA-RAD test questions", ("test",), loss="none"),
    ),
    sources=(SourceOption("source", "--source", "PubMedVision folder (the JSON files and images/)", required=True),
             SourceOption("vqa_rad", "--vqa-rad", "VQA-RAD (Hub Parquet mirror or OSF release): adds the eval config",
                          accepts_file=True)),
    licence_class=fixed_licence(rac.LICENCE_CLASS),
    prepare=rac.prepare,
    run=rac.run,
    rules=CORPUS_RULES,
    card=rad_ace_cot_card,
    llm_stages=rac.STAGES,
    estimate=rac.estimate,
    evaluation=EVALUATION,
    exports={"rad-ace-csv": export_rad_ace_csv},
    demo=DemoSpec(_demo_rad_ace, lambda: rac.RadAceCotConfig(llm="offline", verifiers=["offline:verifier"]),
                  uses_llm=True),
    preview=PreviewSpec(plots=(
        PlotSpec("modality", "modality"), PlotSpec("body part", "body_part"), PlotSpec("verification", "verification"),
        PlotSpec("images per sample", "images", "length"), PlotSpec("organ", "organ", configs=("eval",)),
        PlotSpec("answer type", "answer_type", configs=("eval",)))),
)
