"""Pruners: one interface (:class:`~loraprune.pruners.base.Pruner`) for structured and N:M, iterative and
one-shot pruning; :func:`build_pruner` picks the implementation from the settings."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from loraprune.core.structure import Geometry
from loraprune.criteria.base import Criterion
from loraprune.pruners.base import SELECTIONS, Pruner, PruneResult, PrunerSettings
from loraprune.pruners.calibration import CalibrationData
from loraprune.pruners.nm import NMPruner
from loraprune.pruners.structured import GroupPruner


def build_pruner(
    model: nn.Module,
    geo: Geometry,
    criterion: Criterion,
    settings: PrunerSettings,
    schedule: Callable[[int], float],
) -> Pruner:
    """N:M when ``settings.pattern`` is set, else structured groups. ``schedule`` runs to the pruner's
    goal: the group ratio, or 1.0 (every row following the pattern)."""
    kind = NMPruner if settings.pattern is not None else GroupPruner
    return kind(model, geo, criterion, settings, schedule)


__all__ = [
    "CalibrationData",
    "GroupPruner",
    "NMPruner",
    "PruneResult",
    "Pruner",
    "PrunerSettings",
    "SELECTIONS",
    "build_pruner",
]
