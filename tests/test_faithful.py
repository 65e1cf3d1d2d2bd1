"""Issue 10's switches: the reference's normalisation order and gradient timing, calibration windows,
the validation split, distillation from the dense teacher, Fisher-like accumulation."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from loraprune.core.importance import unit_scores
from loraprune.core.structure import ALL_PROJECTIONS, GroupKind, Slice
from loraprune.criteria import Criterion, estimated_weight_grad
from loraprune.run.config import TrainerConfig
from loraprune.run.models import TinySpec, load_model
from loraprune.run.train import StepHooks, finetune, trainable_parameters


def _tiny():
    return load_model("tiny", tiny=TinySpec(num_heads=4, num_kv_heads=4), dtype="float32", device="cpu")


def _lora(model, dropout: float = 0.0):
    pm = get_peft_model(
        model, LoraConfig(r=2, lora_alpha=4, lora_dropout=dropout, target_modules=list(ALL_PROJECTIONS))
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return pm


def _samples(n: int = 4, length: int = 12, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 259, (n, length), generator=g).tolist()
    return [{"input_ids": row, "labels": row} for row in ids]


# ------------------------------------------------------------------------- 1a: normalisation order
class _Table(Criterion):
    name = "table"

    def __init__(self, table):
        super().__init__()
        self.table = table

    def element_scores(self, module):
        return self.table[module.tag]


def _two_head_layer():
    """Two heads of two channels: q rows [1, 1 | 3, 3] (even within heads), o columns [4, 0 | 1, 0]."""
    layer = nn.Module()
    layer.self_attn = nn.Module()
    for name in ("q_proj", "o_proj"):
        m = nn.Linear(4, 4)
        m.tag = name
        setattr(layer.self_attn, name, m)
    table = {
        "q_proj": torch.tensor([[1.0], [1.0], [3.0], [3.0]]),
        "o_proj": torch.tensor([[4.0, 0.0, 1.0, 0.0]]),
    }
    heads = torch.tensor([0, 0, 1, 1])
    kind = GroupKind("attn", 2, (Slice("q_proj", 0, heads), Slice("o_proj", 1, heads)))
    return layer, kind, _Table(table)


def test_normalise_per_channel_or_per_unit_rank_heads_differently():
    layer, kind, crit = _two_head_layer()
    # channel order: q [1,1,3,3]/√20 summed per head, o [4,0,1,0]/√17 summed per head
    by_channel = torch.tensor([2 / 20**0.5 + 4 / 17**0.5, 6 / 20**0.5 + 1 / 17**0.5])
    # unit order (the reference): q heads [2, 6]/√40, o heads [4, 1]/√17
    by_unit = torch.tensor([2 / 40**0.5 + 4 / 17**0.5, 6 / 40**0.5 + 1 / 17**0.5])
    got_channel = unit_scores(layer, kind, crit)
    got_unit = unit_scores(layer, kind, crit, order="unit")
    assert torch.allclose(got_channel, by_channel) and torch.allclose(got_unit, by_unit)
    assert got_channel.argmax() == 1 and got_unit.argmax() == 0  # the orders disagree on the ranking
    assert torch.equal(unit_scores(layer, kind, crit, order="channel"), got_channel)
    raw = torch.tensor([6.0, 7.0])  # without normalisation the order does not matter
    assert torch.equal(unit_scores(layer, kind, crit, normalize=False, order="unit"), raw)
    with pytest.raises(ValueError, match="normalisation order"):
        unit_scores(layer, kind, crit, order="head")


# ---------------------------------------------------------------------------- 1b: after clipping
def test_clipping_scales_first_order_terms_by_c_and_the_product_by_c_squared():
    g = torch.Generator().manual_seed(0)
    a, b, ga, gb = (torch.randn(s, generator=g) for s in ((2, 5), (3, 2), (2, 5), (3, 2)))
    c = 0.3
    first, product = gb @ a + b @ ga, gb @ ga
    assert torch.allclose(estimated_weight_grad(a, b, c * ga, c * gb), c * first - c**2 * product)


class _GradSpy(StepHooks):
    def __init__(self, model):
        self.params, self.seen = trainable_parameters(model), []

    def after_accumulation(self, step: int) -> None:
        self.seen.append([p.grad.clone() for p in self.params])


@pytest.mark.parametrize("max_norm", [1e-3, 0.0])
def test_observe_after_clip_sees_the_clipped_gradients(max_norm):
    spies = {}
    for after in (False, True):
        torch.manual_seed(0)
        model, tok = _tiny()
        pm = _lora(model)
        spy = _GradSpy(pm)
        trainer = TrainerConfig(
            batch_size=2, micro_batch_size=2, max_grad_norm=max_norm, observe_after_clip=after
        )
        finetune(pm, _samples(), trainer, 1, tok.pad_token_id, spy)
        spies[after] = spy.seen[0]
    before, clipped = spies[False], spies[True]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in before]))
    c = max_norm / (norm + 1e-6) if max_norm else 1.0  # torch's clip_grad_norm_ coefficient
    assert max_norm == 0 or c < 1
    for g0, g1 in zip(before, clipped, strict=True):
        assert torch.allclose(g1, g0 * c, rtol=1e-5, atol=1e-12)
