"""FastDropout: the CPU LoRA-dropout masks drawn from 15-bit integers (loraprune/models/fast_dropout.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from loraprune.config.schema import LoraConfig
from loraprune.models.adapters import add_lora
from loraprune.models.fast_dropout import LEVELS, FastDropout
from loraprune.models.loading import TinySpec, load_model


def test_drop_rate_and_expectation():
    torch.manual_seed(0)
    drop = FastDropout(0.05).train()
    assert drop.threshold == 1638 and drop.scale == LEVELS / (LEVELS - 1638)
    y = drop(torch.ones(1000, 1000))
    kept = y != 0
    assert torch.all(y[kept] == drop.scale)  # kept values scaled, the others exactly 0
    rate = 1 - kept.float().mean().item()
    assert abs(rate - 1638 / LEVELS) < 5 * (0.05 * 0.95 / 1e6) ** 0.5  # 5 sigma
    assert abs(y.double().mean().item() - 1.0) < 3e-3  # the expectation is kept


def test_gradient_is_mask_times_scale_and_seeded():
    drop = FastDropout(0.3).train()
    x = torch.randn(64, 32, requires_grad=True)
    torch.manual_seed(1)
    y = drop(x)
    y.backward(torch.ones_like(y))
    keep = y != 0
    assert torch.equal(x.grad, keep.float() * drop.scale)
    assert torch.allclose(y, x.detach() * keep * drop.scale)
    torch.manual_seed(1)
    assert torch.equal(drop(x), y)  # the global generator: seeded runs and resumed RNG states repeat


def test_eval_mode_and_p_zero_are_identity():
    x = torch.randn(4, 8)
    assert FastDropout(0.5).eval()(x) is x
    assert FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        FastDropout(1.0)


def _lora(fast: bool, p: float = 0.05):
    model, _ = load_model("tiny", tiny=TinySpec(), dtype="float32", device="cpu")
    return add_lora(model, LoraConfig(dropout=p, fast_dropout=fast))


def test_add_lora_swaps_every_branch_dropout():
    fast = [m for m in _lora(True).modules() if isinstance(m, FastDropout)]
    layers = load_model("tiny", tiny=TinySpec(), dtype="float32", device="cpu")[0].config.num_hidden_layers
    assert len(fast) == 7 * layers and all(m.p == 0.05 for m in fast)
    plain = _lora(False).modules()
    assert not any(isinstance(m, FastDropout) for m in plain)
    assert not any(isinstance(m, FastDropout) for m in _lora(True, p=0.0).modules())
    assert any(isinstance(m, nn.Dropout) for m in _lora(False).modules())


def test_fast_and_torch_dropout_models_agree_in_eval():
    torch.manual_seed(0)
    a = _lora(True).eval()
    torch.manual_seed(0)
    b = _lora(False).eval()
    ids = torch.randint(3, 200, (2, 12))
    assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)
