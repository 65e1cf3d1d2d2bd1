"""Layer criteria for depth pruning: one score per decoder layer; the layers of lowest score are removed.

* ``shortgpt`` (Men et al., 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You
  Expect"): the **Block Influence** of layer ``i``, ``BI_i = 1 − mean_t cos(h_in_t, h_out_t)``, the mean
  over calibration tokens ``t`` of the cosine similarity between the hidden state entering the layer and
  the one leaving it. A layer that changes its input's direction little (an identity has BI 0, so does a
  rescaling) matters little. References read: ``shortgpt/shortgpt.py`` of icip-cas/ShortGPT. Differences:
  the hidden states are taken at the layer's own input and output (forward hooks), where the reference
  reads transformers' ``hidden_states`` tuple, whose last entry is after the final norm (so its last
  layer's BI compares the input with a normalised output); padding tokens are left out; the reference
  sums BI over tokens instead of averaging (the same ranking for equal token counts).
* ``shortened_ppl`` (Kim et al., 2024, "Shortened LLaMA: Depth Pruning for Large Language Models with
  Comparison of Retraining Methods", its PPL criterion): the calibration perplexity of the model with
  only that layer removed; the layers whose removal costs the least perplexity go first. References
  read: ``src/anal_block_sensitivity_ppl.py`` of Nota-NetsPresso/shortened-llm (10 samples of 128
  tokens, one forward pass per layer and sample, the perplexity of all tokens pooled).

Both score once on the unpruned model (one-shot) and need no gradients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from loraprune.core.depth import bypassed
from loraprune.criteria.base import Criterion, Needs
from loraprune.criteria.statistics import predicted_tokens


@torch.no_grad()
def block_influence(model: nn.Module, layers: Sequence[nn.Module], batches: Sequence[dict]) -> dict:
    """``{layer: BI}``: 1 − the mean cosine similarity of each layer's input and output hidden states over
    the calibration tokens (those with ``attention_mask`` 1; every token without a mask)."""
    sums = {layer: 0.0 for layer in layers}
    counts = {layer: 0 for layer in layers}
    current: dict[str, torch.Tensor | None] = {"keep": None}

    def hook_for(layer: nn.Module):
        def hook(_module: nn.Module, args: tuple, kwargs: dict, output) -> None:
            hidden_in = args[0] if args else kwargs["hidden_states"]
            hidden_out = output[0] if isinstance(output, tuple) else output
            cos = F.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1)
            keep = current["keep"]
            kept = cos.flatten() if keep is None else cos[keep.to(cos.device)]
            sums[layer] += float(kept.double().sum())
            counts[layer] += kept.numel()

        return hook

    handles = [layer.register_forward_hook(hook_for(layer), with_kwargs=True) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            mask = batch.get("attention_mask")
            current["keep"] = None if mask is None else mask.bool()
            model(input_ids=batch["input_ids"], attention_mask=mask, use_cache=False)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if any(n == 0 for n in counts.values()):
        raise ValueError("block influence: no calibration token reached a scored layer")
    return {layer: 1.0 - sums[layer] / counts[layer] for layer in layers}


@torch.no_grad()
def perplexity(model: nn.Module, batches: Sequence[dict]) -> float:
    """``exp`` of the mean next-token loss over every predicted token of ``batches`` (pooled)."""
    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            n = predicted_tokens(batch)
            if n == 0:
                continue
            out = model(
                input_ids=batch["input_ids"],
                attention_mask=batch.get("attention_mask"),
                labels=batch["labels"],
                use_cache=False,
            )
            total += float(out.loss) * n
            tokens += n
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("calibration batches have no predicted tokens")
    return math.exp(total / tokens)


class LayerCriterion(Criterion):
    """A criterion of whole layers: :meth:`calibrate` fills :attr:`scores`, :meth:`layer_score` reads it."""

    needs = Needs(calibration=True)
    structured_only = True
    scores_layers = True

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.scores: dict[nn.Module, float] = {}

    def release(self) -> None:
        self.scores = {}

    def layer_score(self, layer: nn.Module) -> float:
        if layer not in self.scores:
            raise RuntimeError(f"no score for this layer: {self.name} scores after its calibration pass")
        return self.scores[layer]


class BlockInfluenceCriterion(LayerCriterion):
    """ShortGPT's Block Influence, ``1 − mean cos(h_in, h_out)`` per layer; see the module doc."""

    name = "shortgpt"
    calibration_samples = 128  # the reference: PG19 validation in 256-token windows
    calibration_seq_len = 256

    def calibrate(self, model: nn.Module, modules: list[nn.Module], batches: list[dict]) -> None:
        self.scores = block_influence(model, modules, batches)


class RemovalPerplexityCriterion(LayerCriterion):
    """Shortened LLaMA's PPL criterion: the calibration perplexity without the layer; see the module doc."""

    name = "shortened_ppl"
    calibration_samples = 10  # the reference: 10 BookCorpus samples of 128 tokens
    calibration_seq_len = 128

    def calibrate(self, model: nn.Module, modules: list[nn.Module], batches: list[dict]) -> None:
        scores = {}
        for layer in modules:
            with bypassed([layer]):
                scores[layer] = perplexity(model, batches)
        self.scores = scores
