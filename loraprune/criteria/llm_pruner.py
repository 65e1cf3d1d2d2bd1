"""LLM-Pruner's Taylor importance (Ma et al., NeurIPS 2023) from true gradients of the pretrained weights.

Reference read: ``LLMPruner/pruner/hf_llama_pruner.py`` (``TaylorImportance``) and ``hf_prune.py`` /
``llama3.py`` (calibration) of horseee/LLM-Pruner. With ``g`` the gradient of the mean token loss over the
calibration set (one batch in the reference; :func:`loraprune.run.calibration.weight_gradients` gives the same
value sample by sample) and ``F = Σᵢ gᵢ²/N`` the empirical Fisher diagonal from one backward per sample
(the reference's ``acc_grad``), the variants (``method.options.taylor``; reference names in brackets) are:

* ``element1`` [``param_first``]: element score ``|W·g|``, summed per channel;
* ``element2`` [``param_second``]: ``|½·W²·F|`` (the reference drops the ½; a constant factor, the ranking
  is the same);
* ``mix`` [``param_mix``]: ``|W·g − ½·W²·F|``: the reference's sign for plain linear layers
  (``salience - 0.5 * W * acc_grad * W``, the path its block-wise LLaMA pruning takes), i.e. the
  second-order Taylor expansion of ``L(W) − L(0)``;
* ``vector`` [``vectorize``]: per channel ``|Σ W·g|``: signed products summed over the row/column first,
  then the absolute value (so it is not a sum of element scores: :meth:`channel_scores`).

Channels are then summed over the group's modules with no normalisation (``method.normalize: false``,
the reference's ``group_reduction="sum"``), and over a head's ``head_dim`` channels (its consecutive
groups). The weight is ``W + s·B·A``, which is the pretrained ``W`` at step 0 (LoRA's ``B = 0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from loraprune.core.lora import lora_tensors, pretrained_weight
from loraprune.criteria.base import Criterion, Needs
from loraprune.criteria.statistics import weight_gradients

TAYLOR_VARIANTS = ("element1", "element2", "mix", "vector")
REFERENCE_NAMES = {
    "param_first": "element1",
    "param_second": "element2",
    "param_mix": "mix",
    "vectorize": "vector",
}


@dataclass
class LLMPrunerOptions:
    """``taylor``: element1 | element2 | mix | vector (or the reference's names, see the module doc)."""

    taylor: str = "element1"


class LLMPrunerCriterion(Criterion):
    """Taylor importance from ``∂L/∂W`` (in ``weight.grad``) and the Fisher diagonal (:attr:`fisher`)."""

    name = "llm_pruner"
    needs = Needs(weight_grads=True, calibration=True)
    options_type = LLMPrunerOptions
    calibration_samples, calibration_seq_len = 10, 64  # LLM-Pruner: 10 samples of 64 tokens

    def __init__(self, options: LLMPrunerOptions | None = None) -> None:
        super().__init__(options)
        taylor = REFERENCE_NAMES.get(self.options.taylor, self.options.taylor)
        if taylor not in TAYLOR_VARIANTS:
            raise ValueError(f"unknown taylor variant {taylor!r}; expected {', '.join(TAYLOR_VARIANTS)}")
        self.taylor = taylor
        self.fisher: dict[nn.Parameter, torch.Tensor] = {}

    @property
    def second_order(self) -> bool:
        return self.taylor in ("element2", "mix")

    def calibrate(self, model: nn.Module, modules: list[nn.Module], batches: list[dict]) -> None:
        """True gradients (and, for element2/mix, the Fisher diagonal) of the modules' pretrained weights."""
        weights = [pretrained_weight(m) for m in modules]
        self.fisher = weight_gradients(model, weights, batches, fisher=self.second_order)

    def release(self) -> None:
        self.fisher = {}

    def _salience(self, module: nn.Module) -> torch.Tensor:
        t = lora_tensors(module)
        w = t.effective_weight()
        if self.taylor == "element2":
            return 0.5 * w * w * self._fisher(t.weight)
        if t.weight.grad is None:
            raise RuntimeError("∂L/∂W is missing: llm_pruner scores after its calibration pass")
        first = w * t.weight.grad.float()
        if self.taylor == "mix":
            return first - 0.5 * w * w * self._fisher(t.weight)
        return first

    def _fisher(self, weight: nn.Parameter) -> torch.Tensor:
        if weight not in self.fisher:
            raise RuntimeError("the Fisher diagonal is missing: element2/mix score after calibration")
        return self.fisher[weight]

    def element_scores(self, module: nn.Module) -> torch.Tensor:
        if self.taylor == "vector":
            raise ValueError("the vector Taylor variant has per-channel scores only (channel_scores)")
        return self._salience(module).abs()

    def channel_scores(self, module: nn.Module, dim: int) -> torch.Tensor:
        salience = self._salience(module)
        if self.taylor == "vector":
            return salience.sum(dim=1 - dim).abs()
        return salience.abs().sum(dim=1 - dim)
