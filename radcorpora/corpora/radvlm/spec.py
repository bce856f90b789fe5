"""radvlm, declared once (Deperrois et al., RadVLM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radcorpora.corpora.radvlm import build as rvlm
from radcorpora.corpora.radvlm import records as rvlm_schema
from radcorpora.corpora.radvlm.evaluation import EVALUATION
from radcorpora.corpora.radvlm.card import radvlm_card
from radcorpora.corpora.radvlm.rules import CORPUS_RULES
from radcorpora.spec.corpus import ConfigSpec, CorpusSpec, DemoSpec, SourceOption


def _demo_radvlm(root: Path, options: dict[str, Any]) -> dict[str, Path]:
    """Every chest X-ray demo source, each in its upstream layout (the grounding sources that
    annotate MIMIC-CXR images are written for the demo MIMIC-CXR images)."""
    from radcorpora.demo.chest_imagenome import write_demo_chest_imagenome
    from radcorpora.demo.chexpert import write_demo_chexpert, write_demo_chexpert_plus
    from radcorpora.demo.mimic_cxr import write_demo_mimic_cxr
    from radcorpora.demo.ms_cxr import write_demo_ms_cxr
    from radcorpora.demo.padchest_gr import write_demo_padchest_gr
    from radcorpora.demo.vindr_cxr import write_demo_vindr_cxr
    from radcorpora.sources.mimic_cxr import scan_mimic_cxr

    sources = {"mimic_cxr": root / "mimic-cxr", "mimic_cxr_reports": root / "mimic-cxr-reports",
               "chexpert": root / "chexpert", "chexpert_plus": root / "chexpert-plus",
               "chest_imagenome": root / "chest-imagenome", "vindr_cxr": root / "vindr-cxr",
               "ms_cxr": root / "ms-cxr", "padchest_gr": root / "padchest-gr"}
    if not sources["mimic_cxr"].exists():
        write_demo_mimic_cxr(sources["mimic_cxr"], sources["mimic_cxr_reports"], n_subjects=60)
    if not sources["chexpert"].exists():
        write_demo_chexpert(sources["chexpert"])
    if not sources["chexpert_plus"].exists():
        write_demo_chexpert_plus(sources["chexpert_plus"])
    if not sources["chest_imagenome"].exists() or not sources["ms_cxr"].exists():
        mimic = scan_mimic_cxr(sources["mimic_cxr"], sources["mimic_cxr_reports"]).images
        write_demo_chest_imagenome(sources["chest_imagenome"], mimic)
        write_demo_ms_cxr(sources["ms_cxr"], mimic)
    if not sources["vindr_cxr"].exists():
        write_demo_vindr_cxr(sources["vindr_cxr"])
    if not sources["padchest_gr"].exists():
        write_demo_padchest_gr(sources["padchest_gr"])
    return sources


SPEC = CorpusSpec(
    name="radvlm",
    title="RadVLM instruction data",
    summary="MIMIC-CXR, CheXpert(-Plus), Chest ImaGenome, VinDr-CXR, MS-CXR, PadChest-GR -> report generation, "
            "classification, grounding and detection instructions; prior-study removal and LLM-written conversations",
    settings=rvlm.RadVLMConfig,
    configs=tuple(ConfigSpec(task, rvlm_schema.RadVLMRecord, description, ("train", "test"), default=task == "report_generation")
                  for task, description in (
                      ("report_generation", "frontal image -> findings (else impression)"),
                      ("abnormality_classification", "image -> its CheXpert findings, or no finding"),
                      ("anatomical_grounding", "Chest ImaGenome region -> its box"),
                      ("abnormality_grounding", "VinDr finding class -> its fused boxes"),
                      ("abnormality_detection", "image -> every VinDr finding with its boxes"),
                      ("phrase_grounding", "MS-CXR / PadChest-GR phrase -> its boxes"),
                      ("conversation", "5-10 round conversation an LLM wrote from the report, labels, view and sex"),
                      ("conversation_grounded", "conversation that also asks where findings are, quoting their boxes"))),
    sources=tuple(SourceOption(key, flag, help_text, accepts_file=key in ("mimic_cxr_reports", "ms_cxr"))
                  for key, flag, help_text in (
        ("mimic_cxr", "--mimic-cxr", "MIMIC-CXR-JPG folder (files/ and the metadata, split, chexpert CSVs)"),
        ("mimic_cxr_reports", "--mimic-cxr-reports", "MIMIC-CXR reports (files/pNN/pX/sY.txt or the zip)"),
        ("chexpert", "--chexpert", "CheXpert folder (train.csv, valid.csv, images)"),
        ("chexpert_plus", "--chexpert-plus", "CheXpert-Plus folder (df_chexpert_plus_*.csv, chexbert_labels/, images)"),
        ("chest_imagenome", "--chest-imagenome", "Chest ImaGenome folder (silver_dataset/); needs --mimic-cxr"),
        ("vindr_cxr", "--vindr-cxr", "VinDr-CXR folder (PhysioNet or Kaggle layout)"),
        ("ms_cxr", "--ms-cxr", "MS-CXR folder (MS_CXR_Local_Alignment_*.csv); needs --mimic-cxr"),
        ("padchest_gr", "--padchest-gr", "PadChest-GR folder (grounded_reports_*.json, master_table, PNGs)"))),
    licence_class=rvlm.licence_class,
    prepare=rvlm.prepare,
    run=rvlm.run,
    rules=CORPUS_RULES,
    row_rules=rvlm_schema.ROW_RULES,
    card=radvlm_card,
    llm_stages=rvlm.STAGES,
    estimate=rvlm.estimate,
    evaluation=EVALUATION,
    demo=DemoSpec(_demo_radvlm, lambda: rvlm.RadVLMConfig(
        anatomical_grounding_samples=200, max_side=512, llm="offline", prior_removal="llm", conversations=40,
        conversation_test=10, grounded_test=5, verifiers=["offline:verifier"]),
        uses_llm=True, check=True, check_max_steps=300),
)
