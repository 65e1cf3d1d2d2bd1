"""A LLaMA-family causal LM whose decoder layers each have their own widths (structured pruning).

The model is transformers' own LLaMA: :class:`~transformers.LlamaModel` and
:class:`~transformers.LlamaForCausalLM` with their ``LlamaDecoderLayer`` / ``LlamaAttention`` /
``LlamaMLP``, nothing re-implemented. The only change is at construction: a layer whose widths differ
from the global config is built from a copy of the config stating that layer's query heads, KV heads and
MLP channels (:meth:`PrunedLlamaConfig.layer_config`), and ``o_proj`` / ``down_proj`` get or lose a bias
as the config lists (:meth:`PrunedLlamaConfig.layer_out_biases`); the modules read their sizes when they are
built, and at run time they read the shared config (attention implementation), so caches, masks, attention
back-ends and ``generate`` are transformers' own. A static cache is sized per layer.

This file imports only torch and transformers. It is copied next to the weights, with
``configuration_pruned_llama.py``, so ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``
loads the model where loraprune is not installed (transformers 4.57 and 5.x).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaForCausalLM, LlamaModel
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from .configuration_pruned_llama import PrunedLlamaConfig


def _global_widths(config: PrunedLlamaConfig) -> dict[str, int]:
    return {
        name: int(getattr(config, name))
        for name in ("num_attention_heads", "num_key_value_heads", "intermediate_size")
    }


def build_decoder_layer(config: PrunedLlamaConfig, layer_idx: int) -> LlamaDecoderLayer:
    """Transformers' ``LlamaDecoderLayer`` with the widths of layer ``layer_idx``."""
    layer = LlamaDecoderLayer(config.layer_config(layer_idx), layer_idx)
    # at run time the modules read the shared config (e.g. the attention implementation chosen at load)
    for module in (layer.self_attn, layer.mlp):
        if hasattr(module, "config"):
            module.config = config
    _fit_out_biases(layer, config, layer_idx)
    return layer


def _fit_out_biases(layer: LlamaDecoderLayer, config: PrunedLlamaConfig, layer_idx: int) -> None:
    """Give ``o_proj`` / ``down_proj`` a bias or none, as the config states for this layer (Qwen2-style:
    bias on q/k/v only; bias compensation: an output bias where units were removed)."""
    wanted = config.layer_out_biases(layer_idx)
    for name, linear in (("o_proj", layer.self_attn.o_proj), ("down_proj", layer.mlp.down_proj)):
        if not wanted[name]:
            linear.bias = None
        elif linear.bias is None:
            weight = linear.weight
            linear.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))


def fit_layers(model: LlamaModel, config: PrunedLlamaConfig) -> None:
    """Rebuild, in place, the layers of ``model`` whose widths differ from the global config."""
    widest = _global_widths(config)
    for idx in range(config.num_hidden_layers):
        if config.layer_widths(idx) != widest:
            model.layers[idx] = build_decoder_layer(config, idx)
        else:
            _fit_out_biases(model.layers[idx], config, idx)


class PrunedLlamaModel(LlamaModel):
    """``LlamaModel`` with per-layer widths."""

    config_class = PrunedLlamaConfig

    def __init__(self, config: PrunedLlamaConfig):
        super().__init__(config)
        fit_layers(self, config)
        self.post_init()


class PrunedLlamaForCausalLM(LlamaForCausalLM):
    """``LlamaForCausalLM`` with per-layer widths."""

    config_class = PrunedLlamaConfig

    def __init__(self, config: PrunedLlamaConfig):
        super().__init__(config)
        fit_layers(self.model, config)
        self.post_init()

    def _get_static_cache_init_shape(self):
        # transformers 5 may allocate a static cache before the first forward, from the config's global
        # KV heads; here each layer has its own. (Where the hook does not exist, the cache sizes itself
        # from the first keys it stores.)
        parent = getattr(super(), "_get_static_cache_init_shape", None)
        if parent is None or parent() is None or (getattr(self, "_tp_size", None) or 1) > 1:
            return None
        kv_heads = [
            self.config.layer_widths(i)["num_key_value_heads"] for i in range(self.config.num_hidden_layers)
        ]
        return (kv_heads[0] if len(set(kv_heads)) == 1 else kv_heads), int(self.config.head_dim)


__all__ = ["PrunedLlamaForCausalLM", "PrunedLlamaModel", "build_decoder_layer", "fit_layers"]
