"""Perceptual hashes for near-duplicate images: imagehash's pHash (64 bits: the signs of the
lowest 8x8 DCT frequencies of a 32x32 grey thumbnail against their median), so a PNG and a
JPEG of one radiograph match where their bytes do not; and the banded neighbour search that finds
every pair within a Hamming distance without comparing all pairs (multi-probe bands: the
candidates grow as n^2 / 2**width, so the bands are made wide and probed with flipped bits once
there are many hashes)."""

from __future__ import annotations

import io
from itertools import combinations

import numpy as np

BITS = 64
_CHUNK = 1 << 18  # candidate pairs compared at once (memory: ~15 MB of index arrays at most)
_BLOCK = 1 << 16  # probing hashes handled at once (memory: a few MB whatever the count)
_DENSE_BITS = 20  # bands this wide or narrower are looked up in a table of all their values


def phash64(data: bytes) -> int:
    """pHash of an encoded image as an int (imagehash's bit order). High bit depths (16-bit PNG,
    float) are scaled to 8 bits by their own range first: Pillow's convert('L') would clip them
    white. Raises what Pillow raises for bytes that are not an image."""
    import imagehash
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            pixels = np.asarray(image, dtype=np.float64)
            low, high = float(pixels.min()), float(pixels.max())
            scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
            image = Image.fromarray(scaled.round().astype(np.uint8))
        return int(str(imagehash.phash(image)), 16)


def warm() -> None:
    """Import imagehash (and scipy, Pillow) now, in the driver: worker processes forked after this
    inherit them instead of each importing them again (a second or more apiece)."""
    import imagehash  # noqa: F401
    from PIL import Image  # noqa: F401


def hash_image(data: bytes) -> tuple[str, int | None]:
    """sha256 of the bytes, and their pHash (None: not a decodable image). Module-level, so a
    worker process or a Ray task can run it."""
    import hashlib

    from PIL import Image

    sha = hashlib.sha256(data).hexdigest()
    try:
        return sha, phash64(data)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # what Pillow raises for non-images
        return sha, None


def distance(a: int, b: int) -> int:
    return int(a ^ b).bit_count()


def bands(max_distance: int, tolerance: int = 0) -> list[tuple[int, int]]:
    """(shift, width) of the bands covering the 64 bits: ceil((max_distance + 1) / (tolerance + 1))
    of them, so two hashes within max_distance differ in at most `tolerance` bits of at least one
    band (pigeonhole); only pairs that do are compared."""
    count = max(1, min(-(-(max_distance + 1) // (tolerance + 1)), BITS))
    widths = [BITS // count + (1 if i < BITS % count else 0) for i in range(count)]
    out, shift = [], 0
    for width in widths:
        out.append((shift, width))
        shift += width
    return out


def _flips(width: int, tolerance: int) -> list[int]:
    """Every mask of at most `tolerance` set bits within `width` bits."""
    return [sum(1 << b for b in bits) for k in range(tolerance + 1) for bits in combinations(range(width), k)]


def choose_tolerance(n_left: int, n_right: int, max_distance: int) -> int:
    """The band scheme with the least expected work for uniformly spread hashes: probes
    (n_right x bands x flips, a lookup each) plus candidate pairs (each probe meets n_left / 2**width
    hashes). Exact bands (tolerance 0) are narrow at distance 6 (9 bits: n^2 / 80 candidates, which
    dominates from ~10k hashes: 0.72 s at 50k x 50k); 16-bit bands probed with each one-bit flip
    (tolerance 1) cut that to n^2 / 960 for 17x the probes (0.14 s)."""
    best, cost_best = 0, float("inf")
    for tolerance in range(3):
        widths = [w for _, w in bands(max_distance, tolerance)]
        flips = [len(_flips(w, tolerance)) if tolerance else 1 for w in widths]
        # a probe in a dense table costs about what comparing a candidate does; a binary search ~12x
        probes = n_right * sum(f * (1 if w <= _DENSE_BITS else 12) for f, w in zip(flips, widths))
        candidates = n_left * n_right * sum(f / 2.0 ** w for f, w in zip(flips, widths))
        cost = probes + candidates + sum(1 << w for w in widths if w <= _DENSE_BITS)
        if cost < cost_best:
            best, cost_best = tolerance, cost
    return best


def near_pairs(left: np.ndarray, right: np.ndarray, max_distance: int,
               tolerance: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (i, j) with popcount(left[i] ^ right[j]) <= max_distance, as index arrays (sorted by
    i, then j) and their distances. `left` and `right` are uint64 arrays; give them deduplicated
    (many rows share an image) to keep the candidate lists short. `tolerance`: bits a band may
    differ in (None: choose_tolerance's pick); the result does not depend on it."""
    left = np.ascontiguousarray(left, dtype=np.uint64)
    right = np.ascontiguousarray(right, dtype=np.uint64)
    found: list[np.ndarray] = []
    if len(left) and len(right):
        if tolerance is None:
            tolerance = choose_tolerance(len(left), len(right), max_distance)
        for shift, width in bands(max_distance, tolerance):
            mask = np.uint64((1 << width) - 1)
            lkey = (left >> np.uint64(shift)) & mask
            order = np.argsort(lkey, kind="stable")
            dense = width <= _DENSE_BITS  # a table of every band value: one lookup per probe
            if dense:
                counts = np.bincount(lkey.astype(np.int64), minlength=1 << width)
                starts = np.cumsum(counts) - counts
            else:
                sorted_keys = lkey[order]
            del lkey
            for block in range(0, len(right), _BLOCK):  # the probing side a block at a time: memory
                rkey = (right[block:block + _BLOCK] >> np.uint64(shift)) & mask
                for flip in _flips(width, tolerance):
                    probe = rkey ^ np.uint64(flip)
                    if dense:
                        index = probe.astype(np.int64)
                        start, count = starts[index], counts[index]
                    else:
                        start = np.searchsorted(sorted_keys, probe, side="left")
                        count = np.searchsorted(sorted_keys, probe, side="right") - start
                    for lo, hi in _chunks(count):
                        n = count[lo:hi]
                        if not n.sum():
                            continue
                        j = np.repeat(np.arange(lo, hi), n) + block
                        first = np.repeat(start[lo:hi], n)
                        offset = np.arange(len(j)) - np.repeat(np.cumsum(n) - n, n)
                        i = order[first + offset]
                        d = np.bitwise_count(left[i] ^ right[j])
                        keep = d <= max_distance
                        found.append(i[keep].astype(np.int64) * len(right) + j[keep])
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    pairs = np.unique(np.concatenate(found))
    i, j = pairs // len(right), pairs % len(right)
    return i, j, np.bitwise_count(left[i] ^ right[j]).astype(np.int64)


def _chunks(count: np.ndarray) -> list[tuple[int, int]]:
    """Ranges of `right` whose candidate lists add up to about _CHUNK pairs."""
    if int(count.sum()) <= _CHUNK:
        return [(0, len(count))]
    ends = np.cumsum(count)
    out, lo = [], 0
    while lo < len(count):
        base = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + _CHUNK, side="left")) + 1)
        hi = min(hi, len(count))
        out.append((lo, hi))
        lo = hi
    return out
