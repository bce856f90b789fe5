"""NIfTI volumes through nibabel: a `VolumeRef` for a file (named, hashed, its grid), HU values, and
N representative axial slices for 2-D models and the Hub viewer.

HU = stored value x slope + intercept. The slope and intercept come from the source's own tables
when given (CT-RATE's metadata CSV: its NIfTI headers were not reliable), else from the header's
scl_slope / scl_inter (nibabel's array proxy; 1 and 0 when the header sets none). The header's own
scaling is then not applied as well: the source's pair replaces it, it does not stack on it.

Axial slices: the array axis whose orientation letter is S or I is the axial one. Slices are chosen
evenly inside the body extent, the axial range whose slices have at least `BODY_FRACTION` of their
voxels above `BODY_HU` (air is -1000 HU, fat about -100): index = first + floor((k + 0.5) x length / N)
for k = 0..N-1, the centres of N equal bins, so the choice needs no random numbers and is the same
on every run. A volume with no body voxel uses its whole extent. Each slice is returned as a 2-D HU
array in display orientation: rows run anterior to posterior, columns patient right to left (the
radiological convention: the patient's right on the image's left), whatever the stored orientation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from radcorpora.schemas.volume import VolumeRef
from radcorpora.sources.errors import SourceError

BODY_HU = -500.0
BODY_FRACTION = 0.01


class VolumeError(SourceError):
    """A volume file that cannot be read as a NIfTI volume; `reason` names the kind for rejects."""

    def __init__(self, path: Path | str, reason: str, detail: str):
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {detail}")


@dataclass(frozen=True)
class HuScale:
    slope: float
    intercept: float
    origin: str  # "source" (the source's tables) or "header"


@dataclass(frozen=True)
class AxialSlice:
    index: int  # along `axis` of the stored array
    axis: int
    hu: np.ndarray  # float32, rows anterior -> posterior, columns patient right -> left


def _read_errors() -> tuple[type[BaseException], ...]:
    """What nibabel raises on a bad file: its ImageFileError, and from gzip / numpy underneath."""
    import struct
    import zlib

    from nibabel.filebasedimages import ImageFileError

    return ImageFileError, OSError, EOFError, ValueError, zlib.error, struct.error


def _load(path: Path):
    import nibabel as nib

    try:
        image = nib.load(str(path))
    except FileNotFoundError:
        raise VolumeError(path, "volume_file_missing", "does not exist") from None
    except _read_errors() as exc:
        raise VolumeError(path, "unreadable_volume", f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if len(image.shape) < 3 or any(s < 1 for s in image.shape[:3]):
        raise VolumeError(path, "not_a_volume", f"shape {image.shape} is not a 3-D volume")
    if len(image.shape) > 3 and int(np.prod(image.shape[3:])) != 1:
        raise VolumeError(path, "not_a_volume", f"shape {image.shape} has more than one volume")
    return image


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def orientation(affine: np.ndarray) -> str:
    """Three-letter code of the direction each array axis increases towards (nibabel aff2axcodes)."""
    import nibabel as nib

    codes = nib.aff2axcodes(affine)
    if any(c is None for c in codes):
        raise ValueError(f"affine has no clear direction along some axis: {codes}")
    return "".join(codes)


def relative_to_root(path: Path, root: Path) -> str:
    """`path` relative to the source root, "/"-separated; ValueError when it lies outside."""
    rel = Path(path).resolve().relative_to(Path(root).resolve())
    return PurePosixPath(*rel.parts).as_posix()


def volume_ref(path: Path | str, root: Path | str, source_dataset: str,
               spacing: tuple[float, float, float] | None = None) -> VolumeRef:
    """The VolumeRef of a NIfTI file under `root`: relative path, sha256 of the file's bytes, shape,
    spacing (the source's metadata when given, else the header's pixdim) and orientation from the
    affine. Reads the header only. VolumeError when the file is missing, unreadable or no volume."""
    path = Path(path)
    image = _load(path)
    try:
        rel = relative_to_root(path, Path(root))
    except ValueError:
        raise VolumeError(path, "outside_source_root", f"not below the source root {root}") from None
    try:
        code = orientation(image.affine)
    except ValueError as exc:
        raise VolumeError(path, "bad_affine", str(exc)) from None
    grid = [float(z) for z in image.header.get_zooms()[:3]]
    chosen = [float(s) for s in spacing] if spacing is not None else grid
    try:
        return VolumeRef(source_dataset=source_dataset, path=rel, sha256=sha256_file(path),
                         shape=[int(s) for s in image.shape[:3]], spacing=chosen, orientation=code)
    except ValueError as exc:  # pydantic ValidationError: zero spacing in the header, ...
        raise VolumeError(path, "bad_volume_header", str(exc).splitlines()[-1] if str(exc) else repr(exc)) from None


def hu_scale(image, slope: float | None = None, intercept: float | None = None) -> HuScale:
    if slope is not None and intercept is not None:
        return HuScale(float(slope), float(intercept), "source")
    header_slope, header_inter = float(image.dataobj.slope), float(image.dataobj.inter)
    return HuScale(header_slope if np.isfinite(header_slope) and header_slope != 0 else 1.0,
                   header_inter if np.isfinite(header_inter) else 0.0, "header")


def read_hu(path: Path | str, slope: float | None = None, intercept: float | None = None) -> tuple[np.ndarray, HuScale]:
    """The volume in HU (float32, stored array axes) and the scale used."""
    image = _load(Path(path))
    scale = hu_scale(image, slope, intercept)
    try:
        stored = np.asanyarray(image.dataobj.get_unscaled()).reshape(image.shape[:3])
    except _read_errors() as exc:  # truncated or corrupt data block
        raise VolumeError(path, "unreadable_volume", f"voxel data unreadable ({type(exc).__name__}: {exc})") from None
    hu = stored.astype(np.float32) * np.float32(scale.slope) + np.float32(scale.intercept)
    return hu, scale


def axial_axis(code: str) -> int:
    return next(i for i, c in enumerate(code) if c in "SI")


def body_extent(hu: np.ndarray, axis: int) -> tuple[int, int]:
    """First and last index along `axis` whose slice has at least BODY_FRACTION of voxels above
    BODY_HU; the whole axis when none has."""
    other = tuple(a for a in range(3) if a != axis)
    fraction = (hu > BODY_HU).mean(axis=other)
    inside = np.flatnonzero(fraction >= BODY_FRACTION)
    if not len(inside):
        return 0, hu.shape[axis] - 1
    return int(inside[0]), int(inside[-1])


def representative_indices(first: int, last: int, n: int) -> list[int]:
    """N indices evenly spaced in [first, last]: the centres of N equal bins (fewer, without
    repeats, when the range holds fewer than N slices)."""
    if n < 1:
        return []
    length = last - first + 1
    return sorted({first + int(np.floor((k + 0.5) * length / n)) for k in range(n)})


def display_plane(plane: np.ndarray, in_plane_codes: str) -> np.ndarray:
    """A 2-D slice (axes = the two in-plane array axes, in order) turned so that rows run anterior
    to posterior and columns patient right to left."""
    rows_axis = next(i for i, c in enumerate(in_plane_codes) if c in "AP")
    cols_axis = 1 - rows_axis
    out = plane if rows_axis == 0 else plane.T
    if in_plane_codes[rows_axis] == "A":  # index grows towards anterior: flip so anterior is on top
        out = out[::-1, :]
    if in_plane_codes[cols_axis] == "R":  # index grows towards the right: flip so right is on the left
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def axial_slices(path: Path | str, n: int, slope: float | None = None, intercept: float | None = None
                 ) -> list[AxialSlice]:
    """N representative axial slices of a NIfTI volume as HU arrays (see the module docstring)."""
    image = _load(Path(path))
    try:
        code = orientation(image.affine)
    except ValueError as exc:
        raise VolumeError(path, "bad_affine", str(exc)) from None
    hu, _ = read_hu(path, slope, intercept)
    axis = axial_axis(code)
    first, last = body_extent(hu, axis)
    in_plane = "".join(c for i, c in enumerate(code) if i != axis)
    return [AxialSlice(index=i, axis=axis, hu=display_plane(np.take(hu, i, axis=axis), in_plane))
            for i in representative_indices(first, last, n)]
