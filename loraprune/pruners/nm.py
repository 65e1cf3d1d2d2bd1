"""Semi-structured N:M pruning of every projection of the prunable layers (``prune.pattern``).

The schedule (final value 1) gives the fraction of each projection's rows already following the
pattern. At a due step every projection switches its remaining rows that lose the least smoothed
importance under their best N:M choice (Σ of the dropped scores); a switched row keeps its pattern for
good: its weights are zeroed and its LoRA update masked, so what is trained is ``(W + s·B·A) ⊙ M``. A
one-shot schedule switches every row at step 0 (SparseGPT's solver also updates the kept weights).

The moving average holds one float32 per pruned weight while the pattern is being chosen; a one-shot
prune from a criterion's own statistics scores projection by projection and keeps none.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from loraprune.core import nm
from loraprune.core.lora import pretrained_weight
from loraprune.core.plan import PruningPlan
from loraprune.pruners.base import Pruner, PruneResult

log = logging.getLogger(__name__)


class NMPruner(Pruner):
    """N:M sparsity chosen from smoothed element scores, along the schedule or at once."""

    def __init__(self, model, geo, criterion, settings, schedule) -> None:
        super().__init__(model, geo, criterion, settings, schedule)
        self.pattern = settings.pattern
        self.n, self.m = nm.parse_pattern(self.pattern)
        self.chosen = nm.targets(model, self.prunable)
        self.masks: nm.Masks = {}
        self.converted: dict[tuple[int, str], torch.Tensor] = {}
        for i, name, module in self.chosen:
            weight = pretrained_weight(module)
            if weight.shape[1] % self.m:
                raise ValueError(
                    f"layer {i} {name}: {weight.shape[1]} inputs are not a multiple of {self.m} "
                    f"({self.pattern})"
                )
            self.masks[(i, name)] = torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
            self.converted[(i, name)] = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
        nm.mask_lora_updates(model, self.masks)

    @property
    def goal(self) -> float:
        return 1.0

    @property
    def removed_fraction(self) -> float:
        """Sparsity of the pruned projections now (``(1 − N/M)`` × the converted fraction of rows)."""
        return self.progress * (1 - self.n / self.m)

    def scored_modules(self) -> list[nn.Module]:
        return [module for _, _, module in self.chosen]

    @torch.no_grad()
    def current_scores(self) -> dict[tuple[int, str], torch.Tensor]:
        return {(i, name): self.criterion.element_scores(module) for i, name, module in self.chosen}

    @torch.no_grad()
    def observe(self) -> None:
        """Fold this step's element scores in projection by projection (never more than one full-size
        score matrix at a time; a projection with NaN/Inf scores skips this update alone)."""
        if self.finished:
            return
        for i, name, module in self.chosen:
            self.ema.update({(i, name): self.criterion.element_scores(module)})

    @torch.no_grad()
    def advance_to(self, target: float) -> None:
        """Switch rows until ``target`` of every projection's rows follow the pattern."""
        if not self.ema.values:
            self.needs_observation()
        for i, name, module in self.chosen:
            done = self.converted[(i, name)]
            new = round(target * done.numel()) - int(done.sum())
            if new > 0:
                self._switch_rows((i, name), module, done, new)
        self.progress = target
        log.info("%s pattern on %.0f%% of the rows", self.pattern, 100 * target)

    def _switch_rows(self, key, module: nn.Module, done: torch.Tensor, new: int) -> None:
        weight = pretrained_weight(module)
        if self.criterion.solves_nm and new == done.numel():  # every row at once: the criterion's solver
            solved, keep = self.criterion.solve_nm(module, self.n, self.m)
            weight.copy_(solved.to(weight.device, weight.dtype))
            self.masks[key].copy_(keep.to(self.masks[key].device))
            done.fill_(True)
            return
        scores = self._scores(key, module)
        cost = scores.sum(1) - self._kept_sum(scores)
        cost[done] = float("inf")
        pick = torch.topk(cost, new, largest=False).indices
        keep = nm.nm_keep_mask(scores[pick], self.n, self.m).to(weight.device)
        self.masks[key][pick] = keep
        weight[pick] = weight[pick] * keep.to(weight.dtype)
        done[pick] = True

    def _scores(self, key, module: nn.Module) -> torch.Tensor:
        if self.ema.values:
            if key not in self.ema:
                raise RuntimeError(f"layer {key[0]} {key[1]}: every importance update so far was non-finite")
            return self.ema.get(key).to(pretrained_weight(module).device)
        return self.criterion.element_scores(module).float()

    def _kept_sum(self, scores: torch.Tensor) -> torch.Tensor:
        rows, cols = scores.shape
        groups = scores.reshape(rows, cols // self.m, self.m)
        return torch.topk(groups, self.n, dim=-1).values.sum((-1, -2))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "masks": dict(self.masks), "converted": dict(self.converted)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the masks in place (the LoRA updates hold them by reference) and zero the pretrained
        weights they drop, as switching those rows did."""
        for i, name, module in self.chosen:
            keep = self.masks[(i, name)]
            keep.copy_(state["masks"][(i, name)])
            self.converted[(i, name)].copy_(state["converted"][(i, name)])
            weight = pretrained_weight(module)
            weight.mul_(keep.to(weight.dtype))
        super().load_state_dict(state)

    def decision(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, name in self.masks:
            out[f"{i}.{name}.keep"] = self.masks[(i, name)].clone()
            out[f"{i}.{name}.rows"] = self.converted[(i, name)].clone()
        out["progress"] = torch.tensor([self.progress], dtype=torch.float64)
        return out

    @torch.no_grad()
    def adopt_decision(self, decision: dict[str, torch.Tensor]) -> None:
        """In place (the masked LoRA updates hold the masks by reference); the zeroed weights follow
        with :meth:`decision_weights`."""
        for i, name in self.masks:
            self.masks[(i, name)].copy_(decision[f"{i}.{name}.keep"])
            self.converted[(i, name)].copy_(decision[f"{i}.{name}.rows"])
        self.progress = float(decision["progress"])

    def decision_weights(self) -> list[nn.Parameter]:
        return [pretrained_weight(module) for _, _, module in self.chosen]

    def result(self) -> PruneResult:
        return PruneResult(PruningPlan(self.geo, self.settings.attention_unit), self.masks, self.pattern)

    def unpruned(self):
        """No unpruned forward: switched rows' pretrained weights are zeroed in place."""
        raise RuntimeError("N:M pruning zeroes the pretrained weights: no dense teacher to distil from")
