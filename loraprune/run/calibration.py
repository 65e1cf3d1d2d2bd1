"""Calibration passes that feed importance before (or instead of) fine-tuning.

* :func:`calibrate`: forward/backward micro-batches that only feed the pruner's moving average (the
  ``grad`` criterion at a one-shot step 0, or ``method.options.calibration_batches`` warm-up).
* :func:`weight_gradients`: the true ``∂L/∂W`` of the pretrained weights on a few samples, one backward per
  sample, optionally with the empirical Fisher diagonal ``Σᵢ gᵢ²/N`` (LLM-Pruner's second-order term).
* :func:`input_square_norms`: per-input-feature ``‖X_j‖²`` of projections from forward hooks (Wanda-sp).

:func:`prepare_importance` picks what a criterion needs; :func:`end_one_shot` drops gradients and
statistics once a one-shot prune is done, so recovery fine-tuning trains LoRA only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from loraprune import data
from loraprune.core.structure import decoder_layers, projection

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------- helpers
def pretrained_weight(module: nn.Module) -> nn.Parameter:
    """The pretrained weight of a projection (the base layer's under peft LoRA)."""
    return getattr(module, "base_layer", module).weight


def scored_modules(model: nn.Module, prunable: Sequence[int], kinds) -> list[nn.Module]:
    """Every projection a group of ``kinds`` touches in the ``prunable`` layers (each once, in order)."""
    layers = decoder_layers(model)
    out: dict[int, nn.Module] = {}
    for i in prunable:
        for kind in kinds:
            for sl in kind.slices:
                module = projection(layers[i], sl.module)
                out.setdefault(id(module), module)
    return list(out.values())


def set_weight_grads(model: nn.Module, prunable: Sequence[int], kinds, enabled: bool) -> None:
    """Turn ``∂L/∂W`` of the pruned projections' pretrained weights on or off (off also frees ``.grad``)."""
    set_module_weight_grads(scored_modules(model, prunable, kinds), enabled)


def set_module_weight_grads(modules: Sequence[nn.Module], enabled: bool) -> None:
    """``∂L/∂W`` of these projections' pretrained weights on or off (off also frees ``.grad``)."""
    for module in modules:
        weight = pretrained_weight(module)
        weight.requires_grad_(enabled)
        if not enabled:
            weight.grad = None


def enable_weight_grads(model: nn.Module, prunable: Sequence[int], kinds) -> None:
    """Let ∂L/∂W flow into the pruned projections' pretrained weights (the ``grad`` criterion)."""
    set_weight_grads(model, prunable, kinds, True)


@contextmanager
def grads_only_for(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Within the block only ``params`` require grad (LoRA and everything else frozen); then restore."""
    wanted = {id(p) for p in params}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in wanted)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def calibration_batches(
    samples: Sequence[dict], nsamples: int, seq_len: int | None, pad_token_id: int, device: torch.device | str
) -> list[dict[str, torch.Tensor]]:
    """The first ``nsamples`` samples (the data set is already a seeded random choice), each cut to
    ``seq_len`` tokens (``None``: as long as it is), one sample per batch (no padding)."""
    if nsamples < 1:
        raise ValueError(f"calibration needs at least one sample, got {nsamples}")
    if not samples:
        raise ValueError("no samples to calibrate on")
    if nsamples > len(samples):
        log.warning("calibration: asked for %d samples, only %d available", nsamples, len(samples))
    out = []
    for sample in samples[:nsamples]:
        cut = {k: list(v)[:seq_len] if seq_len else list(v) for k, v in sample.items()}
        out.append({k: v.to(device) for k, v in data.collate([cut], pad_token_id).items()})
    return out


def predicted_tokens(batch: Mapping[str, torch.Tensor]) -> int:
    """Tokens a causal-LM loss averages over: shifted labels that are not ``-100``."""
    return int((batch["labels"][..., 1:] != IGNORE_INDEX).sum())


# --------------------------------------------------------------------------------------- statistics
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
    n_batches = len(batches)
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
                for w in weights:
                    if w.grad is None:  # not reached by the loss (cannot happen for decoder projections)
                        continue
                    g = w.grad.float()
                    grad_sum[w].add_(g, alpha=float(n))
                    if fisher:
                        sq_sum[w].addcmul_(g, g, value=1.0 / n_batches)
                    w.grad = None
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("calibration batches have no predicted tokens")
    for w in weights:
        w.grad = (grad_sum[w] / total_tokens).to(w.dtype)
    return sq_sum


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

    _forward_collecting_inputs(model, modules, batches, accumulate)
    return {m: s / len(batches) for m, s in stats.items()}


def _forward_collecting_inputs(
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


# ---------------------------------------------------------------------------------------- pipeline
def calibrate(
    model: nn.Module, pruner, samples: list[dict], batches: int, micro_batch_size: int, pad_token_id: int
) -> None:
    """Forward/backward passes that only feed the importance average (no optimizer step)."""
    device = next(p for p in model.parameters() if p.requires_grad).device
    model.train()
    for b in range(batches):
        chunk = [samples[(b * micro_batch_size + j) % len(samples)] for j in range(micro_batch_size)]
        batch = {k: v.to(device) for k, v in data.collate(chunk, pad_token_id).items()}
        model(**batch).loss.backward()
        pruner.observe()
        model.zero_grad(set_to_none=True)
    model.eval()


def has_own_calibration(criterion: Any) -> bool:
    """Whether a criterion (or criterion class) collects its own statistics (``calibrate``)."""
    return callable(getattr(criterion, "calibrate", None))


def needs_gradients(criterion: Any) -> bool:
    """Whether scoring needs a backward pass first (∂L/∂W, or LoRA's gradients for ``loraprune``)."""
    return bool(criterion.needs_weight_grads) or criterion.name == "loraprune"


def prepare_importance(
    criterion,
    model: nn.Module,
    pruner,
    samples: list[dict],
    options: Mapping[str, Any],
    micro_batch_size: int,
    pad_token_id: int,
    one_shot_now: bool,
) -> None:
    """Whatever ``criterion`` needs before the first prune or training step.

    * criteria with their own ``calibrate`` (``llm_pruner``, ``wanda_sp``): statistics from
      ``calibration_samples`` samples of ``calibration_seq_len`` tokens, then one observation;
    * criteria that need ``∂L/∂W`` (``grad``): pretrained weights of the pruned projections require grad;
    * gradient criteria (``grad``, ``loraprune``) pruning one-shot at step 0 first average
      ``calibration_batches`` (at least 1) micro-batches;
    * any criterion: ``calibration_batches > 0`` averages that many micro-batches first.
    """
    if has_own_calibration(criterion):
        if not one_shot_now:
            raise ValueError(f"criterion {criterion.name!r} only prunes one-shot at step 0")
        default_n, default_len = getattr(criterion, "calibration_defaults", (10, None))
        n = int(options.get("calibration_samples") or default_n)
        seq_len = options.get("calibration_seq_len", default_len)
        seq_len = int(seq_len) if seq_len else None
        batches = calibration_batches(samples, n, seq_len, pad_token_id, _device(model))
        log.info("calibrating %s on %d samples of up to %s tokens", criterion.name, len(batches), seq_len)
        criterion.calibrate(model, scored_modules(model, pruner.prunable, pruner.kinds), batches)
        pruner.observe()
        return
    if criterion.needs_weight_grads:
        enable_weight_grads(model, pruner.prunable, pruner.kinds)
    calib = int(options.get("calibration_batches", 0))
    if calib or (one_shot_now and needs_gradients(criterion)):
        calibrate(model, pruner, samples, max(calib, 1), micro_batch_size, pad_token_id)


def end_one_shot(criterion, model: nn.Module, pruner) -> None:
    """After the last prune: free the criterion's statistics and stop ``∂L/∂W`` (LoRA keeps training)."""
    release = getattr(criterion, "release", None)
    if callable(release):
        release()
    if criterion.needs_weight_grads:
        set_weight_grads(model, pruner.prunable, pruner.kinds, False)


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

    _forward_collecting_inputs(model, modules, batches, accumulate)
    return {m: h.mul_(2.0 / len(batches)) for m, h in hess.items()}


def accumulate_gradients(model: nn.Module, params: Sequence[nn.Parameter], batches: Sequence[dict]) -> None:
    """``.grad`` of ``params`` = gradient of the mean of the batches' losses (only they require grad)."""
    was_training = model.training
    model.eval()
    try:
        with grads_only_for(model, params), torch.enable_grad():
            for p in params:
                p.grad = None
            for batch in batches:
                (model(**batch).loss / len(batches)).backward()
    finally:
        model.train(was_training)
