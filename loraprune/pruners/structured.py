"""Iterative pruning during fine-tuning: score, smooth, follow the schedule, mask."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from loraprune.core.importance import MovingAverage, unit_scores
from loraprune.core.masks import UnitMasks, select_global, select_lowest
from loraprune.core.plan import PruningPlan
from loraprune.core.structure import AttentionUnit, Geometry, decoder_layers, group_kinds, removable_counts
from loraprune.criteria.base import Criterion

log = logging.getLogger(__name__)


@dataclass
class PrunerSettings:
    """How groups are chosen (see ``conf/prune``)."""

    ratio: float
    attention_unit: AttentionUnit = "kv_group"
    prune_freq: int = 10
    excluded_layers: list[int] = field(default_factory=list)
    selection: str = "local"
    prune_attention: bool = True
    prune_mlp: bool = True
    ema_beta: float = 0.9
    ema_init: str = "zero"
    normalize: bool = True


class IterativePruner:
    """Keeps smoothed group importance and masks the lowest groups as the schedule asks.

    Call :meth:`observe` after each optimizer step's gradient accumulation (before the optimizer step),
    then :meth:`step` after the optimizer step.
    """

    def __init__(
        self,
        model: nn.Module,
        geo: Geometry,
        criterion: Criterion,
        settings: PrunerSettings,
        schedule: Callable[[int], float],
    ) -> None:
        if settings.selection not in ("local", "global"):
            raise ValueError(f"prune.selection must be 'local' or 'global', got {settings.selection!r}")
        if settings.prune_freq < 1:
            raise ValueError(f"prune.prune_freq must be >= 1, got {settings.prune_freq}")
        self.geo, self.criterion, self.settings, self.schedule = geo, criterion, settings, schedule
        removable_counts(geo, settings.attention_unit, settings.ratio)  # fails early on impossible ratios
        self.layers = decoder_layers(model)
        attn, mlp = group_kinds(geo, settings.attention_unit)
        self.kinds = [k for k, on in ((attn, settings.prune_attention), (mlp, settings.prune_mlp)) if on]
        excluded = set(settings.excluded_layers)
        self.prunable = [i for i in range(geo.num_layers) if i not in excluded]
        self.ema = MovingAverage(settings.ema_beta, settings.ema_init)
        self.masks = UnitMasks()
        for i in self.prunable:
            for kind in self.kinds:
                self.masks.set(i, kind, torch.zeros(kind.num_units, dtype=torch.bool))
        self.masks.install(self.layers)
        self.current_ratio = 0.0

    @property
    def finished(self) -> bool:
        """The final ratio is in force (masks never change again)."""
        return self.current_ratio >= self.settings.ratio

    @property
    def buckets(self) -> int:
        """Equal-removal buckets for attention units (KV groups for ``query_head`` on GQA)."""
        gqa = self.geo.queries_per_kv > 1
        return self.geo.num_kv_heads if self.settings.attention_unit == "query_head" and gqa else 1

    @torch.no_grad()
    def current_scores(self) -> dict[tuple[int, str], torch.Tensor]:
        """This step's importance per (layer, kind) from the criterion."""
        return {
            (i, kind.name): unit_scores(self.layers[i], kind, self.criterion, self.settings.normalize)
            for i in self.prunable
            for kind in self.kinds
        }

    def observe(self) -> bool:
        """Fold the current gradients' importance into the moving average."""
        return self.ema.update(self.current_scores())

    def step(self, step: int, final_step: bool = False) -> float:
        """Apply the schedule after optimizer step ``step`` (1-based); returns the ratio in force."""
        target = self.schedule(step)
        due = step % self.settings.prune_freq == 0 or final_step or target >= self.settings.ratio
        if due and target > self.current_ratio:
            self.prune_to(target)
        return self.current_ratio

    def prune_to(self, ratio: float) -> None:
        """Mask groups until ``ratio`` of every prunable layer's units are removed (never un-masks)."""
        ratio = min(ratio, self.settings.ratio)
        if not self.ema.values:
            if self.criterion.needs_weight_grads or self.criterion.name == "loraprune":
                raise RuntimeError("no importance observed yet: call observe() after a backward pass first")
            self.ema.update(self.current_scores())
        counts = removable_counts(self.geo, self.settings.attention_unit, ratio)
        for kind in self.kinds:
            buckets = self.buckets if kind.name == "attn" else 1
            removed = {i: self.masks.removed[(i, kind.name)] for i in self.prunable}
            scores = {i: self.ema.get((i, kind.name)) for i in self.prunable}
            if self.settings.selection == "global":
                if buckets > 1:
                    raise ValueError(
                        "global selection with prune.attention_unit=query_head on a GQA model is "
                        "not supported; use kv_group or local selection"
                    )
                new = select_global(scores, counts[kind.name] * len(self.prunable), removed)
            else:
                new = {
                    i: select_lowest(scores[i], counts[kind.name], removed[i], buckets) for i in self.prunable
                }
            for i in self.prunable:
                self.masks.set(i, kind, new[i])
        self.current_ratio = ratio
        log.debug("pruned to ratio %.4f", ratio)

    def plan(self) -> PruningPlan:
        """The plan of what is kept now."""
        return PruningPlan.from_units(self.geo, self.settings.attention_unit, self.masks.kept_units())

    def remove_hooks(self) -> None:
        self.masks.remove_hooks()
