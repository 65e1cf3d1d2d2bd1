"""The criterion interface: element scores of one projection, and LoRA tensor access."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


class Criterion(Protocol):
    """Maps one projection to a score per weight element (same shape as its weight).

    ``needs_weight_grads`` marks criteria that need ``∂L/∂W`` of the pretrained weights (memory-hungry).

    Optional extensions, used when a criterion defines them:

    * ``channel_scores(module, dim) -> Tensor | None``: one score per output row (``dim=0``) or input
      column (``dim=1``), for criteria that are not sums of element scores (LLM-Pruner's ``vector``
      Taylor) or that score only some slices of a group (``None``: the slice adds nothing).
      :func:`loraprune.core.importance.unit_scores` prefers it to summing ``element_scores``.
    * ``calibrate(model, modules, batches) -> None`` and ``release() -> None``: criteria that need their
      own statistics from calibration data (true gradients, input-activation norms) before a one-shot
      prune at step 0; see :mod:`loraprune.run.calibration`. ``calibration_defaults`` gives their default
      ``(samples, seq_len)``.
    """

    name: str
    needs_weight_grads: bool

    def element_scores(self, module: nn.Module) -> torch.Tensor: ...


@dataclass(frozen=True)
class LoraTensors:
    """The tensors of a LoRA-wrapped linear layer: W (out×in), A (r×in), B (out×r), scaling s."""

    weight: torch.Tensor
    lora_a: nn.Parameter | None
    lora_b: nn.Parameter | None
    scaling: float

    def effective_weight(self) -> torch.Tensor:
        """W + s·B·A (just W without LoRA), detached, in float32."""
        w = self.weight.detach().float()
        if self.lora_a is None:
            return w
        return w + self.scaling * (self.lora_b.detach().float() @ self.lora_a.detach().float())


def lora_tensors(module: nn.Module) -> LoraTensors:
    """Read W, A, B and s of a peft LoRA ``Linear`` (or W of a plain ``nn.Linear``)."""
    if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
        active = module.active_adapters
        if len(active) != 1:
            raise ValueError(f"expected exactly one active LoRA adapter, got {active}")
        name = active[0]
        if name in module.lora_A:
            return LoraTensors(
                module.base_layer.weight,
                module.lora_A[name].weight,
                module.lora_B[name].weight,
                float(module.scaling[name]),
            )
        return LoraTensors(module.base_layer.weight, None, None, 0.0)
    if isinstance(module, nn.Linear):
        return LoraTensors(module.weight, None, None, 0.0)
    raise TypeError(f"cannot score a {type(module).__name__}; expected nn.Linear or a peft LoRA Linear")
