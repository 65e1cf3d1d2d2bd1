"""The error a GGUF export reports (one line, before anything is written)."""

from __future__ import annotations


class GGUFExportError(ValueError):
    """A model, tokenizer or request a GGUF export cannot write faithfully."""
