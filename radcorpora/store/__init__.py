"""Build folders on disk: atomic writes, Parquet shards in the Hub layout, and the one reader of a
finished build (manifest, card, shards, rows) that validators, publish and reference models share."""
