"""Record-level and corpus-level checks -> a validation report."""

from radcorpora.spec.report import ValidationReport
from radcorpora.store.folder import BuildFolderError

__all__ = ["BuildFolderError", "ValidationReport"]
