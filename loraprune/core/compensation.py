"""Bias compensation of removed units (FLAP): their inputs' mean contribution kept as a bias.

When the units feeding ``o_proj`` / ``down_proj`` are removed, the columns they fed stop contributing
``W[:, removed] @ x[removed]``. Bias compensation keeps its expectation over calibration tokens,
``b = W[:, removed] @ mean(X[removed])``, as a bias of the projection (An et al., 2024). It has two forms,
equal up to rounding:

* **masked** (during fine-tuning): the removed input channels are not zeroed but set to their calibration
  means, ``x ⊙ keep + mean ⊙ (1 − keep)`` (:class:`InputFill`, forward pre-hooks that run after the unit
  masks'); LoRA on the projection then sees the same input as the merged weight will;
* **physical** (at removal, :func:`add_compensation_biases`): on the merged model, before the columns are
  sliced away, ``W[:, removed] @ mean[removed]`` is added to the projection's bias (created if absent).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from loraprune.core.masks import MASKED_INPUT, UnitMasks, channel_keep_mask
from loraprune.core.plan import PruningPlan, head_channels
from loraprune.core.structure import GroupKind, decoder_layers, projection

Key = tuple[int, str]  # (layer, group kind name)


class InputFill:
    """Forward pre-hooks that set the masked-out inputs of ``o_proj`` / ``down_proj`` to their means.

    Installed after the :class:`~loraprune.core.masks.UnitMasks` hooks of the same modules (pre-hooks run
    in registration order), so they add ``mean ⊙ (1 − keep)`` to inputs already multiplied by ``keep``;
    they follow the masks (a unit removed later is filled from then on) and pause with them
    (:meth:`UnitMasks.suspended`).
    """

    def __init__(self) -> None:
        self._handles: list = []

    def install(
        self,
        layers: nn.ModuleList,
        kinds: Mapping[str, GroupKind],
        masks: UnitMasks,
        means: Mapping[Key, torch.Tensor],
    ) -> None:
        """Fill each ``(layer, kind)`` of ``means`` (one mean per input channel of its masked projection)."""
        self.remove_hooks()
        for (layer_idx, kind_name), mean in means.items():
            module = projection(layers[layer_idx], MASKED_INPUT[kind_name])
            weight = getattr(module, "base_layer", module).weight
            hook = _fill_removed((layer_idx, kind_name), kinds[kind_name], masks, mean.to(weight.device))
            self._handles.append(module.register_forward_pre_hook(hook))

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _fill_removed(key: Key, kind: GroupKind, masks: UnitMasks, mean: torch.Tensor):
    cache: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, args: tuple):
        if not masks.active:
            return None
        removed = masks.removed[key]
        if cache.get("removed") is not removed:  # masks.set stores a new tensor on every change
            keep = channel_keep_mask(kind, ~removed).to(mean.device)
            cache["removed"], cache["fill"] = removed, mean * (~keep)
        x = args[0]
        return (x + cache["fill"].to(x.dtype),) + tuple(args[1:])

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
    layers = decoder_layers(model)
    for (layer_idx, kind_name), mean in sorted(means.items()):
        module = projection(layers[layer_idx], MASKED_INPUT[kind_name])
        weight = module.weight
        removed = removed_input_channels(plan, layer_idx, kind_name, weight.shape[1]).to(weight.device)
        if not removed.any():
            continue
        bias = weight[:, removed].float() @ mean.to(weight.device).float()[removed]
        if module.bias is not None:
            bias += module.bias.float()
        module.bias = nn.Parameter(bias.to(weight.dtype), requires_grad=False)
