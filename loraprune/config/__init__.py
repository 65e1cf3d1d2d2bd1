"""The typed config schema (dataclasses Hydra validates every preset and override against)."""
