"""mask_fisher: unit scores from Σ_t h·∂L/∂h equal the gradients of explicit per-sample unit masks."""

from __future__ import annotations

import pytest
import torch

from loraprune.core.masks import masked_input_slice
from loraprune.core.schedule import build_schedule
from loraprune.core.structure import Geometry, decoder_layers, projection
from loraprune.criteria import build_criterion
from loraprune.data import collate
from loraprune.models.loading import TinySpec, load_model
from loraprune.pruners import CalibrationData, GroupPruner, PrunerSettings
from tests.conftest import lora_with_random_b

CASES = {"mha": TinySpec(num_heads=4, num_kv_heads=4), "gqa": TinySpec(num_heads=8, num_kv_heads=2)}


def _samples(n: int = 3, length: int = 12) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 259, (n, length), generator=g).tolist()
    return [{"input_ids": row, "labels": row} for row in ids]


def _setup(case: str, estimate: str = "fisher"):
    torch.manual_seed(0)
    model, tok = load_model("tiny", tiny=CASES[case], dtype="float32", device="cpu")
    pm = lora_with_random_b(model, r=4)
    geo = Geometry.from_config(pm.config)
    criterion = build_criterion("mask_fisher", {"estimate": estimate})
    settings = PrunerSettings(ratio=0.5, excluded_layers=[0])
    pruner = GroupPruner(pm, geo, criterion, settings, build_schedule("cubic", 0.5, 4))
    pruner.prepare(CalibrationData(_samples(), tok.pad_token_id))
    return pm, tok, pruner


def _scores_by_criterion(pm, tok, pruner) -> dict:
    batch = collate(_samples(), tok.pad_token_id)
    pm.train()
    pm(**batch).loss.backward()
    pruner.observe_micro_batch(0, 1)
    scores = pruner.current_scores()
    pm.zero_grad(set_to_none=True)
    return scores


def _scores_by_explicit_masks(pm, tok, pruner, estimate: str) -> dict:
    """The reference: a mask variable per sample and unit on the units' channels, ∂L/∂mask by autograd."""
    batch = collate(_samples(), tok.pad_token_id)
    n = batch["input_ids"].shape[0]
    layers = decoder_layers(pm)
    masks, handles = {}, []
    for i in pruner.prunable:
        for kind in pruner.kinds:
            sl = masked_input_slice(kind)
            m = torch.ones(n, 1, kind.num_units, requires_grad=True)
            masks[(i, kind.name)] = m

            def hook(_module, args, m=m, units=sl.unit_of_channel):
                return (args[0] * m[..., units],) + tuple(args[1:])

            handles.append(projection(layers[i], sl.module).register_forward_pre_hook(hook))
    pruner.release()  # the criterion's hooks off: the reference pass is a plain LoRA step
    pm.train()
    pm(**batch).loss.backward()
    for h in handles:
        h.remove()
    pm.zero_grad(set_to_none=True)
    out = {}
    for key, m in masks.items():
        g = m.grad[:, 0, :]
        out[key] = g.square().sum(0) if estimate == "fisher" else g.sum(0).abs()
    return out


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("estimate", ["fisher", "taylor"])
def test_scores_are_the_gradients_of_per_sample_unit_masks(case, estimate):
    pm, tok, pruner = _setup(case, estimate)
    got = _scores_by_criterion(pm, tok, pruner)
    expected = _scores_by_explicit_masks(pm, tok, pruner, estimate)
    assert got.keys() == expected.keys() and len(got) == 2 * len(pruner.prunable)
    for key in got:
        assert got[key].shape == expected[key].shape
        assert got[key].abs().sum() > 0
        assert torch.allclose(got[key], expected[key], rtol=1e-4, atol=1e-12), key


def test_no_pretrained_weight_gradient_and_hooks_removed_on_release():
    pm, tok, pruner = _setup("gqa")
    _scores_by_criterion(pm, tok, pruner)
    assert not any(p.requires_grad for n, p in pm.named_parameters() if "lora_" not in n)
    pruner.release()
    layer = decoder_layers(pm)[1]
    # the masks' own pre-hook stays; the criterion's is gone
    assert len(projection(layer, "o_proj")._forward_pre_hooks) == 1


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_scores(reentrant):
    pm, tok, pruner = _setup("gqa")
    plain = _scores_by_criterion(pm, tok, pruner)
    pm.base_model.model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": reentrant}
    )
    if reentrant:
        pm.base_model.model.enable_input_require_grads()
    checkpointed = _scores_by_criterion(pm, tok, pruner)
    for key in plain:
        assert torch.allclose(plain[key], checkpointed[key], rtol=1e-4, atol=1e-12), key


def test_micro_batches_of_a_step_are_pooled_and_the_next_step_starts_afresh():
    pm, tok, pruner = _setup("mha")
    whole = _scores_by_criterion(pm, tok, pruner)
    samples = _samples()
    pm.train()
    for j, part in enumerate((samples[:2], samples[2:])):
        batch = collate(part, tok.pad_token_id)
        (pm(**batch).loss * len(part) / len(samples)).backward()  # the step's mean over its tokens
        pruner.observe_micro_batch(j, 2)
    split = pruner.current_scores()
    for key in whole:
        assert torch.allclose(whole[key], split[key], rtol=1e-4, atol=1e-12), key


def test_bad_estimate_is_refused():
    with pytest.raises(ValueError, match="estimate"):
        build_criterion("mask_fisher", {"estimate": "hessian"})
