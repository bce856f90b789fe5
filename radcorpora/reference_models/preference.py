"""Preference (DPO) training through TRL's DPOTrainer, with the run folder of `sft.train`:
`run_settings.json` (a resume with other settings is refused), `train_log.jsonl`, checkpoints a
killed run resumes from, `train_result.json`, weights in `adapter/` (LoRA) or `model/` (full).

Pairs are TRL's preference format: `prompt` (messages), `chosen` and `rejected` (one assistant
message each), optional `images` (the prompt's `{"type": "image"}` blocks, in order). They come
from a build config whose loss intent is "preference" (PreferencePair rows: LLaVA turns with
`<image>` placeholders; `radcorpora dpo`'s ct-reasoning-dpo builds) or from TRL preference JSONL,
such as the `preference-train.jsonl` that `radcorpora export BUILD --format trl` writes (image
paths relative to the file).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from radcorpora.reference_models.collate import TrainingError
from radcorpora.reference_models.sft import (
    RunLog,
    RunTrainer,
    SFTConfig,
    TrainResult,
    finish_run,
    fp32_trainable,
    full_model,
    full_weights_in,
    load_base,
    lora_config,
    losses,
    mixed_precision,
    open_run,
    process_state,
    resume_point,
    run_and_save,
    trainer_arguments,
)

TRL_FILE = "preference-{split}.jsonl"  # `radcorpora export --format trl` of a preference build


def _blocks(text: str, with_images: bool) -> list[dict[str, Any]]:
    """A LLaVA turn's text as content blocks: each `<image>` an image placeholder block."""
    out: list[dict[str, Any]] = []
    for i, piece in enumerate(text.split("<image>")):
        if i > 0 and with_images:
            out.append({"type": "image"})
        piece = piece.strip("\n")
        if piece:
            out.append({"type": "text", "text": piece})
    return out or [{"type": "text", "text": ""}]


def _image(item: Any, folder: Path | None) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, dict) and item.get("bytes"):
        return Image.open(io.BytesIO(item["bytes"])).convert("RGB")
    path = item.get("path") if isinstance(item, dict) else item
    if not isinstance(path, str):
        raise TrainingError(f"preference row: image {item!r} is neither bytes nor a path")
    path = Path(path) if folder is None or Path(path).is_absolute() else folder / path
    if not path.exists():
        raise TrainingError(f"preference row: image {path} not found")
    return Image.open(path).convert("RGB")


def pair_from_record(row: dict[str, Any], text_only: bool = False) -> dict[str, Any]:
    """A PreferencePair row (LLaVA turns) -> a TRL preference row."""
    role = {"human": "user", "gpt": "assistant"}
    pair = {"prompt": [{"role": role[t["from"]], "content": _blocks(t["value"], not text_only)} for t in row["prompt"]],
            "chosen": [{"role": "assistant", "content": _blocks(row["chosen"]["value"], False)}],
            "rejected": [{"role": "assistant", "content": _blocks(row["rejected"]["value"], False)}]}
    if not text_only and row.get("images"):
        pair["images"] = [_image(i, None) for i in row["images"]]
    return pair


def pair_from_trl(row: dict[str, Any], folder: Path | None, text_only: bool = False) -> dict[str, Any]:
    """A TRL preference row as read from JSONL: image blocks reduced to placeholders, image paths
    read (relative to `folder`), string contents kept (TRL accepts both)."""
    def clean(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for m in messages:
            content = m["content"]
            if isinstance(content, list):
                content = [({"type": "image"} if b.get("type") == "image" else {"type": "text", "text": b.get("text") or ""})
                           for b in content if not (text_only and b.get("type") == "image")]
            out.append({"role": m["role"], "content": content})
        return out

    pair = {key: clean(row[key]) for key in ("prompt", "chosen", "rejected")}
    if not text_only and row.get("images"):
        pair["images"] = [_image(i, folder) for i in row["images"]]
    return pair


def _check(pairs: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    if not pairs:
        raise TrainingError(f"{where}: no preference pairs")
    with_images = [bool(p.get("images")) for p in pairs]
    if any(with_images) and not all(with_images):  # one collator serves a dataset: all pairs with images, or none
        raise TrainingError(f"{where}: pair {with_images.index(False)} has no images while others do; "
                            "train with --text-only, or on pairs that all have images")
    return pairs


def read_trl_jsonl(path: Path, text_only: bool = False) -> list[dict[str, Any]]:
    """TRL preference rows from a JSONL file; a bad line is named by file and line number."""
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append(pair_from_trl(row, Path(path).parent, text_only))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TrainingError(f"{path}:{number}: not a TRL preference row (prompt, chosen, rejected): {exc}") from None
    return _check(pairs, str(path))


def read_parquet_pairs(files: Iterable[Path], text_only: bool = False) -> list[dict[str, Any]]:
    """PreferencePair rows from Parquet shards (a build's preference config, or `radcorpora dpo`'s data/)."""
    import pyarrow.parquet as pq

    pairs, where = [], ""
    for shard in files:
        where = str(shard)
        for i, row in enumerate(pq.read_table(shard).to_pylist()):
            try:
                pairs.append(pair_from_record(row, text_only))
            except (KeyError, TypeError) as exc:
                raise TrainingError(f"{shard}: row {i}: not a PreferencePair row: {exc}") from None
    return _check(pairs, where or "no Parquet shards")


def preference_source(path: Path, split: str = "train") -> Path | None:
    """What `radcorpora train` reads pairs from when given `path` that is not a build: a TRL
    preference JSONL file, a folder holding preference-SPLIT.jsonl (or trl/preference-SPLIT.jsonl),
    or a folder holding exactly one `*SPLIT*.jsonl`. None where there is none."""
    path = Path(path)
    if path.is_file() and path.suffix == ".jsonl":
        return path
    if not path.is_dir():
        return None
    for candidate in (path / "trl" / TRL_FILE.format(split=split), path / TRL_FILE.format(split=split)):
        if candidate.exists():
            return candidate
    found = sorted(path.glob(f"*{split}*.jsonl"))
    return found[0] if len(found) == 1 else None


def pair_texts(pairs: list[dict[str, Any]]) -> list[str]:
    """Every text of the pairs (the tiny model's tokenizer is trained on them)."""
    texts = []
    for pair in pairs:
        for key in ("prompt", "chosen", "rejected"):
            for m in pair[key]:
                content = m["content"]
                texts += [content] if isinstance(content, str) else [b["text"] for b in content if b.get("type") == "text"]
    return texts


def _run_settings(model_path: Path, config: SFTConfig, pairs: int, text_only: bool, processes: int) -> dict[str, Any]:
    return {"objective": "dpo", "base_model": str(Path(model_path).resolve()), "pairs": pairs, "text_only": text_only,
            "config": config.model_dump(mode="json"), "processes": processes}


def train_preference(model_path: Path, pairs: list[dict[str, Any]], out: Path, config: SFTConfig,
                     log: Callable[[str], None] | None = None, text_only: bool = False) -> TrainResult:
    """DPO on `pairs` (TRL preference rows) from the checkpoint at `model_path`: LoRA (the
    reference is the base with the adapter switched off) or full (the reference is a second copy
    of the base). Batches: `config.batch_size` pairs, seeded order (`config.seed`); a resumed run
    sees the batches an uninterrupted one would. `config.dpo_beta` is DPO's beta."""
    import datasets
    from transformers import PrinterCallback

    try:
        from trl import DPOConfig
    except ImportError as exc:
        raise TrainingError(f"preference training needs TRL: pip install 'radcorpora[train]' ({exc})") from None

    out = Path(out)
    _check(pairs, "preference training")
    processes = process_state().num_processes
    bf16 = mixed_precision(config)
    settings = _run_settings(model_path, config, len(pairs), text_only, processes)
    finished = open_run(out, settings, config.method)
    if finished is not None:
        return finished
    resume = resume_point(out, log)
    per_step = config.batch_size * config.grad_accum * processes
    total_steps = config.max_steps or max(1, -(-int(len(pairs) * config.epochs) // per_step))
    import torch

    torch.manual_seed(config.seed)
    model, processor = load_base(model_path, config, bf16 and config.method != "full")
    reference, peft = None, None
    if config.method == "full":
        reference, model = model, full_model(model_path, resume)  # the reference stays the untrained base
        reference.requires_grad_(False)
    else:
        peft = lora_config(config)
    arguments = trainer_arguments(config, out, total_steps, bf16)
    arguments.pop("gradient_checkpointing", None)
    arguments.pop("activation_checkpointing", None)
    arguments.pop("activation_checkpointing_kwargs", None)
    try:
        dpo = DPOConfig(**arguments, per_device_train_batch_size=config.batch_size, beta=config.dpo_beta,
                        max_length=config.max_length, gradient_checkpointing=config.gradient_checkpointing,
                        gradient_checkpointing_kwargs={"use_reentrant": False}, remove_unused_columns=False)
        trainer = _DPO(model=model, ref_model=reference, args=dpo, train_dataset=datasets.Dataset.from_list(pairs),
                       processing_class=processor, peft_config=peft,
                       callbacks=[RunLog(out / "train_log.jsonl", log)])
        trainer.remove_callback(PrinterCallback)
        fp32_trainable(trainer.model)
        trainer.loaded_from = resume if config.method == "full" and full_weights_in(resume) else None
    except (ValueError, ImportError, RuntimeError, TypeError) as exc:
        raise TrainingError(f"cannot set up preference training: {exc}") from None
    seconds, step, done_before, tokens_now = run_and_save(trainer, processor, out, config.method, resume)
    first_loss, last_loss = losses(trainer)
    result = TrainResult(out=str(out), method=config.method, base_model=settings["base_model"], text_only=text_only,
                         steps=step, examples_seen=step * per_step, seconds=round(seconds, 2), first_loss=first_loss,
                         last_loss=last_loss,
                         samples_per_second=round((step - done_before) * per_step / seconds, 2) if seconds else 0.0,
                         tokens_per_second=round(tokens_now / seconds, 1) if seconds else 0.0, config=config,
                         processes=processes, objective="dpo")
    return finish_run(out, result)


def _dpo_trainer_class() -> type:
    from trl import DPOTrainer

    class PreferenceTrainer(RunTrainer, DPOTrainer):
        """DPOTrainer that resumes full runs from our checkpoint reading, and writes no model card
        into the run folder."""

        def create_model_card(self, *args: Any, **kwargs: Any) -> None:
            return None

    return PreferenceTrainer


def _DPO(**kwargs: Any) -> Any:
    return _dpo_trainer_class()(**kwargs)
