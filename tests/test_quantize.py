"""An int8 base (``model.quantize=int8``, torchao weight-only): LoRA trains on it, importance reads the
dequantized weight, and the merged pruned model is the masked quantized model, in plain weights."""

from __future__ import annotations

import pytest
import torch
from conftest import compose

from loraprune.config.schema import LoraConfig
from loraprune.core.lora import dense_weight, is_quantized, lora_tensors
from loraprune.core.schedule import build_schedule
from loraprune.core.structure import Geometry, decoder_layers
from loraprune.criteria import build_criterion, estimated_weight_grad
from loraprune.models.adapters import add_lora
from loraprune.models.loading import TinySpec, load_model
from loraprune.models.quantize import quantize_base
from loraprune.pruners import GroupPruner, PrunerSettings
from loraprune.run.pipeline import run, to_config
from loraprune.run.resolve import ConfigError, resolve

pytest.importorskip("torchao")


@pytest.fixture
def quantized_lora():
    model, _ = load_model("tiny", tiny=TinySpec(num_heads=8, num_kv_heads=2), dtype="float32", device="cpu")
    quantize_base(model, "int8")
    peft_model = add_lora(model, LoraConfig(dropout=0.0))
    with torch.no_grad():  # a trained-looking adapter, so the merge has something to add
        gen = torch.Generator().manual_seed(1)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return peft_model


def test_base_is_int8_and_lora_trains(quantized_lora):
    q_proj = decoder_layers(quantized_lora)[0].self_attn.q_proj
    assert type(q_proj).__name__ == "TorchaoLoraLinear"
    assert is_quantized(q_proj.base_layer.weight) and not is_quantized(q_proj.lora_A["default"].weight)
    ids = torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(0))
    quantized_lora.train()
    quantized_lora(input_ids=ids, labels=ids).loss.backward()
    assert q_proj.lora_A["default"].weight.grad.abs().sum() > 0
    assert q_proj.base_layer.weight.grad is None


def _lora_grads_and_saved_shapes(model, ids):
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, shapes


def test_int8_backward_keeps_no_dequantized_weight(quantized_lora):
    """The frozen int8 projections save nothing weight-sized for the backward (torchao's own kernel under
    autograd keeps a dequantized copy of every W), and the LoRA gradients are the same as with it."""
    ids = torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(0))
    quantized_lora.train()
    bases = [m.base_layer for m in quantized_lora.modules() if type(m).__name__ == "TorchaoLoraLinear"]
    weight_shapes = {tuple(b.weight.shape) for b in bases} | {tuple(b.weight.shape[::-1]) for b in bases}
    grads, saved = _lora_grads_and_saved_shapes(quantized_lora, ids)
    for b in bases:  # torchao's own forward under autograd, for reference
        del b.forward
    reference, saved_reference = _lora_grads_and_saved_shapes(quantized_lora, ids)
    assert weight_shapes & set(saved_reference)  # the reference does keep weight-sized copies
    assert not weight_shapes & set(saved)
    assert grads.keys() == reference.keys() and len(grads) > 0
    for name, g in grads.items():
        assert torch.allclose(g, reference[name], rtol=1e-4, atol=1e-6), name


def test_merged_pruned_model_equals_masked_quantized_forward(quantized_lora):
    model = quantized_lora
    geo = Geometry.from_config(model.config)
    settings = PrunerSettings(ratio=0.5, excluded_layers=[3])
    pruner = GroupPruner(model, geo, build_criterion("loraprune"), settings, build_schedule("cubic", 0.5, 4))
    ids = torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(0))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    # importance reads the dequantized weight: |G ⊙ (deq(W) + s·B·A)|
    t = lora_tensors(decoder_layers(model)[1].mlp.up_proj)
    g = estimated_weight_grad(t.lora_a.detach(), t.lora_b.detach(), t.lora_a.grad, t.lora_b.grad)
    expected = (g * (dense_weight(t.weight) + t.scaling * t.lora_b.detach() @ t.lora_a.detach())).abs()
    torch.testing.assert_close(
        pruner.criterion.element_scores(decoder_layers(model)[1].mlp.up_proj), expected
    )
    pruner.observe()
    model.zero_grad(set_to_none=True)
    pruner.advance_to(0.5)
    model.eval()
    with torch.no_grad():
        masked = model(input_ids=ids).logits
    merged = pruner.finalize().apply(model)
    assert not any(is_quantized(p) for p in merged.parameters())
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    assert decoder_layers(merged)[0].mlp.up_proj.out_features == 64  # half of 128 channels removed
    with torch.no_grad():
        pruned = merged(input_ids=ids).logits
    torch.testing.assert_close(pruned, masked, atol=1e-4, rtol=1e-4)


def test_int8_run_end_to_end(tmp_path):
    metrics = run(compose("debug=tiny", "model.quantize=int8", "trainer.steps=2", f"output_dir={tmp_path}"))
    assert metrics["run"]["quantize"] == "int8"
    assert metrics["params"]["total_after"] < metrics["params"]["total_before"]
    assert metrics["pruned"]["ppl"]["news_embedded"] > 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.quantize=int4"], "model.quantize must be null, int8 or nf4"),
        (["model.quantize=int8", "method=grad"], "needs ∂L/∂W of the frozen base"),
        (["model.quantize=nf4"], "model.quantize=nf4 (needs bitsandbytes|.*not wired in)"),
    ],
)
def test_bad_quantize_settings_fail_before_loading(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve(to_config(compose("debug=tiny", *overrides, f"output_dir={tmp_path}")))
