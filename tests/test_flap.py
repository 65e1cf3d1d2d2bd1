"""FLAP: the fluctuation score, its standardisation and adaptive selection by hand; bias compensation equal
to the removed channels' mean contribution; masked == physically pruned == saved == reloaded (both forms)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import calibration_samples, compose, lora_with_random_b
from torch import nn
from transformers import AutoModelForCausalLM

from loraprune import load_pruned, save_pruned
from loraprune.core.compensation import add_compensation_biases
from loraprune.core.importance import unit_scores
from loraprune.core.masks import select_budget
from loraprune.core.plan import LayerKeep, PruningPlan
from loraprune.core.schedule import build_schedule
from loraprune.core.structure import Geometry, GroupKind, Slice, attention_kind, mlp_kind
from loraprune.criteria import build_criterion
from loraprune.criteria.flap import InputMoments
from loraprune.models.loading import TinySpec, load_model
from loraprune.pruners import GroupPruner, PrunerSettings
from loraprune.run.pipeline import to_config
from loraprune.run.resolve import ConfigError, resolve


class _Toy(nn.Module):
    """A "model" whose input_ids are already features: one projection of 3 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.tensor([[1.0, 2.0, 0.0], [2.0, -1.0, 3.0]]))

    def forward(self, input_ids, attention_mask=None):
        return self.proj(input_ids)


def test_fluctuation_score_by_hand():
    toy = _Toy()
    # tokens of the three input channels, in two batches of 3 and 1 tokens
    first = torch.tensor([[[1.0, 5.0, 0.0], [2.0, 5.0, 0.0], [3.0, 5.0, 0.0]]])
    second = torch.tensor([[[6.0, 5.0, 4.0]]])
    crit = build_criterion("flap")
    crit.calibrate(
        toy,
        [toy.proj],
        [{"input_ids": first, "attention_mask": None}, {"input_ids": second, "attention_mask": None}],
    )
    # channel 0: 1,2,3,6 -> mean 3, squared deviations 4+1+0+9 = 14, sample variance 14/3
    # channel 1: constant -> 0; channel 2: 0,0,0,4 -> mean 1, 1+1+1+9 = 12, variance 4
    moments = crit.moments[toy.proj]
    assert moments.count == 4
    assert torch.allclose(moments.variance, torch.tensor([14 / 3, 0.0, 4.0], dtype=torch.float64))
    assert torch.allclose(crit.input_means(toy.proj), torch.tensor([3.0, 5.0, 1.0]))
    # ‖W_:,j‖² = 1+4, 4+1, 0+9: scores 14/3·5, 0, 4·9; output rows are not scored
    assert torch.allclose(crit.channel_scores(toy.proj, 1), torch.tensor([70 / 3, 0.0, 36.0]))
    assert crit.channel_scores(toy.proj, 0) is None
    assert build_criterion("flap", {"bias": False}).input_means(toy.proj) is None


def test_moments_merge_equals_one_pass():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g) * 3 + 7
    moments = InputMoments(0, torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64))
    for chunk in (x[:1], x[1:20], x[20:21], x[21:]):
        moments.add(chunk)
    assert torch.allclose(moments.mean.float(), x.mean(0), atol=1e-5)
    assert torch.allclose(moments.variance.float(), x.var(0), atol=1e-4)


def _toy_layer(head_dim: int = 2) -> nn.Module:
    """A decoder-like layer: o_proj of 2 heads × ``head_dim`` inputs, down_proj of 4 channels; unit-norm
    columns, so each channel's score is its input's variance."""
    layer = nn.Module()
    layer.self_attn, layer.mlp = nn.Module(), nn.Module()
    layer.self_attn.o_proj = nn.Linear(2 * head_dim, 4, bias=False)
    layer.mlp.down_proj = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        layer.self_attn.o_proj.weight.copy_(torch.eye(4, 2 * head_dim))
        layer.mlp.down_proj.weight.copy_(torch.eye(4))
    return layer


def _with_variances(crit, module: nn.Module, variances: list[float]):
    n = 4  # tokens: m2 = variance·(n − 1)
    v = torch.tensor(variances, dtype=torch.float64)
    crit.moments[module] = InputMoments(n, torch.zeros_like(v), v * (n - 1))


def test_standardisation_by_hand():
    layer = _toy_layer()
    heads = GroupKind("attn", 2, (Slice("o_proj", 1, torch.tensor([0, 0, 1, 1])),))
    channels = GroupKind("mlp", 4, (Slice("down_proj", 1, torch.arange(4)),))
    crit = build_criterion("flap")
    _with_variances(crit, layer.self_attn.o_proj, [1.0, 2.0, 3.0, 6.0])
    _with_variances(crit, layer.mlp.down_proj, [1.0, 2.0, 3.0, 6.0])
    # MLP: scores 1,2,3,6 -> mean 3, unbiased std √(14/3); each channel is its own unit
    std = math.sqrt(14 / 3)
    expected_mlp = torch.tensor([-2.0, -1.0, 0.0, 3.0]) / std
    assert torch.allclose(crit.unit_scores(layer, channels), expected_mlp)
    # attention, squared first (the reference code): 1,4,9,36 -> mean 12.5, deviations -11.5 -8.5 -3.5
    # 23.5, std √(769/3); a head is the mean of its channels' standardised scores
    std_sq = math.sqrt(769 / 3)
    assert torch.allclose(crit.unit_scores(layer, heads), torch.tensor([-10.0, 10.0]) / std_sq)
    plain = build_criterion("flap", {"square_attention": False})
    plain.moments = crit.moments
    assert torch.allclose(plain.unit_scores(layer, heads), torch.tensor([-1.5, 1.5]) / std)
    # unstandardised: the raw fluctuation summed over each unit's channels
    raw = build_criterion("flap", {"standardize": False})
    raw.moments = crit.moments
    assert not raw.scores_units and crit.scores_units
    with pytest.raises(NotImplementedError, match="does not score whole units"):
        raw.unit_scores(layer, heads)
    assert torch.allclose(unit_scores(layer, heads, raw, normalize=False), torch.tensor([3.0, 9.0]))


def test_kv_group_score_sums_every_channel_the_unit_removes(tokens):
    model, _ = load_model("tiny", tiny=TinySpec(num_heads=8, num_kv_heads=2), dtype="float32", device="cpu")
    geo = Geometry.from_config(model.config)
    layer = model.model.layers[1]
    seen = []
    handle = layer.self_attn.o_proj.register_forward_hook(lambda m, a, o: seen.append(a[0].reshape(-1, 64)))
    crit = build_criterion("flap", {"standardize": False})
    batches = [
        {"input_ids": tokens[i : i + 1], "attention_mask": torch.ones_like(tokens[i : i + 1])} for i in (0, 1)
    ]
    crit.calibrate(model, [layer.self_attn.o_proj], batches)
    handle.remove()
    x = torch.cat(seen)  # every calibration token of o_proj's input
    per_channel = x.var(0) * layer.self_attn.o_proj.weight.pow(2).sum(0)
    # a KV group removes its 4 query heads: o_proj columns [g·4·hd, (g+1)·4·hd)
    expected = per_channel.reshape(2, 4 * geo.head_dim).sum(1)
    kind = attention_kind(geo, "kv_group")
    assert torch.allclose(unit_scores(layer, kind, crit, normalize=False), expected, rtol=1e-4)


def test_adaptive_selection_ranks_by_score_not_per_parameter():
    cost = {"attn": 4, "mlp": 1}
    scores = {(0, "attn"): torch.tensor([-0.5, 1.0]), (0, "mlp"): torch.tensor([-0.4, 0.2, 2.0])}
    none = {k: torch.zeros(v.numel(), dtype=torch.bool) for k, v in scores.items()}
    # by score: the head (-0.5, 4 parameters) first, then channel -0.4: 5 of a budget of 5
    out = select_budget(scores, cost, 5, none, per_parameter=False)
    assert out[(0, "attn")].tolist() == [True, False] and out[(0, "mlp")].tolist() == [True, False, False]
    # per parameter the head's -0.125 comes after the channel's -0.4 and 0.2 beats nothing cheaper
    out = select_budget(scores, cost, 5, none)
    assert out[(0, "mlp")].tolist() == [True, False, False] and out[(0, "attn")].tolist() == [True, False]
    out = select_budget(scores, cost, 2, none)
    assert out[(0, "attn")].tolist() == [False, False] and out[(0, "mlp")].tolist() == [True, True, False]


def test_bias_equals_the_removed_channels_mean_contribution():
    model, _ = load_model("tiny", tiny=TinySpec(num_heads=4, num_kv_heads=4), dtype="float32", device="cpu")
    geo = Geometry.from_config(model.config)
    down = model.model.layers[1].mlp.down_proj
    dense_weight = down.weight.detach().clone()
    g = torch.Generator().manual_seed(2)
    mean = torch.randn(geo.intermediate_size, generator=g)
    kept = list(range(0, geo.intermediate_size, 3))
    plan = PruningPlan(geo, "kv_group", {1: LayerKeep(channels=kept)})
    add_compensation_biases(model, plan, {(1, "mlp"): mean})
    removed = torch.ones(geo.intermediate_size, dtype=torch.bool)
    removed[kept] = False
    assert torch.allclose(down.bias, dense_weight[:, removed] @ mean[removed], atol=1e-6)
    dense_on_mean = dense_weight @ mean
    from loraprune.core.surgery import apply_plan

    apply_plan(model, plan)
    assert down.in_features == len(kept)
    with torch.no_grad():  # the pruned layer on the mean input (its kept channels) == the dense one on it
        assert torch.allclose(down(mean[kept]), dense_on_mean, atol=1e-5)


def _flap_pruner(model, excluded: list[int], selection: str = "adaptive", ratio: float = 0.5):
    geo = Geometry.from_config(model.config)
    pm = lora_with_random_b(model, 4)
    settings = PrunerSettings(
        ratio=ratio, excluded_layers=excluded, selection=selection, ema_beta=0.0, normalize=False
    )
    schedule = build_schedule("one_shot", ratio, 1)
    return pm, GroupPruner(pm, geo, build_criterion("flap"), settings, schedule)


@pytest.mark.parametrize(
    ("excluded", "selection", "form"), [([0], "adaptive", "per_layer"), ([], "local", "stock")]
)
def test_masked_equals_pruned_equals_saved_equals_reloaded(tiny, tokens, tmp_path, excluded, selection, form):
    model, tok = tiny
    pm, pruner = _flap_pruner(model, excluded, selection)
    pruner.prepare(calibration_samples())
    assert pruner.input_means and pruner.released
    pm.eval()
    with torch.no_grad():
        masked = pm(input_ids=tokens).logits
        pruner.fill.remove_hooks()  # masked without the compensation: a different model
        assert not torch.allclose(pm(input_ids=tokens).logits, masked, atol=1e-3)
    result = pruner.finalize()
    pruned = result.apply(pm)
    with torch.no_grad():
        assert torch.allclose(pruned(input_ids=tokens).logits, masked, atol=1e-4)
    layers = pruned.model.layers
    assert all(layers[i].mlp.down_proj.bias is not None for i in range(4) if i not in excluded)
    save_pruned(pruned, tok, result.plan, tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    reloaded = load_pruned(tmp_path / "m")
    with torch.no_grad():
        expected = pruned(input_ids=tokens).logits
        assert torch.allclose(reloaded(input_ids=tokens).logits, expected, atol=1e-5)
    if form == "per_layer":
        assert saved["model_type"] == "pruned_llama"
        assert saved["layer_down_proj_bias"][0] is False and all(saved["layer_down_proj_bias"][1:])
        remote = AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True)
        assert layers[0].self_attn.o_proj.bias is None or saved["attention_bias"]
    else:  # stock LLaMA: the output biases as attention_bias / mlp_bias, zeros where there were none
        assert (
            saved["architectures"] == ["LlamaForCausalLM"] and saved["attention_bias"] and saved["mlp_bias"]
        )
        remote = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
        assert torch.count_nonzero(remote.model.layers[1].mlp.up_proj.bias) == 0
        assert pruned.model.layers[1].mlp.up_proj.bias is None  # the padding is only in the saved form
    with torch.no_grad():
        assert torch.allclose(remote(input_ids=tokens).logits, expected, atol=1e-5)


def test_fill_survives_a_checkpoint_of_the_pruner(tokens):
    model, _ = load_model("tiny", tiny=TinySpec(num_heads=4, num_kv_heads=4), dtype="float32", device="cpu")
    pm, pruner = _flap_pruner(model, [0])
    pruner.prepare(calibration_samples())
    state = pruner.state_dict()
    pm.eval()
    with torch.no_grad():
        masked = pm(input_ids=tokens).logits
    pruner.remove_hooks()
    geo = Geometry.from_config(model.config)
    settings = pruner.settings
    again = GroupPruner(pm, geo, build_criterion("flap"), settings, build_schedule("one_shot", 0.5, 1))
    again.load_state_dict(state)  # no calibration: masks and means from the checkpoint
    with torch.no_grad():
        assert torch.allclose(pm(input_ids=tokens).logits, masked, atol=1e-6)
    assert again.result().input_means.keys() == pruner.input_means.keys()


def test_preset_is_retraining_free_with_adaptive_selection(tmp_path):
    plan = resolve(to_config(compose("debug=tiny", "method=flap", f"output_dir={tmp_path}")))
    assert plan.pruner.selection == "adaptive" and plan.one_shot
    assert plan.cfg.method.finetune is False
    assert plan.cfg.method.calibration.seq_len == 128 and plan.cfg.method.calibration.draw == "windows"
    # LoRA recovery as an option, like the other one-shot methods
    plan = resolve(
        to_config(compose("debug=tiny", "method=flap", "method.finetune=true", f"output_dir={tmp_path}"))
    )
    assert plan.cfg.method.finetune is True


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("method=wanda_sp", "+method.options.bias=false"),
            r"unknown method.options \['bias'\] for criterion 'wanda_sp' \(an option of flap\); known: "
            "slices",
        ),
        (
            ("method=mask_fisher", "+method.options.standardize=false"),
            r"\['standardize'\] for criterion 'mask_fisher' \(an option of flap\)",
        ),
        (("method=flap", "prune.selection=budget"), "standardised scores have no per-parameter meaning"),
        (("method=flap", "prune=nm"), "scores whole groups: structured pruning only"),
    ],
)
def test_bad_flap_input_is_one_line_before_the_model_loads(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve(to_config(compose("debug=tiny", *overrides, f"output_dir={tmp_path}")))
    assert not tmp_path.joinpath("model").exists()


def test_flap_scores_unit_mlp_kind_of_a_real_layer():
    """Standardised MLP scores of a real layer average to zero (one unit per channel) and rank as the
    raw fluctuation does."""
    model, _ = load_model("tiny", tiny=TinySpec(num_heads=4, num_kv_heads=4), dtype="float32", device="cpu")
    geo = Geometry.from_config(model.config)
    layer = model.model.layers[2]
    crit = build_criterion("flap")
    batches = calibration_samples().batches(4, None)
    crit.calibrate(model, [layer.mlp.down_proj], batches)
    kind = mlp_kind(geo)
    z = crit.unit_scores(layer, kind)
    raw = crit.channel_scores(layer.mlp.down_proj, 1)
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1) < 1e-4
    assert torch.equal(torch.argsort(z, stable=True), torch.argsort(raw, stable=True))
