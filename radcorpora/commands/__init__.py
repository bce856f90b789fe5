"""What the command line does, as functions: cli.py declares the commands and calls these (the
generated build/estimate commands, the summary screens, adjudication, publishing, the demo and
the reference models)."""
