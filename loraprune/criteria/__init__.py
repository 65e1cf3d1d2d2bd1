"""Criteria: one score per weight element of a projection; aggregated per structural group."""

from __future__ import annotations

from collections.abc import Callable

from loraprune.criteria.base import Criterion, LoraTensors, lora_tensors
from loraprune.criteria.lora_grad import LoraGradCriterion, estimated_weight_grad
from loraprune.criteria.magnitude import MagnitudeCriterion
from loraprune.criteria.true_grad import TrueGradCriterion

CRITERIA: dict[str, Callable[[], Criterion]] = {
    "loraprune": LoraGradCriterion,
    "magnitude": MagnitudeCriterion,
    "grad": TrueGradCriterion,
}


def register_criterion(name: str, factory: Callable[[], Criterion]) -> None:
    """Make a criterion selectable by ``name``."""
    CRITERIA[name] = factory


def build_criterion(name: str) -> Criterion:
    """The criterion registered as ``name``."""
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; known: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]()


__all__ = [
    "CRITERIA", "Criterion", "LoraGradCriterion", "LoraTensors", "MagnitudeCriterion", "TrueGradCriterion",
    "build_criterion", "estimated_weight_grad", "lora_tensors", "register_criterion",
]
