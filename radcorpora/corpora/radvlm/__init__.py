"""The radvlm corpus: its spec (spec.py), settings, records, build stages, rules, card text and prompts."""
