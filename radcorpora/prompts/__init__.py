"""Prompt and template files (data, not code) and their loader."""

from radcorpora.prompts.loader import TemplateSet, load_template_set

__all__ = ["TemplateSet", "load_template_set"]
