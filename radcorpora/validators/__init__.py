"""Record-level and corpus-level checks -> a validation report."""

from radcorpora.store.folder import BuildFolderError
from radcorpora.validators.report import ValidationReport

__all__ = ["BuildFolderError", "ValidationReport"]
