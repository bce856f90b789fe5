"""Reading radvlm's seven sources: the one place the corpus meets the readers (radcorpora/sources),
so the task code (tasks.py) sees only typed records (CxrImage, StudyReport, GroundedFinding, label
states)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radcorpora.corpora.radvlm.settings import RadVLMConfig, RadVLMConfigError
from radcorpora.corpora.radvlm.tasks import anatomical_order
from radcorpora.schemas.common import Reject
from radcorpora.schemas.cxr import CxrImage


@dataclass
class SourcesRead:
    """What every given source yielded, and which tasks they allow."""

    present: list[str] = field(default_factory=list)
    scans: dict[str, Any] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)


def _take(read: SourcesRead, name: str, scan: Any) -> None:
    read.present.append(name)
    read.scans[name] = scan
    read.rejects += scan.rejects
    read.counts.update({f"{name}/{k}": v for k, v in scan.counts.items()})
    read.warnings += [f"{name}: {w}" for w in getattr(scan, "warnings", [])]
    read.summary[name] = {"root": str(Path(scan.root).name), "images": len(getattr(scan, "images", []) or []),
                          "rejected": len(scan.rejects)}


def read_sources(sources: dict[str, Path], config: RadVLMConfig, log: Any) -> SourcesRead:
    """Scan every given source (a bad one stops the build here, before any work)."""
    read = SourcesRead()
    mimic_images: dict[str, CxrImage] = {}
    mimic_sizes: dict[str, tuple[int, int]] = {}  # dicom_id -> (Columns, Rows) of the MIMIC metadata
    if sources.get("mimic_cxr"):
        from radcorpora.sources.mimic_cxr import scan_mimic_cxr

        scan = scan_mimic_cxr(sources["mimic_cxr"], sources.get("mimic_cxr_reports"))
        _take(read, "mimic-cxr", scan)
        mimic_images = {i.image_id: i for i in scan.images}
        mimic_sizes = {i.image_id: (i.width, i.height) for i in scan.images if i.width and i.height}
        log(f"MIMIC-CXR: {len(scan.images)} images, {len(scan.reports)} reports")
    elif sources.get("mimic_cxr_reports"):
        raise RadVLMConfigError("--mimic-cxr-reports needs --mimic-cxr (the images and their metadata)")
    for key, needs in (("chest_imagenome", "Chest ImaGenome"), ("ms_cxr", "MS-CXR")):
        if sources.get(key) and not sources.get("mimic_cxr"):
            raise RadVLMConfigError(f"--{key.replace('_', '-')} needs --mimic-cxr: {needs} annotates MIMIC-CXR images")
    if sources.get("chexpert"):
        from radcorpora.sources.chexpert import scan_chexpert

        _take(read, "chexpert", scan_chexpert(sources["chexpert"]))
    if sources.get("chexpert_plus"):
        from radcorpora.sources.chexpert_plus import scan_chexpert_plus

        _take(read, "chexpert-plus", scan_chexpert_plus(sources["chexpert_plus"]))
    if sources.get("chest_imagenome"):
        from radcorpora.sources.chest_imagenome import scan_chest_imagenome

        # anatomical_grounding keeps the first N images with regions in a seeded order (see
        # anatomical_rows): only their scene graphs are read; none when the task is not built
        wanted = not config.tasks or "anatomical_grounding" in config.tasks
        _take(read, "chest-imagenome", scan_chest_imagenome(
            sources["chest_imagenome"], sources["mimic_cxr"], mimic_sizes, order=anatomical_order(config),
            limit=config.anatomical_grounding_samples if wanted else 0))
    if sources.get("vindr_cxr"):
        from radcorpora.sources.vindr_cxr import scan_vindr_cxr

        _take(read, "vindr-cxr", scan_vindr_cxr(sources["vindr_cxr"], max_side=config.max_side))
    if sources.get("ms_cxr"):
        from radcorpora.sources.ms_cxr import scan_ms_cxr

        splits = {i: img.split for i, img in mimic_images.items()}
        _take(read, "ms-cxr", scan_ms_cxr(sources["ms_cxr"], sources["mimic_cxr"], splits, mimic_sizes))
    if sources.get("padchest_gr"):
        from radcorpora.sources.padchest_gr import scan_padchest_gr

        _take(read, "padchest-gr", scan_padchest_gr(sources["padchest_gr"]))
    return read
