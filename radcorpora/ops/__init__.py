"""Pure functions shared by builders and validators (no I/O)."""
