"""``prune.round_to``: kept widths that suit the kernels and the quantizers' blocks.

llama.cpp quantizes a weight row by row in blocks along its input: 32 values for q4_0/q5_0/q8_0, 256 for
the K-quants (q4_k_m ...). The rows of ``down_proj`` are as long as the kept MLP channels, those of
``o_proj`` as the kept query heads × ``head_dim``; a row whose length the block does not divide is kept in
a fallback type (f16 for odd widths). ``round_to: N`` makes every prunable layer's kept width of each
kind a multiple of N: MLP channels, and the input width of ``o_proj`` where whole attention units can
reach it (a unit of ``w`` channels moves it in steps of ``w``, so kept units become a multiple of
``N / gcd(N, w)``; a kind whose layer has fewer units than that is left as selected).

The kept count is moved by score: down by dropping the lowest-scored kept units, up by keeping the
highest-scored removed ones. Selection by layer (``local``) rounds the count removed in every layer
alike before it selects; the selections over layers (``global``, ``budget``, ``adaptive``) round the
final selection, each (layer, kind) up or down so that the parameters removed stay as close as they can
to the selection's (flipping to up the layers whose next-best units score highest).
"""

from __future__ import annotations

import math

import torch

Key = tuple[int, str]


def unit_multiple(round_to: int, unit_width: int) -> int:
    """Units to keep in multiples of, so that kept units × ``unit_width`` channels divide by ``round_to``."""
    if round_to < 1:
        raise ValueError(f"prune.round_to must be a positive integer, got {round_to}")
    return round_to // math.gcd(round_to, unit_width)


def round_removal(num_units: int, n_remove: int, multiple: int) -> int:
    """The count to remove so that ``num_units - count`` is the multiple of ``multiple`` nearest to what
    ``n_remove`` keeps (ties: the smaller model), never emptying the layer nor going below zero removed.
    Unchanged where no multiple fits (``num_units < multiple``)."""
    if multiple <= 1 or num_units < multiple:
        return n_remove
    kept = num_units - n_remove
    down = kept - kept % multiple
    up = down + multiple
    options = [k for k in (down, up) if multiple <= k <= num_units]
    best = min(options, key=lambda k: (abs(k - kept), k))
    return num_units - best


def round_selection(
    scores: dict[Key, torch.Tensor],
    removed: dict[Key, torch.Tensor],
    multiples: dict[str, int],
    cost: dict[str, int],
    per_parameter: bool = True,
) -> dict[Key, torch.Tensor]:
    """Round a selection over layers: every (layer, kind) keeps a multiple of ``multiples[kind]`` units.

    Each key whose kept count is not a multiple goes down (its lowest-scored kept units removed) or up
    (its highest-scored removed units kept). All start down; then, in order of the mean score (per
    parameter when ``per_parameter``) of the units they would keep, keys flip up while that brings the
    parameters removed closer to the selection's. A key with a single option takes it; one with none
    (fewer units than the multiple) is left as selected.

    Args:
        scores: unit scores per key (higher: more important).
        removed: the selection (True: removed) per key.
        multiples: units per step for each kind name.
        cost: parameters one unit of each kind holds.

    Returns:
        The rounded removal masks (new tensors).
    """
    out = {key: mask.clone() for key, mask in removed.items()}
    drift = 0  # parameters removed beyond the selection's
    flips: list[tuple[float, Key, torch.Tensor, int]] = []
    for key, mask in removed.items():
        m, n = multiples.get(key[1], 1), mask.numel()
        kept = n - int(mask.sum())
        r = kept % m if m > 1 else 0
        if r == 0 or n < m:
            continue
        s = scores[key].float()
        kept_order = torch.argsort(torch.where(mask, torch.inf, s), stable=True)  # lowest kept first
        back_order = torch.argsort(torch.where(mask, s, -torch.inf), descending=True, stable=True)
        can_down, can_up = kept - r >= m, kept + m - r <= n
        per = cost[key[1]] if per_parameter else 1
        if can_down:
            out[key][kept_order[:r]] = True
            drift += r * cost[key[1]]
            if can_up:
                restore = back_order[: m - r]
                flips.append((float(s[restore].mean()) / per, key, kept_order[:r], m - r))
        elif can_up:
            out[key][back_order[: m - r]] = False
            drift -= (m - r) * cost[key[1]]
    for _, key, dropped, up in sorted(flips, key=lambda f: -f[0]):
        change = (len(dropped) + up) * cost[key[1]]
        if abs(drift - change) >= abs(drift):
            continue
        s = scores[key].float()
        out[key][dropped] = False
        back_order = torch.argsort(torch.where(out[key], s, -torch.inf), descending=True, stable=True)
        out[key][back_order[:up]] = False
        drift -= change
    return out
