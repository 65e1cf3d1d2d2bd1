"""Where a run cut: the parameters behind a KV group and an MLP channel, the attention share, the table."""

from __future__ import annotations

import math

from loraprune.core.structure import Geometry
from loraprune.report.cuts import CutProfile, cut_table, profile_from_metrics

SMOLLM2 = Geometry(
    num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64, intermediate_size=1536
)


def test_unit_parameters_match_the_smollm2_geometry():
    metrics = {"kept_per_layer": {"3": {"q_heads": 6, "kv_heads": 2, "channels": 1000}}}
    p = profile_from_metrics("x", metrics, SMOLLM2)
    assert p.kv_params == 294_912 and p.channel_params == 1_728  # 3·64·576·2 + 64·576·2; 3·576
    assert p.kept == {3: (2, 1000)}


def test_attention_share_of_the_removed_parameters():
    p = CutProfile("a", {0: (2, 10), 1: (3, 12)}, kv_params=100, channel_params=10)
    # full (3, 16): removed 1 KV group (100) and 6 + 4 channels (100)
    assert math.isclose(p.removed_attention_share((3, 16)), 0.5)
    assert CutProfile("b", {0: (3, 16)}, 100, 10).removed_attention_share((3, 16)) == 0.0
    table = cut_table([p], (3, 16))
    assert "| 0 | 2 / 10 |" in table and "| removed from attention | 50.0% |" in table
