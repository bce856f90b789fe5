"""What a corpus' stages receive from the engine and give back to it. Builders depend on these
types only, never on the engine that runs them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radcorpora.schemas.common import Reject
from radcorpora.store.state import ChunkResult, ChunkSpec


@dataclass
class Prepared:
    """What a corpus' `prepare` returns before the output folder is touched: the parts of the
    fingerprint it computed (source content, prompts, taxonomies) and its own plan."""

    fingerprint: dict[str, Any]
    plan: Any
    log_lines: list[str] = field(default_factory=list)


@dataclass
class StageOutput:
    """What a corpus' `run` returns: every shard written, every reject, counts, warnings, and the
    corpus' own manifest sections (source summary, benchmark strata, LLM usage...)."""

    chunks: list[ChunkResult]
    rejects: list[Reject] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # extra build/ files the corpus wrote (pushed too)
    # Source rows left out by the method, not for a fault (a lateral view where the task takes
    # frontal ones): "<source>/<reason>" -> rows; shown in the manifest, card and preview.
    excluded: dict[str, int] = field(default_factory=dict)
    # The configs this build was asked for (each must end with rows unless --allow-empty); None:
    # the build as a whole must hold rows.
    configs_asked: list[str] | None = None


@dataclass
class BuildContext:
    """What the engine lends a corpus' stages: the output folder, chunk execution, an LLM
    session factory, and a logger."""

    out: Path
    llm_store: Path  # where the corpus' LLM pipeline stores its outputs (out / store.state.LLM_STORE)
    run_chunks: Callable[[Sequence[ChunkSpec], Callable[[ChunkSpec, Path], ChunkResult], str], list[ChunkResult]]
    llm_session: Callable[..., Any]
    log: Callable[[str], None]


