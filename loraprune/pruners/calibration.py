"""Calibration data for pruners: the samples a criterion's statistics or a warm-up backward run on."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from loraprune.data import collate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationData:
    """Tokenized samples (the fine-tune set, already a seeded random choice) and how to batch them;
    ``statistics``: other samples for a criterion's own statistics (:meth:`batches`; e.g. random windows
    of plain text), ``None``: the fine-tune samples."""

    samples: Sequence[dict]
    pad_token_id: int
    micro_batch_size: int = 1
    device: torch.device | str = "cpu"
    statistics: Sequence[dict] | None = None

    def batches(self, nsamples: int, seq_len: int | None) -> list[dict[str, torch.Tensor]]:
        """The first ``nsamples`` samples (of :attr:`statistics` when given), each cut to ``seq_len``
        tokens (``None``: as long as it is), one sample per batch (no padding)."""
        samples = self.samples if self.statistics is None else self.statistics
        if nsamples < 1:
            raise ValueError(f"calibration needs at least one sample, got {nsamples}")
        if not samples:
            raise ValueError("no samples to calibrate on")
        if nsamples > len(samples):
            log.warning("calibration: asked for %d samples, only %d available", nsamples, len(samples))
        out = []
        for sample in samples[:nsamples]:
            cut = {k: list(v)[:seq_len] if seq_len else list(v) for k, v in sample.items()}
            out.append(self._to_device(collate([cut], self.pad_token_id)))
        return out

    def micro_batches(self, count: int) -> Iterator[dict[str, torch.Tensor]]:
        """``count`` training micro-batches, in order, wrapping around the samples."""
        n = self.micro_batch_size
        for b in range(count):
            chunk = [self.samples[(b * n + j) % len(self.samples)] for j in range(n)]
            yield self._to_device(collate(chunk, self.pad_token_id))

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}
