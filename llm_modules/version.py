"""The package version, in a module of its own so that the CLI can print it without importing the
top-level package namespace."""

__version__ = "0.1.0"
