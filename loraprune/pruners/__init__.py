"""Pruners: one interface for structured and N:M, iterative and one-shot pruning."""
