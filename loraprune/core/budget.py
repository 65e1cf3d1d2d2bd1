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


def counts_for_param_fraction(
    geo: Geometry,
    unit: AttentionUnit,
    fraction: float,
    total_params: int,
    num_prunable_layers: int,
    attention_bias: bool = False,
    mlp_bias: bool = False,
    kinds: Collection[str] = KINDS,
) -> dict[str, int]:
    """Units of each kind removed in every prunable layer so that together they remove ``fraction`` of
    ``total_params`` (to within half an MLP channel per layer), for selections that cut every layer alike.

    Each attention count the layer allows (a multiple of the KV-head count for ``query_head`` units on a
    GQA model; every layer keeps one unit) is completed with the MLP channels that come nearest; of those
    pairs the one whose two kinds lose the most similar fractions is taken, the cut closest to a uniform
    group ratio. With only one kind in ``kinds``, its nearest count.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"parameter fraction must be in (0, 1), got {fraction}")
    n_attn, n_mlp = attention_kind(geo, unit).num_units, geo.intermediate_size
    per = params_per_unit(geo, unit, attention_bias, mlp_bias)
    target = fraction * total_params / num_prunable_layers  # per layer
    step = geo.num_kv_heads if unit == "query_head" and geo.queries_per_kv > 1 else 1
    attn_counts = range(0, n_attn, step) if "attn" in kinds else range(1)
    best: tuple[float, float] | None = None
    counts: dict[str, int] = {}
    for a in attn_counts:
        rest = target - a * per["attn"]
        m = min(max(round(rest / per["mlp"]), 0), n_mlp - 1) if "mlp" in kinds else 0
        err = abs(a * per["attn"] + m * per["mlp"] - target)
        if err > per["mlp"] / 2 + 1e-9 and "mlp" in kinds:
            continue  # the MLP cannot make up the rest within the layer
        key = (abs(a / n_attn - m / n_mlp), err) if "mlp" in kinds and "attn" in kinds else (err, 0.0)
        if best is None or key < best:
            best, counts = key, {"attn": a, "mlp": m}
    if not counts or (counts["attn"] == 0 and counts["mlp"] == 0):
        raise ValueError(
            f"no count of units per layer removes {fraction:.1%} of the parameters "
            f"({num_prunable_layers} prunable layers, {n_attn} attention units and {n_mlp} MLP channels each)"
        )
    return counts
