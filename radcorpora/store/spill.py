"""Records a build makes before it knows their order or split, kept on disk instead of in memory.

A corpus whose split depends on every record (mmrad-ivl draws its benchmark from the records that
were made) held them all, image bytes included, until it could write its shards: memory grew with
the source (~700 MiB at 4,000 traces). A spill keeps each record pickled in one file under the
build's state folder and reads them back in the order the shards want, one at a time. It lives
for one run: opening it empties the file, closing it deletes it."""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class RecordSpill:
    """`put(key, record)` as records are made; `take(keys)` yields them back in that order."""

    def __init__(self, folder: Path, name: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}.spill"
        self._handle = open(self.path, "w+b")  # noqa: SIM115 (closed by close())
        self._where: dict[str, tuple[int, int]] = {}
        self._end = 0

    def put(self, key: str, record: Any) -> None:
        if key in self._where:
            raise KeyError(f"{key!r} is already in the spill")
        data = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        self._handle.write(data)
        self._where[key] = (self._end, len(data))
        self._end += len(data)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def keys(self) -> list[str]:
        """The keys in the order they were put."""
        return list(self._where)

    def take(self, keys: Iterable[str]) -> Iterator[Any]:
        """The records of `keys`, in that order (a key may come more than once)."""
        for key in keys:
            offset, size = self._where[key]
            self._handle.seek(offset)
            data = self._handle.read(size)
            self._handle.seek(self._end)  # a put between two takes appends at the end
            yield pickle.loads(data)

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> RecordSpill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
