"""Physical removal of pruned groups: merge LoRA, slice rows/columns, fix attention attributes."""

from __future__ import annotations

import torch
from torch import nn

from loraprune.core.depth import remove_layers
from loraprune.core.lora import dense_weight, is_quantized
from loraprune.core.plan import PruningPlan, head_channels
from loraprune.core.structure import Geometry, decoder_layers


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA into the base weights (W ← W + s·B·A) and return the plain transformers model.

    A quantized base (``model.quantize``) is dequantized first: W ← deq(W) + s·B·A in the dtype the base
    was loaded in, so the result holds plain bf16/fp32 weights.
    """
    if any(is_quantized(p) for p in model.parameters()):
        merge_into_dequantized(model)
        return model.unload() if hasattr(model, "unload") else model
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


@torch.no_grad()
def merge_into_dequantized(model: nn.Module) -> None:
    """Replace every quantized weight by its dequantized value, plus the LoRA update of the active
    adapter where the layer carries one (peft's ``get_delta_weight``); LoRA layers stay in place."""
    for module in model.modules():
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        weight = getattr(base, "weight", None)
        if weight is None or not is_quantized(weight):
            continue
        dense = dense_weight(weight).clone()
        for name in getattr(module, "active_adapters", []) if base is not module else []:
            if name in getattr(module, "lora_A", {}):
                dense += module.get_delta_weight(name).to(dense.dtype)
        base.weight = nn.Parameter(dense, requires_grad=False)


def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> None:
    """Keep only ``index`` along ``dim`` (0: output rows, 1: input columns) of a linear layer, in place."""
    index = index.to(linear.weight.device)
    linear.weight = nn.Parameter(
        linear.weight.data.index_select(dim, index).clone(), requires_grad=linear.weight.requires_grad
    )
    if dim == 0:
        if linear.bias is not None:
            linear.bias = nn.Parameter(
                linear.bias.data.index_select(0, index).clone(), requires_grad=linear.bias.requires_grad
            )
        linear.out_features = int(index.numel())
    else:
        linear.in_features = int(index.numel())


def apply_plan(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Remove what the plan drops, so that HF's own forward runs the smaller model. In place.

    The model's config then states the widths it has (:func:`state_config_widths`). A depth cut removes
    the plan's ``removed_layers`` (:func:`~loraprune.core.depth.remove_layers`), unless the model has
    lost them already (a pruner that removes them before LoRA recovery).
    """
    if plan.removed_layers:
        _remove_planned_layers(model, plan)
    layers = decoder_layers(model)
    hd = plan.geometry.head_dim
    for idx, keep in plan.layers.items():
        layer = layers[idx]
        attn, mlp = layer.self_attn, layer.mlp
        if keep.q_heads is not None:
            if len(keep.q_heads) % len(keep.kv_heads):
                raise ValueError(
                    f"layer {idx}: {len(keep.q_heads)} query heads do not divide over "
                    f"{len(keep.kv_heads)} KV heads"
                )
            q_rows = head_channels(keep.q_heads, hd)
            kv_rows = head_channels(keep.kv_heads, hd)
            slice_linear(attn.q_proj, q_rows, 0)
            slice_linear(attn.k_proj, kv_rows, 0)
            slice_linear(attn.v_proj, kv_rows, 0)
            slice_linear(attn.o_proj, q_rows, 1)
            attn.num_key_value_groups = len(keep.q_heads) // len(keep.kv_heads)
            for name, value in (
                ("num_heads", len(keep.q_heads)),
                ("num_key_value_heads", len(keep.kv_heads)),
            ):
                if hasattr(attn, name):
                    setattr(attn, name, value)
        if keep.channels is not None:
            ch = torch.tensor(keep.channels, dtype=torch.long)
            slice_linear(mlp.gate_proj, ch, 0)
            slice_linear(mlp.up_proj, ch, 0)
            slice_linear(mlp.down_proj, ch, 1)
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = len(keep.channels)
    state_config_widths(model, plan.geometry)
    return model


def _remove_planned_layers(model: nn.Module, plan: PruningPlan) -> None:
    depth, base = len(decoder_layers(model)), plan.geometry.num_layers
    left = base - len(plan.removed_layers)
    if depth == base:
        remove_layers(model, plan.removed_layers)
    elif depth != left:
        raise ValueError(
            f"the model has {depth} layers: neither the base model's {base} nor the {left} left by removing "
            f"layers {plan.removed_layers}"
        )


def state_config_widths(model: nn.Module, base: Geometry) -> str | None:
    """Make the model's config state the widths its layers have (in place): the global fields when every
    layer keeps the same ones, else per-layer lists (see :mod:`loraprune.core.widths`).

    Returns ``"uniform"``, ``"per_layer"``, or None for a model without a config.
    """
    from loraprune.core.widths import LayerWidths, state_widths

    config = getattr(model, "config", None)
    if config is None:
        return None
    return state_widths(config, LayerWidths.of(model, base.head_dim), base)


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied weights counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def decoder_parameters(model: nn.Module) -> int:
    """Parameters of the decoder layers only."""
    return sum(p.numel() for p in decoder_layers(model).parameters())
