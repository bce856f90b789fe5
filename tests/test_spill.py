"""store.spill.RecordSpill: records kept on disk between being made and being written, read back
in the order asked, equal to what was put; the file lives for one run."""

from __future__ import annotations

import pytest

from radcorpora.schemas.common import ImageData


def _record(n: int) -> ImageData:
    return ImageData(bytes=bytes([n % 256]) * (1000 + n), path=f"img/{n}.png")


def test_take_gives_back_what_was_put_in_any_order(tmp_path):
    from radcorpora.store.spill import RecordSpill

    with RecordSpill(tmp_path / "state", "demo") as spill:
        made = {f"id{n:03d}": _record(n) for n in range(50)}
        for key, record in made.items():
            spill.put(key, record)
        assert len(spill) == 50 and "id007" in spill and "nope" not in spill
        assert spill.keys() == list(made)
        wanted = sorted(made, reverse=True)
        assert list(spill.take(wanted)) == [made[k] for k in wanted]
        taking = spill.take(["id001", "id002"])
        assert next(taking) == made["id001"]
        spill.put("late", _record(999))  # a put while a take is under way appends; both read right
        assert next(taking) == made["id002"] and list(spill.take(["late", "id001"])) == [_record(999), made["id001"]]
        plain = {"id": "x", "steps": [1, 2], "bytes": b"\x00" * 10}
        spill.put("other type", plain)
        assert next(spill.take(["other type"])) == plain
        with pytest.raises(KeyError):
            spill.put("id001", _record(1))
        path = spill.path
        assert path.exists() and path.stat().st_size > sum(len(r.bytes) for r in made.values())
    assert not path.exists()


def test_a_new_spill_starts_empty(tmp_path):
    """A spill left by a killed run is emptied, not read: its keys would be another run's."""
    from radcorpora.store.spill import RecordSpill

    first = RecordSpill(tmp_path, "demo")
    first.put("a", _record(1))
    first._handle.close()  # killed: the file stays
    second = RecordSpill(tmp_path, "demo")
    assert len(second) == 0 and second.path.stat().st_size == 0
    second.close()
    second.close()  # closing twice is harmless
