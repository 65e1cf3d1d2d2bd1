"""The criterion interface: what a criterion needs, and its scores of one projection.

A criterion maps a projection to one score per weight element (:meth:`Criterion.element_scores`) or per
channel (:meth:`Criterion.channel_scores`); :mod:`loraprune.core.importance` sums channel scores over a
structural group. What it needs to score is stated, not probed, in :attr:`Criterion.needs`; the pruner
arranges it (LoRA gradients from the training backward, ``∂L/∂W`` of the pretrained weights, or a
calibration pass through :meth:`Criterion.calibrate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from loraprune.core.nm import nm_keep_mask


@dataclass(frozen=True)
class Needs:
    """What a criterion needs before it can score.

    Attributes:
        lora_grads: LoRA's gradients ``∂L/∂A``, ``∂L/∂B`` from a backward pass.
        weight_grads: ``∂L/∂W`` of the pretrained weights (full-size gradients: memory-hungry).
        calibration: its own statistics from a calibration pass (:meth:`Criterion.calibrate`) before a
            one-shot prune at step 0 (it then scores without a training backward).
    """

    lora_grads: bool = False
    weight_grads: bool = False
    calibration: bool = False

    @property
    def backward(self) -> bool:
        """Whether scores come from a training backward (not from the criterion's own statistics)."""
        return (self.lora_grads or self.weight_grads) and not self.calibration


@dataclass
class NoOptions:
    """A criterion without options."""


class Criterion:
    """Base class: no-op calibration and release, channel scores as sums of element scores.

    Subclasses set :attr:`name`, :attr:`needs` and, when they take options, :attr:`options_type` (a
    dataclass; ``method.options`` is checked against it before any model loads).
    """

    name: ClassVar[str] = "criterion"
    needs: ClassVar[Needs] = Needs()
    options_type: ClassVar[type] = NoOptions
    semistructured_only: ClassVar[bool] = False
    structured_only: ClassVar[bool] = False  # structured pruning only (no N:M patterns)
    solves_nm: ClassVar[bool] = False  # its N:M choice also updates the kept weights (:meth:`solve_nm`)
    scores_layers: ClassVar[bool] = False  # scores whole decoder layers (:meth:`layer_score`): depth pruning
    calibration_samples: ClassVar[int] = 10  # default calibration set: samples ...
    calibration_seq_len: ClassVar[int | None] = None  # ... of this many tokens (None: as long as they are)

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.options_type()

    def calibrate(self, model: nn.Module, modules: list[nn.Module], batches: list[dict]) -> None:
        """Collect statistics from calibration ``batches`` for ``modules`` (``needs.calibration``)."""

    def release(self) -> None:
        """Free what :meth:`calibrate` collected (after the last prune)."""

    def state_dict(self) -> dict[str, Any]:
        """What changes while scoring during fine-tuning (for a checkpoint); none by default.
        Calibration statistics are not included: they are collected again before the first step."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def attach(self, modules: list[nn.Module]) -> None:
        """Before fine-tuning: install what the criterion observes during training forwards (removed by
        :meth:`release`). Default: nothing."""

    def attach_groups(self, layers: list[nn.Module], kinds: list[Any]) -> None:
        """Before fine-tuning, in structured pruning: the decoder ``layers`` whose units of ``kinds``
        (:class:`~loraprune.core.structure.GroupKind`) will be scored. Default: nothing."""

    def share_across_processes(self, sum_over_processes: Any, processes: int) -> None:
        """Data parallelism: ``sum_over_processes(tensor)`` sums a tensor over the ``processes`` ranks.
        Criteria that score all-reduced gradients need nothing (default); one that gathers statistics
        of its own rank's samples uses it so that every rank scores the whole step's samples."""

    @property
    def scores_units(self) -> bool:
        """Whether it scores whole units itself (:meth:`unit_scores`); ``False`` (the default): a unit's
        score is the sum of :meth:`channel_scores` over its slices
        (:func:`loraprune.core.importance.unit_scores`)."""
        return False

    def unit_scores(self, layer: nn.Module, kind: Any) -> torch.Tensor:
        """One score per unit of ``kind`` in ``layer`` computed by the criterion itself (``scores_units``)."""
        raise NotImplementedError(f"criterion {self.name!r} does not score whole units (scores_units)")

    def layer_score(self, layer: nn.Module) -> float:
        """One score of a whole decoder layer (``scores_layers``: depth pruning removes the lowest)."""
        raise NotImplementedError(f"criterion {self.name!r} does not score whole layers")

    @property
    def per_micro_batch(self) -> bool:
        """Whether it reads every micro-batch's gradients (:meth:`accumulate`), not only the step's."""
        return False

    def reset_accumulation(self) -> None:
        """A new optimizer step begins: forget the previous step's per-micro-batch accumulation."""

    def accumulate(self, modules: list[nn.Module], count: int) -> None:
        """Read the gradients one more micro-batch (of ``count`` per step) added to ``modules``'."""

    def element_scores(self, module: nn.Module) -> torch.Tensor:
        """One score per weight element of ``module`` (its weight's shape)."""
        raise NotImplementedError(f"criterion {self.name!r} has no element scores")

    def channel_scores(self, module: nn.Module, dim: int) -> torch.Tensor | None:
        """One score per output row (``dim=0``) or input column (``dim=1``); ``None``: this slice does not
        count for the criterion. Default: element scores summed per channel."""
        return self.element_scores(module).sum(dim=1 - dim)

    def solve_nm(self, module: nn.Module, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(new weight, keep mask)`` keeping ``n`` of every ``m`` inputs per row. Default: the highest
        element scores, the kept weights unchanged."""
        keep = nm_keep_mask(self.element_scores(module), n, m)
        weight = getattr(module, "base_layer", module).weight
        return weight.detach() * keep.to(weight.device, weight.dtype), keep
