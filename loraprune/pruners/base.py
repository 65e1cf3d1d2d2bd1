"""The pruner interface: prepare → (observe, step)* → finalize, and what finalizing gives.

A pruner owns one criterion, one schedule and the masks it imposes during fine-tuning. The training loop
calls :meth:`Pruner.observe` once the gradients of an optimizer step are accumulated and
:meth:`Pruner.step` after the optimizer step; :meth:`Pruner.finalize` reaches the target (if fine-tuning
ended early), releases what the pruner held and returns a :class:`PruneResult` for the merge and the
surgery. One-shot methods are pruners whose schedule is due at step 0: :meth:`Pruner.prepare` prunes.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from loraprune.core import nm
from loraprune.core.compensation import add_compensation_biases, apply_input_maps
from loraprune.core.importance import MovingAverage
from loraprune.core.lora import set_module_weight_grads
from loraprune.core.plan import PruningPlan
from loraprune.core.reconstruct import RECONSTRUCTIONS, InputMap
from loraprune.core.structure import AttentionUnit, Geometry
from loraprune.core.surgery import apply_plan, merge_lora
from loraprune.criteria.base import Criterion
from loraprune.pruners.calibration import CalibrationData

log = logging.getLogger(__name__)

# where units are cut: ``local`` the same count in every prunable layer (the paper); ``global`` the lowest
# scores over all layers, per kind (the same count per kind); ``budget`` the lowest score per parameter
# over all layers and kinds, removing the parameters of the same group ratio (attention vs MLP by score);
# ``adaptive`` the same budget, by score alone (FLAP's adaptive structure, for scores standardised per module)
SELECTIONS = ("local", "global", "budget", "adaptive")


@dataclass
class PrunerSettings:
    """How a pruner chooses what to remove (resolved from ``prune`` and ``method``).

    ``ratio`` is the group ratio of every prunable layer (structured); ``pattern`` (e.g. ``"2:4"``)
    switches to semi-structured N:M sparsity of every projection of the prunable layers instead.
    ``normalize_order`` (``channel`` | ``unit``): see :func:`loraprune.core.importance.unit_scores`.
    ``calibration_samples`` / ``calibration_seq_len`` size a criterion's own statistics (``None``: the
    criterion's defaults); ``calibration_batches`` training micro-batches feed the moving average before
    the first step (one at least for a gradient criterion pruning one-shot). ``layers``: the whole
    decoder layers a depth cut removes (a layer criterion; ``ratio`` is then their fraction of the
    prunable layers). ``reconstruct``: how removed units are compensated (``none`` | ``bias`` |
    ``least_squares`` | ``scales``, :mod:`loraprune.core.reconstruct`; ``None``: the criterion's own, i.e.
    FLAP's bias where it gives means), ``reconstruct_damp`` its damping (a fraction of mean diag of the Gram).
    ``round_to``: every kept width a multiple of it (:mod:`loraprune.core.rounding`; ``None``: as selected).
    ``param_budget``: the parameters a selection across layers (``budget`` / ``adaptive``) removes once
    the schedule reaches ``ratio`` (``prune.target=params``: that fraction of the model, exactly up to the
    cheapest unit), in proportion before; ``None``: those of ``ratio``'s units in every prunable layer.
    ``unit_counts``: for a selection that cuts every layer alike (``local`` / ``global``), the units of each
    kind removed per prunable layer once the schedule reaches ``ratio`` (``prune.target=params``: the counts
    that remove that fraction), in proportion before; ``None``: ``ratio``'s.
    """

    ratio: float = 0.0
    pattern: str | None = None
    attention_unit: AttentionUnit = "kv_group"
    prune_freq: int = 10
    excluded_layers: list[int] = field(default_factory=list)
    selection: str = "local"
    prune_attention: bool = True
    prune_mlp: bool = True
    ema_beta: float = 0.9
    ema_init: str = "zero"
    normalize: bool = True
    normalize_order: str = "channel"
    calibration_samples: int | None = None
    calibration_seq_len: int | None = None
    calibration_batches: int = 0
    layers: int = 0
    reconstruct: str | None = None
    reconstruct_damp: float = 0.01
    round_to: int | None = None
    param_budget: int | None = None
    unit_counts: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.param_budget is not None and (self.param_budget < 0 or self.ratio <= 0):
            raise ValueError(
                f"param_budget must be >= 0 with a positive ratio, got {self.param_budget} "
                f"at ratio {self.ratio}"
            )
        if self.unit_counts is not None and (self.ratio <= 0 or min(self.unit_counts.values()) < 0):
            raise ValueError(
                f"unit_counts must be >= 0 with a positive ratio, got {self.unit_counts} "
                f"at ratio {self.ratio}"
            )
        if self.round_to is not None and self.round_to < 1:
            raise ValueError(f"prune.round_to must be a positive integer or null, got {self.round_to}")
        if self.reconstruct is not None and self.reconstruct not in RECONSTRUCTIONS:
            raise ValueError(f"prune.reconstruct must be one of {RECONSTRUCTIONS}, got {self.reconstruct!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"prune.selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.prune_freq < 1:
            raise ValueError(f"prune.prune_freq must be >= 1, got {self.prune_freq}")


@dataclass
class PruneResult:
    """What a finished pruner leaves: the kept groups (all of them for N:M, or the removed layers of a
    depth cut), the N:M keep masks, for bias compensation the calibration means of the inputs of each
    ``(layer, kind)``'s ``o_proj`` / ``down_proj`` (see :mod:`loraprune.core.compensation`), the fixed
    reconstruction maps of ``least_squares`` / ``scales`` (:mod:`loraprune.core.reconstruct`), and a depth
    cut's score of every prunable layer (base-model indices)."""

    plan: PruningPlan
    nm_masks: dict[tuple[int, str], torch.Tensor] | None = None
    pattern: str | None = None
    input_means: dict[tuple[int, str], torch.Tensor] | None = None
    layer_scores: dict[int, float] | None = None
    input_maps: dict[tuple[int, str], InputMap] | None = None

    def apply(self, model: nn.Module) -> nn.Module:
        """Merge LoRA (through the N:M masks, so the pattern stays exact), add the compensation biases and
        remove the pruned groups; returns the plain model with every parameter frozen."""
        merged = merge_lora(model) if self.nm_masks is None else nm.merge_through_masks(model, self.nm_masks)
        for param in merged.parameters():
            param.requires_grad_(False)
        if self.input_means:
            add_compensation_biases(merged, self.plan, self.input_means)
        if self.input_maps:
            apply_input_maps(merged, self.plan, maps=self.input_maps)
        return apply_plan(merged, self.plan)


class Pruner(ABC):
    """Scores with a criterion, smooths the scores, follows a schedule of ``goal``; see the module doc."""

    def __init__(
        self,
        model: nn.Module,
        geo: Geometry,
        criterion: Criterion,
        settings: PrunerSettings,
        schedule: Callable[[int], float],
    ) -> None:
        self.model, self.geo, self.criterion = model, geo, criterion
        self.settings, self.schedule = settings, schedule
        excluded = set(settings.excluded_layers)
        self.prunable = [i for i in range(geo.num_layers) if i not in excluded]
        self.ema = MovingAverage(settings.ema_beta, settings.ema_init)
        self.progress = 0.0  # where the schedule stands, in units of ``goal``
        self.released = False

    # ------------------------------------------------------------------ what implementations provide
    @property
    @abstractmethod
    def goal(self) -> float:
        """The schedule's final value (the group ratio; 1.0 = every row N:M)."""

    @property
    @abstractmethod
    def removed_fraction(self) -> float:
        """Fraction of what this pruner prunes that is removed now: units of the prunable layers'
        groups (structured), or weights of the pruned projections (N:M)."""

    @abstractmethod
    def scored_modules(self) -> list[nn.Module]:
        """Every projection the criterion scores (each once)."""

    @abstractmethod
    def current_scores(self) -> dict[Hashable, torch.Tensor]:
        """This step's importance per key, from the criterion."""

    @abstractmethod
    def advance_to(self, target: float) -> None:
        """Remove more until the schedule value ``target`` is in force (never restores)."""

    @abstractmethod
    def result(self) -> PruneResult:
        """The result as it stands."""

    def remove_hooks(self) -> None:  # noqa: B027 - optional: most pruners install nothing to remove
        """Remove whatever the pruner installed on the model for fine-tuning."""

    # ------------------------------------------------------------------- the decision, as tensors
    @abstractmethod
    def decision(self) -> dict[str, torch.Tensor]:
        """What is pruned now, as named tensors (copies): what data-parallel ranks must agree on."""

    @abstractmethod
    def adopt_decision(self, decision: dict[str, torch.Tensor]) -> None:
        """Take over ``decision`` (another copy's :meth:`decision`, e.g. rank 0's) as this pruner's."""

    def decision_weights(self) -> list[nn.Parameter]:
        """Weights a decision changed in place (N:M zeroes them), to be shared with the decision."""
        return []

    def decision_digest(self) -> int:
        """A CRC-32 of :meth:`decision`: equal decisions, equal digests (logged per step)."""
        crc = 0
        for key, t in sorted(self.decision().items()):
            crc = zlib.crc32(key.encode(), crc)
            crc = zlib.crc32(t.detach().cpu().contiguous().numpy().tobytes(), crc)
        return crc

    def unpruned(self) -> contextlib.AbstractContextManager[None]:
        """A context in which the model's forward is unpruned (a distillation teacher). Default: no
        masks to lift; a pruner that changes the weights themselves cannot give one."""
        return contextlib.nullcontext()

    # ------------------------------------------------------------------------------- the life cycle
    @property
    def finished(self) -> bool:
        """The final value is in force (masks never change again)."""
        return self.progress >= self.goal

    @property
    def prunes_at_start(self) -> bool:
        """Whether the schedule prunes before the first optimizer step (one-shot at step 0)."""
        return self.goal > 0 and self.schedule(0) >= self.goal

    def prepare(self, data: CalibrationData) -> None:
        """What the criterion needs before the first step; a one-shot pruner prunes here."""
        c, s = self.criterion, self.settings
        c.attach(self.scored_modules())
        if c.needs.calibration:
            if not self.prunes_at_start:
                raise ValueError(f"criterion {c.name!r} prunes one-shot at step 0 only")
            n = s.calibration_samples or c.calibration_samples
            seq_len = s.calibration_seq_len or c.calibration_seq_len
            log.info("calibrating %s on %d samples of up to %s tokens", c.name, n, seq_len)
            c.calibrate(self.model, self.scored_modules(), data.batches(n, seq_len))
        elif c.needs.weight_grads:
            set_module_weight_grads(self.scored_modules(), True)
        warm_up = s.calibration_batches or (1 if self.prunes_at_start and c.needs.backward else 0)
        if warm_up and not c.needs.calibration:
            self.warm_up(data, warm_up)
        if self.prunes_at_start:
            self.advance_to(self.goal)
            self.release()

    def warm_up(self, data: CalibrationData, batches: int) -> None:
        """Forward/backward micro-batches that only feed the moving average (no optimizer step)."""
        self.model.train()
        for batch in data.micro_batches(batches):
            self.model(**batch).loss.backward()
            self.observe_micro_batch(0, 1)
            self.observe()
            self.model.zero_grad(set_to_none=True)
        self.model.eval()

    def observe_micro_batch(self, index: int, count: int) -> None:
        """After micro-batch ``index`` of ``count`` (its gradients added to the step's): a criterion
        that accumulates per micro-batch (``per_micro_batch``) reads them; nothing once finished."""
        if self.finished or not self.criterion.per_micro_batch:
            return
        if index == 0:
            self.criterion.reset_accumulation()
        self.criterion.accumulate(self.scored_modules(), count)

    def observe(self) -> None:
        """Fold the current gradients' importance into the moving average (nothing once finished)."""
        if not self.finished:
            self.ema.update(self.current_scores())

    def step(self, step: int, final_step: bool = False) -> float:
        """Apply the schedule after optimizer step ``step`` (1-based); returns :attr:`removed_fraction`."""
        target = min(self.goal, float(self.schedule(step)))
        due = step % self.settings.prune_freq == 0 or final_step or target >= self.goal
        if due and target > self.progress:
            self.advance_to(target)
        if self.finished:
            self.release()
        return self.removed_fraction

    def release(self) -> None:
        """Once the final value is in force: free the criterion's statistics, the moving average and
        ``∂L/∂W`` (LoRA keeps training). Idempotent."""
        if self.released:
            return
        self.released = True
        self.criterion.release()
        self.ema.clear()
        if self.criterion.needs.weight_grads:
            set_module_weight_grads(self.scored_modules(), False)

    def finalize(self) -> PruneResult:
        """Reach the goal (e.g. no fine-tuning steps), release, remove hooks, return the result."""
        if not self.finished:
            self.advance_to(self.goal)
        self.release()
        self.remove_hooks()
        return self.result()

    # ------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything that changes during fine-tuning: where the schedule stands, the moving average,
        the criterion's own state and (in subclasses) the masks. Tensors and plain values only."""
        return {
            "progress": self.progress,
            "released": self.released,
            "ema": {
                "values": dict(self.ema.values),
                "updates": self.ema.updates,
                "skipped": self.ema.skipped,
            },
            "criterion": self.criterion.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` on a pruner built and prepared as the saved one was."""
        self.progress = float(state["progress"])
        ema = state["ema"]
        self.ema.values = {k: v.to(torch.float32).clone() for k, v in ema["values"].items()}
        self.ema.updates, self.ema.skipped = int(ema["updates"]), int(ema["skipped"])
        self.criterion.load_state_dict(state["criterion"])
        if state["released"]:
            self.released = False
            self.release()

    def needs_observation(self) -> None:
        """Raise unless the criterion can score without a training backward (or one was observed)."""
        if not self.ema.values and self.criterion.needs.backward:
            raise RuntimeError("no importance observed yet: call observe() after a backward pass first")
