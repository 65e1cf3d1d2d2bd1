"""Depth pruning: how many whole decoder layers a target removes, which ones, and their removal.

A depth cut removes whole decoder layers (ShortGPT, Shortened LLaMA); the layers left keep their widths,
so the shortened model is a stock checkpoint of its own class with fewer ``num_hidden_layers``. The
attention modules of the kept layers are renumbered (``layer_idx``), so the KV cache, which is indexed by
it, holds one entry per kept layer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from torch import nn

from loraprune.core.structure import decoder_layers, units_to_remove

DEPTH_TARGETS = ("groups", "params")


def layers_for_target(
    ratio: float, target: str, num_layers: int, prunable: Sequence[int], layer_params: int, total_params: int
) -> int:
    """How many layers a depth target removes; raises ``ValueError`` for a target that cannot work.

    ``target="params"``: the whole number of layers whose parameters come closest to ``ratio`` of
    ``total_params`` (every layer holds ``layer_params``). ``target="groups"``: ``ratio`` of the prunable
    layers, to the nearest whole layer (a layer is the unit of a depth cut).

    Raises:
        ValueError: the target rounds to no layer, needs more layers than are prunable (excluded layers
            are never removed), or would leave the model without a layer.
    """
    if target not in DEPTH_TARGETS:
        raise ValueError(f"prune.target must be groups or params, got {target!r}")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"prune.ratio must be in [0, 1), got {ratio}")
    if target == "groups":
        count = units_to_remove(len(prunable), ratio)
        what = f"prune.ratio={ratio} of the {len(prunable)} prunable layers"
    else:
        count = int(ratio * total_params / layer_params + 0.5)
        what = (
            f"prune.ratio={ratio} of the parameters ({ratio * total_params:.0f} of {total_params}, "
            f"{layer_params} per layer)"
        )
    if count == 0:
        raise ValueError(f"depth pruning: {what} rounds to no layer; use a larger prune.ratio")
    if count >= num_layers:
        raise ValueError(
            f"depth pruning: {what} would remove every layer of the model ({count} of {num_layers})"
        )
    if count > len(prunable):
        excluded = sorted(set(range(num_layers)) - set(prunable))
        raise ValueError(
            f"depth pruning: {what} needs {count} layers, but only {len(prunable)} are prunable (layers "
            f"{excluded} are excluded: prune.exclude_layers / prune.layer_range); use a smaller prune.ratio "
            "or exclude fewer layers"
        )
    return count


def select_layers(scores: Mapping[int, float], count: int) -> list[int]:
    """The ``count`` layers of lowest score, sorted by index (ties: the lower index goes first)."""
    if count > len(scores):
        raise ValueError(f"cannot remove {count} of {len(scores)} scored layers")
    order = sorted(scores, key=lambda i: (float(scores[i]), i))
    return sorted(order[:count])


def remove_layers(model: nn.Module, removed: Sequence[int]) -> None:
    """Delete the decoder layers ``removed`` (indices of the current model) in place.

    The kept layers' attention modules are renumbered ``0 .. n-1`` (the KV cache is indexed by
    ``layer_idx``); the config states the new depth (``num_hidden_layers``, and ``layer_types`` where the
    family lists one per layer). Works on a peft-wrapped model too (the layers' LoRA goes with them).
    """
    layers = decoder_layers(model)
    gone = set(removed)
    bad = sorted(i for i in gone if not 0 <= i < len(layers))
    if bad:
        raise ValueError(f"layers {bad} out of range for a model of {len(layers)} layers")
    if len(gone) >= len(layers):
        raise ValueError(f"removing layers {sorted(gone)} would leave no layer of {len(layers)}")
    old = len(layers)
    for i in sorted(gone, reverse=True):
        del layers[i]
    for new_idx, layer in enumerate(layers):
        for module in (layer, getattr(layer, "self_attn", None)):
            if module is not None and hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    for config in _configs(model):
        config.num_hidden_layers = len(layers)
        types = getattr(config, "layer_types", None)
        if isinstance(types, list) and len(types) == old:
            config.layer_types = [t for i, t in enumerate(types) if i not in gone]


def _configs(model: nn.Module) -> list:
    """The distinct configs of ``model`` and its submodules (the causal LM and its decoder share one)."""
    out: dict[int, object] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "num_hidden_layers"):
            out.setdefault(id(config), config)
    return list(out.values())


@contextmanager
def bypassed(layers: Sequence[nn.Module]) -> Iterator[None]:
    """Within the block each of ``layers`` passes its input hidden states through (an identity block):
    what removing it does to the rest of the model. The layer still runs; its output is discarded."""

    def hook(_module: nn.Module, args: tuple, kwargs: dict, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handles = [layer.register_forward_hook(hook, with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
