"""Perceptual hashes for near-duplicate images: imagehash's pHash (64 bits: the signs of the
lowest 8x8 DCT frequencies of a 32x32 grey thumbnail against their median), so a PNG and a
JPEG of one radiograph match where their bytes do not; and the banded neighbour search that finds
every pair within a Hamming distance without comparing all pairs."""

from __future__ import annotations

import io

import numpy as np

BITS = 64
_CHUNK = 4_000_000  # candidate pairs compared at once (memory: a few hundred MB at most)


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


def bands(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of max_distance + 1 bands covering the 64 bits: two hashes within
    max_distance agree exactly on at least one band (pigeonhole), so only pairs sharing a band
    value are compared."""
    count = max(1, min(max_distance + 1, BITS))
    widths = [BITS // count + (1 if i < BITS % count else 0) for i in range(count)]
    out, shift = [], 0
    for width in widths:
        out.append((shift, width))
        shift += width
    return out


def near_pairs(left: np.ndarray, right: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (i, j) with popcount(left[i] ^ right[j]) <= max_distance, as index arrays (sorted by
    i, then j) and their distances. `left` and `right` are uint64 arrays; give them deduplicated
    (many rows share an image) to keep the candidate lists short."""
    left = np.ascontiguousarray(left, dtype=np.uint64)
    right = np.ascontiguousarray(right, dtype=np.uint64)
    found: list[np.ndarray] = []
    if len(left) and len(right):
        for shift, width in bands(max_distance):
            mask = np.uint64((1 << width) - 1)
            lkey = (left >> np.uint64(shift)) & mask
            rkey = (right >> np.uint64(shift)) & mask
            order = np.argsort(lkey, kind="stable")
            sorted_keys = lkey[order]
            start = np.searchsorted(sorted_keys, rkey, side="left")
            count = np.searchsorted(sorted_keys, rkey, side="right") - start
            for lo, hi in _chunks(count):
                n = count[lo:hi]
                if not n.sum():
                    continue
                j = np.repeat(np.arange(lo, hi), n)
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
    out, lo, total = [], 0, 0
    for hi, n in enumerate(count.tolist(), start=1):
        total += n
        if total >= _CHUNK:
            out.append((lo, hi))
            lo, total = hi, 0
    if lo < len(count):
        out.append((lo, len(count)))
    return out
