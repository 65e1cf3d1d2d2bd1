"""Mask Fisher: group importance from what LoRA's own backward computes, without ∂L/∂W.

Removing a group (an attention KV group, an MLP channel) zeroes its output channels, which are the input
channels ``j`` of ``o_proj`` / ``down_proj``: with a mask ``m_u`` on unit ``u``'s channels (``h_j·m_u``),
the exact gradient of the loss is ``∂L/∂m_u = Σ_t Σ_{j∈u} h_tj·∂L/∂h_tj`` over the sample's tokens ``t``.
Both factors exist in any LoRA step: ``h`` is the projection's input, ``∂L/∂h`` the gradient the backward
passes to the layers below (LoRA needs it to train their adapters). No gradient of a pretrained weight is
formed; what is held is one ``tokens × channels`` input per scored projection until the backward, and one
number per sample and channel.

Scores (per step, smoothed by the pruner's moving average):

- ``fisher``: Σ_samples (∂L/∂m_u)², the empirical Fisher of the mask, i.e. the second-order estimate of
  the loss increase when the unit is removed (Kwon et al., "A Fast Post-Training Pruning Framework for
  Transformers", NeurIPS 2022; with LoRA's backward as in APT, Zhao et al., ICML 2024);
- ``taylor``: |Σ_samples ∂L/∂m_u|, the first-order estimate (Molchanov et al., 2019).

The gradient is the LoRA-adapted model's (W + s·B·A, masks on), the model LoRAPrune's estimate
approximates; the sum over a unit is taken before squaring, so the score is the unit's own, not a sum
of channel scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from loraprune.core.masks import masked_input_slice
from loraprune.core.structure import GroupKind, projection
from loraprune.criteria.base import Criterion, Needs

ESTIMATES = ("fisher", "taylor")


@dataclass
class MaskFisherOptions:
    """Options of the ``mask_fisher`` criterion.

    Attributes:
        estimate: ``fisher`` (Σ over samples of the squared mask gradient) or ``taylor`` (|Σ over samples
            of the mask gradient|).
    """

    estimate: str = "fisher"

    def __post_init__(self) -> None:
        if self.estimate not in ESTIMATES:
            raise ValueError(
                f"mask_fisher estimate must be one of {', '.join(ESTIMATES)}, got {self.estimate!r}"
            )


class _InputGradients:
    """Per-sample Σ_t h_tj·∂L/∂h_tj of one projection's input, gathered by hooks during training."""

    def __init__(self, module: nn.Module) -> None:
        self.pending: list[torch.Tensor] = []  # this micro-batch's, filled by the backward
        self.step: list[torch.Tensor] = []  # the step's micro-batches so far
        self.calibrating = False  # also outside training mode (a calibration backward in eval mode)
        self.handle = module.register_forward_pre_hook(self._forward_pre_hook)

    def _forward_pre_hook(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        if (module.training or self.calibrating) and torch.is_grad_enabled() and x.requires_grad:
            x.register_hook(self._gradient_hook(x.detach()))

    def _gradient_hook(self, x: torch.Tensor):
        def hook(grad: torch.Tensor) -> None:
            product = x.float() * grad.float()
            per_sample = product.flatten(1, -2).sum(1) if product.dim() >= 3 else product
            self.pending.append(per_sample.detach())

        return hook

    def fold_micro_batch(self) -> None:
        self.step.extend(self.pending)
        self.pending.clear()

    def clear(self) -> None:
        self.pending.clear()
        self.step.clear()


class MaskFisherCriterion(Criterion):
    """Unit scores from the mask gradients Σ_t h·∂L/∂h of each sample (see the module docstring)."""

    name = "mask_fisher"
    needs = Needs(lora_grads=True)  # scores come from the training backward; no ∂L/∂W
    options_type = MaskFisherOptions
    structured_only = True

    def __init__(self, options: MaskFisherOptions | None = None) -> None:
        super().__init__(options)
        self._inputs: dict[int, _InputGradients] = {}
        self._sum_over_processes: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
        self._processes = 1

    def share_across_processes(self, sum_over_processes, processes: int) -> None:
        """Under data parallelism each rank sees its own samples, with its loss weighted ``processes``
        times the global one's (DDP averages): scaled back and summed over ranks, every rank scores
        exactly the single-process step."""
        self._sum_over_processes, self._processes = sum_over_processes, processes

    def attach_groups(self, layers: list[nn.Module], kinds: list[GroupKind]) -> None:
        """Hooks on the projections whose inputs are the groups' outputs (``o_proj``, ``down_proj``)."""
        for layer in layers:
            for kind in kinds:
                module = projection(layer, masked_input_slice(kind).module)
                if id(module) not in self._inputs:
                    self._inputs[id(module)] = _InputGradients(module)

    @property
    def per_micro_batch(self) -> bool:
        return True

    def reset_accumulation(self) -> None:
        """A new step: forget the previous step's samples (the first micro-batch's are still pending)."""
        for state in self._inputs.values():
            state.step.clear()

    def accumulate(self, modules: list[nn.Module], count: int) -> None:
        for state in self._inputs.values():
            state.fold_micro_batch()

    @property
    def scores_units(self) -> bool:
        return True

    def unit_scores(self, layer: nn.Module, kind: GroupKind) -> torch.Tensor:
        per_unit = self.unit_gradients(layer, kind)
        if self.options.estimate == "fisher":
            return self._sum_over_processes(per_unit.square().sum(0))
        return self._sum_over_processes(per_unit.sum(0)).abs()

    def unit_gradients(self, layer: nn.Module, kind: GroupKind) -> torch.Tensor:
        """This step's mask gradients ``∂L/∂m_u`` (samples × units; this process's samples, float32)."""
        sl = masked_input_slice(kind)
        state = self._inputs.get(id(projection(layer, sl.module)))
        if state is None:
            raise RuntimeError("mask_fisher scores only the groups it was attached to (attach_groups())")
        if not state.step:
            raise RuntimeError(
                "mask_fisher: no gradient reached the pruned projections' inputs in this step (a training "
                "backward with LoRA below them is needed)"
            )
        channels = torch.cat(state.step).cpu()  # samples × channels
        owned = sl.unit_of_channel >= 0
        per_unit = torch.zeros(channels.shape[0], kind.num_units, dtype=torch.float32)
        per_unit.index_add_(1, sl.unit_of_channel[owned], channels[:, owned])
        return per_unit / self._processes

    def channel_scores(self, module: nn.Module, dim: int) -> torch.Tensor | None:
        raise NotImplementedError("mask_fisher scores whole units (unit_scores), not channels")

    def release(self) -> None:
        for state in self._inputs.values():
            state.handle.remove()
            state.clear()
        self._inputs.clear()
