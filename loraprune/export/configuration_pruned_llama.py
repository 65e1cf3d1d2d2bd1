"""Configuration of a LLaMA-family causal LM whose decoder layers each have their own widths.

Written for structurally pruned models (loraprune): every decoder layer keeps its own number of query
heads, KV heads and MLP channels. They are listed per layer in ``layer_num_attention_heads``,
``layer_num_key_value_heads`` and ``layer_intermediate_size``; everything else is the base model's LLaMA
config, whose global ``num_attention_heads`` / ``num_key_value_heads`` / ``intermediate_size`` stay the
base model's (the widest any layer can be). ``head_dim`` is always explicit. Bias compensation (FLAP) can
give ``o_proj`` / ``down_proj`` a bias in some layers only: ``layer_o_proj_bias`` / ``layer_down_proj_bias``
list per layer whether they have one.

This file imports only transformers. It is copied next to the weights, with ``modeling_pruned_llama.py``,
so that ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` loads the model where
loraprune is not installed (transformers 4.57 and 5.x).
"""

from __future__ import annotations

import copy

from transformers import LlamaConfig

# per-layer list -> the global LLaMA field it refines: loraprune.core.widths.LAYER_WIDTH_FIELDS, repeated
# here because this file imports nothing from loraprune (tests/test_layering.py checks they agree)
LAYER_WIDTH_FIELDS = {
    "layer_num_attention_heads": "num_attention_heads",
    "layer_num_key_value_heads": "num_key_value_heads",
    "layer_intermediate_size": "intermediate_size",
}
# per-layer flags of the output projections' biases -> the global flag they refine
LAYER_BIAS_FIELDS = {"layer_o_proj_bias": "attention_out_bias", "layer_down_proj_bias": "mlp_bias"}


class PrunedLlamaConfig(LlamaConfig):
    """A :class:`~transformers.LlamaConfig` plus the widths of every decoder layer.

    Args:
        layer_num_attention_heads: query heads of each layer (``None``: the global value everywhere).
        layer_num_key_value_heads: KV heads of each layer.
        layer_intermediate_size: MLP channels of each layer.
        attention_out_bias: whether ``o_proj`` has a bias (default: ``attention_bias``; ``False`` for
            Qwen2-style models, whose q/k/v have a bias and o_proj none).
        layer_o_proj_bias: whether each layer's ``o_proj`` has a bias (``None``: ``attention_out_bias``).
        layer_down_proj_bias: whether each layer's ``down_proj`` has a bias (``None``: ``mlp_bias``).
        **kwargs: the LLaMA config.
    """

    model_type = "pruned_llama"

    def __init__(
        self,
        layer_num_attention_heads: list[int] | None = None,
        layer_num_key_value_heads: list[int] | None = None,
        layer_intermediate_size: list[int] | None = None,
        attention_out_bias: bool | None = None,
        layer_o_proj_bias: list[bool] | None = None,
        layer_down_proj_bias: list[bool] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.layer_num_attention_heads = _int_list(layer_num_attention_heads)
        self.layer_num_key_value_heads = _int_list(layer_num_key_value_heads)
        self.layer_intermediate_size = _int_list(layer_intermediate_size)
        self.attention_out_bias = bool(
            self.attention_bias if attention_out_bias is None else attention_out_bias
        )
        self.layer_o_proj_bias = _bool_list(layer_o_proj_bias)
        self.layer_down_proj_bias = _bool_list(layer_down_proj_bias)
        if getattr(self, "head_dim", None) is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.check_layer_widths()

    def layer_widths(self, layer_idx: int) -> dict[str, int]:
        """Query heads, KV heads and MLP channels of layer ``layer_idx``, keyed by the global field names."""
        widths = {}
        for per_layer, name in LAYER_WIDTH_FIELDS.items():
            values = getattr(self, per_layer, None)
            widths[name] = int(values[layer_idx]) if values is not None else int(getattr(self, name))
        return widths

    def layer_out_biases(self, layer_idx: int) -> dict[str, bool]:
        """Whether ``o_proj`` and ``down_proj`` of layer ``layer_idx`` have a bias, keyed by module name."""
        out = {}
        for (per_layer, name), module in zip(LAYER_BIAS_FIELDS.items(), ("o_proj", "down_proj"), strict=True):
            values = getattr(self, per_layer, None)
            out[module] = bool(values[layer_idx]) if values is not None else bool(getattr(self, name))
        return out

    def layer_config(self, layer_idx: int) -> LlamaConfig:
        """A shallow copy of this config whose global widths are those of layer ``layer_idx``; the LLaMA
        modules read their sizes from it when they are built."""
        config = copy.copy(self)
        config.__dict__.pop("_heterogeneity_spec", None)  # transformers 5: a plain per-layer view
        for name, value in self.layer_widths(layer_idx).items():
            setattr(config, name, value)
        return config

    def check_layer_widths(self) -> None:
        """Raise ``ValueError`` unless every list has one positive entry per layer and every layer's query
        heads divide over its KV heads."""
        for per_layer in LAYER_BIAS_FIELDS:
            values = getattr(self, per_layer, None)
            if values is not None and len(values) != self.num_hidden_layers:
                raise ValueError(f"{per_layer} has {len(values)} entries for {self.num_hidden_layers} layers")
        for per_layer in LAYER_WIDTH_FIELDS:
            values = getattr(self, per_layer, None)
            if values is None:
                continue
            if len(values) != self.num_hidden_layers:
                raise ValueError(f"{per_layer} has {len(values)} entries for {self.num_hidden_layers} layers")
            if min(values) < 1:
                raise ValueError(f"{per_layer} has a layer with no width: {values}")
        for i in range(self.num_hidden_layers):
            w = self.layer_widths(i)
            if w["num_attention_heads"] % w["num_key_value_heads"]:
                raise ValueError(
                    f"layer {i}: {w['num_attention_heads']} query heads do not divide over "
                    f"{w['num_key_value_heads']} KV heads"
                )


def _int_list(values) -> list[int] | None:
    return None if values is None else [int(v) for v in values]


def _bool_list(values) -> list[bool] | None:
    return None if values is None else [bool(v) for v in values]


__all__ = ["LAYER_BIAS_FIELDS", "LAYER_WIDTH_FIELDS", "PrunedLlamaConfig"]
