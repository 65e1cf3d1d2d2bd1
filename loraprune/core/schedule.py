"""Pruning schedules: optimizer step → target ratio."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CubicSchedule:
    """The cubic sparsity schedule of movement pruning / LoRAPrune's ``schedule_sparsity_ratio``.

    The ratio stays at ``initial`` for the first ``warmup`` fraction of steps, reaches ``final`` when the
    last ``cooldown`` fraction starts, and in between follows
    ``final + (initial − final)·(1 − progress)³``.
    """

    final: float
    total_steps: int
    warmup: float = 0.0
    cooldown: float = 0.0
    initial: float = 0.0

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.warmup < 0 or self.cooldown < 0 or self.warmup + self.cooldown >= 1:
            raise ValueError(f"warmup ({self.warmup}) + cooldown ({self.cooldown}) must be in [0, 1)")

    def __call__(self, step: int) -> float:
        total = self.total_steps
        start = self.warmup * total
        end = total - self.cooldown * total
        if step <= start:
            return self.initial
        if step >= end:
            return self.final
        remaining = 1.0 - (step - start) / (end - start)
        return self.final + (self.initial - self.final) * remaining**3


@dataclass(frozen=True)
class OneShotSchedule:
    """Prune everything at ``at_step`` (0: before the first optimizer step)."""

    final: float
    at_step: int = 0

    def __call__(self, step: int) -> float:
        return self.final if step >= self.at_step else 0.0


@dataclass(frozen=True)
class LinearSchedule:
    """Linear ramp from 0 to ``final`` between the warmup and cooldown boundaries."""

    final: float
    total_steps: int
    warmup: float = 0.0
    cooldown: float = 0.0

    def __call__(self, step: int) -> float:
        start = self.warmup * self.total_steps
        end = self.total_steps - self.cooldown * self.total_steps
        if step <= start:
            return 0.0
        if step >= end:
            return self.final
        return self.final * (step - start) / (end - start)


def build_schedule(
    kind: str, final: float, total_steps: int, warmup: float = 0.0, cooldown: float = 0.0, at_step: int = 0
):
    """A schedule by name: ``cubic``, ``linear`` or ``one_shot``."""
    if kind == "cubic":
        return CubicSchedule(final, total_steps, warmup, cooldown)
    if kind == "linear":
        return LinearSchedule(final, total_steps, warmup, cooldown)
    if kind == "one_shot":
        return OneShotSchedule(final, at_step)
    raise ValueError(f"unknown schedule {kind!r}; expected cubic, linear or one_shot")
