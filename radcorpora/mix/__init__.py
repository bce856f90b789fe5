"""Training mixes across builds (`radcorpora mix`): the chosen configs of several builds
interleaved by weight into one Hub dataset of LLaVA-style rows (images + conversations), each row
keeping its corpus and config, written through the one build lifecycle so a mix validates,
previews, exports and trains like any build. Sits beside publish: it reads builds, never sources."""
