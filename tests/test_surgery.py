"""Equivalences: masked == physically pruned, merged == unmerged, saved == reloaded."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from loraprune import load_pruned, save_pruned
from loraprune.core.budget import params_per_unit, params_removed
from loraprune.core.masks import select_budget, select_global, select_lowest
from loraprune.core.schedule import build_schedule
from loraprune.core.structure import ALL_PROJECTIONS, Geometry
from loraprune.core.surgery import apply_plan, count_parameters, merge_lora
from loraprune.criteria import build_criterion
from loraprune.pruners import GroupPruner, PrunerSettings


def _lora(model, seed=1):
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(ALL_PROJECTIONS)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return pm


def _pruned(model, tokens, unit="kv_group", ratio=0.5, steps=3, selection="local", **more):
    geo = Geometry.from_config(model.config)
    pm = _lora(model)
    settings = PrunerSettings(
        ratio=ratio, attention_unit=unit, prune_freq=1, excluded_layers=[0], selection=selection, **more
    )
    pruner = GroupPruner(
        pm, geo, build_criterion("loraprune"), settings, build_schedule("cubic", ratio, steps)
    )
    for step in range(1, steps + 1):
        pm(input_ids=tokens, labels=tokens).loss.backward()
        pruner.observe()
        pm.zero_grad()
        pruner.step(step, final_step=step == steps)
    return pm, pruner, geo


def _masked_and_pruned(pm, pruner, tokens):
    """Logits of the masked model, then of it merged and physically pruned by the pruner's plan (with the
    pruned model, its size before and the plan)."""
    with torch.no_grad():
        masked = pm(input_ids=tokens).logits
    plan = pruner.plan()
    pruner.remove_hooks()
    merged = merge_lora(pm)
    before = count_parameters(merged)
    apply_plan(merged, plan)
    with torch.no_grad():
        pruned = merged(input_ids=tokens).logits
    return masked, pruned, merged, before, plan


@pytest.mark.parametrize("unit", ["kv_group", "query_head"])
def test_masked_equals_physically_pruned(tiny, tokens, unit):
    model, _ = tiny
    pm, pruner, geo = _pruned(model, tokens, unit)
    masked, pruned, merged, before, plan = _masked_and_pruned(pm, pruner, tokens)
    assert torch.allclose(masked, pruned, atol=1e-4)
    assert count_parameters(merged) < before
    layer = merged.model.layers[1].self_attn
    kept = plan.layers[1]
    assert layer.q_proj.out_features == len(kept.q_heads) * geo.head_dim
    assert layer.k_proj.out_features == len(kept.kv_heads) * geo.head_dim
    assert len(kept.q_heads) % len(kept.kv_heads) == 0
    # layer 0 was excluded and keeps everything
    assert 0 not in plan.layers
    # the pruning reached the requested ratio exactly
    assert len(kept.channels) == geo.intermediate_size // 2


def test_query_head_keeps_equal_heads_per_kv_group(tokens):
    from loraprune.models.loading import TinySpec, load_model

    model, _ = load_model("tiny", tiny=TinySpec(num_heads=8, num_kv_heads=2), dtype="float32", device="cpu")
    _, pruner, _ = _pruned(model, tokens, "query_head", ratio=0.5)
    for keep in pruner.plan().layers.values():
        groups = [h // 4 for h in keep.q_heads]
        assert groups.count(0) == groups.count(1) == 2
        assert keep.kv_heads == [0, 1]


def test_merged_equals_unmerged(tiny, tokens):
    model, _ = tiny
    pm = _lora(model)
    pm.eval()
    with torch.no_grad():
        before = pm(input_ids=tokens).logits
        after = merge_lora(pm)(input_ids=tokens).logits
    assert torch.allclose(before, after, atol=1e-5)


def test_saved_equals_reloaded(tiny, tokens, tmp_path):
    model, tok = tiny
    pm, pruner, _ = _pruned(model, tokens)
    plan = pruner.plan()
    pruner.remove_hooks()
    merged = apply_plan(merge_lora(pm), plan)
    save_pruned(merged, tok, plan, tmp_path / "model")
    reloaded, tok2 = load_pruned(tmp_path / "model", with_tokenizer=True)
    with torch.no_grad():
        assert torch.equal(merged(input_ids=tokens).logits, reloaded(input_ids=tokens).logits)
    assert count_parameters(reloaded) == count_parameters(merged)
    assert tok2("abc").input_ids == tok("abc").input_ids


def test_load_pruned_rejects_plain_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="pruning_plan.json"):
        load_pruned(tmp_path)


def test_pruned_groups_stay_pruned():
    scores = torch.tensor([5.0, 1.0, 3.0, 0.5])
    removed = torch.tensor([True, False, False, False])
    out = select_lowest(scores, 2, removed)
    assert out.tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="equally"):
        select_lowest(scores, 1, torch.zeros(4, dtype=torch.bool), buckets=2)


def test_uniformly_pruned_model_loads_with_plain_from_pretrained(tokens, tmp_path):
    from transformers import AutoModelForCausalLM

    from loraprune.models.loading import TinySpec, load_model

    model, tok = load_model("tiny", tiny=TinySpec(num_heads=8, num_kv_heads=2), dtype="float32", device="cpu")
    geo = Geometry.from_config(model.config)
    pm = _lora(model)
    settings = PrunerSettings(ratio=0.5, attention_unit="query_head", excluded_layers=[])
    pruner = GroupPruner(pm, geo, build_criterion("magnitude"), settings, build_schedule("one_shot", 0.5, 1))
    pruner.advance_to(0.5)
    plan = pruner.plan()
    pruner.remove_hooks()
    merged = apply_plan(merge_lora(pm), plan)
    save_pruned(merged, tok, plan, tmp_path / "m")
    assert merged.config.num_attention_heads == 4  # after surgery the in-memory config states the widths
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert plain.config.num_attention_heads == 4 and plain.config.intermediate_size == 64
    with torch.no_grad():
        expected = merged(input_ids=tokens).logits
        assert torch.allclose(plain(input_ids=tokens).logits, expected, atol=1e-5)
        assert torch.allclose(load_pruned(tmp_path / "m")(input_ids=tokens).logits, expected, atol=1e-5)


def test_surgery_makes_the_config_state_each_layers_widths(tiny, tokens):
    model, _ = tiny
    pm, pruner, geo = _pruned(model, tokens)
    plan = pruner.plan()
    pruner.remove_hooks()
    merged = apply_plan(merge_lora(pm), plan)
    attn = [layer.self_attn for layer in merged.model.layers]
    config = merged.config
    assert config.layer_num_attention_heads == [a.q_proj.out_features // geo.head_dim for a in attn]
    assert config.layer_num_key_value_heads == [a.k_proj.out_features // geo.head_dim for a in attn]
    assert config.layer_intermediate_size == [x.mlp.gate_proj.out_features for x in merged.model.layers]
    assert config.layer_num_attention_heads[0] == geo.num_heads  # layer 0 was excluded
    assert config.num_attention_heads == geo.num_heads  # globals: the base's widths (the widest)
    kwargs = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=2)
    static = merged.generate(tokens[:1], cache_implementation="static", **kwargs)
    assert torch.equal(merged.generate(tokens[:1], **kwargs), static)


def test_global_selection_takes_lowest_overall_but_never_empties_a_layer():
    scores = {0: torch.tensor([0.1, 0.2, 0.3]), 1: torch.tensor([5.0, 6.0, 7.0])}
    none = {0: torch.zeros(3, dtype=torch.bool), 1: torch.zeros(3, dtype=torch.bool)}
    out = select_global(scores, 3, none)
    assert out[0].tolist() == [True, True, False]  # layer 0 keeps one unit
    assert out[1].tolist() == [True, False, False]


def test_budget_selection_takes_lowest_score_per_parameter_within_the_budget():
    cost = {"attn": 4, "mlp": 1}
    scores = {
        (0, "attn"): torch.tensor([0.4, 8.0]),  # per parameter 0.1, 2.0
        (0, "mlp"): torch.tensor([0.06, 0.3, 3.0]),
        (1, "attn"): torch.tensor([0.8, 0.2]),  # 0.2, 0.05
        (1, "mlp"): torch.tensor([0.5, 1.0, 0.15]),
    }
    none = {k: torch.zeros(v.numel(), dtype=torch.bool) for k, v in scores.items()}
    # budget 7: (1,attn,1) 4 -> 3 left; (0,mlp,0) -> 2; (0,attn,0) costs 4 > 2: skipped; (1,mlp,2) -> 1;
    # (1,attn,0) skipped; (0,mlp,1) -> 0
    out = select_budget(scores, cost, 7, none)
    assert {k: v.tolist() for k, v in out.items()} == {
        (0, "attn"): [False, False],
        (0, "mlp"): [True, True, False],
        (1, "attn"): [False, True],
        (1, "mlp"): [False, False, True],
    }
    # units already removed count toward the budget and stay removed
    prior = {**none, (0, "attn"): torch.tensor([False, True])}
    assert {k: v.tolist() for k, v in select_budget(scores, cost, 4, prior).items()} == {
        k: v.tolist() for k, v in prior.items()
    }
    # a budget beyond everything: each (layer, kind) keeps its best unit per parameter
    out = select_budget(scores, cost, 100, none)
    assert [int((~out[k]).nonzero()) for k in scores] == [1, 2, 0, 1]


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_budget_selection_removes_the_ratios_parameters_and_masked_equals_pruned(tiny, tokens, ratio):
    model, _ = tiny
    pm, pruner, geo = _pruned(model, tokens, ratio=ratio, selection="budget")
    masked, pruned, merged, before, _ = _masked_and_pruned(pm, pruner, tokens)
    assert torch.allclose(masked, pruned, atol=1e-4)
    bias = merged.model.layers[0].self_attn.q_proj.bias is not None
    budget = params_removed(geo, "kv_group", ratio, len(pruner.prunable), attention_bias=bias)
    cheapest = min(params_per_unit(geo, "kv_group", attention_bias=bias).values())
    assert budget - cheapest < before - count_parameters(merged) <= budget


@pytest.mark.parametrize("selection", ["budget", "adaptive"])
def test_a_parameter_budget_is_met_whatever_the_group_ratio(tiny, tokens, selection):
    # the schedule ends at group ratio 0.5, but the pruner removes the parameters it is given (those of a
    # third of the ratio's units here), to within the cheapest unit; masked == pruned still
    model, _ = tiny
    geo = Geometry.from_config(model.config)
    bias = model.model.layers[0].self_attn.q_proj.bias is not None
    half = params_removed(geo, "kv_group", 0.5, geo.num_layers - 1, attention_bias=bias)
    pm, pruner, _ = _pruned(model, tokens, ratio=0.5, selection=selection, param_budget=half // 3)
    masked, pruned, merged, before, _ = _masked_and_pruned(pm, pruner, tokens)
    assert torch.allclose(masked, pruned, atol=1e-4)
    cheapest = min(params_per_unit(geo, "kv_group", attention_bias=bias).values())
    assert half // 3 - cheapest < before - count_parameters(merged) <= half // 3


@pytest.mark.parametrize("selection", ["local", "global"])
def test_unit_counts_cut_every_layer_alike_whatever_the_group_ratio(tiny, tokens, selection):
    # the schedule ends at group ratio 0.5, but every prunable layer loses the counts it is given (one
    # attention unit, a quarter of the channels), in total for global selection; masked == pruned still
    model, _ = tiny
    geo = Geometry.from_config(model.config)
    counts = {"attn": 1, "mlp": geo.intermediate_size // 4}
    pm, pruner, _ = _pruned(model, tokens, ratio=0.5, selection=selection, unit_counts=counts)
    removed = {key: int(v.sum()) for key, v in pruner.masks.removed.items()}
    layers = len(pruner.prunable)
    for kind in ("attn", "mlp"):
        per_layer = [n for (_, name), n in removed.items() if name == kind]
        assert sum(per_layer) == layers * counts[kind]
        if selection == "local":
            assert set(per_layer) == {counts[kind]}
    masked, pruned, *_ = _masked_and_pruned(pm, pruner, tokens)
    assert torch.allclose(masked, pruned, atol=1e-4)


def test_a_parameter_budget_needs_a_positive_ratio():
    with pytest.raises(ValueError, match="param_budget"):
        PrunerSettings(ratio=0.0, selection="budget", param_budget=10)
    with pytest.raises(ValueError, match="unit_counts"):
        PrunerSettings(ratio=0.0, unit_counts={"attn": 1, "mlp": 2})
