"""Group importance: element scores → one score per structural unit, smoothed over steps."""

from __future__ import annotations

import logging
from typing import Protocol

import torch
from torch import nn

from loraprune.core.structure import GroupKind, projection

log = logging.getLogger(__name__)


class GroupScorer(Protocol):
    """What group importance needs of a criterion (:class:`loraprune.criteria.base.Criterion` has it all).

    ``scores_units`` states the capability: a criterion that scores whole units itself (mask Fisher,
    Kwon's, FLAP standardised) gives them through :meth:`unit_scores`; the others give per-channel
    scores that :func:`unit_scores` sums per unit.
    """

    @property
    def scores_units(self) -> bool: ...

    def unit_scores(self, layer: nn.Module, kind: GroupKind) -> torch.Tensor: ...

    def channel_scores(self, module: nn.Module, dim: int) -> torch.Tensor | None: ...


NORMALIZE_ORDERS = ("channel", "unit")


def _l2_normalised(scores: torch.Tensor) -> torch.Tensor:
    norm = scores.norm()
    return scores / norm if norm > 0 else scores


def unit_scores(
    layer: nn.Module,
    kind: GroupKind,
    criterion: GroupScorer,
    normalize: bool = True,
    order: str = "channel",
) -> torch.Tensor:
    """One score per unit of ``kind`` in ``layer``.

    Each projection's per-channel scores (``None``: the criterion does not score that slice) are
    L2-normalised per module (when ``normalize``) and summed over the group's modules. ``order``:
    ``"channel"`` normalises the module's channel scores, then sums them per unit; ``"unit"`` sums the
    module's channels per unit (head, KV group, MLP channel) first and normalises those unit scores (the
    reference code's order: per head, then over heads). The two agree for MLP channels; for attention
    they weight q, k, v and o differently. ``normalize=False`` is LLM-Pruner's plain sum
    (``group_reduction="sum"``), where the order does not matter. A criterion that scores whole units
    itself (``scores_units``, e.g. mask Fisher) gives them as they are.
    """
    if order not in NORMALIZE_ORDERS:
        raise ValueError(f"normalisation order must be one of {', '.join(NORMALIZE_ORDERS)}, got {order!r}")
    if criterion.scores_units:
        return criterion.unit_scores(layer, kind).detach().float().cpu()
    total = torch.zeros(kind.num_units, dtype=torch.float32)
    for sl in kind.slices:
        scores = criterion.channel_scores(projection(layer, sl.module), sl.dim)
        if scores is None:
            continue
        scores = scores.detach().float().cpu()
        if normalize and order == "channel":
            scores = _l2_normalised(scores)
        owned = sl.unit_of_channel >= 0
        if not (normalize and order == "unit"):  # channel order: straight into the total (as ever)
            total.index_add_(0, sl.unit_of_channel[owned], scores[owned])
            continue
        per_unit = torch.zeros(kind.num_units, dtype=torch.float32)
        per_unit.index_add_(0, sl.unit_of_channel[owned], scores[owned])
        total += _l2_normalised(per_unit)
    return total


class MovingAverage:
    """Ī ← λĪ + (1−λ)I per key, kept in float32 (in place); updates holding NaN/Inf are skipped with a
    warning. Keys are whatever the pruner scores: (layer, group kind) or (layer, projection).

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
                init = s if self.init == "first" else torch.zeros_like(s)
                prev = self.values[key] = init.to(torch.float32, copy=True)
            # (1−λ)·I rounded on its own, as λĪ + (1−λ)I computes it (a fused alpha-add rounds
            # differently in the last bit, enough to flip near-tied groups over a run)
            prev.mul_(self.beta).add_(s.to(prev.dtype) * (1.0 - self.beta))
        self.updates += 1
        return True

    def get(self, key: tuple[int, str]) -> torch.Tensor:
        return self.values[key]

    def __contains__(self, key: tuple[int, str]) -> bool:
        return key in self.values

    def clear(self) -> None:
        """Forget every average (frees their memory)."""
        self.values.clear()
