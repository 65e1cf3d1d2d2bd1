"""Unit masks applied during fine-tuning, and how units are chosen for removal.

Masks act on the inputs of ``o_proj`` (the heads' outputs) and ``down_proj`` (the MLP activations):
zeroing those is exactly what physically removing the group does, whatever the biases of q/k/v.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from loraprune.core.structure import GroupKind, Slice, projection

MASKED_INPUT = {"attn": "o_proj", "mlp": "down_proj"}


def select_lowest(
    scores: torch.Tensor, n_remove: int, removed: torch.Tensor, buckets: int = 1
) -> torch.Tensor:
    """Boolean mask of removed units: the already ``removed`` ones plus the lowest-scoring others.

    With ``buckets > 1`` units are split into that many equal consecutive buckets (KV groups) and each
    bucket loses ``n_remove // buckets`` units.
    """
    n = scores.numel()
    if n % buckets or n_remove % buckets:
        raise ValueError(f"{n_remove} of {n} units cannot be removed equally from {buckets} buckets")
    out = removed.clone()
    per = n // buckets
    for b in range(buckets):
        sl = slice(b * per, (b + 1) * per)
        need = n_remove // buckets - int(out[sl].sum())
        if need <= 0:
            continue
        s = scores[sl].clone().float()
        s[out[sl]] = float("inf")
        idx = torch.argsort(s, stable=True)[:need]
        out[b * per + idx] = True
    return out


def select_global(
    scores: dict[int, torch.Tensor], n_remove_total: int, removed: dict[int, torch.Tensor]
) -> dict[int, torch.Tensor]:
    """Global selection across layers: the lowest scores overall, never emptying a layer."""
    out = {k: v.clone() for k, v in removed.items()}
    need = n_remove_total - sum(int(v.sum()) for v in out.values())
    if need <= 0:
        return out
    cands = [
        (float(s[i]), layer, i) for layer, s in scores.items() for i in range(s.numel()) if not out[layer][i]
    ]
    cands.sort()
    for _, layer, i in cands:
        if need == 0:
            break
        if int((~out[layer]).sum()) <= 1:
            continue
        out[layer][i] = True
        need -= 1
    return out


def select_budget(
    scores: dict[tuple[int, str], torch.Tensor],
    cost: dict[str, int],
    budget: int,
    removed: dict[tuple[int, str], torch.Tensor],
    per_parameter: bool = True,
) -> dict[tuple[int, str], torch.Tensor]:
    """Selection across layers and kinds under a parameter budget (a greedy knapsack).

    Units are taken in order of score per parameter (``cost[kind]`` parameters per unit of that kind; of
    score alone when not ``per_parameter``, for scores on a scale of their own such as FLAP's) until
    the removed units hold ``budget`` parameters; a unit that would overshoot is skipped for cheaper ones,
    so the result stays within the budget by less than the cheapest unit. The already ``removed`` units
    count toward the budget and stay removed; no (layer, kind) loses its last unit.
    """
    out = {k: v.clone() for k, v in removed.items()}
    need = budget - sum(int(v.sum()) * cost[kind] for (_, kind), v in out.items())
    cands = [
        (float(s[i]) / (cost[key[1]] if per_parameter else 1), key, i)
        for key, s in scores.items()
        for i in range(s.numel())
        if not out[key][i]
    ]
    cands.sort(key=lambda c: c[0])
    cheapest = min(cost[kind] for _, kind in scores)
    kept = {key: int((~v).sum()) for key, v in out.items()}
    for _, key, i in cands:
        if need < cheapest:
            break
        if cost[key[1]] > need or kept[key] <= 1:
            continue
        out[key][i] = True
        kept[key] -= 1
        need -= cost[key[1]]
    return out


def masked_input_slice(kind: GroupKind) -> Slice:
    """The slice of ``kind`` on the input columns of the projection its units feed (o_proj/down_proj)."""
    return next(s for s in kind.slices if s.module == MASKED_INPUT[kind.name])


def channel_keep_mask(kind: GroupKind, keep_units: torch.Tensor) -> torch.Tensor:
    """Per-channel keep mask of the masked input (o_proj/down_proj columns) for unit keep flags."""
    return keep_units[masked_input_slice(kind).unit_of_channel]


class UnitMasks:
    """Keep masks over units per (layer, kind), installed as forward pre-hooks on the model."""

    def __init__(self) -> None:
        self.removed: dict[tuple[int, str], torch.Tensor] = {}
        self._kinds: dict[str, GroupKind] = {}
        self._buffers: dict[tuple[int, str], torch.Tensor] = {}
        self._handles: list = []
        self.active = True  # False inside :meth:`suspended`: the hooks pass inputs through

    def set(self, layer_idx: int, kind: GroupKind, removed: torch.Tensor) -> None:
        """Record which units of ``kind`` in layer ``layer_idx`` are removed."""
        self._kinds[kind.name] = kind
        self.removed[(layer_idx, kind.name)] = removed.clone()
        buf = self._buffers.get((layer_idx, kind.name))
        keep = channel_keep_mask(kind, ~removed)
        if buf is not None:
            buf.copy_(keep.to(buf))

    def install(self, layers: nn.ModuleList, keys: Iterable[tuple[int, str]] | None = None) -> None:
        """Attach hooks that multiply the masked inputs by the keep masks."""
        self.remove_hooks()
        for layer_idx, kind_name in keys if keys is not None else list(self.removed):
            kind = self._kinds[kind_name]
            module = projection(layers[layer_idx], MASKED_INPUT[kind_name])
            weight = _any_weight(module)
            keep = channel_keep_mask(kind, ~self.removed[(layer_idx, kind_name)]).to(
                weight.device, weight.dtype
            )
            self._buffers[(layer_idx, kind_name)] = keep
            self._handles.append(module.register_forward_pre_hook(_multiply_input(keep, self)))

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Forward passes inside run unmasked (the dense model, e.g. a distillation teacher)."""
        previous, self.active = self.active, False
        try:
            yield
        finally:
            self.active = previous

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._buffers.clear()

    def kept_units(self) -> dict[tuple[int, str], list[int]]:
        return {k: (~v).nonzero().flatten().tolist() for k, v in self.removed.items()}


def _any_weight(module: nn.Module) -> torch.Tensor:
    base = getattr(module, "base_layer", module)
    return base.weight


def _multiply_input(keep: torch.Tensor, masks: UnitMasks):
    def hook(_module: nn.Module, args: tuple):
        if not masks.active:
            return None
        x = args[0]
        return (x * keep.to(x.dtype),) + tuple(args[1:])

    return hook
