"""Depth pruning: whole decoder layers removed one-shot at step 0 by a layer criterion's scores.

The removed layers leave the model at once, with their LoRA, before the optimizer is built: during LoRA
recovery (``method.finetune=true``) the model trained is the shortened model that is saved, no compute is
spent on layers that are gone, and the KV cache is transformers' own for the shorter model. (Bypassing
them with hooks instead would run each removed layer and discard its output.) The cut therefore cannot
be undone: there is no dense teacher for distillation, and a data-parallel rank whose cut differed from
rank 0's stops with an error rather than adopting it (the calibration is the same on every rank).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from loraprune.core.depth import remove_layers, select_layers
from loraprune.core.plan import PruningPlan
from loraprune.core.structure import decoder_layers
from loraprune.pruners.base import Pruner, PruneResult

log = logging.getLogger(__name__)


class DepthPruner(Pruner):
    """Removes ``settings.layers`` whole decoder layers of the prunable ones, those of lowest
    :meth:`~loraprune.criteria.base.Criterion.layer_score`; layer indices are the base model's."""

    def __init__(self, model, geo, criterion, settings, schedule) -> None:
        super().__init__(model, geo, criterion, settings, schedule)
        if not criterion.scores_layers:
            raise ValueError(f"criterion {criterion.name!r} does not score whole layers")
        if not 1 <= settings.layers <= len(self.prunable) or settings.layers >= geo.num_layers:
            raise ValueError(
                f"depth pruning removes 1 to {len(self.prunable)} of the prunable layers and leaves one at "
                f"least, got {settings.layers}"
            )
        self.base_layers: list[nn.Module] = list(decoder_layers(model))  # base indices, kept after the cut
        self.removed_layers: list[int] | None = None
        self.layer_scores: dict[int, float] = {}

    @property
    def goal(self) -> float:
        return self.settings.ratio

    @property
    def removed_fraction(self) -> float:
        """Fraction of the prunable layers removed."""
        return len(self.removed_layers or []) / len(self.prunable)

    def scored_modules(self) -> list[nn.Module]:
        return [self.base_layers[i] for i in self.prunable]

    def prepare(self, data) -> None:
        if not self.prunes_at_start:
            raise ValueError("depth pruning removes its layers one-shot at step 0 (method.kind=one_shot)")
        super().prepare(data)

    def current_scores(self) -> dict[int, torch.Tensor]:
        return {i: torch.tensor([self.criterion.layer_score(self.base_layers[i])]) for i in self.prunable}

    def advance_to(self, target: float) -> None:
        """Remove the layers of lowest score at the goal (once; a depth cut is never extended)."""
        if self.removed_layers is not None or target < self.goal:
            return
        self.layer_scores = {i: float(s) for i, s in self.current_scores().items()}
        removed = select_layers(self.layer_scores, self.settings.layers)
        self._cut(removed)
        log.info(
            "depth pruning: removed layers %s of %d (scores %s)",
            removed,
            self.geo.num_layers,
            {i: round(s, 6) for i, s in self.layer_scores.items()},
        )

    def _cut(self, removed: list[int]) -> None:
        remove_layers(self.model, removed)
        self.removed_layers = removed
        self.progress = self.goal

    def result(self) -> PruneResult:
        plan = PruningPlan(self.geo, self.settings.attention_unit, removed_layers=self.removed_layers or [])
        return PruneResult(plan, layer_scores=dict(self.layer_scores) or None)

    # ------------------------------------------------------------- decisions and checkpoints
    def decision(self) -> dict[str, torch.Tensor]:
        removed = torch.zeros(self.geo.num_layers, dtype=torch.bool)
        removed[self.removed_layers or []] = True
        return {"removed_layers": removed, "progress": torch.tensor([self.progress], dtype=torch.float64)}

    def adopt_decision(self, decision: dict[str, torch.Tensor]) -> None:
        theirs = decision["removed_layers"].to(torch.bool).nonzero().flatten().tolist()
        if theirs != (self.removed_layers or []):
            raise RuntimeError(
                f"depth pruning: this process removed layers {self.removed_layers}, rank 0 removed {theirs}; "
                "removed layers cannot be restored"
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "removed_layers": list(self.removed_layers or []),
            "layer_scores": dict(self.layer_scores),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A resumed run cuts again from its calibration before the checkpoint loads: the same layers."""
        saved = [int(i) for i in state["removed_layers"]]
        if saved != (self.removed_layers or []):
            raise RuntimeError(
                f"the checkpoint removed layers {saved}, this run's calibration removes {self.removed_layers}"
            )
        super().load_state_dict(state)
