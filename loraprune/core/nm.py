"""Semi-structured N:M sparsity (``prune.pattern: "2:4"``): in every row of every pruned projection, each
group of ``M`` consecutive input weights keeps ``N`` (NVIDIA's convention; 2:4 zeroes two of every four).

Two ways to choose the pattern:

* one-shot at step 0 (``method.kind=one_shot``: ``magnitude`` |W|, ``wanda`` |W|·‖X‖, ``sparsegpt``'s OBS
  solver, which also updates the kept weights), then LoRA recovery: :func:`prune_one_shot`;
* during fine-tuning (iterative methods: ``loraprune`` |G⊙(W+s·B·A)| from LoRA's gradients, ``grad``,
  ``magnitude``): :class:`IterativeNMPruner` smooths element scores and switches rows of every
  projection to the pattern along the schedule (``prune.schedule``/``warmup``/``cooldown``/``prune_freq``).

The pretrained weights are zeroed at the dropped positions and LoRA's update is masked too
(:mod:`loraprune.core.masked_lora`), so what is trained is ``(W + s·B·A) ⊙ M``; merging *through the mask*
gives exactly that model, and it keeps the pattern exactly.

Projections: all seven of every prunable layer (``prune.exclude_*`` / ``method.options.layer_range``;
Wanda and SparseGPT prune every layer: ``prune.exclude_layers=[]``). ``prune.ratio`` does not apply.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from loraprune.core.masked_lora import mask_lora_update, unmask_lora_update
from loraprune.core.structure import ALL_PROJECTIONS, decoder_layers, projection
from loraprune.core.surgery import merge_lora
from loraprune.criteria.base import lora_tensors
from loraprune.run.calibration import (
    accumulate_gradients,
    calibration_batches,
    has_own_calibration,
    needs_gradients,
    pretrained_weight,
    set_module_weight_grads,
)

log = logging.getLogger(__name__)

Masks = dict[tuple[int, str], torch.Tensor]


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"N:M"`` → ``(N, M)``: ``N`` weights kept in every group of ``M`` (``0 < N < M``)."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not match:
        raise ValueError(f"prune.pattern must look like '2:4' (N kept of every M), got {pattern!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ValueError(f"prune.pattern {pattern!r}: need 0 < N < M")
    return n, m


def nm_keep_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean keep mask: per row, the ``n`` highest scores of each ``m`` consecutive columns."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"{cols} input features are not a multiple of the pattern's group size {m}")
    groups = scores.reshape(rows, cols // m, m)
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device)
    keep.scatter_(-1, torch.topk(groups, n, dim=-1).indices, True)
    return keep.reshape(rows, cols)


def is_nm_sparse(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive inputs of every row has at most ``n`` non-zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    return bool(((weight.reshape(rows, cols // m, m) != 0).sum(-1) <= n).all())


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


def targets(model: nn.Module, prunable: Sequence[int]) -> list[tuple[int, str, nn.Module]]:
    """``(layer, name, module)`` of every projection of the prunable layers."""
    layers = decoder_layers(model)
    return [(i, name, projection(layers[i], name)) for i in prunable for name in ALL_PROJECTIONS]


def _lora_params(modules: Sequence[nn.Module]) -> list[nn.Parameter]:
    out = []
    for module in modules:
        t = lora_tensors(module)
        if t.lora_a is None:
            raise ValueError("the loraprune criterion needs LoRA on every pruned projection")
        out += [t.lora_a, t.lora_b]
    return out


def prune_one_shot(
    criterion,
    model: nn.Module,
    prunable: Sequence[int],
    pattern: str,
    samples: list[dict],
    options: Mapping[str, Any],
    pad_token_id: int,
) -> Masks:
    """Impose ``pattern`` on the pretrained weights of every projection of the ``prunable`` layers.

    Calibration (``calibration_samples`` of ``calibration_seq_len`` tokens): the criterion's own
    statistics, or gradients (LoRA's for ``loraprune``, ∂L/∂W for ``grad``). Returns the keep masks.
    """
    n, m = parse_pattern(pattern)
    chosen = targets(model, prunable)
    modules = [module for _, _, module in chosen]
    for i, name, module in chosen:
        if pretrained_weight(module).shape[1] % m:
            raise ValueError(
                f"layer {i} {name}: {pretrained_weight(module).shape[1]} inputs are not a "
                f"multiple of {m} ({pattern})"
            )
    device = pretrained_weight(modules[0]).device
    default_n, default_len = getattr(criterion, "calibration_defaults", (10, None))
    seq_len = options.get("calibration_seq_len", default_len)
    wants_lora_grads = criterion.name == "loraprune"
    calibrated = has_own_calibration(criterion) or needs_gradients(criterion)
    if calibrated:
        batches = calibration_batches(
            samples,
            int(options.get("calibration_samples") or default_n),
            int(seq_len) if seq_len else None,
            pad_token_id,
            device,
        )
        if has_own_calibration(criterion):
            criterion.calibrate(model, modules, batches)
        else:
            params = _lora_params(modules) if wants_lora_grads else [pretrained_weight(x) for x in modules]
            accumulate_gradients(model, params, batches)
    solve = getattr(criterion, "solve", None)
    masks: Masks = {}
    with torch.no_grad():
        for i, name, module in chosen:
            weight = pretrained_weight(module)
            if callable(solve):
                new, keep = solve(module, n, m)
                weight.copy_(new.to(weight.device, weight.dtype))
            else:
                keep = nm_keep_mask(criterion.element_scores(module).to(weight.device), n, m)
                weight.mul_(keep.to(weight.dtype))
            masks[(i, name)] = keep.to(weight.device)
    release = getattr(criterion, "release", None)
    if callable(release):
        release()
    for p in model.parameters():  # scores are done: no calibration gradient must leak into training
        p.grad = None
    log.info("%s sparsity imposed on %d projections with %s", pattern, len(chosen), criterion.name)
    return masks


def mask_lora_updates(model: nn.Module, masks: Masks) -> None:
    """Train ``(W + s·B·A) ⊙ M`` on every masked projection that carries LoRA (masks held by reference)."""
    layers = decoder_layers(model)
    for (i, name), keep in masks.items():
        module = projection(layers[i], name)
        if lora_tensors(module).lora_a is not None:
            mask_lora_update(module, keep)


class IterativeNMPruner:
    """N:M sparsity chosen during LoRA fine-tuning from smoothed element scores.

    The schedule (final value 1) gives the fraction of each projection's rows already following the
    pattern. At a due step every projection switches its remaining rows that lose the least smoothed
    importance under their best N:M choice (Σ of the dropped scores); a switched row keeps its pattern
    for good: its weights are zeroed and its LoRA update masked. At the end every row follows it.

    The moving average holds one float per pruned weight (in the weight's dtype); criteria that need
    ``∂L/∂W`` (``grad``) get it until :meth:`release`. Call :meth:`observe` after each step's backward
    and :meth:`step` after the optimizer step, as for ``IterativePruner``.
    """

    def __init__(
        self,
        model: nn.Module,
        prunable: Sequence[int],
        pattern: str,
        criterion,
        schedule,
        prune_freq: int = 10,
        ema_beta: float = 0.9,
    ) -> None:
        if prune_freq < 1:
            raise ValueError(f"prune.prune_freq must be >= 1, got {prune_freq}")
        self.n, self.m = parse_pattern(pattern)
        self.pattern, self.criterion, self.schedule = pattern, criterion, schedule
        self.prune_freq, self.beta = prune_freq, ema_beta
        self.chosen = targets(model, prunable)
        self.masks: Masks = {}
        self.converted: dict[tuple[int, str], torch.Tensor] = {}
        self.ema: dict[tuple[int, str], torch.Tensor] = {}
        for i, name, module in self.chosen:
            weight = pretrained_weight(module)
            if weight.shape[1] % self.m:
                raise ValueError(
                    f"layer {i} {name}: {weight.shape[1]} inputs are not a multiple of {self.m} ({pattern})"
                )
            self.masks[(i, name)] = torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
            self.converted[(i, name)] = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
        mask_lora_updates(model, self.masks)
        if criterion.needs_weight_grads:
            self.set_weight_grads(True)
        self.fraction = 0.0  # of rows following the pattern
        self.skipped = 0

    @property
    def finished(self) -> bool:
        return self.fraction >= 1.0

    @property
    def current_ratio(self) -> float:
        """Sparsity of the pruned projections now (``(1 − N/M)`` × the converted fraction)."""
        return self.fraction * (1 - self.n / self.m)

    @torch.no_grad()
    def observe(self) -> None:
        """Fold this step's element scores into the moving average (per projection; NaN/Inf skipped)."""
        for i, name, module in self.chosen:
            scores = self.criterion.element_scores(module)
            if not torch.isfinite(scores).all():
                self.skipped += 1
                log.warning("layer %d %s: non-finite scores skipped (%d so far)", i, name, self.skipped)
                continue
            weight = pretrained_weight(module)
            prev = self.ema.get((i, name))
            if prev is None:
                self.ema[(i, name)] = ((1 - self.beta) * scores).to(weight.dtype)
            else:
                prev.mul_(self.beta).add_(scores.to(prev.dtype), alpha=1 - self.beta)

    def step(self, step: int, final_step: bool = False) -> float:
        """Apply the schedule after optimizer step ``step`` (1-based); returns the sparsity in force."""
        target = min(1.0, float(self.schedule(step)))
        due = step % self.prune_freq == 0 or final_step or target >= 1.0
        if final_step:
            target = 1.0
        if due and target > self.fraction:
            self.convert_to(target)
        return self.current_ratio

    @torch.no_grad()
    def convert_to(self, fraction: float) -> None:
        """Switch rows until ``fraction`` of every projection's rows follow the pattern."""
        if not self.ema:
            raise RuntimeError("no importance observed yet: call observe() after a backward pass first")
        for i, name, module in self.chosen:
            done = self.converted[(i, name)]
            rows = done.numel()
            new = round(fraction * rows) - int(done.sum())
            if new <= 0:
                continue
            if (i, name) not in self.ema:
                raise RuntimeError(f"layer {i} {name}: every importance update so far was non-finite")
            scores = self.ema[(i, name)].float()
            cost = scores.sum(1) - self._kept_sum(scores)
            cost[done] = float("inf")
            pick = torch.topk(cost, new, largest=False).indices
            keep = nm_keep_mask(scores[pick], self.n, self.m)
            self.masks[(i, name)][pick] = keep
            weight = pretrained_weight(module)
            weight[pick] = weight[pick] * keep.to(weight.dtype)
            done[pick] = True
        self.fraction = fraction
        log.info("%s pattern on %.0f%% of the rows", self.pattern, 100 * fraction)

    def _kept_sum(self, scores: torch.Tensor) -> torch.Tensor:
        rows, cols = scores.shape
        groups = scores.reshape(rows, cols // self.m, self.m)
        return torch.topk(groups, self.n, dim=-1).values.sum((-1, -2))

    def set_weight_grads(self, enabled: bool) -> None:
        """``∂L/∂W`` of the pruned projections on or off (criteria that need it, e.g. ``grad``)."""
        set_module_weight_grads([module for _, _, module in self.chosen], enabled)

    def release(self) -> None:
        """Once every row follows the pattern: free the moving average (and ``∂L/∂W``)."""
        self.ema.clear()
        if self.criterion.needs_weight_grads:
            self.set_weight_grads(False)


def merge_through_masks(model: nn.Module, masks: Masks) -> nn.Module:
    """Merge LoRA (``W + s·B·A``) and re-apply the keep masks, so the merged weights keep the pattern
    (and equal what the masked adapters computed)."""
    layers = decoder_layers(model)
    for i, name in masks:
        unmask_lora_update(projection(layers[i], name))
    merged = merge_lora(model)
    layers = decoder_layers(merged)
    with torch.no_grad():
        for (i, name), keep in masks.items():
            weight = projection(layers[i], name).weight
            weight.mul_(keep.to(weight.device, weight.dtype))
    return merged


def sparsity_report(model: nn.Module, masks: Masks, pattern: str) -> dict[str, Any]:
    """Zero fraction over the pruned projections and whether every row follows ``pattern`` exactly."""
    n, m = parse_pattern(pattern)
    layers = decoder_layers(model)
    zeros = total = 0
    exact = True
    for i, name in masks:
        weight = projection(layers[i], name).weight
        zeros += int((weight == 0).sum())
        total += weight.numel()
        exact = exact and is_nm_sparse(weight, n, m)
    return {"pattern": pattern, "projections": len(masks), "sparsity": zeros / max(total, 1), "exact": exact}
