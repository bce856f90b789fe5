"""The toy corpus' settings and stages: read `findings.csv` (file,finding,split) and the images
beside it, ask one LLM stage for a caption per image (offline stand-in by default), write both
configs."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field

from radcorpora.llm.pipeline import Node, Pipeline
from radcorpora.llm.request import LLMRequest, Message
from radcorpora.llm.runner import CallResult
from radcorpora.llm.stage import LLMStage
from radcorpora.ops.sampling import row_index
from radcorpora.prompts.llm import load_prompt
from radcorpora.schemas.common import Reject
from radcorpora.sources.errors import SourceError
from radcorpora.spec.context import BuildContext, Prepared, StageOutput
from radcorpora.spec.corpus import Cli
from radcorpora.store.shards import write_split
from radcorpora.store.state import ChunkResult, ShardInfo

from .records import ToyRecord

CORPUS = "toy-findings"
QUESTIONS = ("What does this image show?", "Name the finding in this image.")


class ToySettings(BaseModel):
    seed: int = Field(0, description="Seed of every random choice")
    llm: Annotated[str, Cli(metavar="PROVIDER:MODEL")] = Field("offline", description="Model writing the captions")
    images_per_shard: int = Field(100, ge=1, description="Images per Parquet shard")


class CaptionStage(LLMStage[dict]):
    name = "toy_caption"
    description = "one sentence naming the image's finding"
    expected_output_tokens = 20

    def __init__(self) -> None:
        self.template = load_prompt("toy_caption", None, frozenset({"finding"}), __package__)

    def prompt(self, row: dict) -> LLMRequest:
        return LLMRequest(id=row["id"], stage=self.name, system=self.template.system,
                          messages=(Message.user(self.template.user.format(finding=row["finding"])),),
                          hints={"finding": row["finding"]})

    def parse(self, row: dict, result: CallResult) -> list[dict] | Reject:
        if not result.ok:
            return Reject(source=CORPUS, row=row["id"], reason=f"llm_{result.error.kind}", detail=str(result.error))
        text = result.response.content.strip()
        if row["finding"] not in text:
            return Reject(source=CORPUS, row=row["id"], reason="caption_misses_finding", detail=text[:200])
        return [{**row, "caption": text}]

    @staticmethod
    def offline(request: LLMRequest) -> str:
        return f"The image shows a {request.hints['finding']}."


def pipeline(settings: ToySettings) -> Pipeline:
    return Pipeline([Node("caption", CaptionStage(), [settings.llm],
                          stand_in=lambda row: {**row, "caption": f"A {row['finding']}."})],
                    key=lambda row: row["id"])


def read_source(root: Path) -> tuple[list[dict[str, Any]], list[Reject]]:
    table = Path(root) / "findings.csv"
    if not table.is_file():
        raise SourceError(f"{root}: no findings.csv")
    rows, rejects = [], []
    with table.open(newline="", encoding="utf-8") as handle:
        for line, cells in enumerate(csv.DictReader(handle), start=2):
            image = Path(root) / (cells.get("file") or "")
            if not cells.get("file") or not image.is_file():
                rejects.append(Reject(source=str(table), row=str(line), reason="image_file_missing",
                                      detail=f"{cells.get('file')!r} does not exist"))
                continue
            rows.append({"id": Path(cells["file"]).stem, "file": str(image), "finding": cells["finding"],
                         "split": cells.get("split") or "train"})
    return rows, rejects


def prepare(sources: dict[str, Path], settings: ToySettings, log) -> Prepared:
    rows, rejects = read_source(sources["source"])
    log(f"toy: {len(rows)} images")
    content = hashlib.sha256("".join(f"{r['id']}{r['finding']}{r['split']}" for r in rows).encode()).hexdigest()
    return Prepared(fingerprint={"sources": {"content": content[:16]}}, plan=(rows, rejects))


def _record(row: dict[str, Any], answer: str, question: str, models: list[str]) -> ToyRecord:
    data = Path(row["file"]).read_bytes()
    return ToyRecord.model_validate({
        "image": {"bytes": data, "path": Path(row["file"]).name}, "id": row["id"], "finding": row["finding"],
        "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}],
        "lineage": {"source_dataset": "toy", "source_id": row["id"], "source_split": row["split"],
                    "licence_class": "public", "image_sha256": hashlib.sha256(data).hexdigest(), "models": models}})


def run(prepared: Prepared, settings: ToySettings, ctx: BuildContext) -> StageOutput:
    rows, rejects = prepared.plan
    graph = pipeline(settings)
    session = ctx.llm_session(graph.offline_responders())
    try:
        result = graph.run(rows, session, ctx.out / "build" / "llm")
    finally:
        session.close()
    captions = result["caption"].outputs
    chunks = []
    for config in ("captions", "labels"):
        for split in ("train", "validation"):
            kept = [r for r in rows if r["split"] == split and (config == "labels" or r["id"] in captions)]
            records = [
                _record(r, captions[r["id"]]["caption"], QUESTIONS[0], [settings.llm]) if config == "captions" else
                _record(r, r["finding"], QUESTIONS[row_index(settings.seed, CORPUS, r["id"], "question", 2)], [])
                for r in kept]
            written = write_split(ctx.out, config, split, records, len(records), ToyRecord, settings.images_per_shard)
            chunks.append(ChunkResult(chunk_id=f"{config}-{split}", shards={
                rel: ShardInfo(rows=n, sha256=digest) for rel, (n, digest) in written.items()}))
    return StageOutput(chunks=chunks, rejects=rejects + result.rejects,
                       manifest={"llm": {"generator": settings.llm, "pipeline": result.figures()}})


def estimate(sources: dict[str, Path], settings: ToySettings, log) -> tuple[list[Any], dict[str, Any]]:
    rows, _ = read_source(sources["source"])
    graph = pipeline(settings)
    return [(CaptionStage, settings.llm, [graph.node("caption").stage.prompt(r) for r in rows])], {"samples": len(rows)}
