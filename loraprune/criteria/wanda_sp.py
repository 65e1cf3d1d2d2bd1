"""Structured Wanda ("Wanda-sp", as implemented in FLAP): ``|W_ij|·‖X_j‖`` per group.

References read: ``lib/prune.py`` (``prune_wanda_sp``) and ``lib/layerwrapper.py`` (``WrappedGPT``) of
CASIA-IVA-Lab/FLAP, and ``lib/prune.py`` of locuslab/wanda (the unstructured metric). ``‖X_j‖`` is the L2
norm of input feature ``j`` of the projection over the calibration tokens (FLAP's ``sqrt(scaler_row)``,
collected with forward hooks; see :func:`loraprune.run.calibration.input_square_norms`).

Wanda-sp scores only the projections whose *input columns* a group removes: an attention head is
``Σ_{j ∈ head} mean_i |W^o_ij|·‖X^o_j‖`` over ``o_proj`` and an MLP channel ``mean_i |W^down_ij|·‖X^down_j‖``.
That is the default here (``method.options.slices: input``); we sum over ``i`` instead of averaging (a
constant factor per module, the same ranking). ``slices: all`` also scores the rows a group removes from
``q/k/v`` and ``gate/up``, each row as ``Σ_j |W_ij|·‖X_j‖`` with ``X`` that projection's input.

Difference from FLAP: norms come from one pass of the unpruned model (FLAP prunes layer by layer and
feeds each layer the already pruned previous layers' outputs). Like FLAP's ``prune_wanda_sp``
(``bias=False``) no bias compensation is added.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from loraprune.core.lora import lora_tensors
from loraprune.criteria.base import Criterion, Needs
from loraprune.criteria.statistics import input_square_norms

SLICE_CHOICES = ("input", "all")


@dataclass
class WandaSPOptions:
    """``slices``: input (o_proj/down_proj columns only, FLAP's definition) | all."""

    slices: str = "input"


@dataclass
class WandaOptions:
    """``slices``: all (every slice a group removes) | input."""

    slices: str = "all"


class WandaSPCriterion(Criterion):
    """``|W_ij|·‖X_j‖`` element scores; by default only input-column slices (o_proj, down_proj) count."""

    name = "wanda_sp"
    needs = Needs(calibration=True)
    options_type = WandaSPOptions
    calibration_samples = 128  # FLAP: 128 calibration sequences

    def __init__(self, options: WandaSPOptions | WandaOptions | None = None) -> None:
        super().__init__(options)
        slices = self.options.slices
        if slices not in SLICE_CHOICES:
            raise ValueError(f"wanda_sp slices must be one of {', '.join(SLICE_CHOICES)}, got {slices!r}")
        self.slices = slices
        self.input_sq_norms: dict[nn.Module, torch.Tensor] = {}

    def calibrate(self, model: nn.Module, modules: list[nn.Module], batches: list[dict]) -> None:
        self.input_sq_norms = input_square_norms(model, modules, batches)

    def release(self) -> None:
        self.input_sq_norms = {}

    def element_scores(self, module: nn.Module) -> torch.Tensor:
        if module not in self.input_sq_norms:
            raise RuntimeError("input norms are missing: wanda_sp scores after its calibration pass")
        w = lora_tensors(module).effective_weight()
        return w.abs() * self.input_sq_norms[module].to(w.device).sqrt()[None, :]

    def channel_scores(self, module: nn.Module, dim: int) -> torch.Tensor | None:
        if dim == 0 and self.slices == "input":
            return None
        return self.element_scores(module).sum(dim=1 - dim)


class WandaCriterion(WandaSPCriterion):
    """Unstructured Wanda's element metric ``|W_ij|·‖X_j‖`` (locuslab/wanda ``lib/prune.py``), for
    semi-structured N:M patterns; used for groups it scores every slice (``slices: all``)."""

    name = "wanda"
    options_type = WandaOptions
