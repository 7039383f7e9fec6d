"""Hugging Face bloom family: config and weight mapping (being written)."""
