"""loraprune: structured pruning of LLaMA-family LLMs guided by LoRA gradients (LoRAPrune)."""

import loraprune.run.quiet  # noqa: F401 - first: drops known third-party import noise (see the module)
from loraprune.export.card import ModelCard
from loraprune.run.checkpoint import load_pruned, save_pruned

__all__ = ["ModelCard", "load_pruned", "save_pruned", "run"]


def run(cfg):
    """Run one experiment from a config (see :func:`loraprune.run.pipeline.run`)."""
    from loraprune.run.pipeline import run as _run

    return _run(cfg)
