"""``prune.round_to``: kept widths rounded to a multiple by score, in every selection mode, the parameter
count of the pruned model exactly what its plan says."""

from __future__ import annotations

import pytest
import torch
from conftest import compose

from loraprune.core.budget import params_per_unit
from loraprune.core.rounding import round_removal, round_selection, unit_multiple
from loraprune.core.structure import Geometry
from loraprune.core.surgery import apply_plan, count_parameters
from loraprune.criteria import build_criterion
from loraprune.models.loading import TinySpec, load_model
from loraprune.pruners import GroupPruner, PrunerSettings


def test_unit_multiple_and_local_count():
    assert unit_multiple(32, 1) == 32 and unit_multiple(256, 1) == 256  # MLP channels
    assert unit_multiple(256, 64) == 4 and unit_multiple(32, 64) == 1  # query heads of 64
    assert unit_multiple(256, 192) == 4  # a KV group of three 64-wide heads
    # 1536 channels, 307 removed keeps 1229: the nearest multiple of 256 is 1280
    assert round_removal(1536, 307, 256) == 256
    assert round_removal(1536, 500, 256) == 512  # 1036 -> 1024
    assert round_removal(1536, 1500, 256) == 1280  # never below one multiple
    assert round_removal(100, 10, 256) == 10  # no multiple fits: as selected
    assert round_removal(128, 40, 32) == 32  # 88 -> 96 (nearest)
    assert round_removal(128, 48, 32) == 64  # 80: a tie goes to the smaller model


def test_round_selection_by_score_close_to_the_budget():
    g = torch.Generator().manual_seed(0)
    scores = {(i, "mlp"): torch.rand(64, generator=g) for i in range(4)}
    removed = {}
    for i, n in enumerate((10, 21, 30, 5)):  # kept 54, 43, 34, 59
        mask = torch.zeros(64, dtype=torch.bool)
        mask[torch.argsort(scores[(i, "mlp")])[:n]] = True
        removed[(i, "mlp")] = mask
    out = round_selection(scores, removed, {"mlp": 16}, {"mlp": 3})
    kept = [64 - int(out[(i, "mlp")].sum()) for i in range(4)]
    assert all(k % 16 == 0 for k in kept)
    assert abs(sum(kept) - (54 + 43 + 34 + 59)) <= 8  # the budget: within half a step of 16
    for i in range(4):  # by score: whatever is kept outscores whatever is removed
        s, mask = scores[(i, "mlp")], out[(i, "mlp")]
        assert s[~mask].min() > s[mask].max()


@pytest.mark.parametrize("selection", ["local", "global", "budget", "adaptive"])
@pytest.mark.parametrize("unit", ["kv_group", "query_head"])
def test_every_selection_mode_keeps_multiples(selection, unit):
    if selection != "local" and unit == "query_head":
        pytest.skip("selections over layers take whole KV groups on GQA")
    spec = TinySpec(hidden_size=64, num_heads=8, num_kv_heads=2, num_layers=4, intermediate_size=200)
    model, _ = load_model("tiny", tiny=spec, dtype="float32", device="cpu")
    geo = Geometry.from_config(model.config)
    before = count_parameters(model)
    settings = PrunerSettings(
        ratio=0.3, excluded_layers=[0], selection=selection, round_to=32, attention_unit=unit
    )
    pruner = GroupPruner(model, geo, build_criterion("magnitude"), settings, lambda step: 0.3)
    pruner.advance_to(0.3)
    plan = pruner.finalize().plan
    summary = plan.summary()
    for i in range(1, 4):
        assert summary[str(i)]["channels"] % 32 == 0, (selection, summary)
        if unit == "query_head":  # 16-wide heads: 32 channels are two heads, equal per KV group
            assert summary[str(i)]["q_heads"] % 4 == 0
    assert summary["0"]["channels"] == 200  # excluded layers are not rounded
    apply_plan(model, plan)
    per = params_per_unit(geo, unit)
    removed_units = sum(
        (geo.intermediate_size - summary[str(i)]["channels"]) * per["mlp"]
        + (geo.num_heads - summary[str(i)]["q_heads"])
        // (geo.queries_per_kv if unit == "kv_group" else 1)
        * per["attn"]
        for i in range(4)
    )
    assert before - count_parameters(model) == removed_units  # the accounting is exact


def test_round_to_in_the_config():
    from loraprune.run.resolve import ConfigError, validate

    cfg = compose("prune.round_to=256")
    assert cfg.prune.round_to == 256
    validate(cfg)
    with pytest.raises(ConfigError, match="prune.round_to must be a positive integer"):
        validate(compose("prune.round_to=0"))
    with pytest.raises(ConfigError, match="prune.round_to rounds kept heads and channels"):
        validate(compose("prune=nm", "prune.round_to=32"))
