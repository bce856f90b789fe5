"""Rule-based detection and removal of prior-study language in chest X-ray report text.

RadVLM trains a model that sees ONE image, so report text (and LLM-written conversations) must not
say anything that only a comparison with an earlier examination could tell: "unchanged", "again
seen", "new since ___", "interval improvement", "compared to the prior study". The LLM does the
real rewriting; this module is the independent check on what it returns, and a sentence-level
remover used as an offline stand-in (a sentence with prior-study language is dropped whole, even
when it also carries a current finding: rewriting is the LLM's job, not a regex's).

Public functions
    `split_sentences(text)`          sentences of radiology text (see "Sentences" below)
    `prior_study_phrases(text)`      every `Match(phrase, sentence, rule, start, end)`, in order
    `has_prior_reference(text)`      any match at all
    `remove_prior_sentences(text)`   `(kept_text, removed_sentences)`; kept_text is "" when every
                                     sentence refers to an earlier study ("nothing current")

Every rule in `RULES` has a name (the `rule` of a match). Rules are case-insensitive and
word-bounded ("unknown" is not "known", "against" is not "again"), and work one sentence at a time.

Decisions on ambiguous wording
    "stable"  FIRES (rule `stable`), unlike "stable" in clinical use. In the findings of a chest
              radiograph "stable" qualifies an imaging finding ("stable cardiomegaly", "heart size
              is stable", "stable appearance of the lines") and can only mean "not changed since an
              earlier examination": one image cannot show stability. The non-imaging senses are
              vetoed by their context: "hemodynamically / clinically / medically stable", "stable
              condition / vital signs / angina", "the patient is (clinically) stable". "unstable"
              never fires (word boundary).
    "new"     Negated "new" is CURRENT and does not fire: "no new opacity", "without new
              consolidation", "no evidence of new effusion" state that nothing acute is seen
              (a negation cue earlier in the same clause vetoes it; the same holds for "newly").
              Affirmative "new" FIRES (rule `new`), including "new tracheostomy tube in place":
              "new" asserts the tube was absent before, which one image cannot show; the LLM
              rewrite keeps the finding as "tracheostomy tube in place". "is/are new" and "new
              since/from/compared" fire as `is_new` / `new_since` whatever precedes them.
    "change"  Plural "changes" alone is a current finding ("degenerative changes", "postsurgical
              changes") and does not fire. "no change", "without significant change", "no acute
              cardiopulmonary change" (singular after a negation or quantity word, optionally with
              significant/interval/acute/cardiopulmonary/... in between) FIRE (`no_change`): a
              statement about change compares two examinations. "no acute cardiopulmonary
              process/abnormality" is current and does not fire. "changed"/"changing" always fire.
    "prior"   Only when it names an examination ("prior CT", "previous chest radiograph", "the
              prior.", "prior ___") or through other rules. "prior to" as a preposition ("prior to
              intubation", "prior to surgery") does NOT fire, nor do "prior sternotomy", "sequelae
              of prior granulomatous disease" (current findings of earlier events).
    "status post ... with ..."  does not fire by itself: it describes what is visible now.
    "known"   FIRES (it brings in knowledge from outside the image), except "known as", "known
              to", "known for", "well known", "not known".
    "remain(s/ed)" FIRES ("the tube remains in place"), except "remains unclear / uncertain /
              unknown / to be ..." (cautious wording); "remaining" / "remainder" do not fire.
    "previously" fires, except "I/we previously ..." (a conversation referring to itself);
    "worsen(ing)" / "improved" fire, except after a modal ("may worsen", "could be improved") and
    "symptoms (are) worsening" (advice, not a comparison of images);
    "again" fires except as a sentence-opening discourse marker ("Again, ...").
    "compared"/"comparison" fire, except a comparison with the other side or with normal
    ("decreased volume compared to the right", "in comparison with the left").
    Bare "increased"/"decreased" (e.g. "increased interstitial markings", "decreased lung
    volumes") and "worse" ("left worse than right") do not fire; "has increased", "increased in
    size", "worsening", "improved", "resolving" do.

Not covered: comparatives without a stated reference ("less conspicuous", "more prominent",
"residual effusion", "recurrent"), and a sentence split by a single line break with no
punctuation (radiology lines are wrapped, so single line breaks join lines).

Sentences (`split_sentences`)
    Line endings are normalised; a blank line, a line of underscores, a line that starts with a
    section header ("FINDINGS:"), a bullet ("-", "*", "•") or a list number ("1.", "2)") starts a
    new block; other line breaks are wrapping and join lines. Inside a block a sentence ends at
    `.`, `!` or `?` followed by white space or the end, except after abbreviations ("Dr.",
    "approx.", "e.g.", "vs."; units and "a.m."/"p.m." only end a sentence before a capital) and
    after a bare list number ("1. The lungs ..."). Decimals ("2.5 cm") never split. A list number
    glued to the previous sentence ("IN PLACE.2.NO EFFUSION") starts a new sentence, as does the
    next number of a list written without periods ("1. clear lungs 2. no effusion"). A section
    header stays at the start of its first sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["RULES", "Match", "Rule", "has_prior_reference", "prior_study_phrases", "remove_prior_sentences",
           "split_sentences"]

_I = re.IGNORECASE


@dataclass(frozen=True, slots=True)
class Match:
    """One piece of prior-study language: the phrase, its sentence, the rule, offsets in the sentence."""

    phrase: str
    sentence: str
    rule: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Rule:
    """A named pattern. `veto_before` is searched in the sentence text before the match (anchor it
    with `$`), `veto_after` is matched at the text right after it; either one vetoes the match, or,
    with `veto_both`, only the two together do. `negatable` rules do not fire when a negation cue
    precedes them in the same clause."""

    name: str
    pattern: re.Pattern[str]
    veto_before: re.Pattern[str] | None = None
    veto_after: re.Pattern[str] | None = None
    negatable: bool = False
    veto_both: bool = False

    def fires(self, sentence: str, start: int, end: int) -> bool:
        before = self.veto_before is not None and bool(self.veto_before.search(sentence[:start]))
        after = self.veto_after is not None and bool(self.veto_after.match(sentence, end))
        if (before and after) if self.veto_both else (before or after):
            return False
        return not (self.negatable and _negated(sentence[:start]))


def _rule(name: str, pattern: str, *, before: str | None = None, after: str | None = None,
          negatable: bool = False, both: bool = False) -> Rule:
    return Rule(name, re.compile(pattern, _I), re.compile(before, _I) if before else None,
                re.compile(after, _I) if after else None, negatable, both)


# Words that name an examination, and up to four modifiers that may stand between "prior" and it
# ("prior portable AP chest radiograph", "previous PA and lateral views").
_STUDY = (r"(?:stud(?:y|ies)|exam(?:ination)?s?|films?|radiographs?|radiography|x-?rays?|cxrs?|cts?|cta|mri|mr|"
          r"imaging|images?|views?|scans?|ones?|reports?|ultrasound|tomograms?|pet(?:-ct)?)")
_MODS = (r"(?:(?:(?:pa|ap|frontal)\s+and\s+lateral|(?!(?:to|and|or|with|of|in|on|for|at|from|the|a|an|was|is|"
         r"were|are)\b)[a-z][\w'/-]*)\s+){0,4}?")
_EARLIER = r"(?:prior|previous|preceding|earlier|older|last|most\s+recent|recent|yesterday'?s|old|outside|initial)"
_DATE = r"(?:___|\d{1,2}/\d{1,2}(?:/\d{2,4})?|\d{4}-\d{2}-\d{2})"
_SIDE = (r"\s*(?:,|(?:(?:to|with)\s+)?(?:that\s+of\s+)?(?:the\s+|a\s+)?(?:right|left|contralateral|opposite|other|"
         r"normal|typical|expected|healthy)\b)")
_CHANGE_VERBS = (r"(?:increased|decreased|improved|worsened|resolved|enlarged|progressed|cleared|diminished|grown|"
                 r"changed|developed|appeared|evolved|regressed|re-?accumulated|re-?expanded|expanded|shrunk(?:en)?|"
                 r"reduced|become|removed|withdrawn|repositioned|advanced|retracted|pulled\s+back|exchanged|"
                 r"replaced)")
# "could be improved", "may worsen": advice or possibility, not a comparison
_FUTURE = r"\b(?:could|can|may|might|would|will|should|to)\s+(?:be\s+|get\s+)?$"
_ADVERBS = (r"(?:also|since|now|slightly|mildly|moderately|markedly|somewhat|significantly|substantially|further|"
            r"largely|partially|nearly|completely|almost|been|not|apparently|probably|likely|essentially|"
            r"minimally|considerably|modestly|subsequently|again)")

RULES: tuple[Rule, ...] = (
    _rule("compared", r"\b(?:compared|comparing)\b(?:\s+(?:to|with|against))?", after=_SIDE),
    _rule("comparison", r"\bcomparisons?\b", after=_SIDE),
    _rule("prior_study", rf"(?<![-\w]){_EARLIER}\s+{_MODS}{_STUDY}\b"),
    _rule("prior_noun", r"\b(?:the|a|any|on|from|since|than|to|with|versus|vs\.?|of|as)\s+(?:the\s+)?"
                        r"(?:most\s+recent\s+|immediately\s+)?(?:prior|previous|preceding|earlier|last)\b"
                        r"(?=\s*(?:[.,;:!?)\]]|$|___|\d|and\b|or\b|which\b|where\b|when\b))"),
    _rule("since_prior", rf"\bsince\s+(?:the\s+)?(?:then\b|yesterday|{_EARLIER}\b|{_DATE}|"
                         r"(?:study|exam|examination|film|radiograph|admission)s?\b)"),
    _rule("date_reference", rf"\b(?:since|from|dated|than|relative\s+to)\s+(?:the\s+)?(?:(?:study|exam(?:ination)?|"
                            rf"film|radiograph)\s+(?:of|from|on|dated)\s+)?{_DATE}"
                            rf"|{_DATE}\s+(?:prior|previous|earlier|ago)\b"
                            rf"|\b{_STUDY}\s+(?:(?:dated|from|of|on|obtained|performed|done|taken)\s+){{1,2}}{_DATE}"),
    _rule("yesterday", r"\byesterday(?:'s)?\b|\bearlier\s+today\b|\bthis\s+morning'?s\b|\blast\s+night'?s\b"),
    _rule("baseline", r"\b(?:from|at|to|than|versus|vs\.?)\s+baseline\b"),
    _rule("unchanged", r"\bunchanged\b"),
    _rule("no_change", r"\b(?:no|without|little|minimal|slight|any|some|not\s+much|hardly\s+any)\s+"
                       r"(?:(?:significant|appreciable|interval|acute|substantial|definite|radiographic|cardiopulmonary|"
                       r"major|relevant|real|obvious|visible|discernible|measurable|further|considerable|important|"
                       r"gross|overall|short-term)\s+){0,3}change\b"
                       r"|\bno\s+(?:(?:significant|appreciable|interval|substantial|definite|further|major|acute)\s+)?"
                       r"changes\b"),
    _rule("change_from", r"\bchanges?\s+(?:from|since|compared|relative|in\s+the\s+interval|when\s+compared)\b"),
    _rule("changed", r"\bchang(?:ed|ing)\b"),
    _rule("again", r"\bagain\b", before=r"^\W*$", after=r"\s*,", both=True),
    _rule("previously", r"\bpreviously\b", before=r"\b(?:i|we)\s+(?:have\s+|had\s+)?$"),
    _rule("interval", r"\bin\s+the\s+interval\b|\binterval(?:ly)?\b(?:\s+[a-z]+)?"),
    _rule("as_before", r"\b(?:as|than)\s+(?:(?:seen|noted|described|demonstrated)\s+)?(?:before|previously|earlier)\b"
                       r"|\b(?:as|than)\s+(?:seen\s+|noted\s+)?(?:on|at|in)\s+(?:the\s+)?"
                       r"(?:prior|previous|last|earlier)\b"),
    _rule("new_since", r"\bnew(?:ly)?\s+(?:since|from|compared|relative|in\s+the\s+interval|when\s+compared|than)\b"),
    _rule("is_new", r"\b(?:is|are|was|were|appears?|seems?|appearing)\s+(?:(?:also|now|probably|likely|not|"
                    r"definitely|entirely|completely|possibly)\s+)?new\b"),
    _rule("newly", r"\bnewly\b", negatable=True),
    _rule("new", r"\bnew\b(?=[\s,-]+\w)(?!\s*,?\s*(?:york|jersey|england|zealand|mexico)\b)", negatable=True),
    _rule("has_changed", rf"\b(?:has|have|had)\s+(?:{_ADVERBS}\s+){{0,3}}{_CHANGE_VERBS}\b"),
    _rule("size_change", r"\b(?:increased|decreased|increasing|decreasing|improved|worsened|enlarged|reduced|"
                         r"diminished|grown|progressed|regressed)\s+(?:(?:slightly|mildly|moderately|markedly|"
                         r"minimally|significantly|substantially|somewhat|further|considerably|modestly)\s+)?"
                         r"(?:in\s+(?:size|extent|severity|conspicuity|volume|caliber|calibre|prominence|degree|"
                         r"number|density|opacity|amount)|since|from)\b"),
    _rule("trend", r"\b(?:increasing|decreasing|enlarging|progressing|progression|regressing|regression|"
                   r"evolving)\b"),
    _rule("worsening", r"\bworsen(?:ed|ing|s)?\b", before=_FUTURE + r"|\bsymptoms?\s+(?:are\s+|get\s+|keep\s+|start\s+)?$"),
    _rule("improvement", r"\bimprov(?:ed|ing|ement|ements)\b", before=_FUTURE),
    _rule("resolving", r"\bresolv(?:ed|ing|es)\b|\bclear(?:ing|ed)\b"),
    _rule("resolution", r"\b(?:interval|complete|near[- ]complete|nearly\s+complete|partial|near|significant|"
                        r"radiographic|subsequent|further)\s+resolution\b"
                        r"|\bresolution\s+of\b(?!\s+(?:the\s+)?(?:image|images|radiograph|film|study|x-?ray|scan|"
                        r"detector|display|monitor)\b)"),
    _rule("re_change", r"\bre-?(?:accumulat|appear|expan|expand|inflat|accumulated)\w*"),
    _rule("no_longer", r"\bno\s+longer\b"),
    _rule("now", r"\b(?:is|are|has|have|was|were)\s+now\b|\bnow\s+(?:seen|noted|demonstrated|visualized|visible|"
                 r"present|appears?|measures?|projects?|terminates?|extends?|lies|shows?|more|less|larger|smaller|"
                 r"in|at|with)\b"),
    _rule("persistent", r"\bpersist(?:s|ed|ent|ently|ence|ing)?\b"),
    _rule("redemonstrated", r"\bre-?\s?demonstrat\w*"),
    _rule("stable", r"\bstab(?:le|ility)\b",
          before=r"(?:\b(?:hemodynamically|haemodynamically|hemodynamic|clinically|medically|vitally)\s+$|"
                 r"\bpatient\s+(?:is\s+|was\s+|appears\s+|seems\s+)?(?:clinically\s+|hemodynamically\s+)?$)",
          after=r"\s+(?:condition|vital|vitals|angina|patient)\b"),
    _rule("pre_existing", r"\bpre-?\s?exist(?:ing|ent)\b"),
    _rule("known", r"\bknown\b", before=r"\b(?:well[- ]?|not\s+|if\s+)$", after=r"\s+(?:as|to|for)\b"),
    _rule("remains", r"\bremain(?:s|ed)?\b",
          after=r"\s+(?:unclear|uncertain|unknown|indeterminate\s+from|to\s+be|a\s+possibility|possible)\b"),
    _rule("continues", r"\bcontinu(?:es|ed|ing)\s+to\b"
                       r"|\bcontinue\s+to\s+(?!(?:follow|monitor|watch|seek|consult|discuss|check|take|see|talk)\b)"
                       r"\w+"),
)

_CLAUSE_BREAK = re.compile(r"[,;:()]|\b(?:but|however|although|though|whereas|while)\b", _I)
_NEGATION = re.compile(r"\b(?:no|not|without|negative\s+for|free\s+of|absence\s+of|absent|nor|neither|rather\s+than|"
                       r"rule\s+out|r/o)\b", _I)


def _negated(before: str) -> bool:
    """A negation cue in the clause that ends where the match starts."""
    clause = _CLAUSE_BREAK.split(before)[-1]
    return bool(_NEGATION.search(clause))


def prior_study_phrases(text: str) -> list[Match]:
    """Every piece of prior-study language in `text`, sentence by sentence, in reading order.

    Where rules overlap, the longest match wins (then the earlier rule in `RULES`), so one phrase is
    reported once.
    """
    out: list[Match] = []
    for sentence in split_sentences(text or ""):
        out.extend(_sentence_matches(sentence))
    return out


def has_prior_reference(text: str) -> bool:
    """True when `text` has any prior-study language."""
    return any(_sentence_matches(s) for s in split_sentences(text or ""))


def remove_prior_sentences(text: str) -> tuple[str, list[str]]:
    """Drop every sentence with prior-study language; returns `(kept_text, removed_sentences)`.

    Kept sentences keep their order; sentences of one block are joined by a space, blocks by a line
    break. `kept_text` is "" when nothing current is left. The kept text is checked again (joined
    sentences are re-split) until it carries no prior-study language, so `has_prior_reference(kept)`
    is always False.
    """
    removed: list[str] = []
    current = text or ""
    while True:
        kept_blocks: list[str] = []
        dropped_here = 0
        for block in _blocks(current):
            kept = []
            for sentence in block:
                if _sentence_matches(sentence):
                    removed.append(sentence)
                    dropped_here += 1
                else:
                    kept.append(sentence)
            if kept:
                kept_blocks.append(" ".join(kept))
        current = "\n".join(kept_blocks)
        if dropped_here == 0 or not has_prior_reference(current):
            return current, removed


def _sentence_matches(sentence: str) -> list[Match]:
    found: list[tuple[int, int, int]] = []
    for index, rule in enumerate(RULES):
        for m in rule.pattern.finditer(sentence):
            if m.end() > m.start() and rule.fires(sentence, m.start(), m.end()):
                found.append((m.start(), m.end(), index))
    found.sort(key=lambda f: (f[0], -(f[1] - f[0]), f[2]))
    out: list[Match] = []
    last_end = -1
    for start, end, index in found:
        if start < last_end:
            continue
        out.append(Match(sentence[start:end], sentence, RULES[index].name, start, end))
        last_end = end
    return out


# ------------------------------------------------------------------------------------- sentences

_HEADER = re.compile(r"^\s*[A-Z][A-Za-z0-9 ()/,&'-]{1,40}:(?=\s|$)")
_BULLET = re.compile(r"^\s*(?:[-*•]|\u2022)\s+")
_LIST_START = re.compile(r"^\s*\(?\d{1,2}[.)](?!\d)")
_RULE_LINE = re.compile(r"^\s*_{5,}\s*$")
_END = re.compile(r"[.!?]+[\"')\]]*")
_LIST_MARK = re.compile(r"\(?\d{1,2}[.)]\s*(?=[A-Za-z(\"'])")
_HEADER_PREFIX = r"(?:[A-Z][A-Za-z0-9 ()/,&'-]{1,40}:\s*)?"
_MARKER_ONLY = re.compile(rf"^\s*{_HEADER_PREFIX}\(?(?:\d{{1,2}}|[A-Za-z])\)?\s*$")
_NUMBER_BEFORE = re.compile(r"\s\(?(\d{1,2})$")
_TOKEN_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")
_NUMBERED = re.compile(rf"^\s*{_HEADER_PREFIX}\(?(\d{{1,2}})[.)]")
# Never end a sentence; end one only before a capital letter.
_ABBREV = frozenset({"dr", "drs", "mr", "mrs", "ms", "prof", "vs", "e.g", "i.e", "eg", "ie", "cf", "approx", "appr",
                     "fig", "figs", "st", "nos", "viz", "ca", "al", "et"})
_ABBREV_SOFT = frozenset({"a.m", "p.m", "am", "pm", "etc", "incl", "resp", "esp", "min", "max", "mm", "cm", "ml",
                          "sq", "lat", "ant", "post", "sup", "inf", "med", "pt", "pts"})


def split_sentences(text: str) -> list[str]:
    """Sentences of radiology report text (stripped, in order); see the module docstring."""
    return [s for block in _blocks(text or "") for s in block]


def _blocks(text: str) -> list[list[str]]:
    """Blocks (paragraphs, list items, sections) as lists of sentences."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[list[str]] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            joined = " ".join(current)
            sentences = _split_block(joined)
            if sentences:
                blocks.append(sentences)
            current.clear()

    for line in lines:
        stripped = line.strip()
        if not stripped or _RULE_LINE.match(line):
            # a header alone on its line keeps the text after a blank line as its own
            if not (len(current) == 1 and _HEADER.match(current[0]) and current[0].endswith(":")):
                flush()
            continue
        if current and (_HEADER.match(stripped) or _BULLET.match(stripped) or _LIST_START.match(stripped)):
            flush()
        current.append(stripped)
    flush()
    return blocks


def _split_block(block: str) -> list[str]:
    s = re.sub(r"\s+", " ", block).strip()
    pieces: list[str] = []
    start = 0
    for m in _END.finditer(s):
        end = m.end()
        if end < len(s) and not s[end].isspace():
            # glued: "IN PLACE.2.NO EFFUSION" ends a sentence only before a list number, and never
            # inside a number ("2.5. The" is one sentence ending after 2.5)
            if (m.group()[0] == "." and m.start() > start and not s[m.start() - 1].isdigit()
                    and _LIST_MARK.match(s, end) and not _MARKER_ONLY.match(s[start:m.start()])):
                pieces.append(s[start:end])
                start = end
            continue
        before = s[start:m.start()]
        if _MARKER_ONLY.match(before) or not before.strip():
            continue  # "1. The lungs" / stray punctuation
        number, head = _NUMBER_BEFORE.search(before), _NUMBERED.match(before)
        if number and head and int(number.group(1)) == int(head.group(1)) + 1 and m.group() == ".":
            # "1. clear lungs 2. no effusion": the next list number starts the next sentence
            cut = start + number.start() + 1
            pieces.append(s[start:cut])
            start = cut
            continue
        if m.group().startswith(".") and len(m.group().rstrip("\"')]")) == 1:
            token = _TOKEN_BEFORE.search(before)
            word = token.group(1).lower().rstrip(".") if token else ""
            if word in _ABBREV:
                continue
            if word in _ABBREV_SOFT:
                following = s[end:].lstrip()
                if not following[:1].isupper():
                    continue
        pieces.append(s[start:end])
        start = end
    pieces.append(s[start:])
    out: list[str] = []
    for piece in pieces:
        out.extend(_split_numbered(piece.strip()))
    return [p for p in out if p and not _MARKER_ONLY.match(p)]


def _split_numbered(sentence: str) -> list[str]:
    """`1. clear lungs 2. no effusion` (a list without periods) into its items."""
    out: list[str] = []
    while True:
        head = _NUMBERED.match(sentence)
        if not head:
            break
        nxt = re.search(rf"\s\(?{int(head.group(1)) + 1}[.)]\s*(?=[A-Za-z(])", sentence[head.end():])
        if not nxt:
            break
        cut = head.end() + nxt.start()
        out.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    out.append(sentence)
    return out

