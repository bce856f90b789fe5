"""Quality rules for generated chains of thought (shared by the builder and the validator).

A chain of thought must read as a look at the image: both sections present and in order, each
non-empty, within length bounds, and without words that give away it was written from text
(caption, description, report, "the text says", ...).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

LEAK = re.compile(
    r"\b(?:captions?|descriptions?|described|image findings|the findings (?:provided|given|list|state|say)"
    r"|(?:provided|given|above|following) (?:text|findings|information|details)"
    r"|the (?:text|report|caption) (?:says|states|mentions|notes|describes|indicates)"
    r"|according to the (?:text|report|caption|findings|information)"
    r"|as (?:stated|mentioned|noted|written|listed)(?: in| above)?|i (?:was|am|have been) (?:told|given|provided))\b",
    re.IGNORECASE,
)
TAGGED = re.compile(r"^\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*$", re.DOTALL)


class CotBounds(BaseModel):
    think_min_words: int = Field(25, ge=1)
    think_max_words: int = Field(1500, ge=1)
    answer_min_words: int = Field(1, ge=1)
    answer_max_words: int = Field(400, ge=1)


def words(text: str) -> int:
    return len(text.split())


def leaked_phrases(text: str) -> list[str]:
    return sorted({m.group(0).lower() for m in LEAK.finditer(text)})


def cot_problems(think: str, answer: str, bounds: CotBounds) -> list[str]:
    """Reasons a parsed chain of thought is not acceptable (empty list: acceptable)."""
    problems = []
    if not bounds.think_min_words <= words(think) <= bounds.think_max_words:
        problems.append(f"think_length: {words(think)} words, bounds {bounds.think_min_words}-{bounds.think_max_words}")
    if not bounds.answer_min_words <= words(answer) <= bounds.answer_max_words:
        problems.append(f"answer_length: {words(answer)} words, bounds {bounds.answer_min_words}-{bounds.answer_max_words}")
    leaks = leaked_phrases(f"{think}\n{answer}")
    if leaks:
        problems.append(f"source_text_leak: {', '.join(leaks[:5])}")
    return problems


def split_cot(text: str) -> tuple[str, str] | None:
    """(think, answer) of a well-formed `<think>..</think><answer>..</answer>` text, else None."""
    match = TAGGED.match(text)
    if not match or "<think>" in match["think"] or "<answer>" in match["answer"]:
        return None
    return match["think"].strip(), match["answer"].strip()
