"""Reader for the RadImageNet release (request at radimagenet.com).

On disk: `radiology_ai/<CT|MR|US>/<anatomy>/<pathology>/<file>.png` (US has one level fewer and
is skipped) plus split CSVs `RadiologyAI_{train,val,test}.csv` with columns `filename,label`,
where `filename` is relative and starts with `radiology_ai/`. Folder names are mapped to the
RadImageNet-VQA taxonomy through a default label map that a user file can override.
"""

from __future__ import annotations

import csv
import json
import os
import posixpath
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from radcorpora.schemas.common import Reject
from radcorpora.schemas.file_errors import utf8_problem, yaml_problem
from radcorpora.schemas.taxonomy import Taxonomy, normalise_label, radimagenet_vqa_taxonomy
from radcorpora.sources.base import UNREADABLE, present
from radcorpora.sources.errors import SourceError

DATASET = "RadImageNet"
TREE_ROOT = "radiology_ai"
SPLIT_FILES = {"train": "RadiologyAI_train.csv", "validation": "RadiologyAI_val.csv", "test": "RadiologyAI_test.csv"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
MODALITY_FOLDERS = {"ct": "CT", "mr": "MR", "mri": "MR"}
SKIPPED_MODALITIES = {"us"}
NORMAL = "normal"

# Default mapping from RadImageNet folder names to the taxonomy. Folder names that already
# equal a taxonomy label up to case and `_`/`-` (e.g. `liver_lesion`) need no entry.
DEFAULT_LABEL_MAP: dict[str, Any] = {
    "anatomy": {
        "abd": "abdomen/pelvis",
        "mriabd": "abdomen/pelvis",
        "abdomen": "abdomen/pelvis",
        "pelvis": "abdomen/pelvis",
        "lung": "chest",
        "af": "ankle foot",
        "ankle": "ankle foot",
        "foot": "ankle foot",
    },
    "pathology": {
        "post_op": "post-operative state",
        "postop": "post-operative state",
        "knee/post_op": "post-operative ACL reconstruction",
        "knee/post_op_acl": "post-operative ACL reconstruction",
        "knee/postop_acl": "post-operative ACL reconstruction",
        "acl_pathology": "anterior cruciate ligament pathology",
        "pcl_pathology": "posterior cruciate ligament pathology",
        "mcl_pathology": "medial collateral ligament pathology",
        "fcl_pathology": "fibular collateral ligament pathology",
        "lcl_pathology": "fibular collateral ligament pathology",
        "quad_pathology": "quadriceps pathology",
        "atfl_pathology": "anterior talofibular ligament pathology",
        "cfl_pathology": "calcaneofibular ligament pathology",
        "coalition": "coalition (bone fusion)",
        "lisfranc_pathology": "Lisfranc joint injury",
        "acj_oa": "acromioclavicular joint osteoarthritis",
        "ac_joint_oa": "acromioclavicular joint osteoarthritis",
        "glenohumeral_joint_oa": "glenohumeral joint osteoarthritis",
        "gh_oa": "glenohumeral joint osteoarthritis",
        "flair_hyperintensity": "focal FLAIR hyperintensity",
        "avm": "arteriovenous anomaly",
        "intra_articular_pathology": "intra-articular abnormality",
        "fat_containing_tumor": "fat-containing tumor",
    },
    "normal": [NORMAL],
}


class LabelMapError(SourceError):
    """Folder names the label map cannot place in the taxonomy; lists all of them at once."""


@dataclass(frozen=True)
class LabelMap:
    """Folder name -> taxonomy name. A value of None means: skip these images (recorded).

    `pathology` keys are a pathology folder or "<anatomy folder>/<pathology folder>". When a
    user map overrides the defaults, lookups go user first, then defaults (`fallback`); within
    one layer the anatomy-qualified key wins.
    """

    anatomy: dict[str, str | None]
    pathology: dict[str, str | None]
    normal: frozenset[str]
    fallback: LabelMap | None = None

    def region_for(self, anatomy_key: str, default: str) -> str | None:
        if anatomy_key in self.anatomy:
            return self.anatomy[anatomy_key]
        return self.fallback.region_for(anatomy_key, default) if self.fallback else default

    def pathology_for(self, anatomy_key: str, pathology_key: str, default: str) -> str | None:
        for key in (f"{anatomy_key}/{pathology_key}", pathology_key):
            if key in self.pathology:
                return self.pathology[key]
        return self.fallback.pathology_for(anatomy_key, pathology_key, default) if self.fallback else default

    def is_normal(self, name: str) -> bool:
        key = normalise_label(name)
        return key in self.normal or bool(self.fallback and self.fallback.is_normal(name))

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], origin: str = "<label map>") -> LabelMap:
        if not isinstance(raw, dict):
            raise SourceError(f"{origin}: a label map must be a mapping with keys anatomy, pathology, normal")
        unknown = set(raw) - {"anatomy", "pathology", "normal"}
        if unknown:
            raise SourceError(f"{origin}: unknown key(s) {sorted(unknown)}; allowed: anatomy, pathology, normal")
        maps: dict[str, dict[str, str | None]] = {}
        for section in ("anatomy", "pathology"):
            entries = raw.get(section) or {}
            if not isinstance(entries, dict):
                raise SourceError(f"{origin}: `{section}` must map folder names to taxonomy names")
            for key, value in entries.items():
                if value is not None and not isinstance(value, str):
                    raise SourceError(f"{origin}: {section}.{key} must be a string or null, got {value!r}")
            maps[section] = {_map_key(k): v for k, v in entries.items()}
        normal = raw.get("normal") or []
        if not isinstance(normal, list) or not all(isinstance(n, str) for n in normal):
            raise SourceError(f"{origin}: `normal` must be a list of folder names")
        return cls(maps["anatomy"], maps["pathology"], frozenset(normalise_label(n) for n in normal))

    def overridden_by(self, user: LabelMap) -> LabelMap:
        return LabelMap(user.anatomy, user.pathology, user.normal, fallback=self)

    def to_json(self) -> dict[str, Any]:
        layer = {
            "anatomy": dict(sorted(self.anatomy.items())),
            "pathology": dict(sorted(self.pathology.items())),
            "normal": sorted(self.normal),
        }
        return {"user": layer, "default": self.fallback.to_json()["user"]} if self.fallback else {"user": layer}


    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabelMap:
        """The inverse of `to_json` (a build's settings carry the map it was made with)."""
        user = cls.from_mapping(data.get("user") or {}, "label map")
        if data.get("default") is None:
            return user
        return cls.from_mapping(data["default"], "default label map").overridden_by(user)


def _map_key(key: str) -> str:
    return "/".join(normalise_label(part) for part in str(key).split("/"))


def load_label_map(path: Path | None) -> LabelMap:
    """The default label map, overridden by the user's YAML or JSON file when given."""
    default = LabelMap.from_mapping(DEFAULT_LABEL_MAP, "default label map")
    if path is None:
        return default
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"{path}: cannot read label map: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: {utf8_problem(exc)}") from None
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: not valid JSON ({exc})") from None
    except yaml.YAMLError as exc:
        raise SourceError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    return default.overridden_by(LabelMap.from_mapping(raw or {}, str(path)))


@dataclass(frozen=True)
class RadImageNetImage:
    """One CT/MR image with its taxonomy labels and split."""

    rel_path: str  # posix path relative to the source root, starts with radiology_ai/
    path: str  # where to read it (a string: a release lists ~1.3M files, and a Path costs ~10 us to make or unpickle)
    modality: str  # CT | MR
    region: str  # taxonomy region name
    pathology: str  # taxonomy pathology, or "normal"
    split: str  # train | validation | test

    @cached_property
    def key(self) -> str:
        """Stable id: the path below radiology_ai/ without its suffix."""
        return posixpath.splitext(self.rel_path[len(TREE_ROOT) + 1:])[0]

    @property
    def is_abnormal(self) -> bool:
        return self.pathology != NORMAL


@dataclass
class RadImageNetScan:
    """Everything learned from listing the source, before any image is read."""

    root: Path
    images: dict[str, list[RadImageNetImage]]
    rejects: list[Reject] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    split_csvs: dict[str, str] = field(default_factory=dict)


def find_root(source: Path) -> Path:
    """The folder holding `radiology_ai/` (accepts that folder itself too)."""
    source = Path(source)
    if not source.is_dir():
        raise SourceError(f"{source}: source folder does not exist")
    if (source / TREE_ROOT).is_dir():
        return source
    if source.name == TREE_ROOT:
        return source.parent
    raise SourceError(f"{source}: no `{TREE_ROOT}/` folder found (expected {TREE_ROOT}/<CT|MR|US>/<anatomy>/<pathology>/*.png)")


def _resolve_folders(
    folders: set[tuple[str, str]], label_map: LabelMap, taxonomy: Taxonomy
) -> tuple[dict[tuple[str, str], tuple[str, str] | None], list[str]]:
    """Map each (anatomy folder, pathology folder) to (region, pathology) or None (skip)."""
    resolved: dict[tuple[str, str], tuple[str, str] | None] = {}
    problems: list[str] = []
    bad_anatomy: set[str] = set()
    for anatomy_folder, pathology_folder in sorted(folders):
        a_key, p_key = normalise_label(anatomy_folder), normalise_label(pathology_folder)
        region_name = label_map.region_for(a_key, anatomy_folder)
        if region_name is None:
            resolved[(anatomy_folder, pathology_folder)] = None
            continue
        region = taxonomy.find_region(region_name)
        if region is None:
            if anatomy_folder not in bad_anatomy:
                bad_anatomy.add(anatomy_folder)
                problems.append(
                    f"anatomy folder {anatomy_folder!r} (-> {region_name!r}) is not a region; "
                    f"map it under `anatomy:` to one of: {', '.join(taxonomy.region_names)}"
                )
            continue
        mapped = label_map.pathology_for(a_key, p_key, pathology_folder)
        if mapped is None:
            resolved[(anatomy_folder, pathology_folder)] = None
            continue
        if label_map.is_normal(mapped) or label_map.is_normal(pathology_folder):
            resolved[(anatomy_folder, pathology_folder)] = (region.name, NORMAL)
            continue
        pathology = taxonomy.find_pathology(region, mapped)
        if pathology is None:
            problems.append(
                f"pathology folder {anatomy_folder}/{pathology_folder!r} (-> {mapped!r}) is not a "
                f"{region.name} pathology; map it under `pathology:` as \"{anatomy_folder}/{pathology_folder}\" "
                f"to one of: {', '.join(region.pathologies)}; list it under `normal:`; or map it to null to skip it"
            )
            continue
        resolved[(anatomy_folder, pathology_folder)] = (region.name, pathology)
    return resolved, problems


def _read_split_csv(path: Path, scan: RadImageNetScan) -> list[tuple[str, int]]:
    """(normalised rel path, row number) for each row of one split CSV."""
    rows: list[tuple[str, int]] = []
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise SourceError(f"{path}: cannot read split CSV: {exc}") from exc
    with handle:
        reader = csv.DictReader(handle)
        try:
            _split_rows(path, reader, scan, rows)
        except UNREADABLE as exc:
            raise SourceError(f"{path}: unreadable after line {reader.line_num} ({exc})") from exc
    return rows


def _split_rows(path: Path, reader: csv.DictReader, scan: RadImageNetScan, rows: list[tuple[str, int]]) -> None:
    """Append (normalised rel path, row number) per row; a row without a file name is a reject."""
    if reader.fieldnames is None or "filename" not in reader.fieldnames:
        raise SourceError(f"{path}: missing required column `filename` (columns: {reader.fieldnames})")
    for row_number, row in enumerate(reader, start=2):
        filename = (row.get("filename") or "").strip().replace("\\", "/")
        if not filename:
            scan.rejects.append(Reject(source=str(path), row=str(row_number), reason="csv_row_without_filename"))
            continue
        if not filename.startswith(f"{TREE_ROOT}/"):
            filename = f"{TREE_ROOT}/{filename.lstrip('/')}"
        rows.append((filename, row_number))


def scan_radimagenet(source: Path, label_map: LabelMap | None = None, taxonomy: Taxonomy | None = None) -> RadImageNetScan:
    """List a RadImageNet release: labels, splits, rejects. Reads no image bytes.

    Raises LabelMapError (listing every unknown folder) before any work starts, and SourceError
    for an unreadable layout or an empty tree.
    """
    label_map = label_map or load_label_map(None)
    taxonomy = taxonomy or radimagenet_vqa_taxonomy()
    root = find_root(source)
    scan = RadImageNetScan(root=root, images={"train": [], "validation": [], "test": []})
    tree = root / TREE_ROOT

    # 1. walk the tree: (modality, anatomy folder, pathology folder) -> files
    files: dict[str, tuple[str, str, str]] = {}
    # plain strings, not pathlib, per file: a release lists ~1.3M of them
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        parts = rel_dir.parts[1:]  # below radiology_ai/
        prefix = f"{rel_dir.as_posix()}/"
        for name in sorted(filenames):
            rel = prefix + name
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                scan.counts["ignored_non_image_files"] += 1
                continue
            modality_key = parts[0].lower() if parts else ""
            if modality_key in SKIPPED_MODALITIES:
                scan.counts["skipped_us_images"] += 1
                continue
            if modality_key not in MODALITY_FOLDERS or len(parts) != 3:
                scan.rejects.append(Reject(source=rel, reason="unexpected_location",
                                           detail=f"expected {TREE_ROOT}/<CT|MR>/<anatomy>/<pathology>/<file>"))
                continue
            files[rel] = (MODALITY_FOLDERS[modality_key], parts[1], parts[2])

    # 2. folder names -> taxonomy, all problems reported at once
    resolved, problems = _resolve_folders({(a, p) for _, a, p in files.values()}, label_map, taxonomy)
    if problems:
        raise LabelMapError(
            f"{len(problems)} RadImageNet folder name(s) under {tree} cannot be mapped to the "
            "RadImageNet-VQA taxonomy. Add them to a label map file (YAML or JSON) passed with "
            "--label-map FILE, shaped like:\n"
            "  anatomy:   {abd: abdomen/pelvis}\n"
            "  pathology: {liver_lesion: liver lesion, \"knee/fracture\": fracture}\n"
            "  normal:    [normal]\n"
            "Unknown names:\n  - " + "\n  - ".join(problems)
        )
    if not files:
        raise SourceError(f"{tree}: no CT or MR images found (skipped {scan.counts['skipped_us_images']} US images)")

    # 3. splits
    split_of: dict[str, str] = {}
    csv_rows: dict[str, list[tuple[str, str, int]]] = {}
    for split, csv_name in SPLIT_FILES.items():
        csv_path = next((p for p in (root / csv_name, tree / csv_name) if p.is_file()), None)
        if csv_path is None:
            continue
        scan.split_csvs[split] = csv_path.name
        for rel, row_number in _read_split_csv(csv_path, scan):
            csv_rows.setdefault(rel, []).append((split, str(csv_path), row_number))
    if not scan.split_csvs:
        scan.warnings.append(f"no split CSVs ({', '.join(SPLIT_FILES.values())}) under {root}: every image goes to train")
        warnings.warn(scan.warnings[-1], stacklevel=2)
        split_of = dict.fromkeys(files, "train")
    else:
        missing = sorted(set(SPLIT_FILES) - set(scan.split_csvs))
        if missing:
            scan.warnings.append(f"split CSV(s) missing for: {', '.join(missing)}")
        for rel, entries in sorted(csv_rows.items()):
            splits = sorted({e[0] for e in entries})
            first = entries[0]
            parts = rel.split("/")
            if len(parts) > 1 and parts[1].lower() in SKIPPED_MODALITIES:
                continue
            if len(splits) > 1:
                scan.rejects.append(Reject(source=first[1], row=str(first[2]), reason="image_in_several_splits",
                                           detail=f"{rel} listed in {', '.join(splits)}"))
                continue
            if rel not in files:
                if present(root / rel):
                    continue  # present but rejected above (location / not an image)
                scan.rejects.append(Reject(source=first[1], row=str(first[2]), reason="csv_row_without_file",
                                           detail=f"{rel} does not exist"))
                continue
            split_of[rel] = splits[0]
        for rel in files:
            if rel not in split_of and rel not in csv_rows:
                scan.rejects.append(Reject(source=rel, reason="not_in_any_split_csv"))

    # 4. typed records, sorted by path within each split
    root_prefix = os.path.join(str(root), "")  # ends with a separator
    for rel in sorted(split_of):
        modality, anatomy_folder, pathology_folder = files[rel]
        labels = resolved[(anatomy_folder, pathology_folder)]
        if labels is None:
            scan.rejects.append(Reject(source=rel, reason="skipped_by_label_map",
                                       detail=f"{anatomy_folder}/{pathology_folder} is mapped to null"))
            continue
        region, pathology = labels
        scan.images[split_of[rel]].append(
            RadImageNetImage(rel, root_prefix + rel, modality, region, pathology, split_of[rel])
        )
    scan.counts["listed_images"] = len(files)
    return scan
