"""Group importance: element scores → one score per structural unit, smoothed over steps."""

from __future__ import annotations

import logging

import torch
from torch import nn

from loraprune.core.structure import GroupKind, projection
from loraprune.criteria.base import Criterion

log = logging.getLogger(__name__)


def channel_scores(element_scores: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum element scores per output row (``dim=0``) or per input column (``dim=1``)."""
    return element_scores.sum(dim=1 - dim)


def module_channel_scores(criterion: Criterion, module: nn.Module, dim: int) -> torch.Tensor | None:
    """Per-channel scores of one projection along ``dim``.

    The criterion's own ``channel_scores`` when it has one (``None``: it does not score this slice),
    else its element scores summed per channel.
    """
    own = getattr(criterion, "channel_scores", None)
    if own is not None:
        return own(module, dim)
    return channel_scores(criterion.element_scores(module), dim)


def unit_scores(
    layer: nn.Module, kind: GroupKind, criterion: Criterion, normalize: bool = True
) -> torch.Tensor:
    """One score per unit of ``kind`` in ``layer``.

    Each projection's per-channel scores are L2-normalised (per module, when ``normalize``) and then
    summed over the group's modules, as in LoRAPrune; ``normalize=False`` is LLM-Pruner's plain sum
    (``group_reduction="sum"``).
    """
    total = torch.zeros(kind.num_units, dtype=torch.float32)
    for sl in kind.slices:
        scores = module_channel_scores(criterion, projection(layer, sl.module), sl.dim)
        if scores is None:
            continue
        scores = scores.detach().float().cpu()
        if normalize:
            norm = scores.norm()
            scores = scores / norm if norm > 0 else scores
        owned = sl.unit_of_channel >= 0
        total.index_add_(0, sl.unit_of_channel[owned], scores[owned])
    return total


class MovingAverage:
    """Ī ← λĪ + (1−λ)I per key; updates holding NaN/Inf are skipped with a warning.

    Args:
        beta: λ, the weight of the history.
        init: ``"zero"`` starts from Ī = 0 (the reference code); ``"first"`` starts from the first I.
    """

    def __init__(self, beta: float = 0.9, init: str = "zero") -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"moving-average beta must be in [0, 1), got {beta}")
        if init not in ("zero", "first"):
            raise ValueError(f"moving-average init must be 'zero' or 'first', got {init!r}")
        self.beta, self.init = beta, init
        self.values: dict[tuple[int, str], torch.Tensor] = {}
        self.updates = 0
        self.skipped = 0

    def update(self, scores: dict[tuple[int, str], torch.Tensor]) -> bool:
        """Fold one step's scores in; returns False (and changes nothing) if any is non-finite."""
        if any(not torch.isfinite(s).all() for s in scores.values()):
            self.skipped += 1
            log.warning("importance update skipped: non-finite scores (skipped %d so far)", self.skipped)
            return False
        for key, s in scores.items():
            prev = self.values.get(key)
            if prev is None:
                prev = s.clone() if self.init == "first" else torch.zeros_like(s)
            self.values[key] = self.beta * prev + (1.0 - self.beta) * s
        self.updates += 1
        return True

    def get(self, key: tuple[int, str]) -> torch.Tensor:
        return self.values[key]

    def __contains__(self, key: tuple[int, str]) -> bool:
        return key in self.values
