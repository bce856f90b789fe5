"""ct-reasoning: CT reports (CT-RATE, AMOS-MM, AbdomenAtlas 3.0) -> examiner questions with thinking
written as if reading the scan, gated, refined so it never cites the report, and one report-thinking
narrative per scan (the five-role pipeline of the mu^2 Tokenizer paper, Li et al. 2025)."""
