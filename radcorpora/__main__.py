"""`python -m radcorpora`: the same command line as the `radcorpora` script."""

from radcorpora.console import main

main()
