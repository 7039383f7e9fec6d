"""Hugging Face llama family: config and weight mapping (being written)."""
