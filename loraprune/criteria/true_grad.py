"""The true-gradient criterion: S = |∂L/∂W ⊙ (W + s·B·A)| (needs gradients of the pretrained weights)."""

from __future__ import annotations

import torch
from torch import nn

from loraprune.core.lora import lora_tensors
from loraprune.criteria.base import Criterion, Needs


class TrueGradCriterion(Criterion):
    """What LoRAPrune approximates; costs a full-size gradient per pruned weight."""

    name = "grad"
    needs = Needs(weight_grads=True)

    def element_scores(self, module: nn.Module) -> torch.Tensor:
        t = lora_tensors(module)
        if t.weight.grad is None:
            raise RuntimeError(
                "∂L/∂W is missing: the grad criterion needs requires_grad on the pruned weights"
            )
        return (t.weight.grad.float() * t.effective_weight()).abs()
