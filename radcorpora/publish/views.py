"""Views over loaded corpora. `QuestionView` gives one training example per question of an
`instruct` split without copying image bytes (the image is read from its row on access)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any


class QuestionView(Sequence):
    """One example per (image, question) of a radimagenet-vqa `instruct` split.

    Example keys: image, id (`<image id>#<question_id>`), conversations (one human/gpt pair,
    the human turn starting with `<image>`), question_type, answer, choices, metadata.
    """

    def __init__(self, dataset: Any):
        self._dataset = dataset
        counts = [len(q) for q in dataset.select_columns(["questions"])["questions"]]
        self._index: list[tuple[int, int]] = [(row, q) for row, n in enumerate(counts) for q in range(n)]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]  # type: ignore[return-value]
        row_index, q = self._index[i]
        row = self._dataset[row_index]
        return question_example(row, q)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self._dataset:
            for q in range(len(row["questions"])):
                yield question_example(row, q)


def question_example(row: dict[str, Any], q: int) -> dict[str, Any]:
    """The q-th question of an instruct row as a standalone single-turn example."""
    human = row["conversations"][2 * q]["value"]
    if not human.startswith("<image>"):
        human = f"<image>\n{human}"
    question = row["questions"][q]
    return {
        "image": row["image"],
        "id": f"{row['id']}#{question['metadata']['question_id']}",
        "conversations": [{"from": "human", "value": human}, dict(row["conversations"][2 * q + 1])],
        "question": question["question"],
        "question_type": question["question_type"],
        "answer": question["answer"],
        "choices": question["choices"],
        "metadata": question["metadata"],
    }


class InstanceView(Sequence):
    """One example per instance of a radvlm config (no replicas): random access for training,
    images read from their row on access, never copied."""

    def __init__(self, dataset: Any):
        self._dataset = dataset
        counts = [len(i) for i in dataset.select_columns(["instances"])["instances"]]
        self._index: list[tuple[int, int]] = [(row, k) for row, n in enumerate(counts) for k in range(n)]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]  # type: ignore[return-value]
        row_index, k = self._index[i]
        row = self._dataset[row_index]
        instance = row["instances"][k]
        return {"image": row["image"], "id": instance["id"], "conversations": instance["conversations"],
                "label": instance["label"], "boxes": instance["boxes"], "task": row["task"]}


def instance_view(dataset: Any, replicate: bool = True) -> list[dict[str, Any]] | Iterator[dict[str, Any]]:
    """One example per instance of a radvlm config (each `replication` times, ids `<id>#r<k>` for
    k > 0, when `replicate`): {image, id, conversations, label, boxes, task}. Images are not
    copied: each example refers to its row's image."""

    def examples() -> Iterator[dict[str, Any]]:
        for row in dataset:
            for instance in row["instances"]:
                copies = instance["replication"] if replicate else 1
                for k in range(copies):
                    yield {"image": row["image"], "id": instance["id"] + (f"#r{k}" if k else ""),
                           "conversations": instance["conversations"], "label": instance["label"],
                           "boxes": instance["boxes"], "task": row["task"]}
    return examples()


class MixView(Sequence):
    """RadVLM's training mix: every instance of every given config, each `replication` times,
    in one seeded order (the same for the same seed, whatever order the configs come in).
    Random access; images are read from their row on access, never copied.

    Example keys: image, id (`<instance id>` or `<instance id>#r<k>` for replicas), conversations,
    label, boxes, task."""

    def __init__(self, datasets: dict[str, Any], seed: int = 0, replicate: bool = True):
        import random

        self._datasets = dict(datasets)
        index: list[tuple[str, int, int, int]] = []
        for config in sorted(self._datasets):
            column = self._datasets[config].select_columns(["instances"])["instances"]
            for row, instances in enumerate(column):
                for k, instance in enumerate(instances):
                    copies = instance["replication"] if replicate else 1
                    index.extend((config, row, k, r) for r in range(copies))
        random.Random(f"radcorpora-mix-{seed}").shuffle(index)
        self._index = index

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]  # type: ignore[return-value]
        config, row_index, k, replica = self._index[i]
        row = self._datasets[config][row_index]
        instance = row["instances"][k]
        return {"image": row["image"], "id": instance["id"] + (f"#r{replica}" if replica else ""),
                "conversations": instance["conversations"], "label": instance["label"], "boxes": instance["boxes"],
                "task": row["task"]}


def training_mix(build: Any, split: str = "train", configs: Sequence[str] | None = None, seed: int = 0,
                 replicate: bool = True) -> MixView:
    """The `all` view of a radvlm build (a folder or a Hub repo id): `split` of every config (or
    of `configs`), mixed as RadVLM trained on it (`MixView`)."""
    import datasets

    names = list(configs) if configs else datasets.get_dataset_config_names(str(build))
    loaded = {}
    for name in names:
        try:
            loaded[name] = datasets.load_dataset(str(build), name=name, split=split)
        except ValueError:  # a config without this split
            continue
    return MixView(loaded, seed=seed, replicate=replicate)
