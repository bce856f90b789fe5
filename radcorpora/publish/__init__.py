"""Hub-layout writer (Parquet shards, images stored once), dataset card, push, load."""
