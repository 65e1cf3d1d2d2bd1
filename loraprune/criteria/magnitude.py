"""Magnitude criterion: G = 1, so S = |W + s·B·A|."""

from __future__ import annotations

import torch
from torch import nn

from loraprune.core.lora import lora_tensors
from loraprune.criteria.base import Criterion


class MagnitudeCriterion(Criterion):
    """S = |W_eff|: the LoRAPrune pipeline with the gradient term dropped."""

    name = "magnitude"

    def element_scores(self, module: nn.Module) -> torch.Tensor:
        return lora_tensors(module).effective_weight().abs()
