"""Access to the tensors of LoRA-wrapped projections: W, A, B, s, and ∂L/∂W switches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LoraTensors:
    """The tensors of a LoRA-wrapped linear layer: W (out×in), A (r×in), B (out×r), scaling s."""

    weight: torch.Tensor
    lora_a: nn.Parameter | None
    lora_b: nn.Parameter | None
    scaling: float

    def effective_weight(self) -> torch.Tensor:
        """W + s·B·A (just W without LoRA), detached, in float32."""
        w = dense_weight(self.weight).detach().float()
        if self.lora_a is None:
            return w
        return w + self.scaling * (self.lora_b.detach().float() @ self.lora_a.detach().float())


def is_quantized(weight: torch.Tensor) -> bool:
    """Whether ``weight`` is a quantized tensor subclass (e.g. torchao's int8) with its own
    ``dequantize`` (a plain tensor's ``dequantize`` is torch's, for torch's own quantized dtypes)."""
    return getattr(type(weight), "dequantize", None) is not torch.Tensor.dequantize


def dense_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as a plain tensor in its original dtype: a quantized base weight dequantized."""
    return weight.dequantize() if is_quantized(weight) else weight


def lora_tensors(module: nn.Module) -> LoraTensors:
    """Read W, A, B and s of a peft LoRA ``Linear`` (or W of a plain ``nn.Linear``)."""
    if hasattr(module, "lora_A") and hasattr(module, "base_layer"):
        active = module.active_adapters
        if len(active) != 1:
            raise ValueError(f"expected exactly one active LoRA adapter, got {active}")
        name = active[0]
        if name in module.lora_A:
            return LoraTensors(
                module.base_layer.weight,
                module.lora_A[name].weight,
                module.lora_B[name].weight,
                float(module.scaling[name]),
            )
        return LoraTensors(module.base_layer.weight, None, None, 0.0)
    if isinstance(module, nn.Linear):
        return LoraTensors(module.weight, None, None, 0.0)
    raise TypeError(f"cannot score a {type(module).__name__}; expected nn.Linear or a peft LoRA Linear")


def pretrained_weight(module: nn.Module) -> nn.Parameter:
    """The pretrained weight of a projection (the base layer's under peft LoRA)."""
    return getattr(module, "base_layer", module).weight


def lora_parameters(modules: Sequence[nn.Module]) -> list[nn.Parameter]:
    """A and B of every module; every one must carry LoRA."""
    out = []
    for module in modules:
        t = lora_tensors(module)
        if t.lora_a is None:
            raise ValueError("LoRA is needed on every pruned projection (lora.target_modules)")
        out += [t.lora_a, t.lora_b]
    return out


def set_module_weight_grads(modules: Sequence[nn.Module], enabled: bool) -> None:
    """``∂L/∂W`` of these projections' pretrained weights on or off (off also frees ``.grad``)."""
    for module in modules:
        weight = pretrained_weight(module)
        weight.requires_grad_(enabled)
        if not enabled:
            weight.grad = None


@contextmanager
def grads_only_for(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Within the block only ``params`` require grad (LoRA and everything else frozen); then restore."""
    wanted = {id(p) for p in params}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in wanted)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
