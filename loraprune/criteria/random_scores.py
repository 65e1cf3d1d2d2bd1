"""The random baseline (LLM-Pruner's ``RandomImportance``): seeded uniform scores per channel.

Every unit of a group kind owns the same number of channels in each slice, so summing the slices' random
channel scores still ranks units uniformly at random. Scores are drawn in the (fixed) order the pruner
asks for them, from one generator seeded by ``method.options.seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from loraprune.core.lora import lora_tensors
from loraprune.criteria.base import Criterion


@dataclass
class RandomOptions:
    """``seed``: the generator's seed."""

    seed: int = 0


class RandomCriterion(Criterion):
    """Uniform random channel scores from a seeded generator."""

    name = "random"
    options_type = RandomOptions

    def __init__(self, options: RandomOptions | None = None) -> None:
        super().__init__(options)
        self.seed = int(self.options.seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def element_scores(self, module: nn.Module) -> torch.Tensor:
        shape = lora_tensors(module).weight.shape
        return torch.rand(shape, generator=self.generator)

    def channel_scores(self, module: nn.Module, dim: int) -> torch.Tensor:
        n = lora_tensors(module).weight.shape[dim]
        return torch.rand(n, generator=self.generator)
