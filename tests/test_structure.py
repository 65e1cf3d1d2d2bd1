import pytest
import torch

from loraprune.core.budget import budget_capacity, params_removed, ratio_for_param_fraction
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
