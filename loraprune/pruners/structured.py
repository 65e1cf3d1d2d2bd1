"""Structured pruning: whole attention units and MLP channels, masked along the schedule."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from loraprune.core.budget import params_per_unit
from loraprune.core.compensation import InputFill, Key
from loraprune.core.importance import unit_scores
from loraprune.core.lora import lora_tensors
from loraprune.core.masks import (
    MASKED_INPUT,
    UnitMasks,
    channel_keep_mask,
    masked_input_slice,
    select_budget,
    select_global,
    select_lowest,
)
from loraprune.core.plan import PruningPlan
from loraprune.core.reconstruct import NEEDS_GRAM, InputMap, InputStats, bias_map, input_map
from loraprune.core.rounding import round_removal, round_selection, unit_multiple
from loraprune.core.structure import decoder_layers, group_kinds, projection, removable_counts
from loraprune.criteria.statistics import forward_collecting_inputs
from loraprune.pruners.base import Pruner, PruneResult

log = logging.getLogger(__name__)


class GroupPruner(Pruner):
    """Keeps smoothed group importance and masks the lowest groups as the schedule asks.

    Masks act on the inputs of ``o_proj`` / ``down_proj`` (exactly what removal does); the schedule gives
    the group ratio of every prunable layer (``settings.ratio`` at the end). A criterion that compensates
    removed units (``input_means(module)``, FLAP's bias) hands over its calibration means before it frees
    them: the masked inputs are then filled with them, and the result adds them as biases.

    ``settings.reconstruct`` (``bias`` | ``least_squares`` | ``scales``; :mod:`loraprune.core.reconstruct`)
    compensates removed units for any criterion: the inputs of the masked projections are measured once on
    the calibration samples before anything is masked (means; with a Gram for ``least_squares`` /
    ``scales``), the masked inputs are reconstructed from then on (following the masks), and once the masks
    are final the maps are fixed and merged into the weights by the result.
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
        self.input_stats: dict[Key, InputStats] = {}  # least_squares / scales until the masks are final
        self.input_maps: dict[Key, InputMap] = {}  # least_squares / scales, fixed with the final masks
        self.fill = InputFill()

    @property
    def reconstruct(self) -> str:
        """The reconstruction in force: ``settings.reconstruct``, else ``bias`` for a criterion that hands
        over its means (FLAP with ``options.bias``), else ``none``."""
        if self.settings.reconstruct is not None:
            return self.settings.reconstruct
        return "bias" if getattr(self.criterion, "gives_input_means", False) else "none"

    def prepare(self, data) -> None:
        self.criterion.attach_groups([self.layers[i] for i in self.prunable], self.kinds)
        mode = self.reconstruct
        own_means = mode == "bias" and not getattr(self.criterion, "gives_input_means", False)
        if mode in NEEDS_GRAM or own_means:
            self._measure_inputs(data, gram=mode in NEEDS_GRAM)
            self._install_fill()
        super().prepare(data)

    def _masked_projections(self) -> dict[Key, nn.Module]:
        return {
            (i, kind.name): projection(self.layers[i], MASKED_INPUT[kind.name])
            for i in self.prunable
            for kind in self.kinds
        }

    def _measure_inputs(self, data, gram: bool) -> None:
        """One forward pass of the unmasked model over the calibration samples: the mean (and Gram) of
        every masked projection's input."""
        s, c = self.settings, self.criterion
        n = s.calibration_samples or c.calibration_samples
        seq_len = s.calibration_seq_len or c.calibration_seq_len
        modules = self._masked_projections()
        key_of = {id(m): key for key, m in modules.items()}
        stats = {
            key: InputStats.empty(lora_tensors(m).weight.shape[1], gram, lora_tensors(m).weight.device)
            for key, m in modules.items()
        }
        log.info("reconstruct=%s: measuring %d inputs on %d samples", self.reconstruct, len(stats), n)
        with self.masks.suspended():
            forward_collecting_inputs(
                self.model,
                list(modules.values()),
                data.batches(n, seq_len),
                lambda module, x: stats[key_of[id(module)]].add(x),
            )
        if gram:
            self.input_stats = stats
        else:
            self.input_means = {key: st.mean.cpu() for key, st in stats.items()}

    def _map_of(self, key: Key, removed: torch.Tensor) -> InputMap | None:
        """The reconstruction of ``key``'s projection for ``removed`` input channels: the fixed map once
        the masks are final, else computed from the calibration statistics."""
        if key in self.input_maps:
            return self.input_maps[key]
        if self.input_means.get(key) is not None:
            return bias_map(self.input_means[key], removed) if bool(removed.any()) else None
        stats = self.input_stats.get(key)
        if stats is None:
            return None
        kind = next(k for k in self.kinds if k.name == key[1])
        weight = lora_tensors(projection(self.layers[key[0]], MASKED_INPUT[key[1]])).effective_weight()
        owner = masked_input_slice(kind).unit_of_channel
        return input_map(self.reconstruct, stats, removed, weight, owner, self.settings.reconstruct_damp)

    def _fix_input_maps(self) -> None:
        """With the final masks: compute each projection's map once, free the Grams, reinstall the hooks."""
        if not self.input_stats:
            return
        kinds = {k.name: k for k in self.kinds}
        for key in self.input_stats:
            removed = ~channel_keep_mask(kinds[key[1]], ~self.masks.removed[key])
            found = self._map_of(key, removed)
            if found is not None:
                self.input_maps[key] = found
        self.input_stats = {}
        self._install_fill()

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
        counts = self._counts_at(ratio)
        if self.settings.selection == "local":
            counts = self._round_counts(counts)
        if self.settings.selection in ("budget", "adaptive"):
            self._select_budget(counts, ratio)
            self._round_selection(ratio)
            self._refine()
            self.progress = ratio
            log.debug("pruned to the parameters of ratio %.4f", ratio)
            return
        for kind in self.kinds:
            removed = {i: self.masks.removed[(i, kind.name)] for i in self.prunable}
            new = self._select(kind.name, counts[kind.name], removed)
            for i in self.prunable:
                self.masks.set(i, kind, new[i])
        self._round_selection(ratio)
        self._refine()
        self.progress = ratio
        log.debug("pruned to ratio %.4f", ratio)

    def _counts_at(self, ratio: float) -> dict[str, int]:
        """Units of each kind removed per prunable layer at ``ratio``: ``settings.unit_counts`` in proportion
        (equal numbers per KV group kept for query heads on GQA), else the ratio's own."""
        s = self.settings
        if s.unit_counts is None:
            return removable_counts(self.geo, s.attention_unit, ratio)
        scale = ratio / s.ratio
        counts = {name: int(n * scale + 0.5) for name, n in s.unit_counts.items()}
        if self.buckets > 1:
            counts["attn"] = self.buckets * int(s.unit_counts.get("attn", 0) / self.buckets * scale + 0.5)
        return counts

    def _unit_multiples(self) -> dict[str, int]:
        """``prune.round_to`` as units per step of each kind (:mod:`loraprune.core.rounding`)."""
        multiples = {}
        for kind in self.kinds:
            channels = int((masked_input_slice(kind).unit_of_channel >= 0).sum())
            m = unit_multiple(self.settings.round_to, channels // kind.num_units)
            if kind.name == "attn" and self.buckets > 1:  # equal removal per KV group
                m = math.lcm(m, self.buckets)
            multiples[kind.name] = m
        return multiples

    def _round_counts(self, counts: dict[str, int]) -> dict[str, int]:
        """Local selection: the count removed in every layer, rounded so the kept width is a multiple."""
        if not self.settings.round_to:
            return counts
        multiples, units = self._unit_multiples(), {kind.name: kind.num_units for kind in self.kinds}
        return {
            name: round_removal(units[name], n, multiples[name]) if name in units else n
            for name, n in counts.items()
        }

    def _round_selection(self, ratio: float) -> None:
        """Selections over layers: at the final ratio, every kept width rounded to a multiple."""
        if not self.settings.round_to or ratio < self.settings.ratio:
            return
        keys = [(i, kind.name) for i in self.prunable for kind in self.kinds]
        new = round_selection(
            {key: self.ema.get(key) for key in keys},
            {key: self.masks.removed[key] for key in keys},
            self._unit_multiples(),
            self.unit_cost(),
            per_parameter=self.settings.selection == "budget",
        )
        kinds = {kind.name: kind for kind in self.kinds}
        for (i, name), removed in new.items():
            self.masks.set(i, kinds[name], removed)

    def _refine(self) -> None:
        """A criterion that refines which units of each layer go (``refine_removed``, Kwon et al.'s mask
        rearrangement) does so on the selection, the count per layer and kind unchanged."""
        refine = getattr(self.criterion, "refine_removed", None)
        if refine is None:
            return
        for i in self.prunable:
            for kind in self.kinds:
                if kind.name == "attn" and self.buckets > 1:  # equal removal per KV group must hold
                    continue
                removed = self.masks.removed[(i, kind.name)]
                self.masks.set(i, kind, refine(self.layers[i], kind, removed))

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

    def _select_budget(self, counts: dict[str, int], ratio: float) -> None:
        """Remove the parameters of ``counts`` units per kind and layer (or ``settings.param_budget`` in
        proportion to ``ratio``), chosen over all layers and kinds."""
        cost = self.unit_cost()
        keys = [(i, kind.name) for i in self.prunable for kind in self.kinds]
        s = self.settings
        if s.param_budget is not None:
            budget = round(s.param_budget * ratio / s.ratio)
        else:
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
            self._fix_input_maps()
        super().release()

    def _keep_input_means(self) -> None:
        """Take the criterion's input means for bias compensation (if it gives them) and fill with them."""
        means_of = getattr(self.criterion, "input_means", None)
        if means_of is None or self.reconstruct != "bias":
            return
        for i in self.prunable:
            for kind in self.kinds:
                mean = means_of(projection(self.layers[i], MASKED_INPUT[kind.name]))
                if mean is not None:
                    self.input_means[(i, kind.name)] = mean.detach().float().cpu()
        self._install_fill()

    def _install_fill(self) -> None:
        keys = sorted({*self.input_means, *self.input_stats, *self.input_maps})
        if keys:
            kinds = {k.name: k for k in self.kinds}
            self.fill.install(self.layers, kinds, self.masks, map_of=self._map_of, keys=keys)

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "removed": dict(self.masks.removed)}
        if self.input_means:
            state["input_means"] = dict(self.input_means)
        if self.input_maps:
            state["input_maps"] = {key: m.state() for key, m in self.input_maps.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        kinds = {k.name: k for k in self.kinds}
        for (i, name), removed in state["removed"].items():
            self.masks.set(i, kinds[name], removed)
        if state.get("input_means"):
            self.input_means = {k: v.float().cpu() for k, v in state["input_means"].items()}
            self._install_fill()
        super().load_state_dict(state)
        if state.get("input_maps"):
            self.input_maps = {k: InputMap.from_state(v) for k, v in state["input_maps"].items()}
            self.input_stats = {}
            self._install_fill()

    def decision(self) -> dict[str, torch.Tensor]:
        out = {f"{i}.{kind}": removed.clone() for (i, kind), removed in self.masks.removed.items()}
        out["progress"] = torch.tensor([self.progress], dtype=torch.float64)
        out.update({f"mean.{i}.{kind}": mean.clone() for (i, kind), mean in self.input_means.items()})
        for (i, kind), mapping in self.input_maps.items():
            out.update({f"map.{i}.{kind}.{name}": t for name, t in mapping.state().items()})
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
        maps: dict[Key, dict[str, torch.Tensor]] = {}
        for name, t in decision.items():
            if name.startswith("map."):
                _, i, kind, part = name.split(".")
                maps.setdefault((int(i), kind), {})[part] = t.cpu()
        if maps:
            self.input_maps = {key: InputMap.from_state(parts) for key, parts in maps.items()}
            self._install_fill()

    def result(self) -> PruneResult:
        kept = self.masks.kept_units()
        plan = PruningPlan.from_units(self.geo, self.settings.attention_unit, kept)
        return PruneResult(
            plan, input_means=dict(self.input_means) or None, input_maps=dict(self.input_maps) or None
        )

    def plan(self) -> PruningPlan:
        """The plan of what is kept now."""
        return self.result().plan

    def remove_hooks(self) -> None:
        self.fill.remove_hooks()
        self.masks.remove_hooks()

    def unpruned(self):
        """Masks lifted (the pretrained weights are never changed while masked)."""
        return self.masks.suspended()
