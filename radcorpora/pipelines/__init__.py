"""Whole builds, one module per corpus: sources -> builder stages -> shards -> card -> validation."""
