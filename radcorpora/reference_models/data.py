"""What a reference model trains on and is evaluated on, per corpus, read from a build folder.

Training examples are LLaVA-style conversations with their image(s). radimagenet-vqa trains on one
example per question of its `instruct` split (the format its benchmark asks in; a multi-turn
conversation would show earlier answers to later questions); `alignment` trains on captions.
rad-ace-cot trains on its chains of thought. Rows are read lazily through `datasets`, so a corpus
never has to fit in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radcorpora.publish.views import QuestionView
from radcorpora.validators.layout import BuildFolderError, config_shards, read_manifest


@dataclass(frozen=True)
class CorpusData:
    train_config: str  # default config trained on
    eval_config: str  # the held-out config evaluated
    eval_split: str
    per_question: frozenset[str] = frozenset()  # configs whose rows expand to one example per question
    alignment_config: str | None = None  # captions for a preset's alignment steps, if the corpus has them


CORPUS_DATA: dict[str, CorpusData] = {
    "radimagenet-vqa": CorpusData("instruct", "benchmark", "test", per_question=frozenset({"instruct"}),
                                  alignment_config="alignment"),
    "rad-ace-cot": CorpusData("default", "eval", "test"),
}


def corpus_of(build: Path) -> str:
    corpus = read_manifest(build).get("corpus")
    if corpus not in CORPUS_DATA:
        raise BuildFolderError(f"{build}: no reference-model recipe for corpus {corpus!r} "
                               f"(known: {', '.join(sorted(CORPUS_DATA))})")
    return str(corpus)


def load_split(build: Path, config: str, split: str) -> Any:
    """One split of one config as a `datasets.Dataset` (images decoded on access)."""
    import datasets

    shards = config_shards(build, config)
    if split not in shards:
        found = ", ".join(f"{c}/{s}" for c in sorted(p.name for p in (build / "data").glob("*"))
                          for s in sorted(config_shards(build, c)))
        raise BuildFolderError(f"{build}: no {config}/{split} shards (found: {found or 'none'})")
    return datasets.load_dataset(str(build), name=config, split=split)


def training_examples(build: Path, config: str | None = None, split: str = "train") -> Sequence[dict[str, Any]]:
    corpus = corpus_of(build)
    recipe = CORPUS_DATA[corpus]
    config = config or recipe.train_config
    if config == recipe.eval_config:
        raise BuildFolderError(f"{build}: `{config}` is the held-out evaluation config; train on another one")
    dataset = load_split(build, config, split)
    return QuestionView(dataset) if config in recipe.per_question else dataset


def alignment_examples(build: Path) -> Sequence[dict[str, Any]] | None:
    """The corpus' caption data (train split) for alignment steps, or None if it has none."""
    config = CORPUS_DATA[corpus_of(build)].alignment_config
    return load_split(build, config, "train") if config else None


def evaluation_rows(build: Path, config: str | None = None, limit: int | None = None) -> Sequence[dict[str, Any]]:
    recipe = CORPUS_DATA[corpus_of(build)]
    dataset = load_split(build, config or recipe.eval_config, recipe.eval_split)
    return dataset.select(range(min(limit, len(dataset)))) if limit else dataset


def training_texts(build: Path, config: str | None = None, split: str = "train", limit: int = 20000) -> list[str]:
    """Up to about `limit` turns of conversation text, read straight from the shards (no images),
    to train the tiny model's tokenizer on (captions too, where the corpus has them)."""
    import pyarrow.parquet as pq

    recipe = CORPUS_DATA[corpus_of(build)]
    configs = [config or recipe.train_config, *([recipe.alignment_config] if recipe.alignment_config else [])]
    texts: list[str] = []
    for shard in [s for c in configs for s in config_shards(build, c).get(split, [])]:
        for conversation in pq.read_table(shard, columns=["conversations"]).column("conversations").to_pylist():
            texts += [turn["value"].replace("<image>", "") for turn in conversation]
            if len(texts) >= limit:
                return texts
    return texts
