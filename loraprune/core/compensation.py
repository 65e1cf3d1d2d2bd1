"""Compensation of removed units, in its two forms: masked during fine-tuning, and merged at removal.

When the units feeding ``o_proj`` / ``down_proj`` are removed, the columns they fed stop contributing
``W[:, removed] @ x[removed]``. A reconstruction (``prune.reconstruct``, :mod:`loraprune.core.reconstruct`)
replaces the projection's input by a map of its kept channels, ``x̃ = T(x_k)``: ``bias`` fills the removed
channels with their calibration means (FLAP's bias compensation, An et al., 2024), ``least_squares``
predicts them from the kept ones, ``scales`` rescales the kept units (Kwon et al.'s mask tuning). Two
forms, equal up to rounding:

* **masked** (during fine-tuning): forward pre-hooks that run after the unit masks' (:class:`InputFill`)
  replace the masked input by ``x̃``; LoRA on the projection then sees the same input as the merged
  weight will;
* **physical** (at removal, :func:`apply_input_maps`, :func:`add_compensation_biases`): on the merged model,
  before the columns are sliced away, ``W`` and the bias become ``W'``, ``b'`` with ``W' x + b' = W x̃ + b``
  (a bias is created where one is needed and absent).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from loraprune.core.masks import MASKED_INPUT, UnitMasks, channel_keep_mask
from loraprune.core.plan import PruningPlan, head_channels
from loraprune.core.reconstruct import InputMap, bias_map
from loraprune.core.structure import GroupKind, decoder_layers, projection

Key = tuple[int, str]  # (layer, group kind name)
MapOf = Callable[[Key, torch.Tensor], InputMap | None]  # (key, removed channels) -> the map in force


class InputFill:
    """Forward pre-hooks that replace the masked inputs of ``o_proj`` / ``down_proj`` by their
    reconstruction ``x̃`` (:class:`~loraprune.core.reconstruct.InputMap`).

    Installed after the :class:`~loraprune.core.masks.UnitMasks` hooks of the same modules (pre-hooks run
    in registration order), so they see inputs already multiplied by ``keep``; they follow the masks (a
    unit removed later is reconstructed from then on: the map is asked for again whenever a mask changes)
    and pause with them (:meth:`UnitMasks.suspended`).
    """

    def __init__(self) -> None:
        self._handles: list = []

    def install(
        self,
        layers: nn.ModuleList,
        kinds: Mapping[str, GroupKind],
        masks: UnitMasks,
        means: Mapping[Key, torch.Tensor] | None = None,
        map_of: MapOf | None = None,
        keys: list[Key] | None = None,
    ) -> None:
        """Reconstruct each ``(layer, kind)`` of ``keys`` (default: those of ``means``) with ``map_of(key,
        removed_channels)``; with ``means`` only (one mean per input channel), FLAP's bias fill."""
        self.remove_hooks()
        if map_of is None:
            if means is None:
                raise ValueError("InputFill needs means or a map_of")
            map_of = means_map_of(means)
        for layer_idx, kind_name in keys if keys is not None else list(means or {}):
            module = projection(layers[layer_idx], MASKED_INPUT[kind_name])
            weight = getattr(module, "base_layer", module).weight
            hook = _fill_removed((layer_idx, kind_name), kinds[kind_name], masks, map_of, weight.device)
            self._handles.append(module.register_forward_pre_hook(hook))

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def means_map_of(means: Mapping[Key, torch.Tensor]) -> MapOf:
    """FLAP's fill: removed channels replaced by their calibration means."""

    def map_of(key: Key, removed: torch.Tensor) -> InputMap | None:
        return bias_map(means[key], removed) if bool(removed.any()) else None

    return map_of


def _fill_removed(key: Key, kind: GroupKind, masks: UnitMasks, map_of: MapOf, device: torch.device):
    cache: dict[str, object] = {}

    def hook(_module: nn.Module, args: tuple):
        if not masks.active:
            return None
        removed = masks.removed[key]
        if cache.get("removed") is not removed:  # masks.set stores a new tensor on every change
            channels = ~channel_keep_mask(kind, ~removed)
            found = map_of(key, channels)
            cache["removed"], cache["map"] = removed, None if found is None else found.to(device)
        mapping = cache["map"]
        if mapping is None:
            return None
        return (mapping.apply(args[0]),) + tuple(args[1:])

    return hook


def removed_input_channels(plan: PruningPlan, layer_idx: int, kind_name: str, width: int) -> torch.Tensor:
    """Boolean mask over the ``width`` input channels of the masked projection that the plan removes."""
    keep = plan.layers.get(layer_idx)
    removed = torch.zeros(width, dtype=torch.bool)
    if keep is None:
        return removed
    if kind_name == "attn":
        if keep.q_heads is None:
            return removed
        kept = head_channels(keep.q_heads, plan.geometry.head_dim)
    else:
        if keep.channels is None:
            return removed
        kept = torch.tensor(keep.channels, dtype=torch.long)
    removed[:] = True
    removed[kept] = False
    return removed


@torch.no_grad()
def add_compensation_biases(model: nn.Module, plan: PruningPlan, means: Mapping[Key, torch.Tensor]) -> None:
    """Add ``W[:, removed] @ mean[removed]`` to the bias of each ``(layer, kind)``'s ``o_proj`` /
    ``down_proj`` (a frozen bias is created where there is none). In place, on the merged, still unsliced
    model: call it before :func:`~loraprune.core.surgery.apply_plan`. A projection that loses no input
    gets no bias."""
    apply_input_maps(model, plan, map_of=means_map_of(means), keys=list(means))


@torch.no_grad()
def apply_input_maps(
    model: nn.Module,
    plan: PruningPlan,
    maps: Mapping[Key, InputMap] | None = None,
    map_of: MapOf | None = None,
    keys: list[Key] | None = None,
) -> None:
    """Merge each ``(layer, kind)``'s reconstruction into its ``o_proj`` / ``down_proj``: ``W``, ``b`` become
    ``W'``, ``b'`` with ``W' x + b' = W x̃ + b`` (a frozen bias created where a shift needs one). ``maps``:
    the maps as computed for the final masks; or ``map_of(key, removed_channels)`` for the plan's removed
    channels. In place, on the merged, still unsliced model, before
    :func:`~loraprune.core.surgery.apply_plan`."""
    layers = decoder_layers(model)
    for key in sorted(keys if keys is not None else list(maps or {})):
        layer_idx, kind_name = key
        module = projection(layers[layer_idx], MASKED_INPUT[kind_name])
        weight = module.weight
        if maps is not None:
            mapping = maps.get(key)
        else:
            removed = removed_input_channels(plan, layer_idx, kind_name, weight.shape[1])
            mapping = map_of(key, removed) if bool(removed.any()) else None
        if mapping is None:
            continue
        new_weight, new_bias = mapping.to(weight.device).merge(weight, module.bias)
        weight.copy_(new_weight.to(weight.dtype))
        if new_bias is not None and new_bias is not module.bias:
            module.bias = nn.Parameter(new_bias.to(weight.dtype), requires_grad=False)
