"""pluralign: align language models with many people's preferences."""

__version__ = "0.1.0"
