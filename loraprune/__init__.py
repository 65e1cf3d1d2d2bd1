"""loraprune: structured pruning of LLaMA-family LLMs guided by LoRA gradients (LoRAPrune)."""

import loraprune.run.quiet  # noqa: F401 - first: drops known third-party import noise (see the module)
from loraprune.export.auto import register_pruned_llama
from loraprune.export.card import ModelCard
from loraprune.train.checkpoint import load_pruned, save_pruned

register_pruned_llama()  # our own checkpoints load without a remote-code question (loraprune.export.auto)

__all__ = ["ModelCard", "load_pruned", "save_pruned", "run"]


def run(cfg):
    """Run one experiment from a config (see :func:`loraprune.run.pipeline.run`)."""
    from loraprune.run.pipeline import run as _run

    return _run(cfg)
