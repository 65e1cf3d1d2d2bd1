"""prune.reconstruct: least squares, bias and Kwon's scales by hand on one projection; masked == pruned ==
saved == reloaded through the pruner (one-shot and along an iterative schedule); bad input refused."""

from __future__ import annotations

import pytest
import torch
from conftest import calibration_samples, compose, lora_with_random_b

from loraprune import load_pruned, save_pruned
from loraprune.core.reconstruct import (
    InputMap,
    InputStats,
    bias_map,
    input_map,
    least_squares_map,
    scales_map,
    unit_scales,
)
from loraprune.core.schedule import build_schedule
from loraprune.core.structure import Geometry
from loraprune.criteria import build_criterion
from loraprune.pruners import GroupPruner, PrunerSettings
from loraprune.run.pipeline import to_config
from loraprune.run.resolve import ConfigError, resolve

W = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


def _stats(x: torch.Tensor) -> InputStats:
    stats = InputStats.empty(x.shape[1], gram=True)
    stats.add(x[:3])
    stats.add(x[3:])
    return stats


def test_least_squares_recovers_the_dense_output_when_removed_channels_are_combinations():
    g = torch.Generator().manual_seed(0)
    kept = torch.randn(20, 2, generator=g)
    x = torch.cat([kept, kept[:, :1] + 2 * kept[:, 1:]], 1)  # channel 2 = channel 0 + 2·channel 1
    removed = torch.tensor([False, False, True])
    mapping = least_squares_map(_stats(x).gram, removed, damp=0.0)
    assert torch.allclose(mapping.predict, torch.tensor([[1.0], [2.0]]), atol=1e-4)
    weight, bias = mapping.merge(W, None)
    # W'_k = W_k + W_r·[1, 2]: [[1+3, 2+6], [4+6, 5+12]]; the removed column is zero
    assert torch.allclose(weight, torch.tensor([[4.0, 8.0, 0.0], [10.0, 17.0, 0.0]]), atol=1e-4)
    assert bias is None
    assert torch.allclose(x[:, :2] @ weight[:, :2].t(), x @ W.t(), atol=1e-4)  # the dense output, exactly
    masked = x * (~removed)
    assert torch.allclose(mapping.apply(masked) @ W.t(), x @ W.t(), atol=1e-4)


def test_least_squares_damping_by_hand():
    x = torch.tensor([[1.0, 2.0], [2.0, 1.0], [0.0, 3.0]])
    # G = [[5, 4], [4, 14]]; keep channel 0: predict = G_10 / (G_00 + δ), δ = 0.1·(5 + 14)/2 = 0.95
    mapping = least_squares_map(_stats(x).gram, torch.tensor([False, True]), damp=0.1)
    assert torch.allclose(mapping.predict, torch.tensor([[4.0 / 5.95]]))


def test_bias_equals_the_removed_channels_mean_contribution():
    x = torch.tensor([[0.0, -2.0, 1.0], [2.0, 0.0, 3.0]])  # means 1, -1, 2
    stats = _stats(x)
    assert torch.allclose(stats.mean, torch.tensor([1.0, -1.0, 2.0]))
    mapping = input_map("bias", stats, torch.tensor([False, True, True]))
    weight, bias = mapping.merge(W, torch.tensor([1.0, 1.0]))
    # b' = b + W[:, r]·mean_r = [1 + 2·(−1) + 3·2, 1 + 5·(−1) + 6·2] = [5, 8]
    assert torch.allclose(bias, torch.tensor([5.0, 8.0]))
    assert torch.equal(weight, torch.tensor([[1.0, 0.0, 0.0], [4.0, 0.0, 0.0]]))
    assert input_map("bias", stats, torch.zeros(3, dtype=torch.bool)) is None  # nothing removed


def test_kwon_scales_by_hand():
    x0 = torch.tensor([[1.0], [2.0], [-1.0], [3.0]])
    x = torch.cat([x0, 2 * x0], 1)  # channel 1 = 2·channel 0; W = [1, 1]: the dense output is 3·x0
    w = torch.tensor([[1.0, 1.0]])
    units, removed = torch.tensor([0, 1]), torch.tensor([False, True])
    gram = _stats(x).gram
    assert torch.allclose(
        unit_scales(gram, w, removed, units, damp=0.0), torch.tensor([3.0], dtype=torch.float64)
    )
    # damped toward 1: (S + δ)·s = 3S + δ with δ = 0.5·S -> s = 3.5 / 1.5
    s = unit_scales(gram, w, removed, units, damp=0.5)
    assert torch.allclose(s, torch.tensor([3.5 / 1.5], dtype=torch.float64))
    mapping = scales_map(gram, w, removed, units, damp=0.0)
    assert torch.allclose(mapping.scale, torch.tensor([3.0, 0.0]))
    merged, _ = mapping.merge(w, None)
    assert torch.allclose(x[:, :1] @ merged[:, :1].t(), x @ w.t(), atol=1e-5)
    # past |s| > 10 (the reference's limit) the layer stays unscaled
    far = _stats(torch.cat([x0, 20 * x0], 1)).gram
    assert unit_scales(far, w, removed, units, damp=0.0) is None
    assert torch.equal(scales_map(far, w, removed, units, damp=0.0).scale, torch.tensor([1.0, 0.0]))


def test_head_scales_are_the_least_squares_fit_of_the_units_outputs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 6, generator=g)
    w = torch.randn(4, 6, generator=g)
    units = torch.tensor([0, 0, 1, 1, 2, 2])  # three heads of two channels; head 1 removed
    removed = units == 1
    s = unit_scales(_stats(x).gram, w, removed, units, damp=0.0)
    # reference: columns = each kept head's output W_u x_u over every token and output, target = W x
    columns = torch.stack([(x[:, units == u] @ w[:, units == u].t()).flatten() for u in (0, 2)], 1)
    expected = torch.linalg.lstsq(columns.double(), (x @ w.t()).flatten().double().unsqueeze(1)).solution
    assert torch.allclose(s, expected.flatten(), atol=1e-4)


def test_apply_and_merge_agree():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(30, 5, generator=g)
    stats = _stats(x)
    removed = torch.tensor([False, True, False, True, False])
    w, b = torch.randn(3, 5, generator=g), torch.randn(3, generator=g)
    masked = x * (~removed)
    for mode in ("bias", "least_squares", "scales"):
        mapping = input_map(mode, stats, removed, w, torch.arange(5), damp=0.01)
        weight, bias = mapping.merge(w, b)
        assert torch.allclose(masked @ weight.t() + bias, mapping.apply(masked) @ w.t() + b, atol=1e-5)
        again = InputMap.from_state(mapping.state())
        assert torch.allclose(again.apply(masked), mapping.apply(masked))
    assert bias_map(stats.mean, removed).predict is None


def _pruner(model, reconstruct: str, schedule: str = "one_shot", steps: int = 1, selection: str = "local"):
    geo = Geometry.from_config(model.config)
    pm = lora_with_random_b(model, 4)
    settings = PrunerSettings(
        ratio=0.5,
        excluded_layers=[0],
        selection=selection,
        ema_beta=0.0,
        normalize=False,
        prune_freq=1,
        reconstruct=reconstruct,
        calibration_samples=4,
    )
    sched = build_schedule(schedule, 0.5, steps, 0.0, 0.0)
    return pm, GroupPruner(pm, geo, build_criterion("magnitude"), settings, sched)


@pytest.mark.parametrize("reconstruct", ["bias", "least_squares", "scales"])
def test_masked_equals_pruned_equals_saved_equals_reloaded(tiny, tokens, tmp_path, reconstruct):
    model, tok = tiny
    pm, pruner = _pruner(model, reconstruct)
    pruner.prepare(calibration_samples())
    assert pruner.released and not pruner.input_stats  # the Grams are freed once the maps are fixed
    pm.eval()
    with torch.no_grad():
        masked = pm(input_ids=tokens).logits
        pruner.fill.remove_hooks()  # masked without the reconstruction: a different model
        assert not torch.allclose(pm(input_ids=tokens).logits, masked, atol=1e-3)
    result = pruner.finalize()
    assert (result.input_means is None) == (reconstruct != "bias")
    pruned = result.apply(pm)
    with torch.no_grad():
        assert torch.allclose(pruned(input_ids=tokens).logits, masked, atol=1e-4)
    save_pruned(pruned, tok, result.plan, tmp_path / "m")
    reloaded = load_pruned(tmp_path / "m")
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=tokens).logits, masked, atol=1e-4)


def test_reconstruction_follows_an_iterative_schedule_and_survives_a_checkpoint(tokens):
    from loraprune.models.loading import TinySpec, load_model

    model, _ = load_model("tiny", tiny=TinySpec(num_heads=4, num_kv_heads=4), dtype="float32", device="cpu")
    pm, pruner = _pruner(model, "least_squares", schedule="linear", steps=3)
    pruner.prepare(calibration_samples())
    assert pruner.input_stats and not pruner.released
    pm.eval()
    for step in (1, 2, 3):
        pruner.observe()
        pruner.step(step)
        if step == 2:  # masks part-way: the hooks reconstruct from the Grams
            with torch.no_grad():
                halfway = pm(input_ids=tokens).logits
                pruner.fill.remove_hooks()
                assert not torch.allclose(pm(input_ids=tokens).logits, halfway, atol=1e-3)
                pruner._install_fill()
    assert pruner.released and pruner.input_maps and not pruner.input_stats
    state = pruner.state_dict()
    with torch.no_grad():
        masked = pm(input_ids=tokens).logits
    pruner.remove_hooks()
    geo = Geometry.from_config(model.config)
    again = GroupPruner(pm, geo, build_criterion("magnitude"), pruner.settings, pruner.schedule)
    again.load_state_dict(state)  # no calibration: masks and maps from the checkpoint
    with torch.no_grad():
        assert torch.allclose(pm(input_ids=tokens).logits, masked, atol=1e-6)
    pruned = again.finalize().apply(pm)
    with torch.no_grad():
        assert torch.allclose(pruned(input_ids=tokens).logits, masked, atol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ((), "none"),
        (("method=flap",), "bias"),
        (("method=flap", "method.options.bias=false"), "none"),
        (("method=flap", "prune.reconstruct=least_squares"), "least_squares"),
        (("method=wanda_sp", "prune.reconstruct=bias"), "bias"),
        (("method=kwon",), "scales"),
    ],
)
def test_reconstruct_resolves_to_the_method_default_unless_set(tmp_path, overrides, expected):
    plan = resolve(to_config(compose("debug=tiny", *overrides, f"output_dir={tmp_path}")))
    assert plan.pruner.reconstruct == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("prune=nm", "prune.reconstruct=bias"),
            r"prune.reconstruct=bias: method=loraprune with prune.pattern",
        ),
        (("method=shortgpt", "prune.reconstruct=least_squares"), "a depth cut: whole decoder layers"),
        (("prune.reconstruct=ols",), "prune.reconstruct must be none / bias / least_squares / scales"),
        (("prune.reconstruct_damp=-1",), "prune.reconstruct_damp must be >= 0"),
    ],
)
def test_reconstruct_without_removed_units_is_one_line_before_the_model_loads(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve(to_config(compose("debug=tiny", *overrides, f"output_dir={tmp_path}")))
    assert not tmp_path.joinpath("model").exists()
