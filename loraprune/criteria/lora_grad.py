"""LoRAPrune's criterion: the full-weight gradient estimated from LoRA's own gradients."""

from __future__ import annotations

import torch
from torch import nn

from loraprune.core.lora import lora_tensors
from loraprune.criteria.base import Criterion, Needs


def estimated_weight_grad(
    lora_a: torch.Tensor, lora_b: torch.Tensor, grad_a: torch.Tensor, grad_b: torch.Tensor
) -> torch.Tensor:
    """G ≈ ∂L/∂B·A + B·∂L/∂A − ∂L/∂B·∂L/∂A (LoRAPrune, eq. 6)."""
    return grad_b @ lora_a + lora_b @ grad_a - grad_b @ grad_a


class LoraGradCriterion(Criterion):
    """S = |G ⊙ (W + s·B·A)| with G estimated from the LoRA gradients; no ∂L/∂W needed."""

    name = "loraprune"
    needs = Needs(lora_grads=True)

    def element_scores(self, module: nn.Module) -> torch.Tensor:
        t = lora_tensors(module)
        if t.lora_a is None:
            raise ValueError(
                "the loraprune criterion needs LoRA on every pruned projection (lora.target_modules)"
            )
        if t.lora_a.grad is None or t.lora_b.grad is None:
            raise RuntimeError("LoRA gradients are missing: call backward() before scoring")
        a, b = t.lora_a.detach().float(), t.lora_b.detach().float()
        g = estimated_weight_grad(a, b, t.lora_a.grad.float(), t.lora_b.grad.float())
        return (g * t.effective_weight()).abs()
