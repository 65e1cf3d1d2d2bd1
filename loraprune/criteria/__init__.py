"""Criteria: one score per weight element (or channel) of a projection, registered by name.

Each criterion is a :class:`~loraprune.criteria.base.Criterion` subclass that states what it needs
(:class:`~loraprune.criteria.base.Needs`) and the dataclass of its options; ``method.options`` is built
into that dataclass, so an unknown or mistyped option fails before any model loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields, is_dataclass
from typing import Any

from loraprune.core.lora import LoraTensors, lora_tensors
from loraprune.criteria.base import Criterion, Needs, NoOptions
from loraprune.criteria.depth import BlockInfluenceCriterion, RemovalPerplexityCriterion
from loraprune.criteria.flap import FlapCriterion, FlapOptions
from loraprune.criteria.kwon import KwonCriterion, KwonOptions
from loraprune.criteria.llm_pruner import LLMPrunerCriterion, LLMPrunerOptions
from loraprune.criteria.lora_grad import LoraGradCriterion, LoraGradOptions, estimated_weight_grad
from loraprune.criteria.magnitude import MagnitudeCriterion
from loraprune.criteria.mask_fisher import MaskFisherCriterion, MaskFisherOptions
from loraprune.criteria.random_scores import RandomCriterion, RandomOptions
from loraprune.criteria.sparsegpt import SparseGPTCriterion, SparseGPTOptions
from loraprune.criteria.true_grad import TrueGradCriterion
from loraprune.criteria.wanda_sp import WandaCriterion, WandaOptions, WandaSPCriterion, WandaSPOptions
from loraprune.criteria.weight_norm import L1Criterion, L2Criterion

CRITERIA: dict[str, type[Criterion]] = {
    c.name: c
    for c in (
        LoraGradCriterion,
        MaskFisherCriterion,
        MagnitudeCriterion,
        TrueGradCriterion,
        LLMPrunerCriterion,
        L1Criterion,
        L2Criterion,
        RandomCriterion,
        WandaSPCriterion,
        WandaCriterion,
        SparseGPTCriterion,
        FlapCriterion,
        KwonCriterion,
        BlockInfluenceCriterion,
        RemovalPerplexityCriterion,
    )
}


def register_criterion(criterion: type[Criterion]) -> None:
    """Make a :class:`Criterion` subclass selectable as ``method.criterion=<its name>``."""
    CRITERIA[criterion.name] = criterion


def criterion_class(name: str) -> type[Criterion]:
    """The criterion registered as ``name``."""
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; known: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]


def criterion_options(name: str) -> set[str]:
    """The ``method.options`` keys criterion ``name`` takes."""
    return {f.name for f in fields(criterion_class(name).options_type)}


def build_options(name: str, options: Any = None) -> Any:
    """``options`` (a mapping, or an options dataclass as Hydra's typed config gives it) as criterion
    ``name``'s options dataclass; unknown keys raise ``ValueError``."""
    cls = criterion_class(name)
    if is_dataclass(options):
        options = asdict(options)
    unknown = sorted(set(options or {}) - criterion_options(name))
    if unknown:
        known = ", ".join(sorted(criterion_options(name))) or "none"
        raise ValueError(f"unknown method.options {unknown} for criterion {name!r}; known: {known}")
    return cls.options_type(**dict(options or {}))


def build_criterion(name: str, options: Mapping[str, Any] | None = None) -> Criterion:
    """The criterion registered as ``name`` with ``options`` (a mapping of its options' fields)."""
    return criterion_class(name)(build_options(name, options))


__all__ = [
    "BlockInfluenceCriterion",
    "CRITERIA",
    "Criterion",
    "FlapCriterion",
    "FlapOptions",
    "KwonCriterion",
    "KwonOptions",
    "L1Criterion",
    "L2Criterion",
    "LLMPrunerCriterion",
    "LLMPrunerOptions",
    "LoraGradCriterion",
    "LoraGradOptions",
    "LoraTensors",
    "MagnitudeCriterion",
    "MaskFisherCriterion",
    "MaskFisherOptions",
    "Needs",
    "NoOptions",
    "RandomCriterion",
    "RandomOptions",
    "RemovalPerplexityCriterion",
    "SparseGPTCriterion",
    "SparseGPTOptions",
    "TrueGradCriterion",
    "WandaCriterion",
    "WandaOptions",
    "WandaSPCriterion",
    "WandaSPOptions",
    "build_criterion",
    "build_options",
    "criterion_class",
    "criterion_options",
    "estimated_weight_grad",
    "lora_tensors",
    "register_criterion",
]
