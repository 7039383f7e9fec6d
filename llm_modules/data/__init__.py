"""Data: tokenizers, text sources, datamodules and the objectives' collators."""
