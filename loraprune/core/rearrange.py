"""Kwon et al.'s mask rearrangement: within one layer, which units to remove given how many.

The diagonal Fisher scores each unit alone; removing several units of one layer costs, to second order,
the *joint* Fisher of their masks, ``Σ_samples (Σ_{u∈S} g_su)²`` (the block-diagonal approximation: the
cross terms within a layer kept, those between layers dropped), where ``g_su = ∂L/∂m_u`` on sample ``s``.
Starting from the chosen removed set, the kept units are visited in ascending order of their own Fisher;
each is tentatively added to the removed set, and the unit whose return leaves the smallest joint Fisher is
returned (possibly the one just added). The count removed never changes. Written from the paper (Kwon et
al., NeurIPS 2022, §4.2) and its reference code's ``greedy_rearrange`` (WoosukKwon/retraining-free-pruning,
which starts from the lowest diagonal Fisher: the same set where the search removed a layer's lowest).
"""

from __future__ import annotations

import torch


def joint_fisher(grads: torch.Tensor, removed: torch.Tensor) -> float:
    """``Σ_s (Σ_{u∈removed} g_su)²`` for mask gradients ``grads`` (samples × units)."""
    return float(grads.double()[:, removed].sum(1).pow(2).sum())


def rearrange(removed: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """The refined removed-unit mask (same count) for the layer's mask gradients ``grads`` (samples ×
    units); see the module doc."""
    count = int(removed.sum())
    if count == 0 or count == removed.numel():
        return removed.clone()
    g = grads.detach().double().t().cpu()  # units × samples
    own = g.pow(2).sum(1)
    chosen = removed.nonzero().flatten().tolist()
    candidates = (~removed).nonzero().flatten()
    for unit in candidates[torch.argsort(own[candidates], stable=True)].tolist():
        chosen.append(unit)
        vectors = g[chosen]
        left = (vectors.sum(0) - vectors).pow(2).sum(1)  # joint Fisher of the set without each member
        del chosen[int(torch.argmin(left))]
    out = torch.zeros_like(removed)
    out[chosen] = True
    return out
