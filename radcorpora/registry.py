"""The corpus registry: each corpus declared once, as a `CorpusSpec` wired from its schema,
builder, validator, card and evaluation recipe. The CLI, `validate`, `publish`, `estimate`,
`check` and the exports all read it. Adding a corpus adds one entry here
(docs/adding-a-corpus.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radcorpora.builders import rad_ace_cot as rac
from radcorpora.builders import radimagenet_vqa as rvqa
from radcorpora.builders import radvlm as rvlm
from radcorpora.engine.spec import ConfigSpec, CorpusSpec, DemoSpec, SourceOption
from radcorpora.publish.rad_ace_cot_card import rad_ace_cot_card
from radcorpora.publish.preview import PlotSpec, PreviewSpec
from radcorpora.publish.rad_ace_csv import export_rad_ace_csv
from radcorpora.publish.radimagenet_vqa_card import radimagenet_vqa_card
from radcorpora.publish.radvlm_card import radvlm_card
from radcorpora.reference_models.data import EvaluationRecipe
from radcorpora.schemas import rad_ace_cot as rac_schema
from radcorpora.schemas import radimagenet_vqa as rvqa_schema
from radcorpora.schemas import radvlm as rvlm_schema
from radcorpora.schemas.taxonomy import radimagenet_vqa_taxonomy
from radcorpora.validators.rad_ace_cot import validate_rad_ace_cot
from radcorpora.validators.radimagenet_vqa import validate_radimagenet_vqa
from radcorpora.validators.radvlm import validate_radvlm


def _fixed(licence: str):
    return lambda _settings, _sources: licence


def _demo_radimagenet(root: Path, options: dict[str, Any]) -> dict[str, Path]:
    from radcorpora.demo.radimagenet import write_demo_radimagenet

    source = root / "radimagenet"
    if not (source / "radiology_ai").exists():
        write_demo_radimagenet(source, images_per_class=options.get("images_per_class", 12))
    return {"source": source}


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


def _demo_rad_ace(root: Path, options: dict[str, Any]) -> dict[str, Path]:
    from radcorpora.demo.pubmedvision import write_demo_pubmedvision, write_demo_vqa_rad

    pubmedvision, vqa_rad = root / "pubmedvision", root / "vqa-rad"
    if not (pubmedvision / "PubMedVision_Alignment_VQA.json").exists():
        pubmedvision.mkdir(parents=True, exist_ok=True)
        write_demo_pubmedvision(pubmedvision)
        write_demo_vqa_rad(vqa_rad)
    return {"source": pubmedvision, "vqa_rad": vqa_rad}


RADIMAGENET_VQA = CorpusSpec(
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
    licence_class=_fixed(rvqa.LICENCE_CLASS),
    prepare=rvqa.prepare,
    run=rvqa.run,
    validate=validate_radimagenet_vqa,
    row_rules=rvqa_schema.check_rows,
    card=lambda manifest: radimagenet_vqa_card(radimagenet_vqa_taxonomy().no_pathology_answer,
                                               {c for c, splits in (manifest.get("splits") or {}).items()
                                                if any(splits.values())}),
    evaluation=EvaluationRecipe("instruct", "benchmark", "test", evaluator="radimagenet-vqa", preset="radimagenet-vqa",
                                per_question=frozenset({"instruct"}), alignment_config="alignment",
                                prompt_renderer=rvqa.prompt_renderer),
    demo=DemoSpec(_demo_radimagenet, lambda: rvqa.make_settings(benchmark_images=100), check=True),
    preview=PreviewSpec(plots=(
        PlotSpec("pathology", "metadata.pathology"), PlotSpec("region", "metadata.location"),
        PlotSpec("modality", "metadata.modality"), PlotSpec("abnormal", "metadata.is_abnormal"),
        PlotSpec("questions per type", "questions[].question_type", configs=("instruct",)),
        PlotSpec("questions per type", "question_type", configs=("benchmark",)),
        PlotSpec("questions per slot", "metadata.question_id", configs=("benchmark",)),
        PlotSpec("conversation rounds", "conversations", "length", divide=2))),
)

RAD_ACE_COT = CorpusSpec(
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
    licence_class=_fixed(rac.LICENCE_CLASS),
    prepare=rac.prepare,
    run=rac.run,
    validate=validate_rad_ace_cot,
    card=rad_ace_cot_card,
    llm_stages=rac.STAGES,
    estimate=rac.estimate,
    evaluation=EvaluationRecipe("default", "eval", "test", evaluator="rad-ace-cot", preset="rad-ace"),
    exports={"rad-ace-csv": export_rad_ace_csv},
    demo=DemoSpec(_demo_rad_ace, lambda: rac.RadAceCotConfig(llm="offline", verifiers=["offline:verifier"]),
                  uses_llm=True),
    preview=PreviewSpec(plots=(
        PlotSpec("modality", "modality"), PlotSpec("body part", "body_part"), PlotSpec("verification", "verification"),
        PlotSpec("images per sample", "images", "length"), PlotSpec("organ", "organ", configs=("eval",)),
        PlotSpec("answer type", "answer_type", configs=("eval",)))),
)

RADVLM = CorpusSpec(
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
    validate=validate_radvlm,
    row_rules=rvlm_schema.check_rows,
    card=radvlm_card,
    llm_stages=rvlm.STAGES,
    estimate=rvlm.estimate,
    evaluation=EvaluationRecipe("abnormality_classification", "abnormality_classification", "test", evaluator="radvlm",
                                preset="radvlm", per_instance=frozenset(rvlm_schema.ALL_CONFIGS)),
    demo=DemoSpec(_demo_radvlm, lambda: rvlm.RadVLMConfig(
        anatomical_grounding_samples=200, max_side=512, llm="offline", prior_removal="llm", conversations=40,
        conversation_test=10, grounded_test=5, verifiers=["offline:verifier"]),
        uses_llm=True, check=True, check_max_steps=300),
)

CORPORA: dict[str, CorpusSpec] = {spec.name: spec for spec in (RADIMAGENET_VQA, RAD_ACE_COT, RADVLM)}


class UnknownCorpus(ValueError):
    pass


def corpus(name: str) -> CorpusSpec:
    if name not in CORPORA:
        raise UnknownCorpus(f"unknown corpus {name!r} (known: {', '.join(sorted(CORPORA))})")
    return CORPORA[name]


def spec_of_build(build: Path) -> CorpusSpec:
    """The spec of the corpus a build folder holds (from its manifest)."""
    from radcorpora.store.folder import BuildFolderError, read_manifest

    name = read_manifest(build).get("corpus")
    if name not in CORPORA:
        raise BuildFolderError(f"{build}: manifest names corpus {name!r}, which this radcorpora does not know "
                               f"(known: {', '.join(sorted(CORPORA))})")
    return CORPORA[name]


def preview(build: Path, out: Path | None = None, **options: Any) -> Any:
    """`radcorpora preview`: the build's HTML report, with its corpus' plots and row renderer when
    this radcorpora knows the corpus, else the schema-driven defaults."""
    from radcorpora.publish.preview import write_preview
    from radcorpora.store.folder import read_manifest

    spec = CORPORA.get(read_manifest(build).get("corpus"))
    return write_preview(build, out, spec=spec.preview if spec else None, title=spec.title if spec else None,
                         **options)


def validate(build: Path, *, image_check: str = "full", workers: int = 1, deep: bool = False) -> Any:
    """`radcorpora validate`: every check of the build's corpus, from disk."""
    from radcorpora.validators.run import validate_build_folder

    spec = spec_of_build(build)
    return validate_build_folder(build, spec.name, spec.records, spec.validate, spec.row_rules,
                                 image_check=image_check, workers=workers, deep=deep)


def build(name: str, sources: dict[str, Path], settings: Any, out: Path, *, workers: int = 1, executor: str = "local",
          ray_address: str | None = None, llm_settings: Any = None, overwrite: bool = False, command: str = "",
          log: Any = None) -> Any:
    """Build a corpus from Python, as `radcorpora build NAME ...` does (no progress display)."""
    from radcorpora.engine.executors import ExecutorSettings
    from radcorpora.engine.lifecycle import run_build

    if executor not in ("local", "ray"):  # caught here, not by the manifest after the whole build
        raise ValueError(f"executor must be 'local' or 'ray', not {executor!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, not {workers!r}")
    return run_build(corpus(name), {k: Path(v) for k, v in sources.items() if v is not None}, settings, Path(out),
                     executor=ExecutorSettings(name=executor, workers=workers, ray_address=ray_address),  # type: ignore[arg-type]
                     llm_settings=llm_settings, overwrite=overwrite, command=command, log=log)


def loss_intent(name: str, config: str) -> str:
    """Which assistant turns of a config train ("all_assistant" | "final_assistant" | "none"), as
    the corpus declares it: what the exports carry and the reference models train on."""
    return corpus(name).config(config).loss


def export(build: Path, fmt: str, out: Path, config: str | None = None, split: str | None = None) -> dict[str, Any]:
    """`radcorpora export BUILD --format FMT --out DIR`: a trainer format (publish.exports) for the
    config (default: the corpus' default config) with its declared loss intent, or one of the
    corpus' own public formats (`CorpusSpec.exports`). Returns the recorded export settings."""
    from radcorpora.publish.exports import EXPORTERS, ExportError, export_file

    build = Path(build)
    spec = spec_of_build(build)
    if fmt in spec.exports:
        options = {"splits": (split,)} if split else {}
        return export_file(fmt, spec.exports[fmt], build, Path(out), f"{fmt.removesuffix('-csv')}.csv", **options)
    if fmt not in EXPORTERS:
        known = sorted(EXPORTERS) + sorted(spec.exports)
        raise ExportError(f"unknown export format {fmt!r} for a {spec.name} build (known: {', '.join(known)})")
    config = config or spec.default_config
    try:
        intent = spec.config(config or "").loss
    except KeyError:
        raise ExportError(f"{build}: corpus {spec.name} has no config {config!r} "
                          f"(configs: {', '.join(c.name for c in spec.configs)})") from None
    return EXPORTERS[fmt](build, Path(out), config=config, splits=[split] if split else None, loss=intent)
