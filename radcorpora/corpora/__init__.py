"""One package per corpus; radcorpora.registry lists them."""
