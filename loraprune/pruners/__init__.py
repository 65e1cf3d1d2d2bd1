"""Pruners: one interface (:class:`~loraprune.pruners.base.Pruner`) for structured and N:M, iterative and
one-shot pruning, and depth cuts; :func:`build_pruner` picks the implementation from the settings."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from loraprune.core.structure import Geometry
from loraprune.criteria.base import Criterion
from loraprune.pruners.base import SELECTIONS, Pruner, PruneResult, PrunerSettings
from loraprune.pruners.calibration import CalibrationData
from loraprune.pruners.depth import DepthPruner
from loraprune.pruners.nm import NMPruner
from loraprune.pruners.structured import GroupPruner


def build_pruner(
    model: nn.Module,
    geo: Geometry,
    criterion: Criterion,
    settings: PrunerSettings,
    schedule: Callable[[int], float],
) -> Pruner:
    """Whole layers for a criterion that scores layers (depth pruning), N:M when ``settings.pattern`` is
    set, else structured groups. ``schedule`` runs to the pruner's goal: the group ratio (the fraction of
    prunable layers for depth), or 1.0 (every row following the pattern)."""
    if criterion.scores_layers:
        if settings.pattern is not None:
            raise ValueError(f"criterion {criterion.name!r} removes whole layers, not N:M patterns")
        return DepthPruner(model, geo, criterion, settings, schedule)
    kind = NMPruner if settings.pattern is not None else GroupPruner
    return kind(model, geo, criterion, settings, schedule)


__all__ = [
    "CalibrationData",
    "DepthPruner",
    "GroupPruner",
    "NMPruner",
    "PruneResult",
    "Pruner",
    "PrunerSettings",
    "SELECTIONS",
    "build_pruner",
]
