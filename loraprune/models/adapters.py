"""peft LoRA adapters on a frozen model, from the ``lora`` config node."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Protocol

from loraprune.models.fast_dropout import use_fast_dropout


class LoraSettings(Protocol):
    """What :func:`add_lora` reads of the ``lora`` node (:class:`loraprune.config.schema.LoraConfig`)."""

    r: int
    alpha: int
    dropout: float
    fast_dropout: bool
    target_modules: Sequence[str]


def add_lora(model, lora: LoraSettings):
    """Wrap ``model`` with peft LoRA adapters (the base frozen; LoRA in fp32 even on a bf16 base); with
    ``lora.fast_dropout`` the branches' dropout is :class:`~loraprune.models.fast_dropout.FastDropout`."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # peft asks transformers 5 a deprecated question; nothing for the user to do
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        # an int8 base (model.quantize): loraprune merges by dequantizing itself, not through peft's merge
        warnings.filterwarnings(
            "ignore", message="TorchaoLoraLinear was instantiated without", category=UserWarning
        )
        peft_model = get_peft_model(model, peft_cfg)
    if lora.fast_dropout:
        use_fast_dropout(peft_model)
    return peft_model
