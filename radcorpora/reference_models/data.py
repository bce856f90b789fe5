"""What a reference model trains on and is evaluated on, per corpus, read from a build folder.

Training examples are LLaVA-style conversations with their image(s). radimagenet-vqa trains on one
example per question of its `instruct` split (the format its benchmark asks in; a multi-turn
conversation would show earlier answers to later questions); `alignment` trains on captions.
rad-ace-cot trains on its chains of thought. Corpora whose rows hold no `conversations` column
(mmrad-ivl, ct-reasoning) render each row through their evaluation's `example`, the function their
evaluation prompts come from, per variant. Rows are read lazily through `datasets`, so a corpus
never has to fit in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from radcorpora.publish.views import InstanceView, QuestionView
from radcorpora.spec.evaluation import EvalContext, EvaluationRecipe, Variant
from radcorpora.store.folder import BuildFolderError, config_shards, read_manifest


def corpus_of(build: Path) -> str:
    return str(read_manifest(build).get("corpus"))


def load_split(build: Path, config: str, split: str) -> Any:
    """One split of one config as a `datasets.Dataset` (images decoded on access)."""
    import datasets

    shards = config_shards(build, config)
    if split not in shards:
        found = ", ".join(f"{c}/{s}" for c in sorted(p.name for p in (build / "data").glob("*"))
                          for s in sorted(config_shards(build, c)))
        raise BuildFolderError(f"{build}: no {config}/{split} shards (found: {found or 'none'})")
    return datasets.load_dataset(str(build), name=config, split=split)


class ExampleView(Sequence):
    """Training examples rendered on access by the corpus' `example(row, ctx)` (images read from
    their row, never copied)."""

    def __init__(self, dataset: Any, render: Callable[[dict[str, Any], EvalContext], dict[str, Any]],
                 ctx: EvalContext):
        self._dataset, self._render, self._ctx = dataset, render, ctx

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]  # type: ignore[return-value]
        return self._render(self._dataset[i], self._ctx)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self._dataset:
            yield self._render(row, self._ctx)


Render = Callable[[dict[str, Any], EvalContext], dict[str, Any]]


def _renderer(recipe: EvaluationRecipe, config: str, render: Render | None, build: Path) -> Render:
    """How rows of `config` stored in their own shape become conversations: the config's own
    (`ConfigSpec.conversation`, given as `render`), else the recipe's, which is its train config's."""
    if render is not None:
        return render
    if recipe.example is None or config != recipe.train_config:
        raise BuildFolderError(f"{build}: config `{config}` stores its rows in its own shape (no `conversations`) "
                               "and its corpus declares no conversation for them: train on another config")
    return recipe.example


def training_examples(build: Path, recipe: EvaluationRecipe, config: str | None = None,
                      split: str = "train", variant: Variant | str | None = None,
                      render: Render | None = None) -> Sequence[dict[str, Any]]:
    """The examples of `config`/`split`, rendered for `variant` (default the corpus' first) where
    the corpus renders its rows itself (`render`: the config's own conversation, where it is not
    the recipe's train config)."""
    config = config or recipe.train_config
    held_out_only = config == recipe.eval_config and set(config_shards(build, config)) <= {recipe.eval_split}
    if (config, split) == (recipe.eval_config, recipe.eval_split) or held_out_only:
        raise BuildFolderError(f"{build}: `{config}` is the held-out evaluation config "
                               f"({recipe.eval_config}/{recipe.eval_split}); train on another one")
    dataset = load_split(build, config, split)
    if "conversations" not in dataset.column_names and (render is not None or recipe.example is not None):
        chosen = recipe.variant(variant) if isinstance(variant, str) else (variant or recipe.variants[0])
        return ExampleView(dataset, _renderer(recipe, config, render, build), EvalContext(read_manifest(build), chosen))
    if config in recipe.per_question:
        return QuestionView(dataset)
    return InstanceView(dataset) if config in recipe.per_instance else dataset


def alignment_examples(build: Path, recipe: EvaluationRecipe) -> Sequence[dict[str, Any]] | None:
    """The corpus' caption data (train split) for alignment steps, or None if it has none."""
    config = recipe.alignment_config
    return load_split(build, config, "train") if config else None


def evaluation_rows(build: Path, recipe: EvaluationRecipe, config: str | None = None,
                    limit: int | None = None, split: str | None = None) -> Sequence[dict[str, Any]]:
    dataset = load_split(build, config or recipe.eval_config, split or recipe.eval_split)
    return dataset.select(range(min(limit, len(dataset)))) if limit else dataset


def training_texts(build: Path, recipe: EvaluationRecipe, config: str | None = None, split: str = "train",
                   limit: int = 20000, render: Render | None = None) -> list[str]:
    """Up to about `limit` turns of conversation text, read straight from the shards (no images),
    to train the tiny model's tokenizer on (captions too, where the corpus has them)."""
    import pyarrow.parquet as pq

    trained = config or recipe.train_config
    configs = [trained, *([recipe.alignment_config] if recipe.alignment_config else [])]
    texts: list[str] = []
    manifest = read_manifest(build) if (render or recipe.example) is not None else {}
    for config_name, shard in [(c, s) for c in configs for s in config_shards(build, c).get(split, [])]:
        names = pq.read_schema(shard).names
        if "conversations" not in names and "instances" not in names and (render or recipe.example) is not None:
            # rendered by the corpus (both renderings where it has several: the tokenizer sees all)
            rendering = _renderer(recipe, config_name, render if config_name == trained else None, build)
            table = pq.read_table(shard, columns=[n for n in names if n not in ("image", "images")])
            ctx = [EvalContext(manifest, v) for v in recipe.variants]
            conversations = [rendering(row, c)["conversations"] for row in table.to_pylist() for c in ctx[:2]]
        elif "conversations" in names:
            conversations = pq.read_table(shard, columns=["conversations"]).column("conversations").to_pylist()
        else:  # rows of instances (radvlm): every instance's conversation
            conversations = [i["conversations"] for row in pq.read_table(shard, columns=["instances"])
                             .column("instances").to_pylist() for i in row]
        for conversation in conversations:
            texts += [turn["value"].replace("<image>", "") for turn in conversation]
            if len(texts) >= limit:
                return texts
    return texts
