"""method=kwon (Kwon et al. 2022): the mask Fisher from calibration backward passes by hand and against
explicit masks, the rearrangement by hand, the search + rearrangement + mask tuning in the pruner
(masked == pruned), and the preset."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import calibration_samples, compose, lora_with_random_b
from torch import nn

from loraprune.core.masks import select_budget
from loraprune.core.rearrange import joint_fisher, rearrange
from loraprune.core.schedule import build_schedule
from loraprune.core.structure import (
    Geometry,
    GroupKind,
    Slice,
    attention_kind,
    mlp_kind,
    removable_counts,
)
from loraprune.criteria import build_criterion
from loraprune.pruners import GroupPruner, PrunerSettings
from loraprune.run.pipeline import to_config
from loraprune.run.resolve import ConfigError, resolve


class _Toy(nn.Module):
    """Embedding (2 features) -> ``down_proj`` = identity; loss = mean over tokens of ½‖y_t‖²."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(2, 2)
        self.layer = nn.Module()
        self.layer.mlp = nn.Module()
        self.layer.mlp.down_proj = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 0.0]]))
            self.layer.mlp.down_proj.weight.copy_(torch.eye(2))
        self.requires_grad_(False)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, input_ids, attention_mask=None, labels=None):
        y = self.layer.mlp.down_proj(self.embed(input_ids))
        return SimpleNamespace(loss=0.5 * y.pow(2).sum(-1).mean())


def test_mask_fisher_from_calibration_by_hand():
    toy = _Toy()
    kind = GroupKind("mlp", 2, (Slice("down_proj", 1, torch.arange(2)),))
    crit = build_criterion("kwon")
    crit.attach_groups([toy.layer], [kind])
    batches = [{"input_ids": torch.tensor([[0, 1]])}, {"input_ids": torch.tensor([[1]])}]
    crit.calibrate(toy, [toy.layer.mlp.down_proj], batches)
    # ∂L/∂m_j = Σ_t h_tj·∂L/∂h_tj = (1/T)·Σ_t h_tj² (W = I): sample 1 h = [1,2], [3,0] -> [10/2, 4/2]
    # = [5, 2]; sample 2 h = [3, 0] -> [9, 0]
    assert torch.allclose(crit.unit_gradients(toy.layer, kind), torch.tensor([[5.0, 2.0], [9.0, 0.0]]))
    assert torch.allclose(crit.unit_scores(toy.layer, kind), torch.tensor([25.0 + 81.0, 4.0]))
    assert all(p.grad is None for p in toy.parameters())


def test_rearrangement_by_hand():
    # mask gradients of three units on two samples: a = [1, 0], b = [-1.1, 0], c = [0, 1]
    grads = torch.tensor([[1.0, -1.1, 0.0], [0.0, 0.0, 1.0]])
    lowest = torch.tensor([True, False, True])  # own Fisher 1, 1.21, 1: the search removes a and c
    assert joint_fisher(grads, lowest) == pytest.approx(2.0)
    # b joins {a, c}: without a ‖[−1.1, 1]‖² = 2.21, without c ‖[−0.1, 0]‖² = 0.01,
    # without b ‖[1, 1]‖² = 2: c returns
    out = rearrange(lowest, grads)
    assert out.tolist() == [True, True, False]
    assert joint_fisher(grads, out) == pytest.approx(0.01)
    assert rearrange(torch.zeros(3, dtype=torch.bool), grads).tolist() == [False] * 3


def _explicit_mask_fisher(model, layer_idx: int, kind: GroupKind, batches) -> torch.Tensor:
    """Σ_samples (∂L/∂m_u)² with an explicit mask multiplying the projection's input channels."""
    from loraprune.core.masks import masked_input_slice
    from loraprune.core.structure import projection

    sl = masked_input_slice(kind)
    module = projection(model.model.layers[layer_idx], sl.module)
    mask = torch.ones(kind.num_units, requires_grad=True)
    handle = module.register_forward_pre_hook(lambda m, a: (a[0] * mask[sl.unit_of_channel],))
    total = torch.zeros(kind.num_units)
    try:
        for batch in batches:
            (grad,) = torch.autograd.grad(model(**batch).loss, mask)
            total += grad.pow(2)
    finally:
        handle.remove()
    return total


@pytest.mark.parametrize("case", ["mha", "gqa_bias"])
def test_scores_equal_explicit_mask_gradients_and_the_pipeline_steps(case, tokens):
    from conftest import TINY_CASES

    from loraprune.models.loading import load_model

    model, _ = load_model("tiny", tiny=TINY_CASES[case], dtype="float32", device="cpu")
    model.eval()
    geo = Geometry.from_config(model.config)
    kinds = [attention_kind(geo, "kv_group"), mlp_kind(geo)]
    batches = calibration_samples().batches(4, None)
    expected = {(i, k.name): _explicit_mask_fisher(model, i, k, batches) for i in (1, 2) for k in kinds}
    pm = lora_with_random_b(model, 4)
    with torch.no_grad():  # LoRA's B back to zero: the dense model the explicit masks saw
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.zero_()
    settings = PrunerSettings(
        ratio=0.5,
        excluded_layers=[0, 3],
        selection="budget",
        ema_beta=0.0,
        normalize=False,
        reconstruct="scales",
        calibration_samples=4,
    )
    crit = build_criterion("kwon")
    pruner = GroupPruner(pm, geo, crit, settings, build_schedule("one_shot", 0.5, 1))
    captured = {}
    refine = crit.refine_removed

    def spy(layer, kind, removed):  # the search's choice and the rearranged one, with the scores
        i = next(j for j in (1, 2) if pruner.layers[j] is layer)
        captured[(i, kind.name)] = (
            removed.clone(),
            crit.unit_gradients(layer, kind),
            crit.unit_scores(layer, kind),
        )
        return refine(layer, kind, removed)

    crit.refine_removed = spy
    pruner.prepare(calibration_samples())
    scores = {key: value[2] for key, value in captured.items()}
    for key, value in expected.items():
        assert torch.allclose(scores[key], value, rtol=1e-3, atol=1e-8), key
    # the search: select_budget on the Fisher per parameter, the parameters of ratio 0.5 of each layer
    cost = pruner.unit_cost()
    counts = removable_counts(geo, "kv_group", 0.5)
    budget = sum(counts[k] * cost[k] for (_, k) in scores)
    none = {key: torch.zeros(s.numel(), dtype=torch.bool) for key, s in scores.items()}
    searched = select_budget(scores, cost, budget, none)
    for key, (before, grads, _) in captured.items():
        assert torch.equal(before, searched[key]), key
        after = pruner.masks.removed[key]
        assert torch.equal(after, rearrange(before, grads))  # rearranged, same count, never worse
        assert int(after.sum()) == int(before.sum())
        assert joint_fisher(grads, after) <= joint_fisher(grads, before) + 1e-9
    # mask tuning: masked (scaled) == merged
    pm.eval()
    with torch.no_grad():
        masked = pm(input_ids=tokens).logits
        pruned = pruner.finalize().apply(pm)
        assert torch.allclose(pruned(input_ids=tokens).logits, masked, atol=1e-4)


def test_preset_is_post_training_with_budget_search_and_mask_tuning(tmp_path):
    plan = resolve(to_config(compose("debug=tiny", "method=kwon", f"output_dir={tmp_path}")))
    assert plan.one_shot and plan.pruner.selection == "budget" and plan.pruner.reconstruct == "scales"
    assert plan.cfg.method.finetune is False and plan.cfg.method.calibration.draw == "windows"
    plan = resolve(
        to_config(compose("debug=tiny", "method=kwon", "method.finetune=true", f"output_dir={tmp_path}"))
    )
    assert plan.cfg.method.finetune is True
    with pytest.raises(ConfigError, match="scores whole groups: structured pruning only"):
        resolve(to_config(compose("debug=tiny", "method=kwon", "prune=nm", f"output_dir={tmp_path}")))
