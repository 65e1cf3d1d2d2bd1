"""Magnitude criterion: G = 1, so S = |W + s·B·A|."""

from __future__ import annotations

import torch
from torch import nn

from loraprune.criteria.base import lora_tensors


class MagnitudeCriterion:
    """S = |W_eff|: the LoRAPrune pipeline with the gradient term dropped."""

    name = "magnitude"
    needs_weight_grads = False

    def element_scores(self, module: nn.Module) -> torch.Tensor:
        return lora_tensors(module).effective_weight().abs()
