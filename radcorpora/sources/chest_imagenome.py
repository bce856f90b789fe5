"""Reader for Chest ImaGenome v1.0.0 silver scene graphs (PhysioNet, credentialed): anatomical
regions with boxes on MIMIC-CXR-JPG images.

On disk: `silver_dataset/splits/{train,valid,test}.csv` (index column, `subject_id, study_id,
dicom_id, path`, ...; `path` names the MIMIC-CXR DICOM, read here as the MIMIC-CXR-JPG `.jpg`),
optionally `silver_dataset/splits/images_to_avoid.csv`, and one
`silver_dataset/scene_graph/<dicom_id>_SceneGraph.json` per frontal image. Region boxes are taken
from `original_x1..original_y2` (original MIMIC pixels) and normalised by the image's MIMIC
metadata size (Columns x Rows), as RadVLM does; the 224-grid `x1..y2` are not used.

A box outside the tolerance of the Box type is rejected (with the scene-graph file and region)
rather than clipped: a clipped box would be a region nobody drew. Split ids without a scene graph
are normal in the release (counted, not rejected). An unreadable scene-graph file is rejected
with its reason, so one damaged file among 242k does not stop a build.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from radcorpora.schemas.boxes import Box, BoxError
from radcorpora.schemas.cxr import CxrImage, GroundedFinding, Sex, Split, View
from radcorpora.sources.base import (
    NotANumber,
    SourceInfo,
    SourceScan,
    cell,
    is_file,
    number,
    pixels,
    read_csv_rows,
)
from radcorpora.sources.errors import SourceError

# The 29 regions of the RGRG convention, in index order.
RGRG_REGIONS: tuple[str, ...] = (
    "right lung", "right upper lung zone", "right mid lung zone", "right lower lung zone", "right hilar structures",
    "right apical zone", "right costophrenic angle", "right hemidiaphragm", "left lung", "left upper lung zone",
    "left mid lung zone", "left lower lung zone", "left hilar structures", "left apical zone",
    "left costophrenic angle", "left hemidiaphragm", "trachea", "spine", "right clavicle", "left clavicle",
    "aortic arch", "mediastinum", "upper mediastinum", "svc", "cardiac silhouette", "cavoatrial junction",
    "right atrium", "carina", "abdomen",
)
# The silver dataset's 36 bbox names: the 29 above plus seven more.
SILVER_REGIONS: tuple[str, ...] = RGRG_REGIONS + (
    "right cardiophrenic angle", "left cardiophrenic angle", "left cardiac silhouette", "right cardiac silhouette",
    "descending aorta", "left upper abdomen", "right upper abdomen",
)
SPLIT_FILES: tuple[tuple[str, Split], ...] = (("train", "train"), ("valid", "validation"), ("test", "test"))
BOX_KEYS = ("original_x1", "original_y1", "original_x2", "original_y2")
VIEWS: dict[str, View] = {"PA": "PA", "AP": "AP", "LATERAL": "LATERAL", "LL": "LL"}

INFO = SourceInfo(
    name="chest-imagenome",
    title="Chest ImaGenome (silver)",
    licence_class="credentialed",
    licence=("PhysioNet Credentialed Health Data License 1.5.0: credentialing, training and the signed data use "
             "agreement are required; no redistribution. Images come from MIMIC-CXR-JPG under the same terms."),
    citation="""@misc{wu2021chestimagenome,
  title     = {Chest {ImaGenome} Dataset (version 1.0.0)},
  author    = {Wu, Joy and Agu, Nkechinyere and Lourentzou, Ismini and Sharma, Arjun and Paguio, Joseph and
               Yao, Jasper Seth and Dee, Edward Christopher and Mitchell, William and Kashyap, Satyananda and
               Giovannini, Andrea and Celi, Leo Anthony and Syeda-Mahmood, Tanveer and Moradi, Mehdi},
  publisher = {PhysioNet},
  year      = {2021},
  doi       = {10.13026/wv01-y230}
}""",
    labels=SILVER_REGIONS,
)


@dataclass
class ChestImaGenomeScan(SourceScan[GroundedFinding]):
    """`images` (sorted by subject, study, image) and `findings` (= records: one per region,
    label = bbox_name, one box in original-pixel frame)."""

    images: list[CxrImage] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def findings(self) -> list[GroundedFinding]:
        return self.records


def find_silver(root: Path) -> Path:
    """The `silver_dataset` folder (given itself or its parent)."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: Chest ImaGenome folder does not exist")
    for candidate in (root / "silver_dataset", root):
        if (candidate / "splits").is_dir():
            return candidate
    raise SourceError(f"{root}: no silver_dataset/splits/ folder (expected silver_dataset/splits/{{train,valid,test}}.csv "
                      "and silver_dataset/scene_graph/)")


def mimic_files_base(mimic_root: Path) -> Path:
    """The folder that `files/p10/...` paths are relative to (MIMIC root, or its `files/` given)."""
    mimic_root = Path(mimic_root)
    if not (mimic_root / "files").is_dir() and mimic_root.name == "files":
        return mimic_root.parent
    return mimic_root


def mimic_jpg_path(base: Path, relative: str) -> Path:
    """A split-csv or MS-CXR `path` (DICOM or JPG, with or without `files/`) under the MIMIC base."""
    relative = relative.replace("\\", "/").lstrip("/")
    if relative.endswith(".dcm"):
        relative = relative[:-4] + ".jpg"
    if not relative.startswith("files/"):
        relative = "files/" + relative
    return base / relative


def _avoided(silver: Path, scan: ChestImaGenomeScan) -> set[str]:
    for path in (silver / "splits" / "images_to_avoid.csv", silver / "images_to_avoid.csv"):
        if path.is_file():
            scan.files["images_to_avoid"] = str(path)
            return {cell(row, "dicom_id") for _, row in read_csv_rows(path, ("dicom_id",))} - {None}
    return set()


def scan_chest_imagenome(root: Path, mimic_root: Path, image_sizes: Mapping[str, tuple[int, int]],
                         order: Callable[[str], str] | None = None, limit: int | None = None
                         ) -> ChestImaGenomeScan:
    """Read the silver splits and scene graphs into MIMIC-CXR-JPG images and their region boxes.

    `image_sizes`: dicom_id -> (Columns, Rows) from the MIMIC metadata. Rejects: image size
    unknown, JPG missing, scene graph unreadable, a region whose box the Box type refuses
    (`box_<reason>`), an image listed in two splits. Skips (counted): split ids without a scene
    graph, images_to_avoid.csv entries. Missing split columns: SourceError.

    `order` and `limit`: a caller that needs only the first `limit` images with regions in a
    seeded `order` (dicom_id -> sort key) gets exactly those, and the scene graphs after them
    are never opened (the silver release has ~240k, each with 36 regions). The split files are
    always read whole, so a bad layout still stops the build before any work. Images not read
    are counted (`not_read_after_limit`) and said in a warning; their rejects are not known."""
    silver = find_silver(root)
    base = mimic_files_base(mimic_root)
    scan = ChestImaGenomeScan(info=INFO, root=silver)
    avoid = _avoided(silver, scan)
    graphs = silver / "scene_graph"
    if not graphs.is_dir():
        raise SourceError(f"{silver}: no scene_graph/ folder")
    listed: dict[str, tuple[Split, Path, int, dict[str, str | None]]] = {}
    for name, split in SPLIT_FILES:
        path = silver / "splits" / f"{name}.csv"
        if not path.is_file():
            scan.warnings.append(f"{path}: missing; no {split} images")
            continue
        scan.files[f"split_{name}"] = str(path)
        for line, row in read_csv_rows(path, ("dicom_id", "path")):
            dicom_id = cell(row, "dicom_id")
            if dicom_id is None or cell(row, "path") is None:
                scan.reject(path, line, "missing_id", f"dicom_id={dicom_id!r} path={cell(row, 'path')!r}")
                continue
            if dicom_id in listed:
                scan.reject(path, line, "image_in_several_splits",
                            f"{dicom_id} also in {listed[dicom_id][1].name} line {listed[dicom_id][2]}")
                continue
            listed[dicom_id] = (split, path, line, {k: cell(row, k) for k in ("subject_id", "study_id", "path",
                                                                               "ViewPosition")})
    images: list[CxrImage] = []
    unknown_regions: set[str] = set()
    candidates = sorted(listed, key=order) if order is not None else sorted(listed)
    with_regions = 0
    for position, dicom_id in enumerate(candidates):
        if limit is not None and with_regions >= limit:
            scan.counts["not_read_after_limit"] = len(candidates) - position
            scan.warnings.append(f"{len(candidates) - position} listed images not read: " + (
                "the build needs no regions" if limit == 0 else
                f"the first {limit} with regions in the seeded order were all the build needs"))
            break
        split, path, line, row = listed[dicom_id]
        if dicom_id in avoid:
            scan.counts["skipped_images_to_avoid"] += 1
            continue
        graph_path = graphs / f"{dicom_id}_SceneGraph.json"
        if not graph_path.is_file():
            scan.counts["skipped_no_scene_graph"] += 1
            continue
        size = image_sizes.get(dicom_id) or (None, None)
        try:
            width, height = pixels(size[0], "Columns"), pixels(size[1], "Rows")
        except NotANumber as exc:
            scan.reject(path, line, "image_size_unknown", f"{dicom_id}: no Rows/Columns in the MIMIC metadata "
                                                          f"({exc.detail})")
            continue
        image_path = mimic_jpg_path(base, row["path"] or "")
        if not is_file(image_path):
            scan.reject(path, line, "image_file_missing", f"{image_path} does not exist")
            continue
        try:
            graph = json.loads(graph_path.read_bytes())
        except (OSError, ValueError) as exc:
            scan.reject(graph_path, None, "scene_graph_unreadable", f"{type(exc).__name__}: {exc}")
            continue
        if not isinstance(graph, dict) or not isinstance(graph.get("objects", []), list):
            scan.reject(graph_path, None, "scene_graph_unreadable", "expected an object with an `objects` list")
            continue
        subject = row["subject_id"] or _text(graph.get("patient_id"))
        if subject is None:
            scan.reject(path, line, "missing_id", f"{dicom_id}: no subject_id in the split file or patient_id in "
                                                  f"{graph_path.name}")
            continue
        view_text = (_text(graph.get("viewpoint")) or row["ViewPosition"] or "").upper()
        gender = (_text(graph.get("gender")) or "").upper()
        sex: Sex = "F" if gender == "F" else "M" if gender == "M" else "unknown"
        image = CxrImage(source=INFO.name, image_id=dicom_id, subject_id=subject,
                         study_id=row["study_id"] or _text(graph.get("study_id")), path=str(image_path),
                         view=VIEWS.get(view_text, "OTHER" if view_text else "UNKNOWN"), split=split,
                         width=width, height=height, sex=sex, licence_class=INFO.licence_class)
        images.append(image)
        found_before = len(scan.records)
        seen_regions: set[str] = set()
        for index, obj in enumerate(graph.get("objects") or []):
            name = _text(obj.get("bbox_name")) if isinstance(obj, dict) else None
            where = f"objects[{index}]" + (f" {name}" if name else "")
            if name is None:
                scan.reject(graph_path, where, "region_without_name", "object has no bbox_name")
                continue
            if name in seen_regions:
                scan.reject(graph_path, where, "duplicate_region", f"{name} appears twice")
                continue
            seen_regions.add(name)
            if name not in SILVER_REGIONS:
                unknown_regions.add(name)
            try:
                box = Box.from_pixels_xyxy(*[number(obj[k], k) for k in BOX_KEYS], image.width, image.height)
            except KeyError as exc:
                scan.reject(graph_path, where, "box_missing_coordinates", f"{name}: no {exc.args[0]}")
                continue
            except (BoxError, NotANumber) as exc:
                scan.reject(graph_path, where, f"box_{exc.reason}",
                            f"{graph_path.name} {name}: {exc.detail} on {image.width}x{image.height}")
                continue
            scan.records.append(GroundedFinding(image=image, label=name, boxes=(box,)))
        with_regions += len(scan.records) > found_before
    if unknown_regions:
        scan.warnings.append(f"bbox names outside the 36 silver regions (kept): {', '.join(sorted(unknown_regions))}")
    images.sort(key=lambda i: (i.subject_id, i.study_id or "", i.image_id))
    scan.images = images
    scan.records.sort(key=lambda f: (f.image.subject_id, f.image.study_id or "", f.image.image_id, f.label))
    scan.counts["images"] = len(images)
    scan.counts["regions"] = len(scan.records)
    return scan


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None
