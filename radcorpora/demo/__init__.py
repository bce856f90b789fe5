"""Small demo sources in the upstream formats, drawn by radcorpora, for `radcorpora demo`."""
