"""Seeded, order-independent randomness: every choice derives from (seed, corpus, row key).

Nothing here depends on call order or worker count, so a row's content is the same whether the
build runs on one worker or many, all at once or resumed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def row_digest(seed: int, corpus: str, key: str, purpose: str = "") -> bytes:
    """A stable 32-byte digest of one row's identity and the purpose of the draw."""
    material = f"{seed}\x1f{corpus}\x1f{key}\x1f{purpose}".encode()
    return hashlib.sha256(material).digest()


def row_rng(seed: int, corpus: str, key: str, purpose: str = "") -> random.Random:
    """A `random.Random` owned by one row and one purpose."""
    return random.Random(int.from_bytes(row_digest(seed, corpus, key, purpose), "big"))


def row_indices(seed: int, corpus: str, key: str, purpose: str, sizes: Sequence[int]) -> tuple[int, ...]:
    """One uniform index below each of `sizes` (up to four) for one row and purpose, read straight
    from its digest. For a row that needs a few fixed picks (which wording variant), this costs a
    tenth of seeding a `random.Random`; each pick takes 64 bits of the digest modulo its size, a
    bias below 2**-50 for any size a wording list has."""
    if len(sizes) > 4:
        raise ValueError(f"one digest gives at most four indices, not {len(sizes)}")
    if any(n < 1 for n in sizes):
        raise ValueError(f"cannot pick from an empty list (sizes {list(sizes)})")
    digest = row_digest(seed, corpus, key, purpose)
    return tuple(int.from_bytes(digest[8 * i:8 * i + 8], "big") % n for i, n in enumerate(sizes))


def row_index(seed: int, corpus: str, key: str, purpose: str, size: int) -> int:
    """One uniform index below `size` for one row and purpose (see `row_indices`)."""
    return row_indices(seed, corpus, key, purpose, (size,))[0]


def rank_key(seed: int, corpus: str, key: str, purpose: str = "") -> str:
    """A sort key giving a seeded, order-independent random permutation of keys."""
    return row_digest(seed, corpus, key, purpose).hex()


# Draws for hot loops (question generation makes ~25 per image). Each takes one `rng.random()`
# (a C call) where `randrange`, `sample` and `shuffle` run a Python-level rejection loop per
# draw; a choice among n made as int(random() * n) is off uniform by at most n / 2**53.


def draw_index(rng: random.Random, n: int) -> int:
    """A uniform index below n."""
    return int(rng.random() * n)


def draw_sample(rng: random.Random, items: Sequence[T], k: int) -> list[T]:
    """k distinct items of `items`, in the order drawn (a partial Fisher-Yates shuffle)."""
    pool = list(items)
    n = len(pool)
    if k > n:
        raise ValueError(f"need {k} distinct items, only {n} available")
    random_ = rng.random
    for i in range(k):
        j = i + int(random_() * (n - i))
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:k]


def draw_shuffle(rng: random.Random, items: list[T]) -> None:
    """Shuffle `items` in place (Fisher-Yates)."""
    random_ = rng.random
    for i in range(len(items) - 1, 0, -1):
        j = int(random_() * (i + 1))
        items[i], items[j] = items[j], items[i]


def largest_remainder_quotas(counts: Mapping[K, int], total: int) -> dict[K, int]:
    """Split `total` across strata in proportion to `counts` (Hamilton's method).

    Each quota is floor or ceil of its exact share; ties in the remainder go to the larger
    stratum, then to the smaller key, so the result is deterministic.
    """
    population = sum(counts.values())
    if population == 0 or total <= 0:
        return {k: 0 for k in counts}
    total = min(total, population)
    exact = {k: c * total / population for k, c in counts.items()}
    quotas = {k: int(v) for k, v in exact.items()}
    left = total - sum(quotas.values())
    order = sorted(counts, key=lambda k: (-(exact[k] - quotas[k]), -counts[k], str(k)))
    for k in order[:left]:
        quotas[k] += 1
    return quotas


def stratified_ranked_sample(
    items: Iterable[tuple[K, str]],
    total: int,
    seed: int,
    corpus: str,
    purpose: str = "stratified",
) -> tuple[dict[K, list[str]], dict[K, int]]:
    """Candidates per stratum in seeded rank order, plus each stratum's quota.

    `items` are (stratum, row key) pairs. Callers take the first `quota` acceptable candidates
    of each stratum; keeping the full ranked list lets them skip a bad row and take the next.
    """
    by_stratum: dict[K, list[str]] = {}
    for stratum, key in items:
        by_stratum.setdefault(stratum, []).append(key)
    for stratum, keys in by_stratum.items():
        keys.sort(key=lambda k: rank_key(seed, corpus, k, purpose))
    quotas = largest_remainder_quotas({s: len(k) for s, k in by_stratum.items()}, total)
    return by_stratum, quotas
