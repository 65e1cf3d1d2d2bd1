"""Structural groups of a LLaMA-family decoder: attention units and MLP channels.

A *group* is the set of coupled weight slices that are removed together:

* an attention unit: its rows of ``q_proj`` (and of ``k_proj``/``v_proj`` when whole KV heads go) and
  the matching columns of ``o_proj``;
* an MLP channel: its rows of ``gate_proj`` and ``up_proj`` and its column of ``down_proj``.

For grouped-query attention the attention unit is configurable:

* ``kv_group``: one KV head together with all the query heads that share it;
* ``query_head``: one query head; query heads are removed in equal numbers from every KV group, so the
  pruned layer is still a valid GQA layer and K/V are kept.

For multi-head attention both mean one head. Geometry is always read from the model config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

AttentionUnit = Literal["kv_group", "query_head"]
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
ALL_PROJECTIONS = ATTENTION_MODULES + MLP_MODULES


@dataclass(frozen=True)
class Geometry:
    """Attention and MLP sizes of one decoder (read from a HF config)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int

    @property
    def queries_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_config(cls, config) -> Geometry:
        """Read the geometry of a LLaMA-style ``PretrainedConfig``."""
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        if heads % kv:
            raise ValueError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")
        return cls(
            config.num_hidden_layers, config.hidden_size, heads, kv, head_dim, config.intermediate_size
        )


@dataclass(frozen=True)
class Slice:
    """Which channels of one projection a group kind owns.

    Attributes:
        module: projection name, e.g. ``"q_proj"``.
        dim: 0 for output rows, 1 for input columns.
        unit_of_channel: for every channel along ``dim``, the unit it belongs to (-1: none).
    """

    module: str
    dim: int
    unit_of_channel: torch.Tensor


@dataclass(frozen=True)
class GroupKind:
    """One kind of prunable group in a layer ("attn" or "mlp") and its slices."""

    name: str
    num_units: int
    slices: tuple[Slice, ...]


@dataclass
class LayerPlan:
    """Kept units per group kind of one layer (``None`` kind entries: untouched)."""

    kept: dict[str, list[int]] = field(default_factory=dict)


def _repeat(units: torch.Tensor, width: int) -> torch.Tensor:
    return units.repeat_interleave(width)


def attention_kind(geo: Geometry, unit: AttentionUnit) -> GroupKind:
    """The attention group kind for ``unit``."""
    hd, rep = geo.head_dim, geo.queries_per_kv
    if unit == "kv_group" or rep == 1:
        kv_units = torch.arange(geo.num_kv_heads)
        q_units = _repeat(kv_units, rep * hd)
        kv_channels = _repeat(kv_units, hd)
        slices = (
            Slice("q_proj", 0, q_units),
            Slice("k_proj", 0, kv_channels),
            Slice("v_proj", 0, kv_channels),
            Slice("o_proj", 1, q_units),
        )
        return GroupKind("attn", geo.num_kv_heads, slices)
    if unit == "query_head":
        q_units = _repeat(torch.arange(geo.num_heads), hd)
        return GroupKind("attn", geo.num_heads, (Slice("q_proj", 0, q_units), Slice("o_proj", 1, q_units)))
    raise ValueError(f"unknown attention unit {unit!r}; expected 'kv_group' or 'query_head'")


def mlp_kind(geo: Geometry) -> GroupKind:
    """The MLP channel group kind."""
    ch = torch.arange(geo.intermediate_size)
    return GroupKind(
        "mlp",
        geo.intermediate_size,
        (Slice("gate_proj", 0, ch), Slice("up_proj", 0, ch), Slice("down_proj", 1, ch)),
    )


def group_kinds(geo: Geometry, unit: AttentionUnit) -> tuple[GroupKind, GroupKind]:
    """Both group kinds of a decoder layer."""
    return attention_kind(geo, unit), mlp_kind(geo)


def default_excluded_layers(num_layers: int, first_fraction: float = 0.1, last: int = 1) -> list[int]:
    """The reference code's exclusion: the first ``first_fraction`` of layers and the last ``last``."""
    first = int(num_layers * first_fraction)
    return sorted(set(range(first)) | set(range(num_layers - last, num_layers)))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a (possibly peft-wrapped) LLaMA-style causal LM."""
    inner = model
    for attr in ("base_model", "model"):
        # peft: PeftModel.base_model (LoraModel).model (LlamaForCausalLM).model (LlamaModel)
        while hasattr(inner, attr) and not hasattr(inner, "layers"):
            inner = getattr(inner, attr)
    if not hasattr(inner, "layers"):
        raise TypeError(f"{type(model).__name__} has no LLaMA-style decoder layers (model.layers)")
    return inner.layers


def projection(layer: nn.Module, name: str) -> nn.Module:
    """The projection ``name`` of a decoder layer (``q_proj`` ... ``down_proj``)."""
    parent = layer.self_attn if name in ATTENTION_MODULES else layer.mlp
    return getattr(parent, name)


def units_to_remove(num_units: int, ratio: float) -> int:
    """How many units a ratio removes: the nearest whole number."""
    return int(num_units * ratio + 0.5)


def removable_counts(geo: Geometry, unit: AttentionUnit, ratio: float) -> dict[str, int]:
    """Units removed per layer for each group kind at ``ratio``; raises if a layer would be emptied.

    With ``query_head`` on a GQA model the count is a multiple of the KV-head count (equal numbers from
    every KV group).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    attn = attention_kind(geo, unit)
    if unit == "query_head" and geo.queries_per_kv > 1:
        n_attn = geo.num_kv_heads * units_to_remove(geo.queries_per_kv, ratio)
    else:
        n_attn = units_to_remove(attn.num_units, ratio)
    counts = {"attn": n_attn, "mlp": units_to_remove(geo.intermediate_size, ratio)}
    if counts["attn"] >= attn.num_units:
        raise ValueError(
            f"ratio {ratio} would remove every attention unit of a layer ({attn.num_units} {unit} units);"
            f" use a smaller ratio or another prune.attention_unit"
        )
    return counts
