"""radcorpora: build, validate and publish radiology vision-language training corpora."""

# Part of every build's fingerprint: raise it whenever the same sources and settings would give
# different bytes, so a build folder made by another version is never taken as current.
__version__ = "0.4.0"
