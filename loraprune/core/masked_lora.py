"""LoRA that respects an element mask: a peft LoRA ``Linear`` computing ``x·((W + s·B·A) ⊙ M)ᵀ``.

After semi-structured (N:M) pruning the pretrained weight is zeroed where ``M`` is 0, but LoRA's update
``s·B·A`` is dense: trained as peft computes it, part of what recovery learns sits on pruned positions
and is thrown away when the adapter is merged through the mask. With the mask on the update too (as in
sparsity-preserving PEFT, e.g. SPP / SQFT), the model trained is exactly the model exported:
merged == unmerged.

The masked update is computed under activation checkpointing, so autograd keeps ``x``, ``A``, ``B``
(and the mask), never the dense ``out × in`` update: memory stays near plain LoRA's; the price is one
dense ``out × in`` matmul per projection in the forward and again in the backward.
"""

from __future__ import annotations

from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from loraprune.core.lora import lora_tensors


def _masked_update(
    x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, keep: torch.Tensor, scaling: float
):
    delta = (lora_b @ lora_a) * scaling
    return F.linear(x, delta * keep.to(delta.dtype))


def _masked_forward(self: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    result = self.base_layer(x, *args, **kwargs)
    if getattr(self, "disable_adapters", False) or getattr(self, "merged", False):
        return result
    name = self.active_adapters[0]
    lora_a, lora_b = self.lora_A[name].weight, self.lora_B[name].weight
    h = self.lora_dropout[name](x.to(lora_a.dtype))
    keep, scaling = self._loraprune_keep, float(self.scaling[name])
    if torch.is_grad_enabled() and (lora_a.requires_grad or lora_b.requires_grad):
        update = checkpoint(_masked_update, h, lora_a, lora_b, keep, scaling, use_reentrant=False)
    else:
        update = _masked_update(h, lora_a, lora_b, keep, scaling)
    return result + update.to(result.dtype)


def mask_lora_update(module: nn.Module, keep: torch.Tensor) -> None:
    """Make ``module`` (a peft LoRA ``Linear`` with one active adapter) use ``(W + s·B·A) ⊙ keep``.

    ``keep`` (bool, the weight's shape) is held by reference: changing it in place changes the layer.
    The pretrained weight itself is not touched (zero it where ``keep`` is False; see
    :mod:`loraprune.core.nm`).
    """
    t = lora_tensors(module)
    if t.lora_a is None:
        raise ValueError("mask_lora_update needs a peft LoRA Linear with an active adapter")
    if keep.shape != t.weight.shape:
        raise ValueError(f"mask shape {tuple(keep.shape)} != weight shape {tuple(t.weight.shape)}")
    module._loraprune_keep = keep
    module.forward = MethodType(_masked_forward, module)


def unmask_lora_update(module: nn.Module) -> None:
    """Back to peft's own forward (e.g. before ``merge_and_unload``)."""
    if "forward" in module.__dict__:
        del module.forward
    module.__dict__.pop("_loraprune_keep", None)
