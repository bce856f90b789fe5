"""`radcorpora preview`: one self-contained HTML page that shows a build as a person reads it.

The page holds, with nothing fetched from anywhere (images and plots are inlined as data URIs,
there is no script):

* the manifest's figures: rows per config and split, the validation verdict and its checks, the
  rejects by reason with a few examples each (read from `build/rejects.jsonl` line by line), the
  LLM usage and cost, verifier agreement, the adjudication queue length, the reference check;
* per config, plots of what matters for the corpus (label distributions, question types,
  conversation rounds, box sizes), drawn with matplotlib;
* per config and split, N rows chosen by a seeded draw of (shard, row) over the shards' Parquet
  footers, read one row group at a time: the image thumbnails with every box in the row drawn as
  an absolutely positioned overlay (pixel position = normalised box x thumbnail size, with the
  normalised corners in `data-x1..data-y2`) and labelled with what it marks (finding, phrase or
  region, readers), every conversation turn of the row at any depth (radvlm's
  `instances[i].conversations` under what each instance is about), questions and choices with
  the answer marked, ids and lineage;
* rows with an `images` list (interleaved samples): every image in order, numbered as the
  `<image>` placeholders are (the k-th placeholder across the turns is image k), each with its
  provenance (`image_provenance`: source file, parent, box, pixel crop, derivation) and, when its
  parent is in the row, the rectangle it was cut from drawn on the parent;
* preference pairs (`chosen` / `rejected`): the prompt, then the two answers side by side with
  their scores and the scorer.

Bounded on any build size: the rows shown are read from their own row groups only; the plots read
only their own columns, from all row groups of a small build or a seeded subset of row groups of a
large one (`stat_rows`); the rejects ledger is streamed. Same build + seed -> same bytes.

What a corpus wants is said by a `PreviewSpec` (`publish.preview_spec`: plots and an optional
row renderer) on its `CorpusSpec`; without one, plots and rows come from the shard schema
(`default_plots`, `render_row_default`). The reads (rows, plot columns, ledgers) are
`store.samples`; box text in turns is read by `ops.boxes.find_box_text`, as everywhere else. This
module renders.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from radcorpora.ops.boxes import BoxText, find_box_text, text_box
from radcorpora.spec.preview import (
    FoundBox,
    PlotSpec,
    PreviewSpec,
    RenderTools,
    RowRenderer,
)
from radcorpora.store import atomic
from radcorpora.store.folder import (
    BuildFolderError,
    config_shards,
    configs_on_disk,
    open_shard,
    read_manifest,
)
from radcorpora.store.samples import (
    count_lines,
    num_rows,
    path_steps,
    read_reject_examples,
    resolvable,
    resolve,
    sample_rows,
    stat_table,
)

THUMBNAIL_SIDE = 384  # long side of an image thumbnail, pixels
MAX_IMAGES_PER_ROW = 12
MAX_TEXT = 3000  # characters of one text shown before it is cut
MAX_BARS = 20
STAT_ROWS = 20_000  # rows per config the plots read (all of a smaller config)
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")
LABEL_NAMES = {"label", "labels", "pathology", "location", "region", "regions", "modality", "body_part", "organ",
               "finding", "findings", "category", "class", "class_name", "verification", "content_type",
               "source_split", "view", "view_position", "sex", "scorer"}
BOX_FIELDS = {"x1", "y1", "x2", "y2"}


class PreviewError(BuildFolderError):
    """The preview cannot be made as asked (unknown config or split, nothing to show)."""


# --------------------------------------------------------------------------- entry point


@dataclass
class PreviewResult:
    path: Path
    bytes: int
    rows_shown: int
    seconds: float = 0.0
    sections: list[str] = field(default_factory=list)


def write_preview(build: Path, out: Path | None = None, *, spec: PreviewSpec | None = None, title: str | None = None,
                  config: str | None = None, split: str | None = None, samples: int = 6, seed: int = 0,
                  stat_rows: int = STAT_ROWS) -> PreviewResult:
    """Write the preview of `build` to `out` (default `<build>/build/preview.html`). A place the
    page cannot go (a folder, under a file, not writable) is refused before anything is read,
    and a failed write leaves no temporary file."""
    build = Path(build)
    out = Path(out) if out is not None else build / "build" / "preview.html"
    check_out(out)
    text, shown = render_preview(build, spec=spec, title=title, config=config, split=split, samples=samples, seed=seed,
                                 stat_rows=stat_rows)
    data = text.encode("utf-8")
    tmp = atomic.tmp_path_for(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        atomic.commit(tmp, out)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise PreviewError(f"{out}: cannot write the preview ({exc.strerror or exc})") from exc
    return PreviewResult(out, len(data), shown)


def check_out(out: Path) -> None:
    """Refuse an output path that cannot take a file, with one line saying why."""
    if out.is_dir():
        raise PreviewError(f"{out}: is a folder; give the path of the HTML file to write")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise PreviewError(f"{out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PreviewError(f"{out}: {parent} is not writable")


def render_preview(build: Path, *, spec: PreviewSpec | None = None, title: str | None = None,
                   config: str | None = None, split: str | None = None, samples: int = 6, seed: int = 0,
                   stat_rows: int = STAT_ROWS) -> tuple[str, int]:
    """The page as text, and how many rows it shows."""
    build = Path(build)
    manifest = read_manifest(build)
    spec = spec or PreviewSpec()
    on_disk = configs_on_disk(build)
    configs = [c for c in (manifest.get("splits") or {}) if c in on_disk] + \
              [c for c in on_disk if c not in (manifest.get("splits") or {})]
    if config is not None:
        if config not in on_disk:
            raise PreviewError(f"{build}: no config {config!r} (configs: {', '.join(on_disk) or 'none'})")
        configs = [config]
    shards = {c: config_shards(build, c) for c in configs}
    if split is not None:
        if not any(split in s for s in shards.values()):
            known = sorted({s for per in shards.values() for s in per})
            raise PreviewError(f"{build}: no split {split!r} in {', '.join(configs)} (splits: {', '.join(known) or 'none'})")
        shards = {c: {split: per[split]} for c, per in shards.items() if split in per}
    name = manifest.get("corpus") or build.name
    page = Page(title or str(name))
    page.header(manifest, build)
    page.summary(manifest)
    page.validation(manifest, build)
    page.rejects(manifest, build)
    page.excluded(manifest)
    page.llm(manifest, build)
    for table in spec.tables:
        page.manifest_table(table, manifest)
    page.reference_check(build)
    shown = 0
    for cfg, per_split in shards.items():
        if not per_split:
            continue
        schema = open_shard(next(iter(per_split.values()))[0]).schema_arrow
        plots = [p for p in (spec.plots if spec.plots is not None else default_plots(schema))
                 if (p.configs is None or cfg in p.configs) and resolvable(schema, p.path)]
        page.config_plots(cfg, per_split, plots, stat_rows, seed)
        for split_name, paths in per_split.items():
            rows = sample_rows(paths, samples, f"{seed}:{cfg}:{split_name}")
            page.samples(cfg, split_name, rows, spec.render_row, sum(num_rows(p) for p in paths))
            shown += len(rows)
    return page.finish(), shown


# --------------------------------------------------------------------------- plots


def _is_image_type(t: pa.DataType) -> bool:
    return pa.types.is_struct(t) and {t.field(i).name for i in range(t.num_fields)} >= {"bytes", "path"}


def _is_box_type(t: pa.DataType) -> bool:
    return pa.types.is_struct(t) and {t.field(i).name for i in range(t.num_fields)} >= BOX_FIELDS


def _is_turns_type(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_struct(t.value_type) and \
        {t.value_type.field(i).name for i in range(t.value_type.num_fields)} >= {"from", "value"}


def default_plots(schema: pa.Schema) -> tuple[PlotSpec, ...]:
    """Plots a schema suggests: label-like and `*_type` strings and booleans counted, conversation
    rounds, images per row of an image list, box sizes and readers of every Box-shaped struct (at
    any depth)."""
    plots: list[PlotSpec] = []

    def walk(t: pa.DataType, path: str, name: str) -> None:
        if _is_image_type(t):
            return
        if _is_box_type(t):
            plots.append(PlotSpec(f"box sizes ({path})", path, "box_size"))
            if "readers" in {t.field(i).name for i in range(t.num_fields)}:
                plots.append(PlotSpec(f"readers agreeing per box ({path})", f"{path}.readers"))
            return
        if _is_turns_type(t):
            plots.append(PlotSpec(f"conversation rounds ({path})", path, "length", divide=2))
            return
        if pa.types.is_struct(t):
            for i in range(t.num_fields):
                f = t.field(i)
                walk(f.type, f"{path}.{f.name}" if path else f.name, f.name)
        elif (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_image_type(t.value_type):
            plots.append(PlotSpec(f"images per row ({path})", path, "length"))
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            walk(t.value_type, f"{path}[]", name)
        elif (pa.types.is_string(t) or pa.types.is_large_string(t)) and \
                (name.lower() in LABEL_NAMES or name.lower().endswith("_type")) or pa.types.is_boolean(t):
            plots.append(PlotSpec(f"{path}", path))

    for f in schema:
        walk(f.type, f.name, f.name)
    return tuple(plots[:10])


def _figure(width: float = 4.6, height: float = 2.8):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _svg(fig) -> str:
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "radcorpora-preview", "svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def bar_plot(title: str, counts: list[tuple[str, float]], xlabel: str = "rows") -> str:
    fig = _figure(4.6, max(1.6, 0.28 * len(counts) + 0.9))
    ax = fig.add_subplot()
    labels = [_cut(str(k), 40) for k, _ in counts][::-1]
    values = [v for _, v in counts][::-1]
    ax.barh(range(len(values)), values, color="#4363d8")
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.margins(x=0.15)
    return _svg(fig)


def hist_plot(title: str, series: dict[str, list[float]], xlabel: str, integer: bool = False) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    everything = [v for values in series.values() for v in values]
    if integer:
        low, high = int(min(everything)), int(max(everything))
        bins = [b - 0.5 for b in range(low, high + 2)]
    else:
        bins = 20
    for (name, values), colour in zip(series.items(), ("#4363d8", "#f58231")):
        ax.hist(values, bins=bins, alpha=0.7 if len(series) > 1 else 1.0, label=name, color=colour)
    if integer:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(series) > 1:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("count", fontsize=8)
    ax.tick_params(labelsize=7)
    return _svg(fig)


def grouped_split_plot(splits: dict[str, dict[str, int]]) -> str:
    rows = [(f"{c} / {s}", n) for c, per in splits.items() for s, n in per.items()]
    return bar_plot("rows per config / split", rows)


def plot_one(table: pa.Table, plot: PlotSpec) -> str | None:
    values = resolve(table, plot.path)
    if plot.kind == "count":
        counts = Counter(str(v) for v in values.drop_null().to_pylist())
        if not counts:
            return None
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if len(top) > MAX_BARS:
            top = top[:MAX_BARS - 1] + [(f"({len(top) - MAX_BARS + 1} others)", sum(v for _, v in top[MAX_BARS - 1:]))]
        return bar_plot(plot.title, top, "count")
    if plot.kind == "length":
        lengths = [n / plot.divide for n in pc.list_value_length(values).drop_null().to_pylist()]
        return hist_plot(plot.title, {"rows": lengths}, "rounds" if plot.divide == 2 else "items", integer=True) \
            if lengths else None
    boxes = values.drop_null()
    if not len(boxes):
        return None
    widths = pc.subtract(pc.struct_field(boxes, "x2"), pc.struct_field(boxes, "x1")).to_pylist()
    heights = pc.subtract(pc.struct_field(boxes, "y2"), pc.struct_field(boxes, "y1")).to_pylist()
    return hist_plot(f"{plot.title}: {len(boxes):,} boxes", {"width": widths, "height": heights},
                     "share of the image side")


# --------------------------------------------------------------------------- rows


def _is_image(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)) and "path" in value


def _is_box(value: Any) -> bool:
    return isinstance(value, dict) and BOX_FIELDS <= set(value) and \
        all(isinstance(value[k], (int, float)) for k in BOX_FIELDS)


def _is_turns(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and \
        all(isinstance(t, dict) and "from" in t and "value" in t for t in value)


def _label_of(d: dict[str, Any]) -> str | None:
    for key in ("label", "finding", "phrase", "name", "category", "class_name", "region", "pathology", "text"):
        if isinstance(d.get(key), str) and d[key].strip():
            return d[key]
    return None


def find_boxes(row: Any) -> list[FoundBox]:
    """Every Box-shaped struct in the row, at any depth, labelled with what it marks: the label,
    phrase or region of the nearest enclosing struct, or a parallel list of strings (`labels`
    beside `boxes`), or else the words before its coordinates in the turns that hold it (`Nodule:
    [..]`); `box` when none says. Readers are the box's own `readers`."""
    found: list[FoundBox] = []

    def walk(value: Any, path: str, label: str | None, turns: list[dict[str, Any]]) -> None:
        if _is_box(value):
            corners = (float(value["x1"]), float(value["y1"]), float(value["x2"]), float(value["y2"]))
            readers = value.get("readers")
            found.append(FoundBox(*corners, label=label or words_before(corners, turns) or "box",
                                  readers=int(readers) if isinstance(readers, int) else None, source=path))
        elif _is_image(value):
            return
        elif isinstance(value, dict):
            own = _label_of(value) or label
            mine = [t for item in value.values() if _is_turns(item) for t in item] or turns
            for key, item in value.items():
                parallel = None
                if isinstance(item, list) and item and all(_is_box(b) for b in item):
                    for other in value.values():
                        if isinstance(other, list) and other is not item and len(other) == len(item) and \
                                all(isinstance(s, str) for s in other):
                            parallel = other
                            break
                if parallel is not None:
                    for i, b in enumerate(item):
                        walk(b, f"{path}.{key}[{i}]".lstrip("."), parallel[i], mine)
                else:
                    walk(item, f"{path}.{key}".lstrip("."), own, mine)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]", label, turns)

    walk(row, "", None, [])
    return found


_CONNECTIVES = re.compile(r"(?:[\s,:;=\-–—(]|\b(?:and|or|at|in|is|are|on|of)\b)+$", re.IGNORECASE)
_BOUNDARY = re.compile(r"[;\n]|[.!?](?=\s)")
MAX_LABEL = 60


def words_before(corners: tuple[float, float, float, float], turns: list[dict[str, Any]]) -> str | None:
    """What a text says a box marks: the words of its clause before the first place the turns
    write it (`Cardiomegaly: [0.3, ..] and [..]` -> `Cardiomegaly` for either box), with other box
    text and trailing connectives (`:`, `and`, `at`) left out; None when no turn writes it."""
    for turn in turns:
        text = str(turn.get("value") or "")
        spans = find_box_text(text)
        for n, span in enumerate(spans):
            box = text_box(span)
            if box is None or not all(abs(a - b) <= 0.006 for a, b in zip(box.xyxy, corners)):
                continue
            prefix, last = [], 0
            for other in spans[:n]:
                prefix.append(text[last:other.start])
                last = other.end
            prefix.append(text[last:span.start])
            clause = _BOUNDARY.split("".join(prefix))[-1]
            words = " ".join(_CONNECTIVES.sub("", clause).replace("<image>", " ").split())
            if len(words) > MAX_LABEL:
                words = "…" + words[-MAX_LABEL:].split(" ", 1)[-1]
            if words:
                return words
    return None


def text_boxes(turns: list[dict[str, Any]], known: list[FoundBox]) -> list[FoundBox]:
    """Boxes written in the turns (any form `ops.boxes.find_box_text` reads) that no struct box of
    the row matches, labelled by the words before them."""
    extra: list[FoundBox] = []
    for n, turn in enumerate(turns):
        for span in find_box_text(str(turn.get("value") or "")):
            box = text_box(span)
            if box is None or any(b.matches(box.xyxy) for b in known + extra):
                continue
            words = words_before(box.xyxy, [turn])
            extra.append(FoundBox(*box.xyxy, label=f"{words} (turn {n + 1})" if words else f"box in turn {n + 1}",
                                  source=f"turn {n + 1}", from_text=True))
    return extra


def find_conversations(row: Any) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """Every list of turns (`[{from, value}, ..]`) in the row at any depth, found by its shape:
    (path, the struct that holds it, the turns), in row order. radvlm's `instances[i].conversations`
    and a top-level `conversations` alike."""
    found: list[tuple[str, dict[str, Any], list[dict[str, Any]]]] = []

    def walk(value: Any, path: str) -> None:
        if _is_image(value):
            return
        if isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}".lstrip(".")
                if _is_turns(item):
                    found.append((where, value, item))
                else:
                    walk(item, where)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")

    walk(row, "")
    return found


def find_images(row: Any) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []

    def walk(value: Any, path: str) -> None:
        if _is_image(value):
            found.append((path, value))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}".lstrip("."))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")

    walk(row, "")
    return found


def thumbnail(data: bytes) -> tuple[str, int, int, int, int]:
    """(data URI, thumbnail width, height, original width, height); JPEG, long side <= THUMBNAIL_SIDE."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        size = img.size
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            import numpy as np

            array = np.asarray(img, dtype=np.float64)
            low, high = float(array.min()), float(array.max())
            scaled = (array - low) * (255.0 / (high - low)) if high > low else array * 0
            img = Image.fromarray(scaled.clip(0, 255).astype("uint8"), "L")
        elif img.mode not in ("L", "RGB"):
            img = img.convert("RGBA").convert("RGB") if "A" in img.mode or img.mode == "P" else img.convert("RGB")
        else:
            img = img.copy()
        img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=82, optimize=True)
        return ("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"),
                img.size[0], img.size[1], size[0], size[1])


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cut(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def _num(v: float) -> str:
    return f"{v:.4f}".rstrip("0").rstrip(".") if v else "0"


def render_images(images: list[dict[str, Any]], boxes: list[FoundBox], where: list[str] | None = None,
                  per_image: list[list[FoundBox]] | None = None, notes: list[str] | None = None) -> str:
    """Thumbnails; every box drawn on the first image (a row's boxes refer to its image), or, with
    `per_image`, each image's own boxes (numbered images: `data-image` k, caption `image k`, and
    `notes[k]` as HTML under it)."""
    parts = []
    for i, image in enumerate(images[:MAX_IMAGES_PER_ROW]):
        name = image.get("path") or (where[i] if where else f"image {i + 1}")
        numbered = per_image is not None
        attrs = f' data-image="{i + 1}"' if numbered else ""
        note = notes[i] if notes else ""
        try:
            uri, w, h, ow, oh = thumbnail(bytes(image["bytes"]))
        except Exception as exc:  # noqa: BLE001 - an undecodable image is shown as such; the page still renders
            parts.append(f'<figure class="img broken"{attrs}>image {esc(name)} does not decode: {esc(exc)}{note}</figure>')
            continue
        drawn = per_image[i] if per_image is not None else boxes if i == 0 else []
        overlays = "".join(_box_div(b, n, w, h) for n, b in enumerate(drawn))
        legend = "".join(
            f'<li><span class="swatch" style="background:{_colour(n, b)}"></span>{esc(_cut(b.label, 120))} '
            f'<code>[{_num(b.x1)}, {_num(b.y1)}, {_num(b.x2)}, {_num(b.y2)}]</code>'
            f'{f" · {b.readers} reader{_s(b.readers)}" if b.readers else ""}{" · from the text" if b.from_text else ""}</li>'
            for n, b in enumerate(drawn))
        parts.append(
            f'<figure class="img"{attrs}><div class="frame" style="width:{w}px;height:{h}px">'
            f'<img src="{uri}" width="{w}" height="{h}" alt="{esc(name)}">{overlays}</div>'
            f'<figcaption>{f"<b>image {i + 1}</b> · " if numbered else ""}{esc(name)} · {ow}×{oh}</figcaption>'
            + (f'<ol class="legend">{legend}</ol>' if legend else "") + note + "</figure>")
    if len(images) > MAX_IMAGES_PER_ROW:
        parts.append(f'<p class="note">+{len(images) - MAX_IMAGES_PER_ROW} more images not shown</p>')
    return f'<div class="images">{"".join(parts)}</div>' if parts else ""


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _colour(n: int, box: FoundBox) -> str:
    return PALETTE[n % len(PALETTE)]


def _box_div(box: FoundBox, n: int, w: int, h: int) -> str:
    left, top = box.x1 * w, box.y1 * h
    width, height = (box.x2 - box.x1) * w, (box.y2 - box.y1) * h
    colour = _colour(n, box)
    tag = f"{n + 1}" + (f" ×{box.readers}" if box.readers else "")
    place = "inside" if top < 16 else "above"
    return (f'<div class="box{" fromtext" if box.from_text else ""}" style="left:{left:.2f}px;top:{top:.2f}px;'
            f'width:{width:.2f}px;height:{height:.2f}px;border-color:{colour}" data-x1="{box.x1!r}" '
            f'data-y1="{box.y1!r}" data-x2="{box.x2!r}" data-y2="{box.y2!r}" data-readers="{box.readers or ""}" '
            f'data-label="{esc(box.label)}" title="{esc(box.label)}"><span class="tag {place}" '
            f'style="background:{colour}">{esc(tag)} {esc(_cut(box.label, 28))}</span></div>')


def render_turns(turns: list[dict[str, Any]], boxes: list[FoundBox]) -> str:
    """The conversation, one bubble per turn; box text coloured like its box; each `<image>`
    marked and numbered in turn order (`data-image` k, shown by CSS so the turn's text stays the
    text), the number of the image it stands for."""
    out = []
    placeholders = iter(range(1, 1_000_000))

    def chip(_: re.Match) -> str:
        return f'<span class="chip" data-image="{next(placeholders)}">&lt;image&gt;</span>'

    for turn in turns:
        who = str(turn.get("from") or "")
        text = _cut(str(turn.get("value") or ""))
        pieces, last = [], 0
        for span in find_box_text(text):
            pieces.append(esc(text[last:span.start]))
            index = _box_index(span, boxes)
            colour = _colour(index, boxes[index]) if index is not None else "#777"
            pieces.append(f'<span class="boxtext" style="border-color:{colour}">{esc(span.text)}</span>')
            last = span.end
        pieces.append(esc(text[last:]))
        body = re.sub("&lt;image&gt;", chip, "".join(pieces))
        out.append(f'<div class="turn {esc(who)}"><span class="who">{esc(who)}</span><div class="said">{body}</div></div>')
    return f'<div class="turns">{"".join(out)}</div>'


def _box_index(span: BoxText, boxes: list[FoundBox]) -> int | None:
    box = text_box(span)
    if box is None:
        return None
    return next((i for i, b in enumerate(boxes) if b.matches(box.xyxy)), None)


def render_item(path: str, item: dict[str, Any], turns_key: str, number: int, total: int,
                boxes: list[FoundBox]) -> str:
    """One struct that holds a conversation (a radvlm instance): what it is about (its label,
    id and other plain fields, how many boxes), then every turn."""
    label = _label_of(item)
    facts = []
    for key, value in item.items():
        if key == turns_key or (label is not None and value is label):
            continue
        if isinstance(value, (str, int, float, bool)):
            facts.append(f'{esc(key)} <code>{esc(_cut(str(value), 200))}</code>')
        elif isinstance(value, list) and value and all(_is_box(b) for b in value):
            facts.append(f"{len(value)} box{'es' if len(value) != 1 else ''}")
    head = (f'<span class="kind">{esc(path.split("[")[0])} {number}/{total}</span> '
            + (f"<b>{esc(_cut(label, 300))}</b> · " if label else "") + " · ".join(facts))
    return (f'<div class="item" data-path="{esc(path)}"><div class="itemhead">{head}</div>'
            f'{render_turns(item[turns_key], boxes)}</div>')


def render_question(q: dict[str, Any]) -> str:
    """A question with its options, the answer marked."""
    answer = str(q.get("answer") or "")
    correct = (q.get("metadata") or {}).get("correct_text") if isinstance(q.get("metadata"), dict) else None
    kind = q.get("question_type") or q.get("answer_type") or ""
    items = ""
    choices = q.get("choices")
    if isinstance(choices, list) and choices:
        lis = []
        for i, choice in enumerate(choices):
            letter = chr(ord("A") + i)
            right = answer in (letter, str(choice)) or (correct is not None and str(choice) == correct)
            lis.append(f'<li class="{"right" if right else ""}"><b>{letter}.</b> {esc(choice)}'
                       f'{" ✓" if right else ""}</li>')
        items = f'<ol class="choices">{"".join(lis)}</ol>'
    return (f'<div class="qa"><div><span class="kind">{esc(kind)}</span> {esc(_cut(str(q.get("question") or "")))}</div>'
            f'{items}<div class="answer">answer: <b>{esc(_cut(answer, 400))}</b></div></div>')


def _flatten(value: Any, prefix: str, out: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and value and all(isinstance(v, (str, int, float, bool)) or v is None for v in value):
        out.append((prefix, ", ".join(str(v) for v in value)))
    elif isinstance(value, list):
        out.append((prefix, f"[{len(value)} items]" if value else "[]"))
    elif isinstance(value, (bytes, bytearray)):
        out.append((prefix, f"<{len(value):,} bytes>"))
    else:
        out.append((prefix, "null" if value is None else str(value)))


def _kv(pairs: list[tuple[str, str]], cls: str = "kv") -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(_cut(v, 600))}</td></tr>" for k, v in pairs)
    return f'<table class="{cls}">{rows}</table>' if rows else ""


def render_row_default(row: dict[str, Any]) -> str:
    """A row as a person reads it, from its shape alone: images with boxes, every conversation at
    any depth (a nested one under what its struct is about), questions with options, the
    remaining fields, lineage."""
    images = find_images(row)
    sequence = image_sequence(row)
    struct_boxes = [b for b in find_boxes(row) if sequence is None or _top(b.source) != "image_provenance"]
    conversations = find_conversations(row)
    turns = [t for _, _, ts in conversations for t in ts]
    boxes = struct_boxes + text_boxes(turns, struct_boxes)
    image_keys = {_top(path) for path, _ in images}
    if sequence is not None:
        image_keys.add("image_provenance")
        per_image, notes = provenance_views(row["images"], row.get("image_provenance"))
        per_image[0] = boxes + per_image[0]  # the row's own boxes refer to its first image
        parts = [render_images(row["images"], [], per_image=per_image, notes=notes)]
    else:
        parts = [render_images([img for _, img in images], boxes, [p for p, _ in images])]
    text = []
    pair = preference_view(row, boxes)
    nested = Counter(_top(path) for path, owner, _ in conversations if owner is not row)
    seen: Counter[str] = Counter()
    for path, owner, ts in conversations:
        if owner is row:
            text.append(render_turns(ts, boxes))
            continue
        top = _top(path)
        seen[top] += 1
        owner_path, _, key = path.rpartition(".")
        text.append(render_item(owner_path, owner, key, seen[top], nested[top], boxes))
    if pair:
        text.append(pair)  # after the prompt it answers
    question_lists = [k for k, v in row.items() if isinstance(v, list) and v and
                      all(isinstance(q, dict) and "question" in q and "answer" in q for q in v)]
    if "question" in row and "answer" in row:
        text.append(render_question(row))
    for key in question_lists:
        text.append(f'<details><summary>{esc(key)}: {len(row[key])} with their options and answers</summary>'
                    + "".join(render_question(q) for q in row[key]) + "</details>")
    used = {_top(path) for path, _, _ in conversations} | set(question_lists) | image_keys | {"id", "lineage"}
    if pair:
        used |= PAIR_FIELDS
    if "question" in row and "answer" in row:
        used |= {"question", "answer", "choices"}
    box_keys = {_top(b.source) for b in struct_boxes}
    fields: list[tuple[str, str]] = []
    for key, value in row.items():
        if key not in used and key not in box_keys:
            _flatten(value, key, fields)
    if fields:
        text.append(f'<details open><summary>fields</summary>{_kv(fields)}</details>')
    if isinstance(row.get("lineage"), dict):
        lineage: list[tuple[str, str]] = []
        _flatten(row["lineage"], "", lineage)
        text.append(f'<details><summary>lineage</summary>{_kv(lineage)}</details>')
    parts.append(f'<div class="text">{"".join(text)}</div>')
    return "".join(parts)


def image_sequence(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The row's ordered `images` list (interleaved samples, multi-image rows), or None."""
    images = row.get("images")
    return images if isinstance(images, list) and images and all(_is_image(i) for i in images) else None


def _image_size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # noqa: BLE001 - an undecodable image is shown as such by render_images
        return None


def provenance_views(images: list[dict[str, Any]], provenance: Any) -> tuple[list[list[FoundBox]], list[str]]:
    """Per image: the rectangles cut from it for later images of the row (`image_provenance[k]
    .crop` on its `parent`, normalised by the parent's pixel size, labelled `image k`), and a
    provenance note (source file and sha256; for a crop its parent, box, pixel crop, derivation)."""
    per_image: list[list[FoundBox]] = [[] for _ in images]
    notes = ["" for _ in images]
    if not (isinstance(provenance, list) and len(provenance) == len(images)):
        return per_image, notes
    sizes: dict[int, tuple[int, int] | None] = {}
    for k, entry in enumerate(provenance):
        if not isinstance(entry, dict):
            continue
        facts = [(f'source <code>{esc(entry.get("source_path") or "?")}</code> '
                  f'<code title="{esc(entry.get("source_sha256"))}">{esc(str(entry.get("source_sha256") or "")[:12])}…</code>')]
        box, cut, parent = entry.get("box"), entry.get("crop"), entry.get("parent")
        if isinstance(box, dict) and isinstance(cut, dict):
            corners = f'[{", ".join(_num(float(box[c])) for c in ("x1", "y1", "x2", "y2"))}]'
            rect = f'({cut["left"]}, {cut["top"]}, {cut["right"]}, {cut["bottom"]})'
            where = (f"image {parent + 1}" if isinstance(parent, int) and 0 <= parent < len(images)
                     else "the source image (not in this row)")
            facts.append(f'crop of <b>{esc(where)}</b>: box <code>{esc(corners)}</code>, pixels <code>{esc(rect)}</code>')
            if entry.get("derivation"):
                facts.append(f'<code>{esc(entry["derivation"])}</code>')
            if isinstance(parent, int) and 0 <= parent < len(images):
                if parent not in sizes:
                    sizes[parent] = _image_size(bytes(images[parent]["bytes"]))
                size = sizes[parent]
                if size:
                    w, h = size
                    per_image[parent].append(FoundBox(cut["left"] / w, cut["top"] / h, cut["right"] / w, cut["bottom"] / h,
                                                      label=f"image {k + 1}", source=f"image_provenance[{k}].crop"))
        notes[k] = f'<div class="prov" data-image="{k + 1}">{" · ".join(facts)}</div>'
    return per_image, notes


PAIR_FIELDS = {"chosen", "rejected", "chosen_score", "rejected_score", "scorer"}


def preference_view(row: dict[str, Any], boxes: list[FoundBox]) -> str:
    """A preference pair's two answers side by side, each with its score (the prompt is shown
    as the row's conversation); "" for a row that is not a pair."""
    if "chosen" not in row or "rejected" not in row:
        return ""
    sides = []
    for side in ("chosen", "rejected"):
        answer = row[side]
        turn = answer if isinstance(answer, dict) and "value" in answer else {"from": "gpt", "value": str(answer or "")}
        score = row.get(f"{side}_score")
        shown = f" · score <b>{esc(_num(float(score)) if isinstance(score, (int, float)) else score)}</b>" \
            if score is not None else ""
        sides.append(f'<div class="side {side}" data-side="{side}"><div class="sidehead">{side}{shown}</div>'
                     f'{render_turns([turn], boxes)}</div>')
    scorer = f'<div class="note">scored by <code>{esc(row["scorer"])}</code></div>' if row.get("scorer") else ""
    return f'<div class="pair">{"".join(sides)}</div>{scorer}'


def _top(path: str) -> str:
    """The row field a path starts in: `instances[0].boxes[1]` -> `instances`."""
    return path.split("[")[0].split(".")[0]


def _tools() -> RenderTools:
    return RenderTools(default=render_row_default, images=lambda imgs, boxes: render_images(imgs, boxes),
                       turns=render_turns, find_boxes=find_boxes, escape=esc)


# --------------------------------------------------------------------------- the page


CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header .meta{color:#c8cfdb;font-size:12px;margin-top:4px}
nav{padding:6px 24px;background:#e7eaf0;font-size:13px}nav a{margin-right:14px;color:#28457a}
main{padding:8px 24px 40px}section{background:#fff;border-radius:6px;padding:10px 16px;margin:14px 0;
box-shadow:0 1px 2px rgba(0,0,0,.08)}h2{font-size:17px;margin:6px 0 10px}h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:12.5px;margin:4px 0}th,td{border-bottom:1px solid #e3e6ec;padding:3px 8px;
text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#137333;font-weight:600}.bad{color:#b3261e;font-weight:600}.note{color:#5f6673;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:10px}.plots img{max-width:480px;border:1px solid #eceef2;border-radius:4px}
.sample{border-top:1px solid #e3e6ec;padding:12px 0;display:flex;flex-wrap:wrap;gap:16px}
.sample>.where{flex-basis:100%;font-size:12px;color:#5f6673}.sample>.where b{color:#1d2330}
.images{display:flex;flex-direction:column;gap:10px}.img{margin:0}.frame{position:relative;display:block;
background:#000;overflow:visible}.frame img{display:block;position:absolute;left:0;top:0}
.box{position:absolute;box-sizing:border-box;border:2px solid;pointer-events:none}
.box.fromtext{border-style:dashed}.tag{position:absolute;left:-2px;white-space:nowrap;color:#fff;font:600 11px/14px
system-ui,sans-serif;padding:0 3px;border-radius:2px}.tag.above{top:-16px}.tag.inside{top:0}
figcaption{font-size:11.5px;color:#5f6673;margin-top:3px;max-width:384px;overflow-wrap:anywhere}
.legend{font-size:12px;margin:4px 0 0 0;padding-left:20px;max-width:384px}.swatch{display:inline-block;width:10px;
height:10px;margin-right:4px;border-radius:2px}.text{flex:1;min-width:320px;max-width:900px}
.turns{display:flex;flex-direction:column;gap:6px}.turn{display:flex;gap:8px}.who{flex:0 0 48px;font-size:11px;
font-weight:700;text-transform:uppercase;color:#5f6673;padding-top:6px}.said{white-space:pre-wrap;padding:6px 10px;
border-radius:8px;background:#eef1f6;overflow-wrap:anywhere}.turn.gpt .said{background:#e6f4ea}
.chip{background:#1d2330;color:#fff;border-radius:3px;padding:0 3px;font-size:11px}
.chip[data-image]::after{content:" " attr(data-image);font-weight:700}
.prov{font-size:11.5px;color:#3d4453;max-width:384px;overflow-wrap:anywhere;margin-top:3px}
.pair{display:flex;gap:12px;margin-top:10px}.side{flex:1;min-width:0;border-top:3px solid #3cb44b;padding-top:4px}
.side.rejected{border-top-color:#e6194b}.sidehead{font-size:12px;font-weight:700;text-transform:uppercase;color:#5f6673;
margin-bottom:4px}.side.rejected .said{background:#fbe9eb}
.boxtext{border-bottom:3px solid;font-family:ui-monospace,monospace;font-size:12px}
.item{border-left:3px solid #c8cfdb;padding:2px 0 2px 10px;margin:8px 0}.itemhead{font-size:12.5px;
margin-bottom:4px;overflow-wrap:anywhere}.qa{border-left:3px solid #4363d8;padding:4px 10px;margin:8px 0;background:#f7f8fb}.kind{font-size:11px;
background:#dde3f0;border-radius:3px;padding:0 4px}.choices{margin:4px 0;padding-left:8px;list-style:none}
.choices li.right{color:#137333;font-weight:600}.answer{font-size:13px}details{margin:8px 0}
summary{cursor:pointer;font-weight:600;font-size:13px}.kv th{color:#5f6673;font-weight:500;white-space:nowrap}
code{font-size:11.5px}
"""


class Page:
    def __init__(self, title: str):
        self.title = title
        self.sections: list[tuple[str, str, str, str]] = []  # (anchor, nav label, heading, body)
        self.head = ""

    def add(self, anchor: str, heading: str, body: str, nav: str | None = None) -> None:
        self.sections.append((anchor, nav or heading, heading, body))

    def header(self, manifest: dict[str, Any], build: Path) -> None:
        valid = (manifest.get("validation") or {}).get("valid")
        verdict = ('<span class="ok">valid</span>' if valid else '<span class="bad">INVALID</span>') \
            if valid is not None else "not validated"
        rows = sum(n for per in (manifest.get("splits") or {}).values() for n in per.values())
        version = (manifest.get("versions") or {}).get("radcorpora") if isinstance(manifest.get("versions"), dict) else None
        self.head = (f"<h1>{esc(self.title)} · {esc(build.name)}</h1><div class=\"meta\">{rows:,} rows · licence "
                     f"{esc(manifest.get('licence_class', '?'))} · validation: {verdict}"
                     + (f" · radcorpora {esc(version)}" if version else "") + "</div>")

    def summary(self, manifest: dict[str, Any]) -> None:
        splits = manifest.get("splits") or {}
        rows = "".join(f"<tr><td>{esc(c)}</td><td>{esc(s)}</td><td class=\"n\">{n:,}</td></tr>"
                       for c, per in splits.items() for s, n in per.items())
        body = f"<table><tr><th>config</th><th>split</th><th>rows</th></tr>{rows}</table>"
        if rows:
            body += f'<div class="plots"><img alt="rows per config and split" src="{grouped_split_plot(splits)}"></div>'
        for warning in manifest.get("warnings") or []:
            body += f'<p class="bad">warning: {esc(warning)}</p>'
        self.add("summary", "Splits", body)

    def validation(self, manifest: dict[str, Any], build: Path) -> None:
        summary = manifest.get("validation")
        path = build / "build" / "validation.json"
        checks = []
        if path.exists():
            try:
                checks = json.loads(path.read_text(encoding="utf-8")).get("checks") or []
            except (OSError, ValueError) as exc:
                raise BuildFolderError(f"{path}: unreadable ({exc})") from exc
        if summary is None and not checks:
            return
        verdict = "<p>no verdict recorded</p>" if summary is None else (
            f'<p>verdict: {"<span class=ok>valid</span>" if summary.get("valid") else "<span class=bad>INVALID</span>"}'
            f' · {summary.get("checks", len(checks))} checks · {summary.get("violations", 0):,} violations'
            + (f' · failed: {esc(", ".join(summary.get("failed_checks") or []))}' if summary.get("failed_checks") else "")
            + "</p>")
        rows = "".join(
            f'<tr><td class="{"ok" if not c.get("violations") else "bad"}">{esc(c.get("name"))}</td>'
            f'<td>{esc(c.get("description", ""))}</td><td class="n">{c.get("checked", 0):,}</td>'
            f'<td class="n">{c.get("violations", 0):,}</td><td>{esc("; ".join(map(str, (c.get("examples") or [])[:3])))}</td></tr>'
            for c in checks)
        body = verdict + (f"<table><tr><th>check</th><th>what</th><th>checked</th><th>violations</th>"
                          f"<th>first examples</th></tr>{rows}</table>" if rows else "")
        for warning in (summary or {}).get("warnings") or []:
            body += f'<p class="note">warning: {esc(warning)}</p>'
        self.add("validation", "Validation", body)

    def rejects(self, manifest: dict[str, Any], build: Path) -> None:
        counts = dict(manifest.get("rejects") or {})
        examples, lines, complete = read_reject_examples(build / "build" / "rejects.jsonl", set(counts))
        for reason in examples:
            counts.setdefault(reason, len(examples[reason]))
        if not counts:
            self.add("rejects", "Rejects", "<p>no source rows rejected</p>")
            return
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        rows = []
        for reason, n in ordered:
            shown = "".join(
                f"<li><code>{esc(e.get('source', ''))}{'#' + esc(e['row']) if e.get('row') is not None else ''}</code> "
                f"{esc(_cut(str(e.get('detail', '')), 300))}</li>" for e in examples.get(reason, []))
            rows.append(f'<tr><td>{esc(reason)}</td><td class="n">{n:,}</td><td><ul>{shown}</ul></td></tr>')
        body = (f"<p>{sum(counts.values()):,} source rows rejected</p><table><tr><th>reason</th><th>rows</th>"
                f"<th>examples</th></tr>{''.join(rows)}</table>")
        if not complete:
            body += f'<p class="note">examples from the first {lines:,} lines of build/rejects.jsonl</p>'
        body += f'<div class="plots"><img alt="rejects by reason" src="{bar_plot("rejects by reason", ordered[:MAX_BARS])}"></div>'
        self.add("rejects", "Rejects", body)

    def excluded(self, manifest: dict[str, Any]) -> None:
        """Source rows the method does not take (a lateral view where frontal ones are asked for):
        not faults, so not rejects, but counted per source and reason all the same."""
        excluded = manifest.get("excluded") or {}
        if not excluded:
            return
        rows = "".join(f'<tr><td>{esc(source)}</td><td>{esc(reason)}</td><td class="n">{n:,}</td></tr>'
                       for source, reason, n in sorted((*k.split("/", 1), v) for k, v in excluded.items()))
        self.add("excluded", "Left out by the method",
                 f"<p>{sum(excluded.values()):,} source rows left out by design</p>"
                 f"<table><tr><th>source</th><th>reason</th><th>rows</th></tr>{rows}</table>")

    def manifest_table(self, table: Any, manifest: dict[str, Any]) -> None:
        """A corpus' table of its manifest figures (spec.preview.ManifestTable)."""
        rows = table.rows(manifest)
        if not rows:
            return
        def cell(v: Any) -> str:
            return f'<td class="n">{v:,}</td>' if isinstance(v, int) else f"<td>{esc(v)}</td>"

        body = (f"<table><tr>{''.join(f'<th>{esc(c)}</th>' for c in table.columns)}</tr>"
                + "".join(f"<tr>{''.join(cell(v) for v in row)}</tr>" for row in rows) + "</table>")
        if table.note:
            body += f'<p class="note">{esc(table.note)}</p>'
        anchor = re.sub(r"[^a-z0-9]+", "-", table.title.lower()).strip("-")
        self.add(anchor, table.title, body)

    def llm(self, manifest: dict[str, Any], build: Path) -> None:
        llm = manifest.get("llm")
        queue = build / "build" / "adjudication_queue.jsonl"
        if not (isinstance(llm, dict) and (llm.get("generator") or llm.get("pipeline"))) and not queue.exists():
            return  # no model wrote anything (radvlm with rule-based prior removal, say)
        llm = llm if isinstance(llm, dict) else {}
        facts: list[tuple[str, str]] = []
        for key in ("generator", "verifiers", "requests_sent", "failed_requests", "batch", "adjudication_pending",
                    "adjudication_decisions"):
            if key in llm:
                value = llm[key]
                facts.append((key.replace("_", " "), ", ".join(map(str, value)) if isinstance(value, list) else str(value)))
        usage = llm.get("usage") or {}
        if "total_cost_usd" in usage:
            facts.append(("cost of the answers held (USD)", f"{usage['total_cost_usd']:.4f}"))
        if "total_cost_usd_this_run" in usage:
            facts.append(("paid this run (USD)", f"{usage['total_cost_usd_this_run']:.4f}"))
        if usage.get("prices_as_of"):
            facts.append(("prices as of", str(usage["prices_as_of"])))
        if usage.get("unpriced_models"):
            facts.append(("unpriced models", ", ".join(map(str, usage["unpriced_models"]))))
        if queue.exists():
            facts.append(("adjudication queue", f"{count_lines(queue):,} items in build/adjudication_queue.jsonl"))
        verification = llm.get("verification") or {}
        for key in ("items", "percent_agreement", "cohen_kappa", "fleiss_kappa", "kappa"):
            if key in verification:
                facts.append((f"verification {key.replace('_', ' ')}", str(verification[key])))
        if verification.get("outcomes"):
            facts.append(("verification outcomes", ", ".join(f"{k} {v}" for k, v in verification["outcomes"].items())))
        body = _kv(facts)
        models = usage.get("models") or {}
        if models:
            rows = "".join(
                f"<tr><td>{esc(m)}</td><td class=\"n\">{u.get('requests', 0):,}</td><td class=\"n\">{u.get('from_cache', 0):,}</td>"
                f"<td class=\"n\">{u.get('input_tokens', 0):,}</td><td class=\"n\">{u.get('output_tokens', 0):,}</td>"
                f"<td class=\"n\">{u.get('cost_usd', 0) or 0:.4f}</td><td class=\"n\">{u.get('cost_usd_this_run', 0) or 0:.4f}</td></tr>"
                for m, u in models.items())
            body += (f"<h3>usage per model</h3><table><tr><th>model</th><th>requests</th><th>from cache</th>"
                     f"<th>input tokens</th><th>output tokens</th><th>cost held (USD)</th><th>paid this run (USD)</th>"
                     f"</tr>{rows}</table>")
        body += self._pipeline_html(llm.get("pipeline") or {})
        self.add("llm", "LLM usage", body)

    @staticmethod
    def _pipeline_html(figures: dict[str, Any]) -> str:
        """`manifest["llm"]["pipeline"]` (PipelineResult.figures()): a row per stage, then each audit's
        agreement (Cohen's kappa for 2 auditors, Fleiss' for 3 or more)."""
        from radcorpora.publish.card import pipeline_order

        stages = figures.get("stages") or {}
        if not stages:
            return ""
        counts = ("items", "requests", "reused", "cached", "sent", "failed", "parsed", "repaired", "rejected", "outputs")

        def usd(value: Any) -> str:
            return "unknown" if value is None else f"{value:.4f}"

        rows = "".join(
            f"<tr><td>{esc(name)}</td><td>{esc(', '.join(map(str, f.get('models', []))))}</td>"
            + "".join(f'<td class="n">{esc(f.get(c, ""))}</td>' for c in counts)
            + f'<td class="n">{(f.get("held") or {}).get("input_tokens", 0):,}</td>'
            f'<td class="n">{(f.get("held") or {}).get("output_tokens", 0):,}</td>'
            f'<td class="n">{usd((f.get("held") or {}).get("cost_usd"))}</td>'
            f'<td class="n">{usd((f.get("paid") or {}).get("cost_usd"))}</td></tr>'
            for name, f in ((n, stages[n]) for n in pipeline_order(stages)))
        body = ("<h3>pipeline stages</h3><table><tr><th>stage</th><th>models</th>"
                + "".join(f"<th>{c}</th>" for c in counts)
                + "<th>input tokens</th><th>output tokens</th><th>cost held (USD)</th><th>paid this run (USD)</th>"
                f"</tr>{rows}</table>")
        for name, audit in (figures.get("audits") or {}).items():
            facts = [("auditors", ", ".join(map(str, audit.get("verifiers") or []))), ("items", str(audit.get("items", 0)))]
            facts += [(key.replace("_", " "), "undefined (every verdict in one category)" if audit[key] is None
                       else str(audit[key])) for key in ("percent_agreement", "cohen_kappa", "fleiss_kappa") if key in audit]
            for key in ("outcomes", "settled"):
                if audit.get(key):
                    facts.append((key, ", ".join(f"{k} {v}" for k, v in audit[key].items())))
            body += f"<h3>audit {esc(name)}</h3>" + _kv(facts)
        return body + f"<p>awaiting adjudication: {esc(figures.get('adjudication_pending', 0))}</p>"

    def reference_check(self, build: Path) -> None:
        path = build / "build" / "reference_check.json"
        if not path.exists():
            return
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BuildFolderError(f"{path}: unreadable ({exc})") from exc
        image, text = report.get("image") or {}, report.get("text_only") or {}
        passed = report.get("passed")
        body = (f'<p>{"<span class=ok>passed</span>" if passed else "<span class=bad>FAILED</span>"}: image model '
                f'{esc(image.get("score"))} vs text-only twin {esc(text.get("score"))} {esc(report.get("metric", ""))}; '
                f'gap {esc(report.get("gap"))} points (margin {esc(report.get("margin"))})</p>')
        table_i, table_t = (image.get("metrics") or {}).get("by_task_and_type"), (text.get("metrics") or {}).get("by_task_and_type")
        if isinstance(table_i, dict) and table_i:
            body += _kv([(cell, f"{value} vs {(table_t or {}).get(cell, '')}") for cell, value in table_i.items()])
        self.add("reference", "Reference check", body)

    def config_plots(self, cfg: str, per_split: dict[str, list[Path]], plots: list[PlotSpec], stat_rows: int,
                     seed: int) -> None:
        if not plots:
            return
        paths = [p for split in per_split.values() for p in split]
        columns = sorted({path_steps(p.path)[0] for p in plots})
        table, read, total = stat_table(paths, columns, stat_rows, f"{seed}:{cfg}:plots")
        images = []
        for plot in plots:
            uri = plot_one(table, plot)
            if uri:
                images.append(f'<img alt="{esc(plot.title)}" src="{uri}">')
        scope = f"all {total:,} rows" if read == total else f"{read:,} of {total:,} rows (a seeded sample of row groups)"
        self.add(f"plots-{cfg}", f"{cfg}: plots",
                 f'<p class="note">from {scope} of {esc(", ".join(per_split))}</p><div class="plots">{"".join(images)}</div>',
                 nav=f"{cfg} plots")

    def samples(self, cfg: str, split: str, rows: list[tuple[Path, int, dict[str, Any]]], renderer: RowRenderer | None,
                total: int) -> None:
        tools = _tools()
        cards = []
        for path, r, row in rows:
            body = renderer(row, tools) if renderer is not None else render_row_default(row)
            ident = row.get("id")
            cards.append(f'<div class="sample" data-config="{esc(cfg)}" data-split="{esc(split)}" '
                         f'data-shard="{esc(path.name)}" data-row="{r}">'
                         f'<div class="where">{f"<b>{esc(ident)}</b> · " if ident is not None else ""}'
                         f'{esc(path.name)} row {r}</div>{body}</div>')
        self.add(f"rows-{cfg}-{split}", f"{cfg} / {split}: {len(rows)} of {total:,} rows", "".join(cards)
                 or "<p>no rows</p>", nav=f"{cfg}/{split}")

    def finish(self) -> str:
        nav = "".join(f'<a href="#{esc(a)}">{esc(n)}</a>' for a, n, _, _ in self.sections)
        body = "".join(f'<section id="{esc(a)}"><h2>{esc(h)}</h2>{b}</section>' for a, _, h, b in self.sections)
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
                "style-src 'unsafe-inline'\">"
                f"<title>{esc(self.title)} preview</title><style>{CSS}</style></head><body>"
                f"<header>{self.head}</header><nav>{nav}</nav><main>{body}</main></body></html>\n")


def iter_sample_boxes(html_text: str) -> Iterator[dict[str, float]]:
    """The box overlays of a page (normalised corners), as the tests and tools read them."""
    for match in re.finditer(r'data-x1="([^"]+)" data-y1="([^"]+)" data-x2="([^"]+)" data-y2="([^"]+)"', html_text):
        yield dict(zip(("x1", "y1", "x2", "y2"), map(float, match.groups())))


__all__ = ["FoundBox", "PlotSpec", "PreviewError", "PreviewResult", "PreviewSpec", "RenderTools", "RowRenderer",
           "check_out", "count_lines", "default_plots", "find_boxes", "find_conversations", "iter_sample_boxes",
           "read_reject_examples", "render_preview", "render_row_default", "sample_rows", "stat_table", "words_before",
           "write_preview"]
