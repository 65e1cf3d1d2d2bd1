"""Parameter accounting of a pruning ratio, and the group ratio that removes a parameter fraction."""

from __future__ import annotations

from collections.abc import Collection

from loraprune.core.structure import AttentionUnit, Geometry, attention_kind, removable_counts

KINDS = ("attn", "mlp")


def params_per_unit(
    geo: Geometry, unit: AttentionUnit, attention_bias: bool = False, mlp_bias: bool = False
) -> dict[str, int]:
    """Parameters one attention unit and one MLP channel hold."""
    h, hd, rep = geo.hidden_size, geo.head_dim, geo.queries_per_kv
    qb = hd if attention_bias else 0
    query_head = 2 * h * hd + qb  # q rows + o columns
    # a KV group: rep query heads plus one K and one V head
    attn = rep * query_head + 2 * (h * hd + qb) if unit == "kv_group" or rep == 1 else query_head
    mlp = 3 * h + (2 if mlp_bias else 0)
    return {"attn": attn, "mlp": mlp}


def params_removed(
    geo: Geometry,
    unit: AttentionUnit,
    ratio: float,
    num_prunable_layers: int,
    attention_bias: bool = False,
    mlp_bias: bool = False,
    kinds: Collection[str] = KINDS,
) -> int:
    """Parameters removed when ``ratio`` of the groups of ``kinds`` (``attn`` / ``mlp``; both by
    default) in ``num_prunable_layers`` layers go."""
    counts = removable_counts(geo, unit, ratio)
    per = params_per_unit(geo, unit, attention_bias, mlp_bias)
    return num_prunable_layers * sum(counts[k] * per[k] for k in kinds)


def budget_capacity(
    geo: Geometry,
    unit: AttentionUnit,
    num_prunable_layers: int,
    attention_bias: bool = False,
    mlp_bias: bool = False,
    kinds: Collection[str] = KINDS,
) -> int:
    """The most parameters a selection across layers can remove: every prunable layer keeps one unit of
    each kind in ``kinds`` (:func:`loraprune.core.masks.select_budget`)."""
    units = {"attn": attention_kind(geo, unit).num_units, "mlp": geo.intermediate_size}
    per = params_per_unit(geo, unit, attention_bias, mlp_bias)
    return num_prunable_layers * sum((units[k] - 1) * per[k] for k in kinds)


def ratio_for_param_fraction(
    geo: Geometry,
    unit: AttentionUnit,
    fraction: float,
    total_params: int,
    num_prunable_layers: int,
    attention_bias: bool = False,
    mlp_bias: bool = False,
    kinds: Collection[str] = KINDS,
) -> float:
    """The group ratio whose removal (of the units of ``kinds``) comes closest to ``fraction`` of
    ``total_params``: exact only up to whole units per layer (with 3 KV groups a layer's attention moves
    in thirds); a selection across layers meets the fraction itself (``PrunerSettings.param_budget``)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"parameter fraction must be in [0, 1), got {fraction}")
    best, best_err = 0.0, float("inf")
    for i in range(1000):
        r = i / 1000
        try:
            removed = params_removed(geo, unit, r, num_prunable_layers, attention_bias, mlp_bias, kinds)
        except ValueError:
            break
        err = abs(removed / total_params - fraction)
        if err < best_err - 1e-12:
            best, best_err = r, err
    if fraction > 0 and best == 0.0:
        raise ValueError(f"no group ratio removes {fraction:.1%} of the parameters")
    return best
