"""SparseGPT (Frantar & Alistarh, 2023) for semi-structured N:M sparsity: OBS with the layer Hessian.

Reference read: ``sparsegpt.py`` (``SparseGPT.add_batch`` / ``fasterprune``) of IST-DASLab/sparsegpt.
``H = (2/N)·Σ x·xᵀ`` over the calibration tokens of each projection's input; rows are processed column
by column in blocks: in each group of ``M`` columns the weights with the smallest ``w²/[H⁻¹]_jj²`` (on the
weights as already updated) are dropped and the error is spread over the remaining columns with the
Cholesky factor of ``H⁻¹`` (dampened by ``percdamp``·mean diag). See
:func:`obs_prune_nm`. :meth:`element_scores` gives the saliency on the
unchanged weights (used only if SparseGPT is asked for plain scores).

Differences from the reference: Hessians come from one pass of the unpruned model (the reference prunes
decoder layer by decoder layer, each calibrated on the outputs of the already pruned previous layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from loraprune.core.lora import lora_tensors
from loraprune.criteria.base import Criterion, Needs
from loraprune.criteria.statistics import input_hessians


@dataclass
class SparseGPTOptions:
    """``blocksize``: columns per lazy-update block; ``percdamp``: dampening, a fraction of mean diag(H)."""

    blocksize: int = 128
    percdamp: float = 0.01


def inverse_hessian_factor(
    weight: torch.Tensor, hessian: torch.Tensor, percdamp: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W', U)``: ``W`` (float32) with the columns of dead inputs (``H_jj = 0``) zeroed, and the upper
    Cholesky factor ``U`` of the dampened ``H⁻¹`` (``H⁻¹ = UᵀU``), as SparseGPT uses it."""
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone().to(w.device)
    dead = h.diag() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    idx = torch.arange(h.shape[0], device=h.device)
    h[idx, idx] += percdamp * h.diag().mean()
    h_inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return w, torch.linalg.cholesky(h_inv, upper=True)


def obs_prune_nm(
    weight: torch.Tensor, hessian: torch.Tensor, n: int, m: int, blocksize: int = 128, percdamp: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's N:M pruning of one weight (rows × inputs) with input Hessian ``H``.

    Columns are visited left to right in blocks of ``blocksize``; at the start of each group of ``m``
    columns the ``m − n`` weights of each row with the lowest ``w²/U_jj²`` (on the already updated
    weights) are dropped; each visited column's error ``(w − q)/U_jj`` is propagated to the columns on its
    right through row ``j`` of ``U`` (lazily across blocks). Returns the new weight (exact zeros where
    dropped, in ``weight``'s dtype) and the keep mask.
    """
    if blocksize % m:
        raise ValueError(f"sparsegpt blocksize {blocksize} must be a multiple of the group size {m}")
    w, u = inverse_hessian_factor(weight, hessian, percdamp)
    rows, cols = w.shape
    if cols % m:
        raise ValueError(f"{cols} input features are not a multiple of the pattern's group size {m}")
    keep = torch.ones(rows, cols, dtype=torch.bool, device=w.device)
    for b0 in range(0, cols, blocksize):
        b1 = min(b0 + blocksize, cols)
        wb, ub = w[:, b0:b1].clone(), u[b0:b1, b0:b1]
        err = torch.zeros_like(wb)
        for j in range(b1 - b0):
            if j % m == 0:
                saliency = wb[:, j : j + m] ** 2 / ub.diag()[j : j + m][None, :] ** 2
                drop = torch.topk(saliency, m - n, dim=1, largest=False).indices
                keep[:, b0 + j : b0 + j + m].scatter_(1, drop, False)
            col = wb[:, j]
            q = col * keep[:, b0 + j]
            err[:, j] = (col - q) / ub[j, j]
            wb[:, j:] -= err[:, j : j + 1] * ub[j : j + 1, j:]
            wb[:, j] = q
        w[:, b0:b1] = wb
        w[:, b1:] -= err @ u[b0:b1, b1:]
    return (w * keep).to(weight.dtype), keep


class SparseGPTCriterion(Criterion):
    """OBS saliency and solver from per-projection input Hessians (semi-structured patterns only)."""

    name = "sparsegpt"
    needs = Needs(calibration=True)
    options_type = SparseGPTOptions
    semistructured_only = True
    solves_nm = True
    calibration_samples = 128  # the reference: 128 C4 sequences

    def __init__(self, options: SparseGPTOptions | None = None) -> None:
        super().__init__(options)
        self.blocksize, self.percdamp = int(self.options.blocksize), float(self.options.percdamp)
        self.hessians: dict[nn.Module, torch.Tensor] = {}

    def calibrate(self, model: nn.Module, modules: list[nn.Module], batches: list[dict]) -> None:
        self.hessians = input_hessians(model, modules, batches)

    def release(self) -> None:
        self.hessians = {}

    def _hessian(self, module: nn.Module) -> torch.Tensor:
        if module not in self.hessians:
            raise RuntimeError("input Hessians are missing: sparsegpt scores after its calibration pass")
        return self.hessians[module]

    def element_scores(self, module: nn.Module) -> torch.Tensor:
        w = lora_tensors(module).effective_weight()
        w, u = inverse_hessian_factor(w, self._hessian(module), self.percdamp)
        return w**2 / u.diag()[None, :] ** 2

    def solve_nm(self, module: nn.Module, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pruned-and-updated weight and its keep mask (``n`` kept of every ``m`` input columns)."""
        w = lora_tensors(module).effective_weight()
        return obs_prune_nm(w, self._hessian(module), n, m, self.blocksize, self.percdamp)
