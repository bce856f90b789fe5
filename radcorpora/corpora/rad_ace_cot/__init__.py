"""The rad_ace_cot corpus: its spec (spec.py), settings, records, build stages, rules, card text and prompts."""
