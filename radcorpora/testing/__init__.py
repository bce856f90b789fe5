"""Test equipment, not library code.

Modules here (such as `fake_llm_server`, a local server speaking the OpenAI and Anthropic wire
formats) are imported by tests and benchmarks only. Nothing else under `radcorpora/` may import
this package: a build never depends on it.
"""
