"""Calibration statistics for criteria that collect their own: ``∂L/∂W`` (and the Fisher diagonal),
input-feature norms, input Hessians. Forward/backward passes over given batches; no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from loraprune.core.lora import grads_only_for, pretrained_weight

IGNORE_INDEX = -100


def predicted_tokens(batch: Mapping[str, torch.Tensor]) -> int:
    """Tokens a causal-LM loss averages over: shifted labels that are not ``-100``."""
    return int((batch["labels"][..., 1:] != IGNORE_INDEX).sum())


def weight_gradients(
    model: nn.Module, weights: Sequence[nn.Parameter], batches: Sequence[dict], fisher: bool = False
) -> dict[nn.Parameter, torch.Tensor]:
    """True gradients of ``weights`` on calibration ``batches``, one backward per batch.

    Afterwards each weight's ``.grad`` holds the gradient of the mean token loss over all batches
    (``Σᵢ nᵢ·gᵢ / Σᵢ nᵢ`` with ``nᵢ`` predicted tokens: exactly what one backward of the whole set as a
    single batch gives, as LLM-Pruner does). With ``fisher`` the returned dict holds the empirical Fisher
    diagonal ``Σᵢ gᵢ² / N`` (``gᵢ``: gradient of sample ``i``'s mean loss, ``N`` samples; LLM-Pruner's
    ``acc_grad``); otherwise it is empty. Only ``weights`` require grad during the passes.
    """
    if not batches:
        raise ValueError("no calibration batches")
    grad_sum = {w: torch.zeros(w.shape, dtype=torch.float32, device=w.device) for w in weights}
    sq_sum = {w: torch.zeros_like(grad_sum[w]) for w in weights} if fisher else {}
    total_tokens = 0
    was_training = model.training
    model.eval()
    try:
        with grads_only_for(model, weights), torch.enable_grad():
            for batch in batches:
                n = predicted_tokens(batch)
                if n == 0:
                    continue
                for w in weights:
                    w.grad = None
                model(**batch).loss.backward()
                total_tokens += n
                _accumulate(weights, grad_sum, sq_sum, float(n), 1.0 / len(batches))
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("calibration batches have no predicted tokens")
    for w in weights:
        w.grad = (grad_sum[w] / total_tokens).to(w.dtype)
    return sq_sum


def _accumulate(weights, grad_sum: dict, sq_sum: dict, tokens: float, fisher_weight: float) -> None:
    for w in weights:
        if w.grad is None:  # not reached by the loss (cannot happen for decoder projections)
            continue
        g = w.grad.float()
        grad_sum[w].add_(g, alpha=tokens)
        if w in sq_sum:
            sq_sum[w].addcmul_(g, g, value=fisher_weight)
        w.grad = None


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def input_square_norms(
    model: nn.Module, modules: Sequence[nn.Module], batches: Sequence[dict]
) -> dict[nn.Module, torch.Tensor]:
    """Per input feature ``j`` of each module: ``Σ_tokens X_j²`` averaged over the batches (samples).

    This is Wanda/FLAP's ``scaler_row`` (a running mean over samples of each sample's ``‖X_j‖²``);
    its square root is the ``‖X_j‖`` of the Wanda metric ``|W_ij|·‖X_j‖``.
    """
    stats = {
        m: torch.zeros(pretrained_weight(m).shape[1], dtype=torch.float32, device=_device(model))
        for m in modules
    }

    def accumulate(module: nn.Module, x: torch.Tensor) -> None:
        stats[module].add_(x.pow(2).sum(0).to(stats[module].device))

    forward_collecting_inputs(model, modules, batches, accumulate)
    return {m: s / len(batches) for m, s in stats.items()}


@torch.no_grad()
def input_hessians(
    model: nn.Module, modules: Sequence[nn.Module], batches: Sequence[dict]
) -> dict[nn.Module, torch.Tensor]:
    """Per module the layer-wise Hessian ``H = (2/N)·Σ_tokens x·xᵀ`` of its inputs (SparseGPT's ``H``,
    ``N`` samples), in float32 on the model's device: ``in_features²`` floats per module."""
    hess = {}
    for m in modules:
        n_in = pretrained_weight(m).shape[1]
        hess[m] = torch.zeros(n_in, n_in, dtype=torch.float32, device=_device(model))

    def accumulate(module: nn.Module, x: torch.Tensor) -> None:
        x = x.to(hess[module].device)
        hess[module].addmm_(x.t(), x)

    forward_collecting_inputs(model, modules, batches, accumulate)
    return {m: h.mul_(2.0 / len(batches)) for m, h in hess.items()}


def forward_collecting_inputs(
    model: nn.Module, modules: Sequence[nn.Module], batches: Sequence[dict], collect
) -> None:
    """Run the batches in eval mode, handing each module's input (tokens × features, float32) to
    ``collect(module, x)``; hooks removed and the train flag restored afterwards."""

    def hook_for(module: nn.Module):
        def hook(_module, args, _output):
            x = args[0].detach().float()
            collect(module, x.reshape(-1, x.shape[-1]))

        return hook

    handles = [m.register_forward_hook(hook_for(m)) for m in modules]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
