import pytest
import torch

from loraprune.core.budget import (
    budget_capacity,
    counts_for_param_fraction,
    params_removed,
    ratio_for_param_fraction,
)
from loraprune.core.structure import (
    Geometry,
    attention_kind,
    default_excluded_layers,
    mlp_kind,
    removable_counts,
)

GQA = Geometry(
    num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64, intermediate_size=1536
)
MHA = Geometry(
    num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=32, head_dim=128, intermediate_size=11008
)


def test_geometry_is_read_from_config(tiny):
    model, _ = tiny
    geo = Geometry.from_config(model.config)
    assert geo.num_heads == model.config.num_attention_heads
    assert geo.num_kv_heads == model.config.num_key_value_heads
    assert geo.head_dim * geo.num_heads == model.model.layers[0].self_attn.q_proj.out_features


def test_kv_group_unit_owns_query_heads_of_its_kv_head():
    kind = attention_kind(GQA, "kv_group")
    q = next(s for s in kind.slices if s.module == "q_proj").unit_of_channel
    k = next(s for s in kind.slices if s.module == "k_proj").unit_of_channel
    assert kind.num_units == 3
    assert q.tolist() == [g for g in range(3) for _ in range(3 * 64)]
    assert k.tolist() == [g for g in range(3) for _ in range(64)]
    assert {s.module for s in kind.slices} == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_query_head_unit_leaves_kv_alone():
    kind = attention_kind(GQA, "query_head")
    assert kind.num_units == 9
    assert {s.module for s in kind.slices} == {"q_proj", "o_proj"}


def test_mlp_channel_slices():
    kind = mlp_kind(GQA)
    assert [(s.module, s.dim) for s in kind.slices] == [("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)]
    assert torch.equal(kind.slices[0].unit_of_channel, torch.arange(1536))


def test_default_exclusion_matches_reference():
    assert default_excluded_layers(32) == [0, 1, 2, 31]
    assert default_excluded_layers(30) == [0, 1, 2, 29]


def test_removable_counts():
    assert removable_counts(MHA, "kv_group", 0.5) == {"attn": 16, "mlp": 5504}
    assert removable_counts(MHA, "kv_group", 0.2) == {"attn": 6, "mlp": 2202}
    # query_head on GQA: equal numbers from each of the 3 KV groups
    assert removable_counts(GQA, "query_head", 0.5)["attn"] == 6
    assert removable_counts(GQA, "kv_group", 0.2)["attn"] == 1


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_out_of_range(ratio):
    with pytest.raises(ValueError, match="ratio"):
        removable_counts(MHA, "kv_group", ratio)


def test_gqa_ratio_that_cannot_be_met():
    with pytest.raises(ValueError, match="every attention unit"):
        removable_counts(GQA, "kv_group", 0.9)


def test_params_removed_by_hand():
    # MHA, kv_group: a head = q,k,v rows + o cols = 4 * 4096 * 128; a channel = 3 * 4096
    removed = params_removed(MHA, "kv_group", 0.5, num_prunable_layers=28)
    assert removed == 28 * (16 * 4 * 4096 * 128 + 5504 * 3 * 4096)


def test_ratio_for_param_fraction_inverts_params_removed():
    total = 6_738_415_616
    r = ratio_for_param_fraction(MHA, "kv_group", 0.2, total, 28)
    got = params_removed(MHA, "kv_group", r, 28) / total
    assert abs(got - 0.2) < 0.002


def test_params_removed_of_one_kind_by_hand():
    assert params_removed(MHA, "kv_group", 0.5, 28, kinds=["attn"]) == 28 * 16 * 4 * 4096 * 128
    assert params_removed(MHA, "kv_group", 0.5, 28, kinds=["mlp"]) == 28 * 5504 * 3 * 4096


def test_budget_capacity_by_hand():
    # every layer keeps one of its 32 heads and one of its 11008 channels
    assert budget_capacity(MHA, "kv_group", 28) == 28 * (31 * 4 * 4096 * 128 + 11007 * 3 * 4096)
    assert budget_capacity(MHA, "kv_group", 28, kinds=["mlp"]) == 28 * 11007 * 3 * 4096


def test_ratio_for_param_fraction_of_the_mlp_alone():
    # with the attention left whole, the MLP must go further to remove the same fraction
    total = 6_738_415_616
    both = ratio_for_param_fraction(MHA, "kv_group", 0.2, total, 28)
    mlp = ratio_for_param_fraction(MHA, "kv_group", 0.2, total, 28, kinds=["mlp"])
    assert mlp > both
    assert abs(params_removed(MHA, "kv_group", mlp, 28, kinds=["mlp"]) / total - 0.2) < 0.002


SMALL = Geometry(num_layers=1, hidden_size=4, num_heads=2, num_kv_heads=2, head_dim=2, intermediate_size=8)


def test_counts_for_param_fraction_by_hand():
    # a head: q, k, v rows and o columns, 4 * 4 * 2 = 32 params; a channel: gate, up, down, 3 * 4 = 12
    # 10% of 1000 = 100: no head and 8 channels would take 96 but a layer keeps one channel (7: 84, 16 off);
    # one head and 6 channels remove 104, within half a channel (6)
    assert counts_for_param_fraction(SMALL, "kv_group", 0.1, 1000, 1) == {"attn": 1, "mlp": 6}
    # 5% = 50: one head + 2 channels (56, 6 off) and no head + 4 channels (48, 2 off) are both within half
    # a channel; the first loses 1/2 of the heads and 1/4 of the channels (1/4 apart), the second 0 and
    # 1/2 (1/2 apart): the more uniform cut is taken
    assert counts_for_param_fraction(SMALL, "kv_group", 0.05, 1000, 1) == {"attn": 1, "mlp": 2}
    # the MLP alone cannot give 100 (7 channels: 84); the attention alone comes nearest with one head
    with pytest.raises(ValueError, match="no count of units"):
        counts_for_param_fraction(SMALL, "kv_group", 0.1, 1000, 1, kinds=["mlp"])
    assert counts_for_param_fraction(SMALL, "kv_group", 0.1, 1000, 1, kinds=["attn"]) == {"attn": 1, "mlp": 0}


def test_counts_for_param_fraction_meets_35_percent_where_no_group_ratio_does():
    # SmolLM2-135M: 3 KV groups, 26 prunable layers; the nearest uniform ratio (0.5) removes 37.05%
    smol = Geometry(
        num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64, intermediate_size=1536
    )
    total = 134_515_008
    counts = counts_for_param_fraction(smol, "kv_group", 0.35, total, 26)
    per = {"attn": 4 * 576 * 64 + 2 * 2 * 576 * 64, "mlp": 3 * 576}  # 3 query heads + k, v; a channel
    removed = 26 * (counts["attn"] * per["attn"] + counts["mlp"] * per["mlp"])
    assert abs(removed - 0.35 * total) <= 26 * per["mlp"] / 2
    assert abs(params_removed(smol, "kv_group", 0.5, 26) / total - 0.3705) < 0.0005
    # query heads on GQA: equal numbers from every KV group, so attention moves in threes
    counts = counts_for_param_fraction(smol, "query_head", 0.35, total, 26)
    assert counts["attn"] % 3 == 0
