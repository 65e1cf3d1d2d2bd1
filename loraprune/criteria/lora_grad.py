"""LoRAPrune's criterion: the full-weight gradient estimated from LoRA's own gradients."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from loraprune.core.lora import LoraTensors, dense_weight, lora_tensors
from loraprune.criteria.base import Criterion, Needs

ACCUMULATIONS = ("mean", "fisher")


def estimated_weight_grad(
    lora_a: torch.Tensor, lora_b: torch.Tensor, grad_a: torch.Tensor, grad_b: torch.Tensor
) -> torch.Tensor:
    """G ≈ ∂L/∂B·A + B·∂L/∂A − ∂L/∂B·∂L/∂A (LoRAPrune, eq. 6)."""
    return grad_b @ lora_a + lora_b @ grad_a - grad_b @ grad_a


BLOCK_ELEMENTS = 1 << 20  # rows per block of the channel sums: ~4 MB of fp32 per temporary


@torch.no_grad()
def lora_channel_sums(
    t: LoraTensors,
    grad_a: torch.Tensor,
    grad_b: torch.Tensor,
    power: int = 1,
    rows: bool = True,
    columns: bool = True,
    block_elements: int = BLOCK_ELEMENTS,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-row and per-column sums of ``|G ⊙ W'|^power`` (``power`` 1 or 2), G from
    :func:`estimated_weight_grad` with ``grad_a``/``grad_b`` and W' = W + s·B·A, without a full-size
    temporary: a block of rows at a time into two reused buffers of ~``block_elements`` each, G as one
    rank-2r product ``[∂L/∂B, B]·[A − ∂L/∂A; ∂L/∂A]`` (the same sum regrouped), W' as ``W + (s·B)·A``.
    The score reads each weight once; in fp32. ``rows``/``columns``: which sums to return (else None)."""
    w = dense_weight(t.weight).detach()
    a, b = t.lora_a.detach().float(), t.lora_b.detach().float()
    ga, gb = grad_a.detach().float(), grad_b.detach().float()
    left = torch.cat([gb, b], dim=1)  # out × 2r
    right = torch.cat([a - ga, ga], dim=0)  # 2r × in
    scaled_b = b * t.scaling
    n_out, n_in = w.shape
    step = max(1, min(n_out, block_elements // n_in))
    g = torch.empty(step, n_in, device=w.device)
    w_eff = torch.empty_like(g)
    row_sums = torch.empty(n_out, device=w.device) if rows else None
    col_sums = torch.zeros(n_in, device=w.device) if columns else None
    for i in range(0, n_out, step):
        j = min(i + step, n_out)
        gi, wi = g[: j - i], w_eff[: j - i]
        torch.mm(left[i:j], right, out=gi)
        wi.copy_(w[i:j]).addmm_(scaled_b[i:j], a)
        gi.mul_(wi)
        gi.abs_() if power == 1 else gi.square_()
        if row_sums is not None:
            torch.sum(gi, dim=1, out=row_sums[i:j])
        if col_sums is not None:
            col_sums += gi.sum(0)
    return row_sums, col_sums


@dataclass
class LoraGradOptions:
    """Options of the ``loraprune`` criterion.

    Attributes:
        accumulate: ``mean`` scores the step's gradient (the mean over its micro-batches; LoRAPrune);
            ``fisher`` scores each channel by the mean over the step's micro-batches of Σ (G_i ⊙ W')²
            over the channel's elements, G_i estimated from micro-batch i's own LoRA gradients (a
            Fisher-like second moment, as LLM-Pruner's element2; needs ``trainer.micro_batch_size`` <
            ``trainer.batch_size`` to average more than one; channel sums only, so memory stays LoRA's;
            structured pruning only).
        activations: α ≥ 0: add α × a Wanda-sp term to each channel score, Σ |W'_ij|·‖X_j‖ over the
            channel's elements, ‖X_j‖ the root-mean-square of input feature j over the training tokens
            seen so far (forward hooks during fine-tuning: one vector per projection), the term scaled
            per module to the norm of the gradient term. 0: off.
    """

    accumulate: str = "mean"
    activations: float = 0.0

    def __post_init__(self) -> None:
        if self.accumulate not in ACCUMULATIONS:
            raise ValueError(
                f"loraprune accumulate must be one of {', '.join(ACCUMULATIONS)}, got {self.accumulate!r}"
            )
        if self.activations < 0:
            raise ValueError(f"loraprune activations must be >= 0, got {self.activations}")


def _tensors(module: nn.Module) -> LoraTensors:
    t = lora_tensors(module)
    if t.lora_a is None:
        raise ValueError(
            "the loraprune criterion needs LoRA on every pruned projection (lora.target_modules)"
        )
    if t.lora_a.grad is None or t.lora_b.grad is None:
        raise RuntimeError("LoRA gradients are missing: call backward() before scoring")
    return t


class LoraGradCriterion(Criterion):
    """S = |G ⊙ (W + s·B·A)| with G estimated from the LoRA gradients; no ∂L/∂W needed."""

    name = "loraprune"
    needs = Needs(lora_grads=True)
    options_type = LoraGradOptions

    def __init__(self, options: LoraGradOptions | None = None) -> None:
        super().__init__(options)
        self._previous: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # the step's grads so far
        self._sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # Σ_i rows, columns of (G_i⊙W')²
        self._count = 0
        self._inputs: dict[int, list] = {}  # Σ x_j², tokens, hook handle, per module (activations > 0)

    def element_scores(self, module: nn.Module) -> torch.Tensor:
        t = _tensors(module)
        a, b = t.lora_a.detach().float(), t.lora_b.detach().float()
        g = estimated_weight_grad(a, b, t.lora_a.grad.float(), t.lora_b.grad.float())
        return (g * t.effective_weight()).abs()

    # ------------------------------------------------------------------- accumulate=fisher
    @property
    def per_micro_batch(self) -> bool:
        return self.options.accumulate == "fisher"

    def reset_accumulation(self) -> None:
        self._previous.clear()
        self._sums.clear()
        self._count = 0

    @torch.no_grad()
    def accumulate(self, modules: list[nn.Module], count: int) -> None:
        """Micro-batch i's own gradients are ``count`` × what it added to the step's (its loss is the
        micro-batch mean divided by ``count``); fold (G_i ⊙ W')² into per-row and per-column sums."""
        for module in modules:
            t = _tensors(module)
            ga, gb = t.lora_a.grad.detach().float(), t.lora_b.grad.detach().float()
            prev = self._previous.get(id(module))
            da, db = (ga, gb) if prev is None else (ga - prev[0], gb - prev[1])
            self._previous[id(module)] = (ga.clone(), gb.clone())
            rows, cols = lora_channel_sums(t, count * da, count * db, power=2)
            old = self._sums.get(id(module))
            self._sums[id(module)] = (rows, cols) if old is None else (old[0] + rows, old[1] + cols)
        self._count += 1

    def channel_scores(self, module: nn.Module, dim: int) -> torch.Tensor | None:
        scores = self._gradient_channel_scores(module, dim)
        if self.options.activations <= 0:
            return scores
        wanda = self.activation_channel_scores(module, dim)
        norm_s, norm_w = scores.norm(), wanda.norm()
        scale = norm_s / norm_w if norm_w > 0 else 0.0
        return scores + self.options.activations * scale * wanda

    def _gradient_channel_scores(self, module: nn.Module, dim: int) -> torch.Tensor:
        if not self.per_micro_batch:
            t = _tensors(module)
            sums = lora_channel_sums(t, t.lora_a.grad, t.lora_b.grad, rows=dim == 0, columns=dim == 1)
            return sums[dim]
        sums = self._sums.get(id(module))
        if sums is None:
            raise RuntimeError("accumulate=fisher scores after per-micro-batch observations (accumulate())")
        return sums[dim] / self._count

    # ------------------------------------------------------------------ activations > 0
    def attach(self, modules: list[nn.Module]) -> None:
        """Forward pre-hooks that sum each input feature's square over the training tokens."""
        if self.options.activations <= 0:
            return
        for module in modules:
            if id(module) in self._inputs:
                continue
            state: list = [None, 0, None]  # the sum lives on the inputs' device
            state[2] = module.register_forward_pre_hook(_collect_square_inputs(state))
            self._inputs[id(module)] = state

    def activation_channel_scores(self, module: nn.Module, dim: int) -> torch.Tensor:
        """Σ |W'_ij|·‖X_j‖ per row (``dim=0``) or column, ‖X_j‖ the RMS over the tokens seen."""
        state = self._inputs.get(id(module))
        if state is None or state[1] == 0:
            raise RuntimeError("activations: no training forward seen yet (attach() before fine-tuning)")
        w = lora_tensors(module).effective_weight()
        rms = (state[0] / state[1]).sqrt().to(w.device)
        return (w.abs() * rms[None, :]).sum(dim=1 - dim)

    def release(self) -> None:
        self.reset_accumulation()
        for state in self._inputs.values():
            state[2].remove()
        self._inputs.clear()


def _collect_square_inputs(state: list):
    """A pre-hook adding Σ_tokens x_j² and the token count to ``state`` in training forwards with
    gradients (not evaluation, not a no-grad teacher forward)."""

    def hook(module: nn.Module, args: tuple) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        x = args[0].detach().float().reshape(-1, args[0].shape[-1])
        squares = x.square().sum(0)
        state[0] = squares if state[0] is None else state[0] + squares
        state[1] += x.shape[0]

    return hook
