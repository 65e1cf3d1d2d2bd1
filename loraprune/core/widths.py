"""The widths a pruned model really has, and configs that state them.

Widths are read from the modules (the truth after surgery), never from the config. A config states them
in one of two ways:

* **uniform** (every layer keeps the same query heads, KV heads and channels, and the config class of the
  model accepts them portably): the global ``num_attention_heads`` / ``num_key_value_heads`` /
  ``intermediate_size`` are the pruned widths and ``head_dim`` is explicit. Saved, this is a stock
  checkpoint of the base's own class.
* **per layer**: the global fields stay the base model's and the lists ``layer_num_attention_heads``,
  ``layer_num_key_value_heads``, ``layer_intermediate_size`` (:data:`LAYER_WIDTH_FIELDS`) give each
  layer's widths. Where transformers has heterogeneous configs (5.x), the in-memory config also declares
  them as its ``per_layer_config``, so transformers sizes per-layer things (a static KV cache) from it.
  Saved, the lists are the fields of ``PrunedLlamaConfig`` (model type :data:`PER_LAYER_MODEL_TYPE`,
  :mod:`loraprune.export.configuration_pruned_llama`), built from :func:`per_layer_fields`.

The field names are defined here; the standalone ``configuration_pruned_llama.py`` (copied into
checkpoints, importing nothing from loraprune) repeats them, and a test checks the two agree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import LlamaConfig

from loraprune.core.structure import Geometry, decoder_layers

log = logging.getLogger(__name__)

WIDTH_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
# per-layer list -> the global LLaMA field it refines
LAYER_WIDTH_FIELDS = {
    "layer_num_attention_heads": "num_attention_heads",
    "layer_num_key_value_heads": "num_key_value_heads",
    "layer_intermediate_size": "intermediate_size",
}
PER_LAYER_MODEL_TYPE = "pruned_llama"  # the config of the per-layer form (``PrunedLlamaConfig``)
# families whose decoder is LLaMA's with (at most) different biases: the per-layer form can hold them
LLAMA_FAMILY = ("llama", "mistral", "qwen2", PER_LAYER_MODEL_TYPE)
_PER_LAYER_KEYS = (
    *LAYER_WIDTH_FIELDS,
    "per_layer_config",
    "allow_global_per_layer_attribute_access",
)
_SLIDING_KEYS = ("sliding_window", "use_sliding_window", "max_window_layers", "layer_types")


@dataclass(frozen=True)
class LayerWidths:
    """Kept query heads, KV heads and MLP channels of every decoder layer, and the head size."""

    q_heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    channels: tuple[int, ...]
    head_dim: int

    @classmethod
    def of(cls, model: nn.Module, head_dim: int | None = None) -> LayerWidths:
        """Read the widths of ``model`` from its projections (``head_dim`` from its config if not given)."""
        head_dim = head_dim or config_head_dim(model.config)
        q, kv, ch = [], [], []
        for layer in decoder_layers(model):
            q.append(layer.self_attn.q_proj.out_features // head_dim)
            kv.append(layer.self_attn.k_proj.out_features // head_dim)
            ch.append(layer.mlp.gate_proj.out_features)
        return cls(tuple(q), tuple(kv), tuple(ch), head_dim)

    def layer(self, i: int) -> dict[str, int]:
        """Widths of layer ``i`` keyed by the config's field names."""
        return dict(zip(WIDTH_FIELDS, (self.q_heads[i], self.kv_heads[i], self.channels[i]), strict=True))

    def uniform(self) -> dict[str, int] | None:
        """The widths keyed by the config's field names when every layer has the same, else None."""
        layers = {tuple(self.layer(i).items()) for i in range(len(self.q_heads))}
        return dict(layers.pop()) if len(layers) == 1 else None

    def lists(self) -> dict[str, list[int]]:
        """The per-layer lists keyed by :data:`LAYER_WIDTH_FIELDS`' names."""
        values = (self.q_heads, self.kv_heads, self.channels)
        return {name: list(v) for name, v in zip(LAYER_WIDTH_FIELDS, values, strict=True)}


def config_head_dim(config) -> int:
    """``head_dim`` of a LLaMA-style config (explicit, else hidden size over heads)."""
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def clean_config_dict(config) -> dict[str, Any]:
    """The config as a dict without the per-layer statements, remote-code map or version stamps."""
    d = config.to_dict()
    for key in (*_PER_LAYER_KEYS, "auto_map", "_name_or_path", "transformers_version", "attention_out_bias"):
        d.pop(key, None)
    return d


def stock_config(config, widths: LayerWidths):
    """A config of the model's own class stating uniform ``widths``, or None where it cannot.

    It cannot when the layers differ or when the class refuses the widths (a per-layer config becomes
    a plain ``LlamaConfig`` when its biases are LLaMA's); and it does not when the head count does not
    divide the hidden size (transformers 5 refuses such a LLaMA config at load, so a checkpoint saved
    under 4.x would not travel).
    """
    uniform = widths.uniform()
    if uniform is None:
        return None
    config_class, base = type(config), clean_config_dict(config)
    if _is_per_layer_config(config):  # back to plain LLaMA, if its biases are LLaMA's
        if config.attention_out_bias != config.attention_bias:
            return None
        config_class = LlamaConfig
        for key in ("model_type", "architectures"):
            base.pop(key, None)
    if config.hidden_size % uniform["num_attention_heads"]:
        log.info(
            "%d query heads do not divide hidden size %d: a per-layer checkpoint is written",
            uniform["num_attention_heads"],
            config.hidden_size,
        )
        return None
    try:
        stock = config_class.from_dict({**base, **uniform, "head_dim": widths.head_dim})
        if hasattr(stock, "validate"):
            stock.validate()
    except Exception as e:  # noqa: BLE001 - config classes raise their own validation errors
        log.info(
            "%s cannot state the pruned widths (%s): a per-layer checkpoint is written",
            type(config).__name__,
            e,
        )
        return None
    return stock


def per_layer_fields(config, widths: LayerWidths, base: Geometry, biases: dict[str, bool]) -> dict[str, Any]:
    """The fields of a per-layer config (``PrunedLlamaConfig(**fields)``, :mod:`loraprune.export`)
    describing ``config``'s model with per-layer ``widths``.

    Args:
        config: the model's config (LLaMA family).
        widths: the widths read from the model.
        base: the base model's geometry (its widths stay the global ones).
        biases: ``attention_bias`` (q/k/v), ``attention_out_bias`` (o_proj) and ``mlp_bias`` as found.
    """
    family = getattr(config, "model_type", None)
    if family not in LLAMA_FAMILY:
        raise ValueError(f"per-layer checkpoints hold LLaMA-family decoders, not {family!r}")
    d = clean_config_dict(config)
    d.pop("model_type", None)
    d.pop("architectures", None)
    sliding = d.get("sliding_window") is not None and d.get("use_sliding_window", True)
    if sliding or any(t != "full_attention" for t in d.get("layer_types") or []):
        log.warning(
            "the base model uses sliding-window attention; the per-layer checkpoint attends to the full "
            "context (the same up to %s tokens)",
            d.get("sliding_window"),
        )
    for key in _SLIDING_KEYS:
        d.pop(key, None)
    d.update(
        num_attention_heads=base.num_heads,
        num_key_value_heads=base.num_kv_heads,
        intermediate_size=base.intermediate_size,
        head_dim=widths.head_dim,
        **biases,
        **widths.lists(),
    )
    return d


def biases_of(model: nn.Module) -> dict[str, bool]:
    """Which projections of the first decoder layer carry a bias."""
    layer = decoder_layers(model)[0]
    return {
        "attention_bias": layer.self_attn.q_proj.bias is not None,
        "attention_out_bias": layer.self_attn.o_proj.bias is not None,
        "mlp_bias": layer.mlp.gate_proj.bias is not None,
    }


def state_widths(config, widths: LayerWidths, base: Geometry) -> str:
    """Make ``config`` (in place, the model's own) state ``widths``; returns ``"uniform"`` or ``"per_layer"``.

    Uniform widths the config class accepts become the global fields. Otherwise the global fields are the
    base model's and the ``layer_*`` lists give each layer's widths, declared as transformers'
    ``per_layer_config`` too where it has one (global reads of a per-layer field then return the base
    value with a warning, instead of failing).
    """
    _forget_per_layer(config)
    if stock_config(config, widths) is not None:
        for name, value in widths.uniform().items():
            setattr(config, name, value)
        config.head_dim = widths.head_dim
        return "uniform"
    config.num_attention_heads = base.num_heads
    config.num_key_value_heads = base.num_kv_heads
    config.intermediate_size = base.intermediate_size
    config.head_dim = widths.head_dim
    for name, values in widths.lists().items():
        setattr(config, name, values)
    if _has_native_per_layer_config(config):
        base_widths = dict(
            zip(WIDTH_FIELDS, (base.num_heads, base.num_kv_heads, base.intermediate_size), strict=True)
        )
        overrides = {}
        for i in range(len(widths.q_heads)):
            differs = {k: v for k, v in widths.layer(i).items() if v != base_widths[k]}
            if differs:
                overrides[i] = differs
        if overrides:
            config.allow_global_per_layer_attribute_access = True
            config.per_layer_config = overrides
    return "per_layer"


def stated_widths(config) -> dict[str, list[int]] | None:
    """The per-layer lists a config states (None: it states uniform widths)."""
    lists = {name: getattr(config, name, None) for name in LAYER_WIDTH_FIELDS}
    return None if all(v is None for v in lists.values()) else lists


def _has_native_per_layer_config(config) -> bool:
    return isinstance(getattr(type(config), "per_layer_config", None), property)


def _forget_per_layer(config) -> None:
    if _has_native_per_layer_config(config) and "_heterogeneity_spec" in config.__dict__:
        config.per_layer_config = None
    config.__dict__.pop("allow_global_per_layer_attribute_access", None)
    for name in LAYER_WIDTH_FIELDS:
        if _is_per_layer_config(config):
            setattr(config, name, None)
        else:
            config.__dict__.pop(name, None)


def _is_per_layer_config(config) -> bool:
    """Whether ``config`` is a ``PrunedLlamaConfig`` (the installed class or a checkpoint's copy)."""
    return getattr(config, "model_type", None) == PER_LAYER_MODEL_TYPE
