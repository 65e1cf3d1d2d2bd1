"""Structured pruning: whole attention units and MLP channels, masked along the schedule."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from loraprune.core.budget import params_per_unit
from loraprune.core.compensation import InputFill
from loraprune.core.importance import unit_scores
from loraprune.core.masks import MASKED_INPUT, UnitMasks, select_budget, select_global, select_lowest
from loraprune.core.plan import PruningPlan
from loraprune.core.structure import decoder_layers, group_kinds, projection, removable_counts
from loraprune.pruners.base import Pruner, PruneResult

log = logging.getLogger(__name__)


class GroupPruner(Pruner):
    """Keeps smoothed group importance and masks the lowest groups as the schedule asks.

    Masks act on the inputs of ``o_proj`` / ``down_proj`` (exactly what removal does); the schedule gives
    the group ratio of every prunable layer (``settings.ratio`` at the end). A criterion that compensates
    removed units (``input_means(module)``, FLAP's bias) hands over its calibration means before it frees
    them: the masked inputs are then filled with them, and the result adds them as biases.
    """

    def __init__(self, model, geo, criterion, settings, schedule) -> None:
        super().__init__(model, geo, criterion, settings, schedule)
        removable_counts(geo, settings.attention_unit, settings.ratio)  # fails early on impossible ratios
        if settings.selection != "local" and self.buckets > 1:  # units must stay equal per KV group
            raise ValueError(
                f"{settings.selection} selection with prune.attention_unit=query_head on a GQA model is "
                "not supported; use kv_group or local selection"
            )
        self.layers = decoder_layers(model)
        attn, mlp = group_kinds(geo, settings.attention_unit)
        self.kinds = [k for k, on in ((attn, settings.prune_attention), (mlp, settings.prune_mlp)) if on]
        self.masks = UnitMasks()
        for i in self.prunable:
            for kind in self.kinds:
                self.masks.set(i, kind, torch.zeros(kind.num_units, dtype=torch.bool))
        self.masks.install(self.layers)
        self.input_means: dict[tuple[int, str], torch.Tensor] = {}  # bias compensation (CPU, float32)
        self.fill = InputFill()

    def prepare(self, data) -> None:
        self.criterion.attach_groups([self.layers[i] for i in self.prunable], self.kinds)
        super().prepare(data)

    @property
    def goal(self) -> float:
        return self.settings.ratio

    @property
    def removed_fraction(self) -> float:
        return self.progress

    @property
    def buckets(self) -> int:
        """Equal-removal buckets for attention units (KV groups for ``query_head`` on GQA)."""
        gqa = self.geo.queries_per_kv > 1
        return self.geo.num_kv_heads if self.settings.attention_unit == "query_head" and gqa else 1

    def scored_modules(self) -> list[nn.Module]:
        out: dict[int, nn.Module] = {}
        for i in self.prunable:
            for kind in self.kinds:
                for sl in kind.slices:
                    module = projection(self.layers[i], sl.module)
                    out.setdefault(id(module), module)
        return list(out.values())

    @torch.no_grad()
    def current_scores(self) -> dict[tuple[int, str], torch.Tensor]:
        return {
            (i, kind.name): unit_scores(
                self.layers[i], kind, self.criterion, self.settings.normalize, self.settings.normalize_order
            )
            for i in self.prunable
            for kind in self.kinds
        }

    def advance_to(self, target: float) -> None:
        """Mask groups until ``target`` of every prunable layer's units are removed (never un-masks)."""
        ratio = min(target, self.settings.ratio)
        if not self.ema.values:
            self.needs_observation()
            self.ema.update(self.current_scores())
        counts = removable_counts(self.geo, self.settings.attention_unit, ratio)
        if self.settings.selection in ("budget", "adaptive"):
            self._select_budget(counts)
            self.progress = ratio
            log.debug("pruned to the parameters of ratio %.4f", ratio)
            return
        for kind in self.kinds:
            removed = {i: self.masks.removed[(i, kind.name)] for i in self.prunable}
            new = self._select(kind.name, counts[kind.name], removed)
            for i in self.prunable:
                self.masks.set(i, kind, new[i])
        self.progress = ratio
        log.debug("pruned to ratio %.4f", ratio)

    def _select(self, kind: str, count: int, removed: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        buckets = self.buckets if kind == "attn" else 1
        scores = {i: self.ema.get((i, kind)) for i in self.prunable}
        if self.settings.selection == "global":
            return select_global(scores, count * len(self.prunable), removed)
        return {i: select_lowest(scores[i], count, removed[i], buckets) for i in self.prunable}

    def unit_cost(self) -> dict[str, int]:
        """Parameters one unit of each kind holds (biases included)."""
        layer = self.layers[self.prunable[0]]
        attention_bias = projection(layer, "q_proj").bias is not None
        mlp_bias = projection(layer, "gate_proj").bias is not None
        return params_per_unit(self.geo, self.settings.attention_unit, attention_bias, mlp_bias)

    def _select_budget(self, counts: dict[str, int]) -> None:
        """Remove the parameters of ``counts`` units per kind and layer, chosen over all layers and kinds."""
        cost = self.unit_cost()
        keys = [(i, kind.name) for i in self.prunable for kind in self.kinds]
        budget = sum(counts[name] * cost[name] for _, name in keys)
        scores = {key: self.ema.get(key) for key in keys}
        removed = {key: self.masks.removed[key] for key in keys}
        per_parameter = self.settings.selection == "budget"
        new = select_budget(scores, cost, budget, removed, per_parameter)
        kinds = {kind.name: kind for kind in self.kinds}
        for (i, name), removed in new.items():
            self.masks.set(i, kinds[name], removed)

    def release(self) -> None:
        if not self.released:
            self._keep_input_means()
        super().release()

    def _keep_input_means(self) -> None:
        """Take the criterion's input means for bias compensation (if it gives them) and fill with them."""
        means_of = getattr(self.criterion, "input_means", None)
        if means_of is None:
            return
        for i in self.prunable:
            for kind in self.kinds:
                mean = means_of(projection(self.layers[i], MASKED_INPUT[kind.name]))
                if mean is not None:
                    self.input_means[(i, kind.name)] = mean.detach().float().cpu()
        self._install_fill()

    def _install_fill(self) -> None:
        if self.input_means:
            self.fill.install(self.layers, {k.name: k for k in self.kinds}, self.masks, self.input_means)

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "removed": dict(self.masks.removed)}
        if self.input_means:
            state["input_means"] = dict(self.input_means)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        kinds = {k.name: k for k in self.kinds}
        for (i, name), removed in state["removed"].items():
            self.masks.set(i, kinds[name], removed)
        if state.get("input_means"):
            self.input_means = {k: v.float().cpu() for k, v in state["input_means"].items()}
            self._install_fill()
        super().load_state_dict(state)

    def decision(self) -> dict[str, torch.Tensor]:
        out = {f"{i}.{kind}": removed.clone() for (i, kind), removed in self.masks.removed.items()}
        out["progress"] = torch.tensor([self.progress], dtype=torch.float64)
        out.update({f"mean.{i}.{kind}": mean.clone() for (i, kind), mean in self.input_means.items()})
        return out

    def adopt_decision(self, decision: dict[str, torch.Tensor]) -> None:
        for i in self.prunable:
            for kind in self.kinds:
                self.masks.set(i, kind, decision[f"{i}.{kind.name}"].to(torch.bool).cpu())
        self.progress = float(decision["progress"])
        means = {key: decision.get(f"mean.{key[0]}.{key[1]}") for key in self.input_means}
        if means and all(m is not None for m in means.values()):
            self.input_means = {key: m.float().cpu() for key, m in means.items()}
            self._install_fill()

    def result(self) -> PruneResult:
        kept = self.masks.kept_units()
        plan = PruningPlan.from_units(self.geo, self.settings.attention_unit, kept)
        return PruneResult(plan, input_means=dict(self.input_means) or None)

    def plan(self) -> PruningPlan:
        """The plan of what is kept now."""
        return self.result().plan

    def remove_hooks(self) -> None:
        self.fill.remove_hooks()
        self.masks.remove_hooks()

    def unpruned(self):
        """Masks lifted (the pretrained weights are never changed while masked)."""
        return self.masks.suspended()
