"""FLAP (An et al., AAAI 2024, "Fluctuation-based Adaptive Structured Pruning for Large Language Models").

References read: ``lib/prune.py`` (``prune_flap``, ``compress``) and ``lib/layerwrapper.py`` (``BiasGPT``)
of CASIA-IVA-Lab/FLAP. Three parts, retraining-free as published:

* **Fluctuation metric** (``WIFV``): for each input channel ``j`` of ``o_proj`` / ``down_proj``,
  ``S_j = Var(X_j) · ‖W_:,j‖²``, the sample variance of the channel over the calibration tokens times the
  squared norm of the weight column it feeds (:meth:`FlapCriterion.channel_scores`). Without
  standardisation a unit's score is the sum over the channels it removes (a head's ``head_dim`` columns, a
  KV group's columns of all its query heads, an MLP channel's one column).
* **Adaptive structure** (``options.standardize``, FLAP's ``AL-AM``): the channel scores of each module
  (the attention, resp. the MLP, of each layer) are standardised, ``(S − mean(S)) / std(S)`` over that
  module's channels, and a unit's score is the mean of its channels' standardised scores (the reference
  code standardises channels, then averages per head). Units of every layer and both kinds then compete on
  these scores under the parameter budget of the ratio: ``selection: adaptive``. The reference squares
  the attention channel scores before standardising (``options.square_attention``; not in the paper's
  equation).
* **Bias compensation** (``options.bias``): the removed channels' mean contribution
  ``W[:, removed] @ mean(X[removed])`` becomes a bias of ``o_proj`` / ``down_proj``
  (:mod:`loraprune.core.compensation`; :meth:`FlapCriterion.input_means` gives the means). It is
  ``prune.reconstruct=bias`` (FLAP's default; ``options.bias=false`` makes the default ``none``, and an
  explicit ``prune.reconstruct`` wins: e.g. ``least_squares`` with FLAP's scores).

Differences from the reference: statistics come from one pass of the unpruned model (the reference feeds
each layer the outputs of the previous, also unpruned, layers: the same), and the variance is the exact
sample variance over all tokens (the reference's running update aliases its old mean and drops the first
sample's spread). Parameters per unit are counted exactly (the reference weighs a head 512/3 MLP channels,
LLaMA-7B's ratio); excluded layers (``prune.exclude_layers``) are not pruned (the reference prunes all).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from loraprune.core.lora import lora_tensors, pretrained_weight
from loraprune.core.masks import masked_input_slice
from loraprune.core.structure import GroupKind, projection
from loraprune.criteria.base import Criterion, Needs
from loraprune.criteria.statistics import forward_collecting_inputs


@dataclass
class FlapOptions:
    """``standardize``: per-module standardised unit scores (FLAP's adaptive structure; false: the raw
    fluctuation summed per unit). ``square_attention``: square the attention channel scores before
    standardising, as the reference code does. ``bias``: bias compensation of the removed units."""

    standardize: bool = True
    square_attention: bool = True
    bias: bool = True


@dataclass
class InputMoments:
    """Per input channel: tokens seen, mean, and the sum of squared deviations from the mean (float64)."""

    count: int
    mean: torch.Tensor
    m2: torch.Tensor

    @property
    def variance(self) -> torch.Tensor:
        """The sample variance (``n − 1`` in the denominator)."""
        return self.m2 / max(self.count - 1, 1)

    def add(self, x: torch.Tensor) -> None:
        """Fold in a batch of tokens ``x`` (tokens × channels); Chan et al.'s pairwise update."""
        n = x.shape[0]
        if n == 0:
            return
        mean_b = x.mean(0).double()
        m2_b = (x - x.mean(0)).pow(2).sum(0).double()
        total = self.count + n
        delta = mean_b - self.mean
        self.mean += delta * (n / total)
        self.m2 += m2_b + delta.pow(2) * (self.count * n / total)
        self.count = total


@torch.no_grad()
def input_moments(
    model: nn.Module, modules: Sequence[nn.Module], batches: Sequence[dict]
) -> dict[nn.Module, InputMoments]:
    """Mean and sample variance of every input channel of each module over all calibration tokens."""
    stats = {}
    for m in modules:
        n_in = pretrained_weight(m).shape[1]
        device = pretrained_weight(m).device
        zeros = torch.zeros(n_in, dtype=torch.float64, device=device)
        stats[m] = InputMoments(0, zeros, zeros.clone())

    def collect(module: nn.Module, x: torch.Tensor) -> None:
        stats[module].add(x.to(stats[module].mean.device))

    forward_collecting_inputs(model, modules, batches, collect)
    return stats


def fluctuation(weight: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """FLAP's ``WIFV`` per input channel ``j``: ``Var(X_j) · ‖W_:,j‖²``."""
    return variance.float() * weight.float().pow(2).sum(0)


def standardized(scores: torch.Tensor) -> torch.Tensor:
    """``(s − mean(s)) / std(s)`` (unbiased std, as ``torch.std``); all zeros when ``s`` is constant."""
    centred = scores - scores.mean()
    std = scores.std()
    return centred / std if std > 0 else torch.zeros_like(scores)


class FlapCriterion(Criterion):
    """FLAP's fluctuation metric, standardised per module, with bias compensation; see the module doc."""

    name = "flap"
    needs = Needs(calibration=True)
    options_type = FlapOptions
    structured_only = True
    calibration_samples = 128  # FLAP: 1024 WikiText-2 windows of 128 tokens (method.calibration)
    calibration_seq_len = 128

    def __init__(self, options: FlapOptions | None = None) -> None:
        super().__init__(options)
        self.moments: dict[nn.Module, InputMoments] = {}
        self.targets: list[nn.Module] | None = None

    def attach_groups(self, layers: list[nn.Module], kinds: list[GroupKind]) -> None:
        # only the inputs of o_proj / down_proj are measured
        self.targets = [
            projection(layer, masked_input_slice(kind).module) for layer in layers for kind in kinds
        ]

    def calibrate(self, model: nn.Module, modules: list[nn.Module], batches: list[dict]) -> None:
        wanted = modules if self.targets is None else [m for m in modules if m in set(self.targets)]
        self.moments = input_moments(model, wanted, batches)

    def release(self) -> None:
        self.moments = {}

    def _moments(self, module: nn.Module) -> InputMoments:
        if module not in self.moments:
            raise RuntimeError("input statistics are missing: flap scores after its calibration pass")
        return self.moments[module]

    def channel_scores(self, module: nn.Module, dim: int) -> torch.Tensor | None:
        """The fluctuation of each input column (``dim=1``); output rows (``dim=0``) do not count."""
        if dim == 0:
            return None
        w = lora_tensors(module).effective_weight()
        return fluctuation(w, self._moments(module).variance.to(w.device))

    @property
    def scores_units(self) -> bool:
        """With ``standardize`` (else a unit's score is its channel scores' sum)."""
        return self.options.standardize

    def unit_scores(self, layer: nn.Module, kind: GroupKind) -> torch.Tensor:
        """The mean of each unit's standardised channel scores (``standardize``)."""
        if not self.scores_units:
            return super().unit_scores(layer, kind)
        sl = masked_input_slice(kind)
        scores = self.channel_scores(projection(layer, sl.module), sl.dim).cpu()
        if kind.name == "attn" and self.options.square_attention:
            scores = scores.pow(2)
        z = standardized(scores.double())
        owned = sl.unit_of_channel >= 0
        total = torch.zeros(kind.num_units, dtype=torch.float64).index_add_(
            0, sl.unit_of_channel[owned], z[owned]
        )
        count = torch.bincount(sl.unit_of_channel[owned], minlength=kind.num_units).double()
        return (total / count).float()

    @property
    def gives_input_means(self) -> bool:
        """Whether it hands its means over for bias compensation (``options.bias``): then the pruner's
        default reconstruction is ``bias`` and it needs no calibration pass of its own."""
        return self.options.bias

    def input_means(self, module: nn.Module) -> torch.Tensor | None:
        """The calibration mean of each input channel of ``module`` (for bias compensation), or ``None``
        when ``bias`` is off or no statistics are held."""
        if not self.options.bias or module not in self.moments:
            return None
        return self.moments[module].mean.float()
