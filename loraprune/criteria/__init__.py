"""Criteria: one score per weight element of a projection; aggregated per structural group."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from loraprune.criteria.base import Criterion, LoraTensors, lora_tensors
from loraprune.criteria.llm_pruner import LLMPrunerCriterion
from loraprune.criteria.lora_grad import LoraGradCriterion, estimated_weight_grad
from loraprune.criteria.magnitude import MagnitudeCriterion
from loraprune.criteria.random_scores import RandomCriterion
from loraprune.criteria.sparsegpt import SparseGPTCriterion
from loraprune.criteria.true_grad import TrueGradCriterion
from loraprune.criteria.wanda_sp import WandaCriterion, WandaSPCriterion
from loraprune.criteria.weight_norm import L1Criterion, L2Criterion

CRITERIA: dict[str, Callable[..., Criterion]] = {
    "loraprune": LoraGradCriterion,
    "magnitude": MagnitudeCriterion,
    "grad": TrueGradCriterion,
    "llm_pruner": LLMPrunerCriterion,
    "l1": L1Criterion,
    "l2": L2Criterion,
    "random": RandomCriterion,
    "wanda_sp": WandaSPCriterion,
    "wanda": WandaCriterion,
    "sparsegpt": SparseGPTCriterion,
}


def register_criterion(name: str, factory: Callable[..., Criterion]) -> None:
    """Make a criterion selectable by ``name`` (its keyword arguments come from ``method.options``)."""
    CRITERIA[name] = factory


def criterion_options(name: str) -> set[str]:
    """The ``method.options`` keys criterion ``name`` takes (its factory's keyword arguments)."""
    try:
        params = inspect.signature(CRITERIA[name]).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in params if p.kind in kinds}


def build_criterion(name: str, options: Mapping[str, Any] | None = None) -> Criterion:
    """The criterion registered as ``name``, given the ``options`` its factory takes (others are ignored:
    ``method.options`` also holds pipeline settings such as ``calibration_samples``)."""
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; known: {', '.join(sorted(CRITERIA))}")
    accepted = criterion_options(name)
    kwargs = {k: v for k, v in (options or {}).items() if k in accepted}
    return CRITERIA[name](**kwargs)


__all__ = [
    "CRITERIA",
    "Criterion",
    "L1Criterion",
    "L2Criterion",
    "LLMPrunerCriterion",
    "LoraGradCriterion",
    "LoraTensors",
    "MagnitudeCriterion",
    "RandomCriterion",
    "SparseGPTCriterion",
    "TrueGradCriterion",
    "WandaCriterion",
    "WandaSPCriterion",
    "build_criterion",
    "criterion_options",
    "estimated_weight_grad",
    "lora_tensors",
    "register_criterion",
]
