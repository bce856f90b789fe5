"""One module per corpus: sources + ops (+ llm) -> validated samples, as named stages."""
