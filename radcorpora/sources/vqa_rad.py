"""VQA-RAD test questions, from either published form.

- Hub Parquet mirror (flaviagiammarino/vqa-rad): `data/test-*.parquet` with `image` {bytes, path},
  `question`, `answer` (lower-cased, no ids or types; closed = answer is yes/no).
- Original OSF release: `VQA_RAD Dataset Public.json` + `VQA_RAD Image Folder/<image_name>`;
  the official test split is the rows whose `phrase_type` starts with "test".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from radcorpora.schemas.common import Reject
from radcorpora.sources.base import inside
from radcorpora.sources.errors import SourceError

OSF_JSON = "VQA_RAD Dataset Public.json"
OSF_IMAGES = "VQA_RAD Image Folder"
CLOSED_ANSWERS = {"yes", "no"}


@dataclass(frozen=True)
class VqaRadQuestion:
    id: str
    question: str
    answer: str
    answer_type: str  # OPEN | CLOSED
    image: bytes
    image_name: str
    organ: str | None
    question_type: str | None
    source_format: str  # parquet | osf-json


@dataclass
class VqaRadTest:
    root: Path
    source_format: str
    questions: list[VqaRadQuestion] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def read_vqa_rad_test(source: Path) -> VqaRadTest:
    source = Path(source)
    if not source.is_dir():
        raise SourceError(f"{source}: VQA-RAD folder does not exist")
    json_files = [p for p in (source / OSF_JSON, *source.glob(f"*/{OSF_JSON}")) if p.is_file()]
    parquet = sorted(p for p in source.rglob("*.parquet") if p.name.startswith("test"))
    if parquet:
        return _read_parquet(source, parquet)
    if json_files:
        return _read_osf(json_files[0])
    raise SourceError(f"{source}: neither data/test-*.parquet (Hub mirror) nor {OSF_JSON!r} (OSF release) found")


def _read_parquet(root: Path, files: list[Path]) -> VqaRadTest:
    test = VqaRadTest(root=root, source_format="parquet")
    for path in files:
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(f"{path}: not a readable Parquet file ({exc})") from exc
        missing = {"image", "question", "answer"} - set(table.column_names)
        if missing:
            raise SourceError(f"{path}: missing column(s) {sorted(missing)}")
        for row, record in enumerate(table.to_pylist()):
            image = record.get("image") or {}
            data = image.get("bytes") if isinstance(image, dict) else None
            question, answer = record.get("question"), record.get("answer")
            if not data:
                test.rejects.append(Reject(source=path.name, row=str(row), reason="missing_image", detail="image has no bytes"))
                continue
            if not isinstance(question, str) or not question.strip() or answer is None or str(answer).strip() == "":
                test.rejects.append(Reject(source=path.name, row=str(row), reason="no_question_answer", detail=str(question)[:60]))
                continue
            answer = str(answer).strip()
            test.questions.append(VqaRadQuestion(
                id=f"{path.stem}-{row:05d}", question=question.strip(), answer=answer,
                answer_type="CLOSED" if answer.lower() in CLOSED_ANSWERS else "OPEN", image=data,
                image_name=(image.get("path") or f"{path.stem}-{row:05d}.jpg"), organ=None, question_type=None,
                source_format="parquet"))
    return test


def _read_osf(path: Path) -> VqaRadTest:
    test = VqaRadTest(root=path.parent, source_format="osf-json")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: cannot read VQA-RAD JSON: {exc}") from exc
    if not isinstance(records, list):
        raise SourceError(f"{path}: expected a JSON list of question objects")
    images = path.parent / OSF_IMAGES
    for row, record in enumerate(records):
        if not isinstance(record, dict) or not str(record.get("phrase_type", "")).startswith("test"):
            continue
        name, question, answer = record.get("image_name"), record.get("question"), record.get("answer")
        if not isinstance(name, str) or inside(images, name) is None or not (images / name).is_file():
            test.rejects.append(Reject(source=path.name, row=str(row), reason="image_file_missing", detail=str(name)))
            continue
        if not isinstance(question, str) or not question.strip() or answer is None or str(answer).strip() == "":
            test.rejects.append(Reject(source=path.name, row=str(row), reason="no_question_answer", detail=str(question)[:60]))
            continue
        answer_type = str(record.get("answer_type") or "").upper() or (
            "CLOSED" if str(answer).strip().lower() in CLOSED_ANSWERS else "OPEN")
        test.questions.append(VqaRadQuestion(
            id=str(record.get("qid", row)), question=question.strip(), answer=str(answer).strip(),
            answer_type=answer_type, image=(images / name).read_bytes(), image_name=name,
            organ=record.get("image_organ"), question_type=record.get("question_type"), source_format="osf-json"))
    return test
