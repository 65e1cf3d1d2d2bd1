"""A quantized frozen base (``model.quantize``): the decoder's projections held in 8 bits (torchao int8
weight-only) or 4 bits (bitsandbytes NF4) while LoRA fine-tunes and the pruner scores.

peft wraps torchao-quantized ``Linear`` layers in its ``TorchaoLoraLinear`` (LoRA in full precision on
top); importance reads the dequantized weight (:func:`loraprune.core.lora.dense_weight`); the final merge
dequantizes, adds ``s·B·A`` and removes the pruned groups, giving a bf16/fp32 pruned model
(:func:`loraprune.core.surgery.merge_lora`). Embeddings, norms and the LM head stay as loaded.
"""

from __future__ import annotations

import gc
import importlib.util
from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn

from loraprune.core.lora import dense_weight, is_quantized
from loraprune.core.structure import decoder_layers

QUANTIZE = ("int8", "nf4")


def check_backend(kind: str | None) -> None:
    """Raise a one-line ValueError when ``kind`` is unknown or its backend is not installed."""
    if kind is None:
        return
    if kind not in QUANTIZE:
        raise ValueError(f"model.quantize must be null, int8 or nf4, got {kind!r}")
    if kind == "int8" and importlib.util.find_spec("torchao") is None:
        raise ValueError("model.quantize=int8 needs torchao: pip install 'torchao>=0.18' (scripts/setup.sh)")
    if kind == "nf4":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(
                "model.quantize=nf4 needs bitsandbytes (pip install bitsandbytes), not installed"
            )
        raise ValueError(
            "model.quantize=nf4 (bitsandbytes) is not wired in yet: peft's bnb LoRA layers need the model "
            "loaded through transformers' BitsAndBytesConfig on a supported backend; use model.quantize=int8"
        )


def quantize_base(model: nn.Module, kind: str) -> nn.Module:
    """Quantize every ``nn.Linear`` of the decoder layers in place (before LoRA is added); returns
    ``model``."""
    check_backend(kind)
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    layers = decoder_layers(model)
    quantize_(layers, Int8WeightOnlyConfig(), filter_fn=lambda m, _fqn: isinstance(m, nn.Linear))
    for module in layers.modules():
        if isinstance(module, nn.Linear) and is_quantized(module.weight):
            module.forward = MethodType(_frozen_quantized_forward, module)
    _own_memory(model)
    return model


@torch.no_grad()
def _own_memory(model: nn.Module) -> None:
    """Copy the tensors left unquantized (embeddings, norms, LM head) out of a memory-mapped checkpoint:
    weights loaded from safetensors share one file mapping, which stays resident, fp32 decoder pages and
    all, while any tensor points into it (the embedded model's int8 run held 0.4 GB more than its fp32
    run before this). A tensor in memory already is copied too: a transient copy of the small part."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if not is_quantized(tensor):
            tensor.data = tensor.data.clone()
    gc.collect()  # the replaced fp32 weights may sit in reference cycles: the mapping goes with them


class _FrozenQuantizedLinear(torch.autograd.Function):
    """``layer(x)`` for a frozen quantized ``Linear``, keeping nothing for the backward but the layer.

    torchao's int8 kernel dequantizes W into a full-precision copy and multiplies; under autograd that
    copy is saved for ∂L/∂x, one per projection: the whole model again in fp32 held by the graph (at the
    1B shape the int8 base then used 1.3× the unquantized run's memory). Here the forward runs without a
    graph and the backward dequantizes W again for ∂L/∂x = ∂L/∂y · deq(W): one projection's copy at a
    time. W and the bias are frozen, so that is the only gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.weight, layer.bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        weight = dense_weight(ctx.layer.weight)
        return grad_out @ weight.to(grad_out.dtype), None


def _frozen_quantized_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    frozen = not self.weight.requires_grad and (self.bias is None or not self.bias.requires_grad)
    if torch.is_grad_enabled() and x.requires_grad and frozen and is_quantized(self.weight):
        return _FrozenQuantizedLinear.apply(x, self)
    return F.linear(x, self.weight, self.bias)
