"""Make the per-layer form a model type transformers knows in this process, so loading our own
checkpoints asks nothing.

A per-layer checkpoint names its classes in ``config.json``'s ``auto_map`` (custom code, for users
without loraprune). Any ``AutoConfig`` read of it (``AutoTokenizer.from_pretrained`` reads the config
first in transformers 5) then asks in a terminal whether to run that code, waits for an answer, and on
none falls back to a bare config with a model-type warning. Registering ``pruned_llama`` with
``AutoConfig`` answers from the copy installed with loraprune (the same file as the one saved next to
the weights): no question, no wait, no warning. Only the config is registered: it imports nothing
beyond transformers' LLaMA config, so ``import loraprune`` stays light; loraprune loads the model class
itself (:func:`loraprune.train.checkpoint.load_pruned`). ``trust_remote_code=True`` still loads as before.
"""

from __future__ import annotations

from loraprune.export.configuration_pruned_llama import PrunedLlamaConfig


def register_pruned_llama() -> None:
    """Register :class:`PrunedLlamaConfig` with ``AutoConfig`` (idempotent)."""
    from transformers import AutoConfig

    AutoConfig.register(PrunedLlamaConfig.model_type, PrunedLlamaConfig, exist_ok=True)
