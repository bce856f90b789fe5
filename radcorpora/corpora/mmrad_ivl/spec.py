"""mmrad-ivl, declared once (Zhao et al., MMRad-IVL-22K)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radcorpora.corpora.mmrad_ivl import build
from radcorpora.corpora.mmrad_ivl.evaluation import EVALUATION, example
from radcorpora.corpora.mmrad_ivl.card import mmrad_ivl_card
from radcorpora.corpora.mmrad_ivl.export import export_mmrad_ivl_jsonl
from radcorpora.corpora.mmrad_ivl.llm import STAGES
from radcorpora.corpora.mmrad_ivl.records import ROW_RULES, MmradIvlRecord
from radcorpora.corpora.mmrad_ivl.rules import CORPUS_RULES
from radcorpora.corpora.mmrad_ivl.settings import LICENCE_CLASS, MmradIvlSettings
from radcorpora.spec.corpus import ConfigSpec, CorpusSpec, DemoSpec, SourceOption, fixed_licence
from radcorpora.spec.preview import PlotSpec, PreviewSpec

DEMO_SUBJECTS = 12


def write_demo(root: Path, options: dict[str, Any]) -> dict[str, Path]:
    """The demo MIMIC-CXR-JPG images and reports, and GEMeX-ThinkVG rows over their frontal images
    (findings boxed where the pixels show them, reports that state them)."""
    from radcorpora.demo.gemex import write_demo_gemex_thinkvg
    from radcorpora.demo.mimic_cxr import write_demo_mimic_cxr
    from radcorpora.sources.mimic_cxr import scan_mimic_cxr

    sources = {"gemex_thinkvg": root / "gemex-thinkvg", "mimic_cxr": root / "mimic-cxr",
               "mimic_cxr_reports": root / "mimic-cxr-reports"}
    if not sources["mimic_cxr"].exists():
        write_demo_mimic_cxr(sources["mimic_cxr"], sources["mimic_cxr_reports"], n_subjects=DEMO_SUBJECTS)
    if not sources["gemex_thinkvg"].exists():
        scan = scan_mimic_cxr(sources["mimic_cxr"], sources["mimic_cxr_reports"])
        write_demo_gemex_thinkvg(sources["gemex_thinkvg"], scan.images, scan.reports)
    return sources


def demo_settings() -> MmradIvlSettings:
    return MmradIvlSettings(llm="offline", auditors=["offline:auditor"], crop_margin=0.05, audit_sample=8)


SPEC = CorpusSpec(
    name="mmrad-ivl",
    title="MMRad-IVL",
    summary="GEMeX-ThinkVG traces on MIMIC-CXR-JPG -> interleaved reasoning: full image, one crop per anatomical "
            "group, the report (LLM summary, self-reflection, cross-audit)",
    settings=MmradIvlSettings,
    configs=(ConfigSpec("default", MmradIvlRecord, "full image + group crops, interleaved steps, report",
                        build.SPLITS, default=True, loss="final_assistant", conversation=example),),
    sources=(SourceOption("gemex_thinkvg", "--gemex-thinkvg", "GEMeX-ThinkVG Parquet file or dataset folder "
                          "(data/train-*.parquet)", required=True, accepts_file=True),
             SourceOption("mimic_cxr", "--mimic-cxr", "MIMIC-CXR-JPG folder (files/ and the metadata, split CSVs)",
                          required=True),
             SourceOption("mimic_cxr_reports", "--mimic-cxr-reports", "MIMIC-CXR reports (files/pNN/pX/sY.txt or "
                          "the zip)", required=True, accepts_file=True)),
    licence_class=fixed_licence(LICENCE_CLASS),
    prepare=build.prepare,
    run=build.run,
    rules=CORPUS_RULES,
    row_rules=ROW_RULES,
    card=mmrad_ivl_card,
    llm_stages=STAGES,
    estimate=build.estimate,
    evaluation=EVALUATION,
    exports={"mmrad-ivl-jsonl": export_mmrad_ivl_jsonl},
    demo=DemoSpec(write_demo, demo_settings, uses_llm=True),
    preview=PreviewSpec(plots=(PlotSpec("steps per trace", "steps", "length"),
                               PlotSpec("group", "steps[].group"), PlotSpec("verification", "llm.verification"),
                               PlotSpec("group box size", "steps[].box", "box_size"))),
)
