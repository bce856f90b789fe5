"""radcorpora: build, validate and publish radiology vision-language training corpora."""

__version__ = "0.1.0"
