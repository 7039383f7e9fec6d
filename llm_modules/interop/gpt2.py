"""Hugging Face gpt2 family: config and weight mapping (being written)."""
