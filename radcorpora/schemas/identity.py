"""Who a row is about, across corpora: each upstream dataset mapped to one namespace per dataset
family (MIMIC-CXR and its derivatives share patients, studies and image ids), so `radcorpora
leakage` can tell that a patient in one build's test split is the one in another's train split.
Also the shape of a build's stored identity index (build/identity.parquet)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# source_dataset (lower case, as lineage names it) -> family namespace. Sources that re-annotate
# another archive's images share its namespace: their patient, study and image ids are the same.
FAMILY: dict[str, str] = {
    "mimic-cxr": "mimic", "mimic-cxr-jpg": "mimic", "chest-imagenome": "mimic", "ms-cxr": "mimic",
    "gemex": "mimic", "gemex-thinkvg": "mimic", "gemex-thinkvg + mimic-cxr-jpg": "mimic", "mmrad-ivl": "mimic",
    "chexpert": "chexpert", "chexpert-plus": "chexpert",
    "vindr-cxr": "vindr",
    "padchest": "padchest", "padchest-gr": "padchest",
    "radimagenet": "radimagenet",
    "pubmedvision": "pubmedvision",
    "vqa-rad": "vqa-rad",
}
# What each kind of identity means; the report and the table use these names, in this order.
KINDS: dict[str, str] = {
    "patient": "the same patient (namespaced patient id)",
    "study": "the same study (namespaced study id)",
    "source_id": "the same source image id (namespaced, extension dropped)",
    "sha256": "the same image bytes",
    "phash": "a near-duplicate image (pHash within the distance; different bytes)",
}
TRAIN_SPLITS = ("train",)
EVAL_SPLITS = ("test", "validation", "benchmark")
DEFAULT_PHASH_DISTANCE = 6  # of 64 bits: a PNG and a JPEG (quality 90) of one radiograph differ by 0-2

IDENTITY_INDEX = "build/identity.parquet"
IDENTITY_META = b"radcorpora.identity"
IDENTITY_VERSION = 1
INDEX_BATCH_LINES = 1 << 16  # index lines read or written at a time (the stored index's row groups)


def index_batches(path: Path, columns: list[str] | None = None,
                  batch_size: int = INDEX_BATCH_LINES) -> Iterator[pa.RecordBatch]:
    """An index file's lines a row group at a time (in batches of at most `batch_size`), so
    reading a long index holds one row group: pyarrow's iter_batches over a whole file kept
    ~11 B a line it had read (measured with pyarrow 26: 3.2M lines, +30-40 MiB)."""
    source = pq.ParquetFile(path)
    for group in range(source.metadata.num_row_groups):
        yield from source.read_row_group(group, columns=columns, use_threads=False).to_batches(max_chunksize=batch_size)
IDENTITY_SCHEMA = pa.schema([
    ("shard", pa.string()),  # data/<config>/<split>-NNNNN-of-NNNNN.parquet
    ("config", pa.string()),
    ("split", pa.string()),
    ("row", pa.int64()),  # row within its shard
    ("id", pa.string()),  # the row's `id` column, where it has one
    ("image", pa.int32()),  # the image's place in the row (-1: a row without images)
    ("source_dataset", pa.string()),
    ("source_id", pa.string()),
    ("patient_id", pa.string()),  # as the row names it: lineage.patient_id or a subject_id column
    ("study_id", pa.string()),
    ("sha256", pa.string()),  # of the stored image bytes
    ("phash", pa.uint64()),  # imagehash.phash, 64 bits; null where the image does not decode
])

_NAMESPACED = re.compile(r"^(?P<ns>[a-z0-9-]+):(?P<id>.+)$")
_IMAGE_SUFFIX = re.compile(r"\.(jpe?g|png|dcm|dicom|tiff?)$", re.IGNORECASE)
_MIMIC_PREFIX = re.compile(r"^[ps](?=\d+$)")


def family(source_dataset: str | None) -> str:
    """The namespace of a source dataset; an unknown one is its own family (never matched to
    another by guesswork)."""
    name = (source_dataset or "").strip().lower()
    return FAMILY.get(name, name or "unknown")


def split_role(split: str) -> str | None:
    """'train', 'eval' or None (a split that is neither is not compared)."""
    if split in TRAIN_SPLITS:
        return "train"
    if split in EVAL_SPLITS:
        return "eval"
    return None


def _bare(ns: str, value: str) -> str:
    value = value.strip()
    return _MIMIC_PREFIX.sub("", value) if ns == "mimic" else value  # p123 / s456 in MIMIC paths


def patient_key(source_dataset: str | None, patient_id: str | None) -> str | None:
    """'<namespace>:<patient>'; a radvlm patient id already carries its namespace."""
    if not patient_id:
        return None
    ns = family(source_dataset)
    named = _NAMESPACED.match(patient_id)
    if named and named["ns"] in set(FAMILY.values()):
        ns, patient_id = named["ns"], named["id"]
    return f"{ns}:{_bare(ns, patient_id)}"


def study_key(source_dataset: str | None, study_id: str | None) -> str | None:
    if not study_id:
        return None
    ns = family(source_dataset)
    return f"{ns}:{_bare(ns, study_id)}"


def source_key(source_dataset: str | None, source_id: str | None) -> str | None:
    """The image's id in its family: CheXpert's `.jpg` path and CheXpert-Plus' `.png` path of one
    radiograph are one key."""
    if not source_id:
        return None
    return f"{family(source_dataset)}:{_IMAGE_SUFFIX.sub('', source_id.strip())}"
