"""Readers for GEMeX-ThinkVG (HF Parquet) and the GEMeX JSONL files: VQA on MIMIC-CXR-JPG images
whose questions are grounded by named regions with boxes.

What was checked (sources/FORMATS.md §9 and these notes):
- GEMeX JSONL (`Awenbocc/GEMeX-Project` `data-v1-subset/test/`, opened here): four files
  `closed_ended_question.jsonl`, `open_ended_question.jsonl`, `single_choice_question.jsonl`,
  `multi_choice_question.jsonl`, 20 rows each, no trailing newline. Keys `question, type, answer
  (str, or list[str] for multi-choice), reason, visual_regions (list[str]), visual_locations
  (list of [x1, y1, x2, y2] ints, parallel), image_path (`p10/p<subject>/s<study>/<dicom_id>.jpg`),
  ori_report, q_id, row_id`, plus `choices` in the choice files. `q_id` runs over the whole file
  (not per image); `row_id` (`row_<n>`) names the image. The same question may repeat for one
  image (kept: the source says so; counted as `duplicate_questions`).
- GEMeX-ThinkVG Parquet (a third-party loader that reads the real file): `data/train-00000-of-00001.parquet`,
  columns `question_type` (`open_ended_questions`, `closed_ended_questions`, `single_choice_questions`,
  `multi_choice_questions`), `image_path` with a leading `/`, `question`, `response` holding
  `<answer>...</answer>`. The reasoning column (read as `thinkVG` by one loader) and the full
  column list were NOT verified: the reasoning column is taken by name when it has a known one,
  else found by content (the string column whose values carry `(region [x1, y1, x2, y2])`);
  extra columns are ignored. Whether `<think>` tags occur is unknown: they are removed if present.

Box frame (`box_frame`, default 224): GEMeX boxes are integer corners on the 224 x 224 resized
image (Chest ImaGenome's `x1..y2` grid, which GEMeX's region names follow). Evidence: every box
in the public GEMeX files lies in [0, 222] (80 JSONL rows with 118 boxes, and 134 boxes in
`sub_training_data.json`; max 222, min 0), none past 224; one ThinkVG prompt example shows 227,
which the Box type's 2 % edge tolerance (up to 228.48) clamps. Not verified against the image
pixels (no credentialed images here). Boxes become `Box.from_grid_xyxy(..., grid=box_frame)`.

Regions in reasoning text: `(right lower lung zone [120, 130, 200, 210])` (name inside the
parentheses) and, as the ThinkVG card describes its report annotation, `right lower lung zone
([120, 130, 200, 210])` / `[visual location: right lung ([...])]` (name before; only names of the
region mapping are recognised there). A box-like text that belongs to no region is a reject
(`stray_box_text`: a square bracket or four numbers left over), never skipped.

Merge order of an image's questions: closed, open, single, multi (QUESTION_TYPE_ORDER); within
a type, the source's order (Parquet: file, then row; JSONL: q_id, then line).

Rejects (file and row; the whole question row): unreadable row or JSON line, a missing or
non-text value (`missing_value`), an image path that does not parse (`bad_image_path`) or that
names another subject/study than earlier rows of the same image (`image_path_conflict`), an
unknown question type, no `<answer>` (`no_answer`), no region (`no_regions`), a bad box
(`box_not_a_number`, `box_not_four_numbers`, `box_inverted`, `box_outside_frame`,
`box_zero_area`), region and location lists of different lengths. A reasoning column that cannot
be found, a missing required column or an unreadable file: SourceError naming the file and the
columns present. Region names outside the mapping are kept here (the source's word); the
aggregation (ops/regions.py) rejects them.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from radcorpora.schemas.boxes import Box, BoxError
from radcorpora.schemas.gemex import (
    QUESTION_TYPE_ORDER,
    GemexImage,
    GemexQuestion,
    GemexQuestionType,
    RegionBox,
)
from radcorpora.schemas.regions import normalise_region, region_names
from radcorpora.sources.base import NotANumber, SourceInfo, SourceScan, number
from radcorpora.sources.errors import SourceError

QUESTION_TYPES: dict[str, GemexQuestionType] = {
    "closed_ended_questions": "closed", "open_ended_questions": "open",
    "single_choice_questions": "single", "multi_choice_questions": "multi",
    "closed_ended_question": "closed", "open_ended_question": "open",
    "single_choice_question": "single", "multi_choice_question": "multi",
    "closed": "closed", "open": "open", "single": "single", "multi": "multi",
}
JSONL_FILES: dict[str, GemexQuestionType] = {
    "closed_ended_question.jsonl": "closed", "open_ended_question.jsonl": "open",
    "single_choice_question.jsonl": "single", "multi_choice_question.jsonl": "multi",
}
REQUIRED_COLUMNS = ("question_type", "image_path", "question", "response")
# Names the reasoning column is taken by without looking at its content (compared lower-case).
REASONING_NAMES = ("thinkvg", "think_vg", "thinking", "reasoning", "rationale", "think", "cot")
DEFAULT_BOX_FRAME = 224

_IMAGE_PATH = re.compile(r"^(?:files/)?p(\d\d)/p(\d+)/s(\d+)/([^/\s]+)\.jpg$")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_THINK_TAG = re.compile(r"</?think>", re.IGNORECASE)
_NAME = r"[A-Za-z][A-Za-z'\- ]{0,58}?"
# `(region name [x1, y1, x2, y2])`
_NAMED_BOX = re.compile(rf"\(\s*(?P<name>{_NAME})\s*[:,]?\s*\[(?P<body>[^\[\]()]*)\]\s*\)")
# `region name ([x1, y1, x2, y2])`: the name is read from the known region names before it
_BOX_IN_PARENS = re.compile(r"\(\s*\[(?P<body>[^\[\]()]*)\]\s*\)")
# what is left after the regions are taken out and may be a box: any square bracket (reasoning
# text uses them for boxes only) or four numbers in a row
_STRAY = re.compile(r"[\[\]]|\d\s*,\s*[-+]?\d+(?:\.\d+)?\s*,\s*[-+]?\d+(?:\.\d+)?\s*,\s*[-+]?\d")
_VISUAL_LOCATION = re.compile(r"\[\s*visual location\s*:\s*([^\[\]]*\(\s*\[[^\[\]]*\]\s*\)[^\[\]]*)\]",
                              re.IGNORECASE)
_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)

INFO = SourceInfo(
    name="gemex-thinkvg",
    title="GEMeX-ThinkVG",
    licence_class="credentialed",
    licence=("Annotations: CC BY-NC 4.0 (per the dataset card notes); images: MIMIC-CXR-JPG under the PhysioNet "
             "Credentialed Health Data License 1.5.0 (credentialing, training and the signed DUA required)."),
    citation="""@article{liu2025gemexthinkvg,
  title   = {{GEMeX-ThinkVG}: Towards Thinking with Visual Grounding in Medical {VQA} via Reinforcement Learning},
  author  = {Liu, Bo and Zhao, Xiangyu and He, Along and Chen, Yidi and Fu, Huazhu and Wu, Xiao-Ming},
  journal = {arXiv preprint arXiv:2506.17939},
  year    = {2025}
}
@inproceedings{liu2025gemex,
  title     = {{GEMeX}: A Large-Scale, Groundable, and Explainable Medical {VQA} Benchmark for Chest X-ray Diagnosis},
  author    = {Liu, Bo and Zou, Ke and Zhan, Li-Ming and Lu, Zexin and Dong, Xiaoyu and Chen, Yidi and Xie, Chengqiang
               and Cao, Jiannong and Wu, Xiao-Ming and Fu, Huazhu},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2025}
}""",
)
JSONL_INFO = SourceInfo(name="gemex", title="GEMeX (VQA JSONL)", licence_class=INFO.licence_class,
                        licence=INFO.licence, citation=INFO.citation)


@dataclass
class GemexScan(SourceScan[GemexImage]):
    """`records`: one GemexImage per image with at least one kept question, sorted by subject,
    study, image. `reasoning_columns`: Parquet file -> the column read as reasoning."""

    files: dict[str, str] = field(default_factory=dict)
    reasoning_columns: dict[str, str] = field(default_factory=dict)

    @property
    def images(self) -> list[GemexImage]:
        return self.records


class _RowError(Exception):
    """A row that cannot become a question: `reason` for the reject, `detail` naming the value."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ------------------------------------------------------------------------------------- parsing


def parse_image_path(value: object) -> tuple[str, str, str, str]:
    """(relative path, subject, study, dicom_id) of `pNN/p<subject>/s<study>/<dicom_id>.jpg`
    (a leading `/` or `files/` allowed); `pNN` must be the subject's first two digits."""
    if not isinstance(value, str):
        raise _RowError("bad_image_path", f"image_path={value!r} is not text")
    rel = value.strip().replace("\\", "/").lstrip("/")
    match = _IMAGE_PATH.match(rel)
    if match is None or not match.group(2).startswith(match.group(1)):
        raise _RowError("bad_image_path", f"image_path={value!r} is not pNN/p<subject>/s<study>/<dicom_id>.jpg")
    group, subject, study, dicom_id = match.groups()
    return f"p{group}/p{subject}/s{study}/{dicom_id}.jpg", subject, study, dicom_id


def grid_box(values: object, box_frame: int, name: str) -> Box:
    """A `[x1, y1, x2, y2]` on the `box_frame` grid as a Box; _RowError(box_*) otherwise."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)) or len(values) != 4:
        shown = repr(values)
        shown = shown if len(shown) <= 60 else shown[:50] + "..."
        raise _RowError("box_not_four_numbers", f"{name}={shown} is not four numbers")
    try:
        corners = [number(v, f"{name}[{i}]") for i, v in enumerate(values)]
        return Box.from_grid_xyxy(*corners, grid=box_frame)
    except (NotANumber, BoxError) as exc:
        raise _RowError(f"box_{exc.reason}", f"{name}: {exc.detail}") from None


def _text_box(body: str, box_frame: int, name: str) -> Box:
    parts = [p for p in re.split(r"\s*[,;]\s*|\s+", body.strip()) if p]
    if len(parts) != 4:
        raise _RowError("box_not_four_numbers", f"{name}=[{body.strip()[:50]}] is not four numbers")
    return grid_box(parts, box_frame, name)


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[tuple[str, str], ...]:
    """(normalised, canonical) region names of the mapping, longest first."""
    return tuple(sorted(((normalise_region(n), n) for n in region_names()), key=lambda k: (-len(k[0]), k[0])))


def _name_before(text: str) -> str | None:
    """The mapping's region name that ends `text` (compared normalised), canonically spelled."""
    tail = normalise_region(text[-80:])
    for key, name in _vocabulary():
        if tail == key or tail.endswith(" " + key):
            return name
    return None


def region_boxes_in_text(text: str, box_frame: int = DEFAULT_BOX_FRAME) -> list[RegionBox]:
    """The regions a reasoning text names with boxes, in order of appearance. _RowError for a bad
    box, a box with no region name, or box-like text that is no region box."""
    text = _VISUAL_LOCATION.sub(r" \1 ", text)
    found: list[tuple[int, RegionBox]] = []
    taken: list[tuple[int, int]] = []
    for match in _NAMED_BOX.finditer(text):
        name = _ARTICLE.sub("", match.group("name").strip())
        box = _text_box(match.group("body"), box_frame, name)
        found.append((match.start(), RegionBox(region=name, box=box)))
        taken.append(match.span())
    for match in _BOX_IN_PARENS.finditer(text):
        if any(a <= match.start() < b for a, b in taken):
            continue
        before = text[:match.start()]
        name = _name_before(before)
        if name is None:
            raise _RowError("region_unnamed", f"box ({match.group(0)[:40]}) follows no known region name: "
                                              f"...{before[-40:]!r}")
        box = _text_box(match.group("body"), box_frame, name)
        found.append((match.start(), RegionBox(region=name, box=box)))
        taken.append(match.span())
    rest = list(text)
    for a, b in taken:
        rest[a:b] = " " * (b - a)
    stray = _STRAY.search("".join(rest))
    if stray is not None:
        raise _RowError("stray_box_text", f"{stray.group(0)[:50]!r} looks like a box but names no region")
    return [region for _, region in sorted(found, key=lambda item: item[0])]


def _text(row: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if required:
            raise _RowError("missing_value", f"{key} is missing")
        return None
    if not isinstance(value, str):
        raise _RowError("missing_value", f"{key}={value!r} is not text")
    value = value.strip()
    if not value and required:
        raise _RowError("missing_value", f"{key} is empty")
    return value or None


def _answer_of(response: str) -> str:
    match = _ANSWER.search(response)
    if match is None or not match.group(1).strip():
        raise _RowError("no_answer", f"response has no <answer>...</answer>: {response[:60]!r}")
    return match.group(1).strip()


def _question_type(value: object) -> GemexQuestionType:
    kind = QUESTION_TYPES.get(str(value).strip().lower()) if isinstance(value, str) else None
    if kind is None:
        raise _RowError("unknown_question_type", f"question_type={value!r} (known: {', '.join(sorted(QUESTION_TYPES))})")
    return kind


# ------------------------------------------------------------------------------------- assembly


@dataclass
class _Collector:
    """Questions grouped per image, with the sort key that gives the merge order."""

    scan: GemexScan
    images: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # dicom -> (rel, subject, study)
    questions: dict[str, list[tuple[tuple, GemexQuestion]]] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)

    def image(self, value: object) -> str:
        rel, subject, study, dicom_id = parse_image_path(value)
        known = self.images.setdefault(dicom_id, (rel, subject, study))
        if known != (rel, subject, study):
            raise _RowError("image_path_conflict", f"image_path={value!r}: {dicom_id} was {known[0]} on an earlier row")
        return dicom_id

    def add(self, dicom_id: str, order: tuple, question: GemexQuestion) -> None:
        self.questions.setdefault(dicom_id, []).append((order, question))

    def finish(self, source: str) -> None:
        scan = self.scan
        for dicom_id, items in self.questions.items():
            rel, subject, study = self.images[dicom_id]
            ordered = tuple(q for _, q in sorted(items, key=lambda item: item[0]))
            seen = Counter((q.question_type, q.question) for q in ordered)
            scan.counts["duplicate_questions"] += sum(n - 1 for n in seen.values())
            scan.records.append(GemexImage(source=source, image_id=dicom_id, subject_id=subject, study_id=study,
                                           image_path=rel, questions=ordered, report=self.reports.get(dicom_id)))
        scan.records.sort(key=lambda i: (i.subject_id, i.study_id, i.image_id))
        scan.counts["images"] = len(scan.records)
        scan.counts["questions"] = sum(len(i.questions) for i in scan.records)
        scan.counts["regions"] = sum(len(q.regions) for i in scan.records for q in i.questions)
        for image in scan.records:
            for question in image.questions:
                scan.counts[f"questions_{question.question_type}"] += 1


def _check_frame(box_frame: int) -> int:
    if isinstance(box_frame, bool) or not isinstance(box_frame, int) or box_frame <= 0:
        raise ValueError(f"box_frame must be a positive whole number of pixels, got {box_frame!r}")
    return box_frame


# ------------------------------------------------------------------------------------- ThinkVG


def find_parquet_files(path: Path) -> list[Path]:
    """A Parquet file, or the `data/train-*.parquet` shards of a dataset folder (else any
    `*.parquet` in the folder or its `data/`)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SourceError(f"{path}: GEMeX-ThinkVG file or folder does not exist")
    for pattern in ("data/train-*.parquet", "*.parquet", "data/*.parquet"):
        files = sorted(path.glob(pattern))
        if files:
            return files
    raise SourceError(f"{path}: no GEMeX-ThinkVG Parquet (looked for data/train-*.parquet, *.parquet, data/*.parquet)")


def reasoning_column(columns: list[str], sample: list[dict[str, Any]], where: Path | str = "") -> str:
    """The reasoning column: a known name (`thinkVG`, `reasoning`, ...) if present, else the text
    column (not a required one) whose sampled values most often hold a region box (at least half
    of them), else `response` when its text outside `<answer>` holds them. SourceError naming the
    columns present otherwise."""
    lowered = {c.lower(): c for c in columns}
    for name in REASONING_NAMES:
        if name in lowered:
            return lowered[name]

    def share(column: str) -> float:
        values = [row.get(column) for row in sample]
        texts = [v for v in values if isinstance(v, str) and v.strip()]
        if column == "response":
            texts = [_ANSWER.sub(" ", v) for v in texts]
        hits = sum(1 for v in texts if _NAMED_BOX.search(v) or _BOX_IN_PARENS.search(v))
        return hits / len(texts) if texts else 0.0

    candidates = [c for c in columns if c not in REQUIRED_COLUMNS]
    scored = sorted(((share(c), -i, c) for i, c in enumerate(candidates)), reverse=True)
    if scored and scored[0][0] >= 0.5:
        return scored[0][2]
    if share("response") >= 0.5:
        return "response"
    raise SourceError(f"{where}: no reasoning column: none is named {'/'.join(REASONING_NAMES)} and no text column "
                      f"holds `(region [x1, y1, x2, y2])` boxes in at least half of its first {len(sample)} rows "
                      f"(columns: {', '.join(columns) or 'none'})")


def _parquet_rows(path: Path, batch_size: int = 4096) -> tuple[list[str], Iterator[dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
        columns = list(handle.schema_arrow.names)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise SourceError(f"{path}: not a readable Parquet file ({exc})") from exc

    def rows() -> Iterator[dict[str, Any]]:
        try:
            for batch in handle.iter_batches(batch_size=batch_size):
                yield from batch.to_pylist()
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise SourceError(f"{path}: unreadable ({exc})") from exc
    return columns, rows()


def scan_gemex_thinkvg(path: Path, box_frame: int = DEFAULT_BOX_FRAME, sample_rows: int = 256) -> GemexScan:
    """Read GEMeX-ThinkVG (a Parquet file or a folder with `data/train-*.parquet`) into one record
    per image, questions in merge order, regions parsed from the reasoning text."""
    box_frame = _check_frame(box_frame)
    files = find_parquet_files(path)
    scan = GemexScan(info=INFO, root=Path(path) if Path(path).is_dir() else Path(path).parent)
    collect = _Collector(scan)
    for file_index, file in enumerate(files):
        scan.files[f"parquet_{file_index}"] = str(file)
        columns, rows = _parquet_rows(file)
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise SourceError(f"{file}: missing column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'})")
        sample: list[dict[str, Any]] = []
        for row in rows:
            sample.append(row)
            if len(sample) >= sample_rows:
                break
        column = reasoning_column(columns, sample, file)
        scan.reasoning_columns[str(file)] = column
        extra = [c for c in columns if c not in (*REQUIRED_COLUMNS, column)]
        if extra:
            scan.counts["extra_columns"] += len(extra)
        index = 0
        for row in _chain(sample, rows):
            try:
                dicom_id, question = _thinkvg_question(collect, row, column, box_frame, file, index)
            except _RowError as exc:
                scan.reject(file, index, exc.reason, f"{file.name} row {index}: {exc.detail}")
            else:
                collect.add(dicom_id, (QUESTION_TYPE_ORDER.index(question.question_type), file_index, index), question)
            index += 1
        scan.counts["rows"] += index
    collect.finish(INFO.name)
    return scan


def _chain(first: list[dict[str, Any]], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield from first
    yield from rest


def _thinkvg_question(collect: _Collector, row: dict[str, Any], column: str, box_frame: int, file: Path,
                      index: int) -> tuple[str, GemexQuestion]:
    kind = _question_type(row.get("question_type"))
    dicom_id = collect.image(row.get("image_path"))
    question = _text(row, "question")
    response = _text(row, "response")
    answer = _answer_of(response)
    reasoning = _text(row, column)
    if column == "response":
        reasoning = _ANSWER.sub(" ", reasoning).strip()
    reasoning = " ".join(_THINK_TAG.sub(" ", reasoning).split())
    regions = region_boxes_in_text(reasoning, box_frame)
    if not regions:
        raise _RowError("no_regions", f"{column} names no region with a box: {reasoning[:60]!r}")
    return dicom_id, GemexQuestion(question_type=kind, question=question, answer=answer, reasoning=reasoning,
                                   regions=tuple(regions), source=str(file), row=str(index))


# ------------------------------------------------------------------------------------- JSONL


def scan_gemex_jsonl(folder: Path, box_frame: int = DEFAULT_BOX_FRAME) -> GemexScan:
    """Read the GEMeX JSONL files (`closed_ended_question.jsonl` ... `multi_choice_question.jsonl`)
    of `folder`; regions from `visual_regions` / `visual_locations`, reasoning from `reason`.
    A missing file is a warning (the other types are read); none at all is a SourceError."""
    box_frame = _check_frame(box_frame)
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{folder}: GEMeX folder does not exist")
    scan = GemexScan(info=JSONL_INFO, root=folder)
    collect = _Collector(scan)
    present = [(name, kind) for name, kind in JSONL_FILES.items() if (folder / name).is_file()]
    if not present:
        raise SourceError(f"{folder}: no GEMeX question files (looked for {', '.join(JSONL_FILES)})")
    for name in JSONL_FILES:
        if not (folder / name).is_file():
            scan.warnings.append(f"{folder}: no {name}; its questions are missing")
    for file_index, (name, kind) in enumerate(present):
        path = folder / name
        scan.files[kind] = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SourceError(f"{path}: cannot read ({exc})") from exc
        for line_number, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            scan.counts["rows"] += 1
            try:
                row = json.loads(raw.decode("utf-8"))
                if not isinstance(row, dict):
                    raise _RowError("unreadable_row", f"line is a JSON {type(row).__name__}, not an object")
                dicom_id, question, report = _jsonl_question(collect, row, kind, box_frame, path, line_number)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                scan.reject(path, line_number, "unreadable_row", f"{name} line {line_number}: {str(exc)[:80]}")
                continue
            except _RowError as exc:
                scan.reject(path, line_number, exc.reason, f"{name} line {line_number}: {exc.detail}")
                continue
            q_id = question.q_id if question.q_id is not None else line_number
            collect.add(dicom_id, (QUESTION_TYPE_ORDER.index(kind), file_index, q_id, line_number), question)
            if report and dicom_id not in collect.reports:
                collect.reports[dicom_id] = report
    collect.finish(JSONL_INFO.name)
    return scan


def _jsonl_question(collect: _Collector, row: dict[str, Any], kind: GemexQuestionType, box_frame: int,
                    path: Path, line: int) -> tuple[str, GemexQuestion, str | None]:
    dicom_id = collect.image(row.get("image_path"))
    question = _text(row, "question")
    answer = row.get("answer")
    if isinstance(answer, list) and answer and all(isinstance(a, str) and a.strip() for a in answer):
        answer = ", ".join(a.strip() for a in answer)
    if not isinstance(answer, str) or not answer.strip():
        raise _RowError("missing_value", f"answer={row.get('answer')!r} is not text or a list of texts")
    reasoning = _text(row, "reason", required=False) or ""
    names, locations = row.get("visual_regions"), row.get("visual_locations")
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise _RowError("missing_value", f"visual_regions={names!r} is not a list of names")
    if not isinstance(locations, list):
        raise _RowError("box_not_four_numbers", f"visual_locations={locations!r} is not a list of boxes")
    if len(names) != len(locations):
        raise _RowError("regions_locations_mismatch", f"{len(names)} visual_regions but {len(locations)} "
                                                      f"visual_locations: {locations!r}"[:160])
    if not names:
        raise _RowError("no_regions", "visual_regions is empty")
    regions = tuple(RegionBox(region=n.strip(), box=grid_box(b, box_frame, f"visual_locations[{i}] ({n.strip()})"))
                    for i, (n, b) in enumerate(zip(names, locations)))
    choices = row.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise _RowError("missing_value", f"choices={choices!r} is not a list of texts")
    q_id = row.get("q_id")
    q_id = q_id if isinstance(q_id, int) and not isinstance(q_id, bool) else None
    report = row.get("ori_report")
    return dicom_id, GemexQuestion(question_type=kind, question=question, answer=answer.strip(), reasoning=reasoning,
                                   regions=regions, choices=tuple(choices), q_id=q_id, source=str(path),
                                   row=str(line)), report.strip() if isinstance(report, str) else None
