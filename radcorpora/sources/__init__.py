"""One module per upstream dataset: reads its real files into typed source records."""
