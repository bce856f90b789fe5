"""Errors raised by source readers: each names the file (and row) at fault."""


class SourceError(ValueError):
    """The source data cannot be read as the upstream format; the message says where and why."""
