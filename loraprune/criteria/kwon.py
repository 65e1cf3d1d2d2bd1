"""Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers" (NeurIPS), for LLaMA.

References read: the paper and ``prune/fisher.py``, ``search.py``, ``rearrange.py``, ``rescale.py`` of
WoosukKwon/retraining-free-pruning. Four steps, retraining-free (``method=kwon``):

1. **Mask Fisher** from calibration data: backward passes of the loss on each calibration sample in eval
   mode, no weight update; the gradient of a unit's mask is ``Σ_t Σ_{j∈u} h_tj·∂L/∂h_tj`` at the input of
   ``o_proj`` / ``down_proj`` (:mod:`loraprune.criteria.mask_fisher`'s hooks, here outside training), the
   score ``Σ_samples (∂L/∂m_u)²``;
2. **search** under the cost budget: the lowest Fisher per parameter over all layers and both kinds
   until the parameters of the ratio are removed (``selection: budget``,
   :func:`~loraprune.core.masks.select_budget`);
3. **mask rearrangement** within each layer with the block-diagonal Fisher
   (:func:`~loraprune.core.rearrange.rearrange`, ``options.rearrange``);
4. **mask tuning**: each kept unit's scale fitted by least squares to the dense layer's output
   (``prune.reconstruct=scales``, the preset's default; :mod:`loraprune.core.reconstruct`).

Differences from the reference: the budget is parameters, not FLOPs or latency, and the search is the greedy
per-parameter knapsack (the reference tries every head count and fills the rest with neurons by Fisher);
gradients are per sample (the reference: per mini-batch); mask tuning fits every layer on the inputs of one
pass of the dense model (the reference fits layer after layer on the already pruned and rescaled model's
inputs, to the dense model's output plus the residual, with a constant term for attention) and leaves a
layer unscaled where a scale leaves [−10, 10] (the reference stops rescaling from that layer on).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from loraprune.core.rearrange import rearrange
from loraprune.core.structure import GroupKind
from loraprune.criteria.base import Needs
from loraprune.criteria.mask_fisher import MaskFisherCriterion


@dataclass
class KwonOptions:
    """``rearrange``: refine each layer's removed units with the block-diagonal Fisher (Kwon's §4.2)."""

    rearrange: bool = True


class KwonCriterion(MaskFisherCriterion):
    """Mask Fisher from calibration backward passes; mask rearrangement; see the module doc."""

    name = "kwon"
    needs = Needs(calibration=True)
    options_type = KwonOptions
    structured_only = True
    calibration_samples = 128  # Kwon: 2048 task samples; here windows of plain text (method.calibration)
    calibration_seq_len = 128

    def share_across_processes(self, sum_over_processes, processes: int) -> None:
        """Every process calibrates on the same samples: nothing to sum."""

    @property
    def per_micro_batch(self) -> bool:
        return False

    def calibrate(self, model: nn.Module, modules: list[nn.Module], batches: list[dict]) -> None:
        """One backward of each calibration sample's mean token loss, in eval mode; only the gradients of
        the activations are formed (the embeddings' output is the graph's leaf), no ``.grad`` is touched."""
        if not self._inputs:
            raise RuntimeError("kwon scores the groups it was attached to (attach_groups()) first")
        leaves: list[torch.Tensor] = []

        def leaf(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
            out = output.detach().requires_grad_(True)
            leaves.append(out)
            return out

        handle = model.get_input_embeddings().register_forward_hook(leaf)
        was_training = model.training
        model.eval()
        for state in self._inputs.values():
            state.clear()
            state.calibrating = True
        try:
            with torch.enable_grad():
                for batch in batches:
                    leaves.clear()
                    loss = model(**batch).loss
                    torch.autograd.grad(loss, leaves)
                    for state in self._inputs.values():
                        state.fold_micro_batch()
        finally:
            handle.remove()
            model.train(was_training)
            for state in self._inputs.values():
                state.calibrating = False

    def unit_scores(self, layer: nn.Module, kind: GroupKind) -> torch.Tensor:
        """The empirical Fisher of each unit's mask, ``Σ_samples (∂L/∂m_u)²``."""
        return self.unit_gradients(layer, kind).square().sum(0)

    def refine_removed(self, layer: nn.Module, kind: GroupKind, removed: torch.Tensor) -> torch.Tensor:
        """Kwon's mask rearrangement of ``removed`` (bool per unit) in ``layer`` (``options.rearrange``)."""
        if not self.options.rearrange:
            return removed
        return rearrange(removed, self.unit_gradients(layer, kind))
