"""Semi-structured N:M sparsity (``prune.pattern: "2:4"``): in every row of every pruned projection, each
group of ``M`` consecutive input weights keeps ``N`` (NVIDIA's convention; 2:4 zeroes two of every four).

Pattern arithmetic and masks, with no I/O: parse a pattern, choose keep masks from scores, check a weight,
mask LoRA's update (:mod:`loraprune.core.masked_lora`) so what is trained is ``(W + s·B·A) ⊙ M``, and merge
*through the mask*, which gives exactly that model and keeps the pattern exactly. How the pattern is
chosen (one-shot or during fine-tuning) is :class:`loraprune.pruners.nm.NMPruner`'s job.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from loraprune.core.lora import lora_tensors
from loraprune.core.masked_lora import mask_lora_update, unmask_lora_update
from loraprune.core.structure import ALL_PROJECTIONS, decoder_layers, projection
from loraprune.core.surgery import merge_lora

log = logging.getLogger(__name__)

Masks = dict[tuple[int, str], torch.Tensor]


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"N:M"`` → ``(N, M)``: ``N`` weights kept in every group of ``M`` (``0 < N < M``)."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not match:
        raise ValueError(f"prune.pattern must look like '2:4' (N kept of every M), got {pattern!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"prune.pattern {pattern!r}: need 0 < N < M")
    return n, m


def nm_keep_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean keep mask: per row, the ``n`` highest scores of each ``m`` consecutive columns."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"{cols} input features are not a multiple of the pattern's group size {m}")
    groups = scores.reshape(rows, cols // m, m)
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device)
    keep.scatter_(-1, torch.topk(groups, n, dim=-1).indices, True)
    return keep.reshape(rows, cols)


def is_nm_sparse(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive inputs of every row has at most ``n`` non-zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    return bool(((weight.reshape(rows, cols // m, m) != 0).sum(-1) <= n).all())


def targets(model: nn.Module, prunable: Sequence[int]) -> list[tuple[int, str, nn.Module]]:
    """``(layer, name, module)`` of every projection of the prunable layers."""
    layers = decoder_layers(model)
    return [(i, name, projection(layers[i], name)) for i in prunable for name in ALL_PROJECTIONS]


def mask_lora_updates(model: nn.Module, masks: Masks) -> None:
    """Train ``(W + s·B·A) ⊙ M`` on every masked projection that carries LoRA (masks held by reference)."""
    layers = decoder_layers(model)
    for (i, name), keep in masks.items():
        module = projection(layers[i], name)
        if lora_tensors(module).lora_a is not None:
            mask_lora_update(module, keep)


def merge_through_masks(model: nn.Module, masks: Masks) -> nn.Module:
    """Merge LoRA (``W + s·B·A``) and re-apply the keep masks, so the merged weights keep the pattern
    (and equal what the masked adapters computed)."""
    layers = decoder_layers(model)
    for i, name in masks:
        unmask_lora_update(projection(layers[i], name))
    merged = merge_lora(model)
    layers = decoder_layers(merged)
    with torch.no_grad():
        for (i, name), keep in masks.items():
            weight = projection(layers[i], name).weight
            weight.mul_(keep.to(weight.device, weight.dtype))
    return merged


def sparsity_report(model: nn.Module, masks: Masks, pattern: str) -> dict[str, Any]:
    """Zero fraction over the pruned projections and whether every row follows ``pattern`` exactly."""
    n, m = parse_pattern(pattern)
    layers = decoder_layers(model)
    zeros = total = 0
    exact = True
    for i, name in masks:
        weight = projection(layers[i], name).weight
        zeros += int((weight == 0).sum())
        total += weight.numel()
        exact = exact and is_nm_sparse(weight, n, m)
    return {"pattern": pattern, "projections": len(masks), "sparsity": zeros / max(total, 1), "exact": exact}
