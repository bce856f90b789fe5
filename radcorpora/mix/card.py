"""The card of a mix: what it is made of (inputs, weights, shares), how leakage was settled,
and every input card's licence and citations; the licence class is the most restrictive input's."""

from __future__ import annotations

from typing import Any

from radcorpora.spec.card import CardContent

LICENCE_WORDS = {
    "public": "public (openly licensed)",
    "restricted": "restricted (by-request / research-use terms: not pushed publicly without "
                  "`--allow-public-restricted`)",
    "credentialed": "credentialed (PhysioNet-style data use agreement: only ever pushed to a private repository; "
                    "`radcorpora publish` refuses a public one)",
}

USAGE = """```python
from datasets import load_dataset

mix = load_dataset("path/or/repo", name="default")  # train (the weighted mix), plus the inputs' held-out splits
row = mix["train"][0]  # images, conversations (LLaVA turns), corpus, config, source_row, lineage
```

Train a reference model on it like on any build: `radcorpora train MIX_DIR --model tiny --out run`.
Evaluate on each input build's own benchmark (`radcorpora evaluate BUILD ...`): a mix has no single metric."""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _licence_yaml(mix: dict[str, Any]) -> dict[str, str]:
    """The inputs' licence if they share one; else `other`, named after all of them, linking the
    most restrictive input's terms."""
    order = ("credentialed", "restricted", "public")  # the strictest input's terms first
    strictness = {e.get("source"): order.index(e.get("licence_class", "credentialed")) for e in mix.get("inputs") or []}
    cards = sorted((mix.get("sources") or {}).items(), key=lambda item: (strictness.get(item[0], 0), item[0]))
    licences = [c.get("licence") or {} for _, c in cards]
    distinct = {tuple(sorted(lic.items())) for lic in licences if lic}
    if len(distinct) == 1:
        return dict(next(iter(distinct)))
    names = sorted({lic.get("license_name") or lic.get("license") or "unknown" for lic in licences})
    out = {"license": "other", "license_name": "-and-".join(n.replace(" ", "-").lower() for n in names) or "mixed"}
    links = [lic.get("license_link") for lic in licences if lic.get("license_link")]
    if links:
        out["license_link"] = links[0]
    return out


def mix_card(manifest: dict[str, Any]) -> CardContent:
    mix = manifest.get("mix") or {}
    entries = mix.get("inputs") or []
    strictest = manifest.get("licence_class", "credentialed")
    splits = sorted({s for e in entries for s in (e.get("rows") or {})})
    weighted = all(e.get("weight") for e in entries)
    rows = [[e["build"], e["corpus"], e["config"], e.get("weight") or "all rows", e["expand"], e["licence_class"],
             *[e["rows"].get(s, 0) for s in splits], e.get("share_train", 0), e.get("dropped_train", 0)]
            for e in entries]
    inputs = _table(["build", "corpus", "config", "weight", "examples per row", "licence class", *splits,
                     "share of train", "train rows dropped"], rows)
    method = (f"The train split takes from each input a share of its {'assistant-turn tokens' if mix.get('by') == 'tokens' else 'rows'} "
              "in proportion to the weights: the input that runs out first bounds the mix, the others are sampled "
              "without repetition" if weighted else "The train split takes every row of every input") + \
        (f" (seed {mix.get('seed')}); the held-out splits take every row. Each split spreads every input's rows evenly "
         "through it (a seeded jitter), each input in its own order. `examples per row`: `question` and `instance` "
         "inputs give one example per question (per instance) of a source row; their image is stored once per row "
         "group, never once per example." + (" Tokens: words and punctuation marks (`\\w+|[^\\w\\s]`) of the gpt "
                                              "turns, a count that does not depend on a model's tokenizer."
                                              if mix.get("by") == "tokens" else ""))
    leakage = mix.get("leakage") or {}
    cases = int(leakage.get("cases") or 0)
    kinds = ", ".join(f"{k} {n}" for k, n in (leakage.get("by_kind") or {}).items() if n)
    if not cases:
        leak_text = (f"`radcorpora leakage` found no patient, study or image (pHash distance <= "
                     f"{mix.get('phash_distance')}) of a training row here in an evaluation split of any input build.")
    elif mix.get("resolve") == "drop-train":
        leak_text = (f"`radcorpora leakage` found {cases} cases ({kinds}) between the inputs' training rows and their "
                     f"evaluation splits; `--resolve drop-train` left out the {mix.get('dropped_train_rows', 0)} "
                     "colliding training examples (per input in the table above).")
    else:
        leak_text = (f"**Leakage allowed (`--allow-leakage`)**: `radcorpora leakage` found {cases} cases ({kinds}) "
                     "between the inputs' training rows and their evaluation splits, and they were left in. Scores on "
                     "those evaluation splits after training on this mix overstate what a model does on unseen data.")
    cards = mix.get("sources") or {}
    licence_parts = [(f"Licence class of this mix: **{LICENCE_WORDS.get(strictest, strictest)}**, the most "
                      "restrictive of its inputs' (public < restricted < credentialed). Each input's terms apply to "
                      "its rows (the `corpus` and `config` columns say whose):")]
    citations: list[str] = []
    for entry in entries:
        card = cards.get(entry.get("source")) or {}
        for citation in card.get("citations") or []:
            if citation not in citations:
                citations.append(citation)
    seen = set()
    for entry in entries:
        if entry.get("source") in seen:
            continue
        seen.add(entry.get("source"))
        card = cards.get(entry.get("source")) or {}
        text = card.get("licence_text") or "(its card states no licence)"
        licence_parts.append(f"### {entry['build']} ({entry['corpus']}, {entry['licence_class']})\n\n{text}")
    return CardContent(
        pretty_name="Training mix (radcorpora)",
        summary=("A training mix of " + ", ".join(f"`{e['corpus']}:{e['config']}`" for e in entries)
                 + ", written by `radcorpora mix`: one row per training example (an `images` list and LLaVA "
                   "`conversations`), with its `corpus`, `config` and `source_row`, interleaved by weight."),
        licence=_licence_yaml(mix),
        licence_text="\n\n".join(licence_parts),
        citations=citations,
        task_categories=["visual-question-answering", "image-text-to-text"],
        tags=["medical", "radiology", "training-mix"],
        usage=USAGE,
        sections={"Inputs": inputs, "How the mix was drawn": method, "Leakage": leak_text},
    )
