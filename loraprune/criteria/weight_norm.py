"""LLM-Pruner's magnitude baselines ``l1`` / ``l2`` (``MagnitudeImportance(p=1|2)``).

Reference read: ``LLMPruner/pruner/hf_llama_pruner.py`` (``MagnitudeImportance``) of horseee/LLM-Pruner:
a row (output channel) scores ``Σ_j |W_ij|^p``, a column (input channel) ``Σ_i |W_ij|^p``; the group adds
its modules' channel scores (the reference averages them, ``group_reduction="mean"``: a constant factor per
group kind, so the same ranking) with no normalisation (``method.normalize: false``). The weight is
``W + s·B·A`` (the pretrained ``W`` at a one-shot step 0).
"""

from __future__ import annotations

import torch
from torch import nn

from loraprune.core.lora import lora_tensors
from loraprune.criteria.base import Criterion


class WeightNormCriterion(Criterion):
    """Element score ``|W|^p``: summed per channel this is the channel's Lp norm to the power p."""

    name = "lp"
    p = 2

    def element_scores(self, module: nn.Module) -> torch.Tensor:
        return lora_tensors(module).effective_weight().abs().pow(self.p)


class L1Criterion(WeightNormCriterion):
    """Σ|W| per channel."""

    name = "l1"
    p = 1


class L2Criterion(WeightNormCriterion):
    """Σ W² per channel."""

    name = "l2"
    p = 2
