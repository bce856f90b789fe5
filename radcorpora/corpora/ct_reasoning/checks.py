"""Checks that need no model: the quality gate's named rules, the report-leak detector and the
anatomical order of a narrative. Pure functions of text, so the build, `validate` and the tests
agree on them.

Gate rules (each a named, counted reject):
- `not_english`: langid.py (Lui & Baldwin) does not classify thinking + answer as English.
- `vacuous_thinking`: fewer than MIN_THINKING_WORDS words, or fewer than MIN_NEW_WORDS content words
  that are in neither the question nor the answer (the thinking only restates them).
- `repetitive_thinking`: a sentence of 4+ words said twice, or more than REPEAT_SHARE of the word
  trigrams repeats of earlier ones.
- `domain_contradiction`: the thinking or answer calls a finding improved, stable, resolved,
  progressed (...) when the report makes no comparison with an earlier study.
"""

from __future__ import annotations

import re
from functools import cache

MIN_THINKING_WORDS = 12
MIN_NEW_WORDS = 3
REPEAT_SHARE = 0.3
GATE_RULES = {
    "not_english": "thinking and answer are English (langid.py)",
    "vacuous_thinking": f"thinking has at least {MIN_THINKING_WORDS} words and {MIN_NEW_WORDS} content words beyond "
                        "the question and answer",
    "repetitive_thinking": "no sentence of the thinking repeated; at most "
                           f"{REPEAT_SHARE:.0%} of its word trigrams repeat earlier ones",
    "domain_contradiction": "no finding called improved, stable, resolved or progressed when the report makes no "
                            "comparison with an earlier study",
}

_WORD = re.compile(r"[a-z][a-z'-]*")
_SENTENCE = re.compile(r"(?<=[.!?;])\s+")
STOP = frozenset(
    "a an the and or of in on at to is are was were be been this that these those there it its with without for "
    "from by as any no not into than then which what where when how does do did has have had i we can may might "
    "seen see visible shows show shown".split())
CHANGE = re.compile(r"\b(improv\w*|stable|stabili[sz]ed|resolv\w*|resolution|unchanged|progress\w*|regress\w*|"
                    r"worsen\w*|interval (?:increase|decrease|change|development)|"
                    r"(?:increased|decreased|reduced|grown) in size|new since|no longer (?:seen|visible))\b", re.I)
COMPARISON = re.compile(r"\b(compar\w*|prior|previous\w*|earlier (?:study|exam\w*|scan|ct)|interval\w*|"
                        r"since (?:the )?(?:last|prior|previous)|follow-up (?:study|examination) of|"
                        r"stable|unchanged|improv\w*|resolv\w*|progress\w*|regress\w*)\b", re.I)
# references to a written source: what refined thinking and narratives must never contain
LEAK = re.compile(
    r"\b(report(?:s|ed|ing)?|texts?|documents?|documented|documentation|dictat\w*|transcript\w*|"
    r"(?:findings|impression) section|as (?:described|stated|mentioned|noted|written)|"
    r"according to|prior (?:study|studies|exam\w*|imaging|scan|ct|document)|"
    r"(?:the|this) (?:note|record|summary)|radiologist'?s? (?:note|wording))\b", re.I)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


@cache
def _identifier():
    from langid.langid import LanguageIdentifier, model

    return LanguageIdentifier.from_modelstring(model, norm_probs=False)


def language(text: str) -> str:
    """ISO 639-1 code langid.py gives `text` (its full 97-language model, no restriction)."""
    return _identifier().classify(text)[0]


def leaks(text: str) -> list[str]:
    """The phrases of `text` that refer to a report, text or prior document, in order."""
    return [m.group(0) for m in LEAK.finditer(text)]


def gate_problem(question: str, thinking: str, answer: str, report: str) -> tuple[str, str] | None:
    """The first gate rule an item breaks, as (rule, detail); None when it passes all."""
    found = language(f"{thinking} {answer}")
    if found != "en":
        return "not_english", f"langid.py classifies the thinking as {found!r}"
    said = words(thinking)
    new = {w for w in said if w not in STOP} - set(words(question)) - set(words(answer))
    if len(said) < MIN_THINKING_WORDS or len(new) < MIN_NEW_WORDS:
        return "vacuous_thinking", f"{len(said)} words, {len(new)} content words beyond the question and answer"
    normalised = [" ".join(words(s)) for s in sentences(thinking)]
    twice = next((s for i, s in enumerate(normalised) if len(s.split()) >= 4 and s in normalised[:i]), None)
    if twice is not None:
        return "repetitive_thinking", f"sentence said twice: {twice[:60]!r}"
    trigrams = list(zip(said, said[1:], said[2:]))
    repeated = len(trigrams) - len(set(trigrams))
    if trigrams and repeated / len(trigrams) > REPEAT_SHARE:
        return "repetitive_thinking", f"{repeated} of {len(trigrams)} word trigrams repeat earlier ones"
    change = CHANGE.search(f"{thinking} {answer}")
    if change is not None and COMPARISON.search(report) is None:
        return "domain_contradiction", f"calls a finding {change.group(0)!r} but the report makes no comparison"
    return None


# --------------------------------------------------------------------------- anatomical order

# Craniocaudal groups, then the skeleton and soft tissues (read last in CT reports).
ANATOMY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("head_neck", ("brain", "skull", "neck", "thyroid", "cervical")),
    ("chest", ("chest", "thorax", "thoracic", "lung", "lungs", "lobe", "pulmonary", "pleura", "pleural", "airway",
               "airways", "bronch", "trachea", "mediastin", "heart", "cardiac", "pericard", "aorta", "aortic",
               "coronary", "hilar", "nodule", "emphysema", "atelecta", "breast", "axilla")),
    ("abdomen", ("abdomen", "abdominal", "liver", "hepatic", "gallbladder", "biliary", "spleen", "splenic",
                 "pancrea", "kidney", "kidneys", "renal", "adrenal", "stomach", "bowel", "colon", "mesenter",
                 "peritone", "retroperitone")),
    ("pelvis", ("pelvis", "pelvic", "bladder", "prostate", "uterus", "uterine", "ovar", "rectum", "inguinal")),
    ("musculoskeletal", ("bone", "bones", "osseous", "vertebra", "spine", "spinal", "rib", "ribs", "skeletal",
                         "fracture", "soft tissue")),
)
GROUP_RANK = {name: rank for rank, (name, _) in enumerate(ANATOMY)}


def anatomy_group(text: str) -> str | None:
    """The anatomical group `text` mentions first (by position), None when it names none."""
    lowered = text.lower()
    best: tuple[int, str] | None = None
    for name, stems in ANATOMY:
        for stem in stems:
            m = re.search(rf"\b{re.escape(stem)}", lowered)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), name)
    return None if best is None else best[1]


def group_sequence(text: str) -> list[str]:
    """The groups of `text`'s sentences in order of first mention (a sentence counts by its first)."""
    seen: list[str] = []
    for sentence in sentences(text):
        group = anatomy_group(sentence)
        if group is not None and group not in seen:
            seen.append(group)
    return seen


def out_of_order(text: str) -> list[str] | None:
    """The group sequence when a later sentence goes back up the body; None when in order."""
    sequence = group_sequence(text)
    return None if [GROUP_RANK[g] for g in sequence] == sorted(GROUP_RANK[g] for g in sequence) else sequence
