"""A small corpus defined outside radcorpora/corpora, the way docs/adding-a-corpus.md says: images
with a finding label become a caption conversation written by one LLM stage (offline stand-in)
and a label question that needs no LLM. tests/test_adding_a_corpus.py runs it through every
command."""
