"""The package version, in a module of its own so that any module can read it without importing
``bench`` (whose API functions import the whole package lazily)."""

__version__ = "0.1.0"
