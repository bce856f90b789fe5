"""What every trainer export shares: examples streamed from a build's shards, images written once
as files, the output folder written atomically, and the settings recorded next to the files.

An *example* is one training conversation, read generically from the record schema:

* `conversations` (LLaVA turns) with `image` (one struct) or `images` (a list of structs);
* radimagenet-vqa `instruct` rows (a `questions` column) expand to one example per question,
  exactly as the reference models train (`publish.views.question_example`);
* rows of `instances` (radvlm) expand to one example per instance;
* a row (or instance) `replication` count repeats the example: ids `<id>`, `<id>#r1`, `<id>#r2`...
  (the same ids as `publish.views.instance_view`), since none of the target formats has a per-row weight;
* rows with `chosen` and `rejected` columns are preference pairs (schemas.preference): the
  prompt is `prompt` (or `conversations`), the answers are gpt turns (or plain strings), with
  `chosen_score` / `rejected_score` where the rows have them;
* an `images` list keeps its order: the k-th `<image>` (across turns) is `images[k]`.

Loss intent ("all_assistant" | "final_assistant" | "none" | "preference") is given by the caller
(the corpus spec's `ConfigSpec.loss`); each format carries it its own way (see the format modules).
A pair config must say "preference" and only a pair config may: a pair exported as SFT (or SFT
rows as pairs) would train something else than the corpus means.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pyarrow.parquet as pq

from radcorpora.publish.views import question_example
from radcorpora.store.atomic import replace_folder
from radcorpora.store.folder import BuildFolderError, config_shards, iter_batches, read_manifest

SETTINGS_FILE = "export_settings.json"
IMAGES_DIR = "images"
LOSS_INTENTS = ("all_assistant", "final_assistant", "none", "preference")
PREFERENCE_FORMATS = "trl (DPO prompt/chosen/rejected), sharegpt (LLaMA-Factory ranking) or swift (rejected_response)"
_COLUMNS = ("id", "conversations", "prompt", "image", "images", "questions", "instances", "replication", "chosen",
            "rejected", "chosen_score", "rejected_score")


class ExportError(ValueError):
    """The export cannot be made as asked; the message names the build, file or row at fault."""


@dataclass
class Example:
    id: str
    images: list[str]  # relative paths under the export folder, in `<image>` order
    conversations: list[dict[str, str]]  # LLaVA turns {from, value}
    chosen: str | None = None  # preference pairs: conversations is the prompt (ends with a human turn)
    rejected: str | None = None
    chosen_score: float | None = None
    rejected_score: float | None = None

    @property
    def preference(self) -> bool:
        return self.chosen is not None


@dataclass
class ImageWriter:
    """Writes each distinct image once, named by its sha256: `images/<2 hex>/<sha256>.<ext>`."""

    root: Path
    written: set[str] = field(default_factory=set)
    count: int = 0
    bytes: int = 0

    def put(self, image: dict[str, Any]) -> str:
        data = image["bytes"]
        digest = hashlib.sha256(data).hexdigest()
        rel = f"{IMAGES_DIR}/{digest[:2]}/{digest}{_extension(data, image.get('path'))}"
        if digest not in self.written:
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            self.written.add(digest)
            self.count += 1
            self.bytes += len(data)
        return rel


def _extension(data: bytes, path: str | None) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    suffix = Path(path or "").suffix.lower()
    return suffix if suffix and len(suffix) <= 6 else ".bin"


@dataclass
class Source:
    """One config/split of a build to export, with the intent its corpus declares."""

    build: Path
    corpus: str
    config: str
    split: str
    loss: str
    shards: list[Path]
    columns: list[str]
    # the corpus' conversation of a row stored in its own shape (ConfigSpec.conversation, for a
    # chosen rendering): row -> {id, images, conversations}; reads every column of the row
    render: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    @property
    def per_question(self) -> bool:
        return self.render is None and "questions" in self.columns

    @property
    def preference(self) -> bool:
        return self.render is None and "chosen" in self.columns and "rejected" in self.columns

    @property
    def multi_image(self) -> bool:
        return self.render is not None or "images" in self.columns

    @property
    def turns(self) -> str | None:
        """The column holding each example's turns (a pair's prompt), if any."""
        if self.render is not None:
            return "conversations"
        if self.preference and "prompt" in self.columns:
            return "prompt"
        return "conversations" if "conversations" in self.columns else None


def sources(build: Path, config: str, splits: list[str] | None, loss: str,
            render: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> list[Source]:
    """The config/splits asked for, checked: the config exists, has conversations (or `render`
    makes them), and trains."""
    build = Path(build)
    manifest = read_manifest(build)
    if loss not in LOSS_INTENTS:
        raise ExportError(f"{build}: unknown loss intent {loss!r} for config {config!r}")
    shards = config_shards(build, config)
    if not shards:
        raise BuildFolderError(f"{build}: no shards for config {config!r} under {build / 'data' / config}")
    chosen = splits or sorted(shards)
    missing = [s for s in chosen if s not in shards]
    if missing:
        raise BuildFolderError(f"{build}: config {config!r} has no split {', '.join(missing)} "
                               f"(found: {', '.join(sorted(shards))})")
    out = []
    for split in chosen:
        try:
            names = pq.read_schema(shards[split][0]).names
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise BuildFolderError(f"{shards[split][0]}: not a readable Parquet shard ({exc})") from exc
        out.append(Source(build, str(manifest.get("corpus")), config, split, loss, shards[split],
                          [c for c in _COLUMNS if c in names], render))
    return out


def refuse_untrained(source: Source, fmt: str, has_preference_form: bool = True) -> None:
    """Refuse, before anything is written, what `fmt` cannot carry as the corpus means it."""
    if source.loss == "none":
        raise ExportError(f"{source.build}: config {source.config!r} is evaluation-only (loss intent 'none'); "
                          f"`{fmt}` is a training format. Export a training config instead.")
    if source.turns is None and "instances" not in source.columns:
        raise ExportError(f"{source.shards[0]}: config {source.config!r} has no conversations to export")
    if source.preference and source.loss != "preference":
        raise ExportError(f"{source.shards[0]}: config {source.config!r} holds preference pairs (chosen/rejected) "
                          f"but its loss intent is {source.loss!r}; a pair config declares loss intent 'preference'")
    if source.loss == "preference" and not source.preference:
        raise ExportError(f"{source.shards[0]}: config {source.config!r} has loss intent 'preference' but no "
                          "chosen/rejected columns")
    if source.preference and not has_preference_form:
        raise ExportError(f"{source.build}: config {source.config!r} holds preference pairs; `{fmt}` has no "
                          f"preference form (SFT conversations only). Use --format {PREFERENCE_FORMATS}.")


def examples(source: Source, images: ImageWriter, batch_size: int = 256) -> Iterator[Example]:
    """Every example of one config/split, streamed shard by shard (images written on the way)."""
    for shard in source.shards:
        for batch in iter_batches(shard, batch_size, columns=None if source.render else source.columns):
            for row in batch.to_pylist():
                if source.render is not None:
                    rendered = source.render(row)
                    row = {"id": rendered["id"], "images": rendered["images"],
                           "conversations": rendered["conversations"]}
                yield from _row_examples(row, images)


def _row_images(row: dict[str, Any], images: ImageWriter) -> list[str]:
    raw = row.get("images") if "images" in row else [row.get("image")]
    return [images.put(image) for image in raw or [] if image is not None]


def _replicas(example: Example, copies: int) -> Iterator[Example]:
    yield example
    for k in range(1, max(1, int(copies or 1))):
        yield Example(f"{example.id}#r{k}", example.images, example.conversations, example.chosen, example.rejected,
                      example.chosen_score, example.rejected_score)


def _row_examples(row: dict[str, Any], images: ImageWriter) -> Iterator[Example]:
    paths = _row_images(row, images)
    row_copies = int(row.get("replication") or 1)
    if row.get("instances") is not None:
        for instance in row["instances"]:
            copies = row_copies * int(instance.get("replication") or 1)
            yield from _replicas(Example(instance["id"], paths, _turns(instance["conversations"])), copies)
        return
    if row.get("questions") is not None:
        for q in range(len(row["questions"])):
            per_question = question_example(row, q)
            yield from _replicas(Example(per_question["id"], paths, _turns(per_question["conversations"])), row_copies)
        return
    if row.get("chosen") is not None or row.get("rejected") is not None:
        prompt = row["prompt"] if isinstance(row.get("prompt"), list) else row["conversations"]
        example = Example(row["id"], paths, _turns(prompt), _answer(row.get("chosen")), _answer(row.get("rejected")),
                          row.get("chosen_score"), row.get("rejected_score"))
    else:
        example = Example(row["id"], paths, _turns(row["conversations"]))
    yield from _replicas(example, row_copies)


def _answer(value: Any) -> str | None:
    """A pair's answer: a gpt turn struct (schemas.preference) or a plain string."""
    return value.get("value") if isinstance(value, dict) else value


def _turns(conversations: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"from": t["from"], "value": t["value"]} for t in conversations]


def target_turns(example: Example, loss: str) -> list[bool]:
    """Per turn: does it carry the loss under this intent (human turns never do)."""
    assistant = [t["from"] == "gpt" for t in example.conversations]
    if loss == "final_assistant":
        last = max((i for i, a in enumerate(assistant) if a), default=-1)
        return [i == last for i in range(len(assistant))]
    return assistant


def check_example(example: Example, where: str) -> None:
    """Turns alternate human/gpt from a human turn; one `<image>` per image; preference prompts
    end with a human turn, conversations with a gpt turn."""
    roles = [t["from"] for t in example.conversations]
    expected = ["human" if i % 2 == 0 else "gpt" for i in range(len(roles))]
    ends = "human" if example.preference else "gpt"
    if not roles or roles != expected or roles[-1] != ends:
        raise ExportError(f"{where}: row {example.id!r}: turns {roles} do not alternate human/gpt ending with {ends}")
    tags = sum(t["value"].count("<image>") for t in example.conversations)
    if tags != len(example.images):
        raise ExportError(f"{where}: row {example.id!r}: {tags} <image> tag(s) for {len(example.images)} image(s)")
    if example.preference and any("<image>" in (a or "") for a in (example.chosen, example.rejected)):
        raise ExportError(f"{where}: row {example.id!r}: an <image> tag in the chosen or rejected answer "
                          "(images belong to the prompt)")


def scores(example: Example) -> dict[str, float]:
    """A pair's scores as extra columns (the trainers read the pair, not these; kept for
    margin-weighted variants and for people), or nothing where the rows have none."""
    return {k: v for k, v in (("chosen_score", example.chosen_score), ("rejected_score", example.rejected_score))
            if v is not None}


def one_target_only(example: Example, loss: str, fmt: str, where: str) -> None:
    """Formats without a per-turn loss flag train every assistant turn: a final-answer-only
    conversation with several assistant turns cannot be said there."""
    if loss == "final_assistant" and sum(t["from"] == "gpt" for t in example.conversations) > 1:
        raise ExportError(f"{where}: row {example.id!r} has several assistant turns but only the last trains "
                          f"(loss intent final_assistant); `{fmt}` trains every assistant turn. "
                          "Use --format swift (per-message loss) or trl (prompt/completion).")


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


class LinesWriter:
    """JSON Lines, or one JSON list written element by element (`as_list`): never in memory whole."""

    def __init__(self, path: Path, as_list: bool = False):
        self.path, self.as_list, self.rows = path, as_list, 0
        self.handle: TextIO = open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 - closed by close()
        if as_list:
            self.handle.write("[")

    def write(self, record: dict[str, Any]) -> None:
        if self.as_list:
            self.handle.write(("\n" if self.rows == 0 else ",\n") + dumps(record))
        else:
            self.handle.write(dumps(record) + "\n")
        self.rows += 1

    def close(self) -> None:
        if self.as_list:
            self.handle.write("\n]\n")
        self.handle.close()


def file_entry(path: Path, rows: int) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"rows": rows, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def radcorpora_version() -> str:
    try:
        from importlib.metadata import version

        return version("radcorpora")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"


def prepare_out(out: Path) -> Path:
    """`out` may be missing (created), empty, or a previous export (replaced); anything else is
    refused rather than deleted."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"{out}: exists and is not a folder; --out names the folder to write")
        if any(out.iterdir()) and not (out / SETTINGS_FILE).exists():
            raise ExportError(f"{out}: folder is not empty and holds no {SETTINGS_FILE} (not a previous export); "
                              "choose a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def write_export(out: Path, write: Callable[[Path, ImageWriter], dict[str, Any]],
                 settings: dict[str, Any]) -> dict[str, Any]:
    """Fill a temporary sibling of `out` (`write(tmp, images) -> extra settings`), record the
    settings in `export_settings.json`, then put the folder in place atomically."""
    out = prepare_out(out)
    result: dict[str, Any] = {}

    def fill(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        images = ImageWriter(tmp)
        extra = write(tmp, images)
        result.update(settings, **extra, images={"dir": IMAGES_DIR, "count": images.count, "bytes": images.bytes},
                      radcorpora=radcorpora_version())
        text = json.dumps(result, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (tmp / SETTINGS_FILE).write_text(text, encoding="utf-8")

    replace_folder(out, fill)
    return result


def build_identity(build: Path) -> dict[str, Any]:
    """What export_settings.json says about the build (no absolute paths: same build, same bytes)."""
    manifest = read_manifest(build)
    fingerprint = manifest.get("fingerprint")
    digest = fingerprint.get("hash") if isinstance(fingerprint, dict) else None
    if digest is None and fingerprint is not None:
        digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
    return {"folder": Path(build).name, "corpus": manifest.get("corpus"), "fingerprint": digest,
            "splits": manifest.get("splits")}


def relpath_of(out: Path, path: Path) -> str:
    return os.path.relpath(path, out).replace(os.sep, "/")
