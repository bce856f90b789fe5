"""Reader for AMOS-MM (MICCAI 2024 challenge: chest-abdomen-pelvis CT with reports and QA).

On disk (FORMATS.md §14b): `dataset.json` = {"training": [...], "validation": [...]} (a
"testing" list without labels may follow), images under `imagesTr/`, `imagesVa/`. Each item:
`image` ("./imagesTr/<case>.nii.gz", relative to the JSON's folder), `meta` (incl. spacing),
`labels.report.findings` = {chest, abdomen, pelvis} (empty string for a region not covered),
`labels.report.impression`, `labels.qa` = [{question, options {A..D}, answer letter, reasoning}].
Checked against public loaders: u2Tokenizer's `evalscipt/m3d_amos.py` (findings regions, `./`
prefix), NIH LEAVS' AMOS converter (findings and impression values may be lists of sentences;
impression read as a dict of regions), a 3rd-party preprocessing script that reads reports and
QA from two JSON files with the same split structure and keys cases by file name without `.nii.gz`.

Reports and QA may therefore come in one file or two: QA is read from the report items and, when
present, from a separate QA file (`vqa.json`, `dataset_vqa.json` or `qa.json` beside
`dataset.json`, or the file given); the separate file's file name is a guess, its structure is
the verified one. Impression may be a string, a list of sentences or a dict of regions. The case
id (file name stem) is also the patient id: AMOS-MM publishes no separate patient key. `meta`
spacing is not used: its axis order is not documented, and AMOS headers are taken as they are.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from radcorpora.schemas.ct import CtQuestion, CtReport, CtVolumeFile
from radcorpora.sources.base import SourceInfo, SourceScan
from radcorpora.sources.errors import SourceError

INFO = SourceInfo(
    name="amos-mm",
    title="AMOS-MM",
    licence_class="restricted",
    licence=("AMOS-MM (MICCAI 2024 AMOS-MM challenge): access after challenge registration; research use "
             "under the challenge's terms; no redistribution of the volumes."),
    citation="""@inproceedings{ji2022amos,
  title     = {AMOS: A Large-Scale Abdominal Multi-Organ Benchmark for Versatile Medical Image Segmentation},
  author    = {Ji, Yuanfeng and Bai, Haotian and Ge, Chongjian and Yang, Jie and Zhu, Ye and Zhang, Ruimao
               and Li, Zhen and Zhanng, Lingyan and Ma, Wanling and Wan, Xiang and others},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {35},
  pages     = {36722--36732},
  year      = {2022}
}""",
)

SPLIT_KEYS = (("training", "train"), ("validation", "validation"), ("testing", "test"), ("test", "test"))
REGIONS = ("chest", "abdomen", "pelvis")
REPORT_FILES = ("dataset.json",)
QA_FILES = ("vqa.json", "dataset_vqa.json", "qa.json")
LETTERS = ("A", "B", "C", "D")


class ItemError(ValueError):
    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(detail)


@dataclass
class AmosScan(SourceScan[CtReport]):
    """AMOS-MM reports, one per case (in `records`), with their QA items as `questions`."""

    files: dict[str, str] = field(default_factory=dict)

    @property
    def reports(self) -> list[CtReport]:
        return self.records


def load_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SourceError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected an object with 'training' / 'validation' lists, got {type(data).__name__}")
    return data


def case_id(image: str) -> str:
    name = PurePosixPath(image).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return PurePosixPath(name).stem


def relative_image(image: object) -> str:
    """`./imagesTr/x.nii.gz` -> `imagesTr/x.nii.gz`; ItemError when not a plain relative path."""
    if not isinstance(image, str) or not image.strip():
        raise ItemError("no_image", f"image={image!r} is not a file name")
    text = image.strip().replace("\\", "/")
    while text.startswith("./"):
        text = text[2:]
    parts = PurePosixPath(text).parts
    if not parts or text.startswith("/") or any(p in ("..", ".", "") for p in parts) or ":" in parts[0]:
        raise ItemError("bad_image_path", f"image={image!r} is not a path below the dataset folder")
    return PurePosixPath(*parts).as_posix()


def section_text(value: object, name: str) -> str | None:
    """A report section: a string or a list of sentence strings (joined); None when empty."""
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = " ".join(v.strip() for v in value if v.strip())
    if not isinstance(value, str):
        raise ItemError("bad_report", f"{name} is {type(value).__name__}, not text")
    return value.strip() or None


def by_region(value: object, name: str) -> dict[str, str]:
    """{region: text} from a dict of strings / sentence lists; regions in chest-abdomen-pelvis order
    first, any other region after them by name."""
    if not isinstance(value, dict):
        raise ItemError("bad_report", f"{name} is {type(value).__name__}, not an object of regions")
    texts = {str(k): section_text(v, f"{name}.{k}") for k, v in value.items()}
    order = [r for r in REGIONS if r in texts] + sorted(k for k in texts if k not in REGIONS)
    return {k: texts[k] for k in order if texts[k]}


def parse_qa(value: object) -> CtQuestion:
    if not isinstance(value, dict):
        raise ItemError("bad_qa_item", f"a QA item is {type(value).__name__}, not an object")
    question, options, answer = value.get("question"), value.get("options"), value.get("answer")
    reasoning = value.get("reasoning")
    if not isinstance(question, str) or not question.strip():
        raise ItemError("bad_qa_item", f"question={question!r} is not text")
    if not isinstance(options, dict) or sorted(options) != list(LETTERS) or not all(
            isinstance(options[k], str) and options[k].strip() for k in LETTERS):
        raise ItemError("bad_qa_item", f"options={options!r} are not four texts A-D")
    letter = answer.strip().rstrip(".").upper() if isinstance(answer, str) else None
    if letter not in LETTERS:
        raise ItemError("bad_qa_item", f"answer={answer!r} is not one of A-D")
    if reasoning is not None and not isinstance(reasoning, str):
        raise ItemError("bad_qa_item", f"reasoning is {type(reasoning).__name__}, not text")
    return CtQuestion(question=question.strip(), options={k: options[k].strip() for k in LETTERS}, answer=letter,
                      reasoning=(reasoning or "").strip() or None)


def _qa_list(item: dict, where: str, path: Path, scan: AmosScan) -> list[CtQuestion]:
    labels = item.get("labels")
    qa = labels.get("qa") if isinstance(labels, dict) else None
    if qa is None:
        return []
    if not isinstance(qa, list):
        scan.reject(path, f"{where}.labels.qa", "bad_qa_item", f"qa is {type(qa).__name__}, not a list")
        return []
    questions = []
    for k, entry in enumerate(qa):
        try:
            questions.append(parse_qa(entry))
        except ItemError as exc:
            scan.reject(path, f"{where}.labels.qa[{k}]", exc.reason, exc.detail)
    scan.counts["qa_items"] += len(questions)
    return questions


def _split_items(data: dict, path: Path, scan: AmosScan):
    """(split, key, index, item) for every item of every split list."""
    for key, split in SPLIT_KEYS:
        items = data.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            scan.reject(path, key, "bad_split_list", f"{key} is {type(items).__name__}, not a list")
            continue
        for i, item in enumerate(items):
            yield split, key, i, item


def scan_amos_mm(root: Path, reports_file: Path | str | None = None, qa_file: Path | str | None = None) -> AmosScan:
    """Read `dataset.json` (or `reports_file`) into one CtReport per case and attach QA items from
    the same file and from a separate QA file. Bad items and bad QA entries are rejects with the
    file and the item (`training[3]`, `training[3].labels.qa[1]`)."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: AMOS-MM folder does not exist")
    reports_path = Path(reports_file) if reports_file else next((root / n for n in REPORT_FILES if (root / n).is_file()), None)
    if reports_path is None or not reports_path.is_file():
        raise SourceError(f"{root}: no AMOS-MM dataset.json found")
    qa_path = Path(qa_file) if qa_file else next((root / n for n in QA_FILES if (root / n).is_file()), None)
    scan = AmosScan(info=INFO, root=reports_path.parent)
    scan.files["reports"] = str(reports_path)
    data = load_json(reports_path)
    if not any(key in data for key, _ in SPLIT_KEYS):
        raise SourceError(f"{reports_path}: no 'training' or 'validation' list (keys: {', '.join(map(str, data))})")
    extra_qa = _read_qa_file(scan, qa_path) if qa_path is not None and qa_path != reports_path else {}
    seen: dict[str, str] = {}
    for split, key, i, item in _split_items(data, reports_path, scan):
        where = f"{key}[{i}]"
        scan.counts[f"items_{split}"] += 1
        try:
            report = _read_item(scan, reports_path, where, split, item, seen)
        except ItemError as exc:
            scan.reject(reports_path, where, exc.reason, exc.detail)
            continue
        except ValueError as exc:  # a record the schema refuses (pydantic ValidationError)
            scan.reject(reports_path, where, "invalid_record", str(exc).splitlines()[-1])
            continue
        if report is None:
            continue
        questions = list(report.questions) + extra_qa.pop(report.scan_id, ([], ""))[0]
        scan.records.append(report.model_copy(update={"questions": tuple(questions)}))
    for cid, (questions, where) in sorted(extra_qa.items()):
        scan.reject(qa_path, where, "qa_without_report", f"{cid}: {len(questions)} QA item(s) for no read report")
    scan.records.sort(key=lambda r: (r.split, r.scan_id))
    scan.counts["scans"] = len(scan.records)
    scan.counts["questions"] = sum(len(r.questions) for r in scan.records)
    return scan


def _read_qa_file(scan: AmosScan, path: Path) -> dict[str, tuple[list[CtQuestion], str]]:
    scan.files["qa"] = str(path)
    out: dict[str, tuple[list[CtQuestion], str]] = {}
    for _split, key, i, item in _split_items(load_json(path), path, scan):
        where = f"{key}[{i}]"
        try:
            if not isinstance(item, dict):
                raise ItemError("bad_item", f"item is {type(item).__name__}, not an object")
            cid = case_id(relative_image(item.get("image")))
        except ItemError as exc:
            scan.reject(path, where, exc.reason, exc.detail)
            continue
        questions = _qa_list(item, where, path, scan)
        previous = out.get(cid)
        out[cid] = ((previous[0] if previous else []) + questions, previous[1] if previous else where)
    return out


def _read_item(scan: AmosScan, path: Path, where: str, split: str, item: object, seen: dict[str, str]
               ) -> CtReport | None:
    if not isinstance(item, dict):
        raise ItemError("bad_item", f"item is {type(item).__name__}, not an object")
    rel = relative_image(item.get("image"))
    cid = case_id(rel)
    if cid in seen:
        raise ItemError("duplicate_case", f"{cid} already listed at {seen[cid]}")
    labels = item.get("labels")
    report = labels.get("report") if isinstance(labels, dict) else None
    if report is None:
        if split == "test":
            scan.counts["test_items_without_report"] += 1
            return None
        raise ItemError("no_report", f"{cid}: no labels.report")
    if not isinstance(report, dict):
        raise ItemError("bad_report", f"labels.report is {type(report).__name__}, not an object")
    findings = by_region(report.get("findings") or {}, "findings")
    impression_value = report.get("impression")
    impression_regions = by_region(impression_value, "impression") if isinstance(impression_value, dict) else {}
    impression = (" ".join(f"{r.capitalize()}: {t}" for r, t in impression_regions.items()) or None
                  if impression_regions else section_text(impression_value, "impression"))
    if not findings and not impression:
        raise ItemError("no_report_text", f"{cid}: every findings region and the impression are empty")
    if not os.path.isfile(path.parent / rel):
        raise ItemError("volume_file_missing", f"{path.parent / rel} does not exist")
    questions = _qa_list(item, where, path, scan)
    seen[cid] = where
    return CtReport(source=INFO.name, scan_id=cid, patient_id=cid, split=split, licence_class=INFO.licence_class,
                    volumes=(CtVolumeFile(volume_id=cid, path=rel, layout=str(PurePosixPath(rel).parent) if "/" in rel else None),),
                    findings_by_region=findings, impression=impression, impression_by_region=impression_regions,
                    questions=tuple(questions), file=str(path), row=where)
