"""LoRAPrune's criterion: the full-weight gradient estimated from LoRA's own gradients."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from loraprune.core.lora import LoraTensors, lora_tensors
from loraprune.criteria.base import Criterion, Needs

ACCUMULATIONS = ("mean", "fisher")


def estimated_weight_grad(
    lora_a: torch.Tensor, lora_b: torch.Tensor, grad_a: torch.Tensor, grad_b: torch.Tensor
) -> torch.Tensor:
    """G ≈ ∂L/∂B·A + B·∂L/∂A − ∂L/∂B·∂L/∂A (LoRAPrune, eq. 6)."""
    return grad_b @ lora_a + lora_b @ grad_a - grad_b @ grad_a


@dataclass
class LoraGradOptions:
    """Options of the ``loraprune`` criterion.

    Attributes:
        accumulate: ``mean`` scores the step's gradient (the mean over its micro-batches; LoRAPrune);
            ``fisher`` scores each channel by the mean over the step's micro-batches of Σ (G_i ⊙ W')²
            over the channel's elements, G_i estimated from micro-batch i's own LoRA gradients (a
            Fisher-like second moment, as LLM-Pruner's element2; needs ``trainer.micro_batch_size`` <
            ``trainer.batch_size`` to average more than one; channel sums only, so memory stays LoRA's;
            structured pruning only).
    """

    accumulate: str = "mean"

    def __post_init__(self) -> None:
        if self.accumulate not in ACCUMULATIONS:
            raise ValueError(
                f"loraprune accumulate must be one of {', '.join(ACCUMULATIONS)}, got {self.accumulate!r}"
            )


def _tensors(module: nn.Module) -> LoraTensors:
    t = lora_tensors(module)
    if t.lora_a is None:
        raise ValueError(
            "the loraprune criterion needs LoRA on every pruned projection (lora.target_modules)"
        )
    if t.lora_a.grad is None or t.lora_b.grad is None:
        raise RuntimeError("LoRA gradients are missing: call backward() before scoring")
    return t


class LoraGradCriterion(Criterion):
    """S = |G ⊙ (W + s·B·A)| with G estimated from the LoRA gradients; no ∂L/∂W needed."""

    name = "loraprune"
    needs = Needs(lora_grads=True)
    options_type = LoraGradOptions

    def __init__(self, options: LoraGradOptions | None = None) -> None:
        super().__init__(options)
        self._previous: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # the step's grads so far
        self._sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # Σ_i rows, columns of (G_i⊙W')²
        self._count = 0

    def element_scores(self, module: nn.Module) -> torch.Tensor:
        t = _tensors(module)
        a, b = t.lora_a.detach().float(), t.lora_b.detach().float()
        g = estimated_weight_grad(a, b, t.lora_a.grad.float(), t.lora_b.grad.float())
        return (g * t.effective_weight()).abs()

    # ------------------------------------------------------------------- accumulate=fisher
    @property
    def per_micro_batch(self) -> bool:
        return self.options.accumulate == "fisher"

    def reset_accumulation(self) -> None:
        self._previous.clear()
        self._sums.clear()
        self._count = 0

    @torch.no_grad()
    def accumulate(self, modules: list[nn.Module], count: int) -> None:
        """Micro-batch i's own gradients are ``count`` × what it added to the step's (its loss is the
        micro-batch mean divided by ``count``); fold (G_i ⊙ W')² into per-row and per-column sums."""
        for module in modules:
            t = _tensors(module)
            ga, gb = t.lora_a.grad.detach().float(), t.lora_b.grad.detach().float()
            prev = self._previous.get(id(module))
            da, db = (ga, gb) if prev is None else (ga - prev[0], gb - prev[1])
            self._previous[id(module)] = (ga.clone(), gb.clone())
            a, b = t.lora_a.detach().float(), t.lora_b.detach().float()
            e2 = (estimated_weight_grad(a, b, count * da, count * db) * t.effective_weight()).square()
            rows, cols = e2.sum(1), e2.sum(0)
            old = self._sums.get(id(module))
            self._sums[id(module)] = (rows, cols) if old is None else (old[0] + rows, old[1] + cols)
        self._count += 1

    def channel_scores(self, module: nn.Module, dim: int) -> torch.Tensor | None:
        if not self.per_micro_batch:
            return super().channel_scores(module, dim)
        sums = self._sums.get(id(module))
        if sums is None:
            raise RuntimeError("accumulate=fisher scores after per-micro-batch observations (accumulate())")
        return sums[dim] / self._count

    def release(self) -> None:
        self.reset_accumulation()
