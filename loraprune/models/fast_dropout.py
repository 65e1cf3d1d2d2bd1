"""LoRA dropout whose CPU masks are cheap to draw.

peft applies ``nn.Dropout`` to the input of every LoRA branch: on the embedded model that is 210 masks and
~77 million Bernoulli draws per 4 × 128-token step, and torch's CPU Bernoulli sampler spends ~0.8 s of a
~5 s step on them (``torch.profiler``, docs/benchmarks.md). :class:`FastDropout` draws each mask from
15-bit random integers instead (``random_`` on ``int16``, about twice as fast as ``bernoulli_``): an element
is kept when its draw is ``≥ round(p · 32768)``, so ``p`` is rounded to a multiple of 1/32768 (0.05 →
0.049988) and the kept values are scaled by ``32768 / (32768 − threshold)``, which keeps the expectation
exact. Off the CPU (CUDA's fused dropout is already fast) it is ``F.dropout``. Switched by
``lora.fast_dropout`` (``false``: peft's own ``nn.Dropout``, bit for bit the runs before it existed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEVELS = 1 << 15  # draws are uniform integers in [0, LEVELS)


class FastDropout(nn.Module):
    """Inverted dropout with drop probability ``p`` (rounded to a multiple of ``1 / LEVELS`` on CPU)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * LEVELS)
        self.scale = LEVELS / (LEVELS - self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        draws = torch.empty(x.shape, dtype=torch.int16).random_(0, LEVELS)
        return x * (draws >= self.threshold) * self.scale

    def extra_repr(self) -> str:
        return f"p={self.p}, cpu_p={self.threshold / LEVELS:.6f}"


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every LoRA branch's ``nn.Dropout`` (peft's ``lora_dropout``) in ``model`` by
    :class:`FastDropout` of the same ``p``; returns how many were replaced."""
    replaced = 0
    for module in model.modules():
        branches = getattr(module, "lora_dropout", None)
        if not isinstance(branches, nn.ModuleDict):
            continue
        for name, dropout in branches.items():
            if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                branches[name] = FastDropout(dropout.p)
                replaced += 1
    return replaced
