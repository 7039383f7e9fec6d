"""Hugging Face bert family: config and weight mapping (being written)."""
