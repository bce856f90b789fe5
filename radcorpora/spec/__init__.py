"""Declarations a corpus is made of (data only): its spec, build context, card text, preview and
evaluation recipe, validation report and rules. Corpus packages import these; the engine,
validators, publish and reference_models read them. Imports only schemas and store."""
