"""SparseGPT (Frantar & Alistarh, 2023) for semi-structured N:M sparsity: OBS with the layer Hessian.

Reference read: ``sparsegpt.py`` (``SparseGPT.add_batch`` / ``fasterprune``) of IST-DASLab/sparsegpt.
``H = (2/N)·Σ x·xᵀ`` over the calibration tokens of each projection's input; rows are processed column
by column in blocks: in each group of ``M`` columns the weights with the smallest ``w²/[H⁻¹]_jj²`` (on the
weights as already updated) are dropped and the error is spread over the remaining columns with the
Cholesky factor of ``H⁻¹`` (dampened by ``percdamp``·mean diag). See
:func:`loraprune.core.nm.obs_prune_nm`. :meth:`element_scores` gives the saliency on the
unchanged weights (used only if SparseGPT is asked for plain scores).

Differences from the reference: Hessians come from one pass of the unpruned model (the reference prunes
decoder layer by decoder layer, each calibrated on the outputs of the already pruned previous layers).
"""

from __future__ import annotations

import torch
from torch import nn

from loraprune.criteria.base import lora_tensors


class SparseGPTCriterion:
    """OBS saliency and solver from per-projection input Hessians (semi-structured patterns only)."""

    name = "sparsegpt"
    needs_weight_grads = False
    calibration_defaults = (128, None)  # the reference: 128 C4 sequences
    semistructured_only = True

    def __init__(self, blocksize: int = 128, percdamp: float = 0.01) -> None:
        self.blocksize, self.percdamp = int(blocksize), float(percdamp)
        self.hessians: dict[nn.Module, torch.Tensor] = {}

    def calibrate(self, model: nn.Module, modules: list[nn.Module], batches: list[dict]) -> None:
        from loraprune.run.calibration import input_hessians

        self.hessians = input_hessians(model, modules, batches)

    def release(self) -> None:
        self.hessians = {}

    def _hessian(self, module: nn.Module) -> torch.Tensor:
        if module not in self.hessians:
            raise RuntimeError("input Hessians are missing: sparsegpt scores after its calibration pass")
        return self.hessians[module]

    def element_scores(self, module: nn.Module) -> torch.Tensor:
        from loraprune.core.nm import inverse_hessian_factor

        w = lora_tensors(module).effective_weight()
        w, u = inverse_hessian_factor(w, self._hessian(module), self.percdamp)
        return w**2 / u.diag()[None, :] ** 2

    def solve(self, module: nn.Module, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pruned-and-updated weight and its keep mask (``n`` kept of every ``m`` input columns)."""
        from loraprune.core.nm import obs_prune_nm

        w = lora_tensors(module).effective_weight()
        return obs_prune_nm(w, self._hessian(module), n, m, self.blocksize, self.percdamp)
