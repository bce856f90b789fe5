"""toy-findings, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radcorpora.spec.card import CardContent
from radcorpora.spec.corpus import ConfigSpec, CorpusSpec, DemoSpec, SourceOption

from . import build
from .records import ROW_RULES, ToyRecord
from .rules import CORPUS_RULES


def write_demo(root: Path, options: dict[str, Any]) -> dict[str, Path]:
    """Six small PNGs (a bright square whose place is the finding) and findings.csv, one row
    pointing at a missing file."""
    import io

    from PIL import Image

    source = root / "toy"
    source.mkdir(parents=True, exist_ok=True)
    lines = ["file,finding,split"]
    for i in range(6):
        finding = ("nodule", "effusion")[i % 2]
        image = Image.new("L", (32, 32), 0)
        image.paste(255, (4, 4, 12, 12) if finding == "nodule" else (18, 18, 28, 28))
        data = io.BytesIO()
        image.save(data, format="PNG")
        (source / f"img{i}.png").write_bytes(data.getvalue())
        lines.append(f"img{i}.png,{finding},{'validation' if i == 5 else 'train'}")
    lines.append("gone.png,nodule,train")
    (source / "findings.csv").write_text("\n".join(lines) + "\n")
    return {"source": source}


def card(manifest: dict[str, Any]) -> CardContent:
    return CardContent(pretty_name="Toy findings", summary="A test corpus: captions and label questions.",
                       licence={"license": "cc0-1.0"}, licence_text="Synthetic images.", citations=[],
                       task_categories=["image-to-text"], tags=["radcorpora", "test"],
                       usage="`load_dataset(path, 'captions')`")


SPEC = CorpusSpec(
    name="toy-findings",
    title="Toy findings",
    summary="images with a finding -> an LLM caption and a label question",
    settings=build.ToySettings,
    configs=(ConfigSpec("captions", ToyRecord, "an LLM caption per image", ("train", "validation"), default=True),
             ConfigSpec("labels", ToyRecord, "the finding, asked", ("train", "validation"))),
    sources=(SourceOption("source", "--source", "Folder holding findings.csv and the images", required=True),),
    licence_class=lambda settings, sources: "public",
    prepare=build.prepare,
    run=build.run,
    rules=CORPUS_RULES,
    row_rules=ROW_RULES,
    card=card,
    llm_stages=(build.CaptionStage,),
    estimate=build.estimate,
    demo=DemoSpec(write_demo, build.ToySettings, uses_llm=True),
)
