"""What a corpus writes into its dataset card: its own text; the layout, metadata, counts,
validation and LLM sections are shared (publish.card renders them)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CardContent:
    """The corpus-specific parts of a card; the layout and metadata are shared."""

    pretty_name: str
    summary: str
    licence: dict[str, str]  # license, license_name, license_link
    licence_text: str
    citations: list[str]
    task_categories: list[str]
    tags: list[str]
    usage: str
    sections: dict[str, str] = field(default_factory=dict)  # extra "## title" -> markdown
