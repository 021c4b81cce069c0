"""HACA: a network for verifiable AI inference."""

__version__ = "0.1.0"
