"""Hugging Face t5 family: config and weight mapping (being written)."""
