"""Saving and reloading pruned models, written atomically.

A saved directory is a Hugging Face checkpoint that needs no loraprune to load:

* **stock** when every layer keeps the same widths (and the config class accepts them): the base's own
  class (e.g. ``LlamaForCausalLM``) with a config stating the pruned widths; no custom code.
* **per_layer** otherwise: ``PrunedLlamaForCausalLM`` (transformers' LLaMA layers built with each layer's
  widths), whose two standalone files are copied in and named in the config's ``auto_map``: it loads with
  ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``.

Output biases that bias compensation (FLAP) added to ``o_proj`` / ``down_proj``: stock LLaMA holds them
only as ``attention_bias`` (q/k/v/o) and ``mlp_bias`` (gate/up/down), so the stock form sets those and
saves zero biases for the projections that have none (the same function, a few more parameters); a class
that cannot state them (Mistral, Qwen2) gives the per-layer form, whose config lists per layer which
``o_proj`` / ``down_proj`` have a bias (``layer_o_proj_bias``, ``layer_down_proj_bias``).

Next to weights, config and tokenizer: ``pruning_plan.json`` (kept heads/channels, replayable),
``README.md`` (the model card, :mod:`loraprune.export.card`) and ``loraprune_card.json`` (its data, so
``loraprune-export`` can write it again).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loraprune.core.plan import PruningPlan
from loraprune.core.structure import ATTENTION_MODULES, MLP_MODULES, decoder_layers, projection
from loraprune.core.surgery import apply_plan
from loraprune.core.widths import LayerWidths, biases_of, clean_config_dict, per_layer_fields, stock_config
from loraprune.export.card import CARD_DATA_FILE, ModelCard
from loraprune.export.configuration_pruned_llama import LAYER_BIAS_FIELDS, PrunedLlamaConfig
from loraprune.export.files import (
    copy_modeling_files,
    finish_config_json,
    finish_tokenizer_config,
    nm_pattern,
)
from loraprune.export.readme import render

log = logging.getLogger(__name__)

PLAN_FILE = "pruning_plan.json"
FORMS = ("auto", "stock", "per_layer")


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""
    write_text(path, json.dumps(data, indent=2, default=str))


def save_pruned(
    model: nn.Module,
    tokenizer,
    plan: PruningPlan,
    path: str | Path,
    *,
    card: ModelCard | dict | None = None,
    metrics: dict[str, Any] | None = None,
    config: dict[str, Any] | str | None = None,
    command: str | list[str] | None = None,
    form: str = "auto",
    model_id: str | None = None,
) -> Path:
    """Save a physically pruned model as a self-contained checkpoint; replaces ``path`` atomically.

    Args:
        model: the pruned model (a transformers causal LM; its config is not changed).
        tokenizer: saved alongside (None: no tokenizer).
        plan: the pruning plan (saved as ``pruning_plan.json``; its geometry is the base model's).
        path: the output directory.
        card: the model card's content; when None it is built from ``metrics`` (the run's
            ``metrics.json`` dict), ``config`` (the resolved config, dict or YAML) and ``command``.
        form: ``"auto"`` (stock when every layer keeps the same widths, else per-layer), ``"stock"``
            (refused when the widths differ) or ``"per_layer"``.
        model_id: the folder or hub repo the card's snippets load from (default: ``path``).

    Returns:
        ``path``.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    path = Path(path)
    card = _card(card, metrics, config, command)
    widths = LayerWidths.of(model, plan.geometry.head_dim)
    save_config, chosen = _config_for(model, widths, plan, form)
    sparsity = nm_pattern(model)
    if sparsity is not None:
        card.pattern = card.pattern or sparsity["pattern"]
        card.semistructured = {**(card.semistructured or {}), **sparsity}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    original = model.config
    try:
        model.config = save_config
        try:
            with zero_biases(_missing_biases(model, save_config) if chosen == "stock" else []):
                model.save_pretrained(tmp, safe_serialization=True)
        finally:
            model.config = original
        plain_llama = chosen == "stock" and isinstance(original, PrunedLlamaConfig)
        data = finish_config_json(
            tmp / "config.json",
            per_layer=chosen == "per_layer",
            architecture="LlamaForCausalLM" if plain_llama else None,
        )
        if chosen == "per_layer":
            copy_modeling_files(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            finish_tokenizer_config(tmp)
        write_json(tmp / PLAN_FILE, plan.to_dict())
        write_json(tmp / CARD_DATA_FILE, card.to_dict())
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        architecture = data.get("architectures", [type(model).__name__])[0]
        text = render(
            card, form=chosen, dtype=dtype, architecture=architecture, model_id=model_id or str(path)
        )
        write_text(tmp / "README.md", text)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("saved the pruned model (%s form) to %s", chosen, path)
    return path


def _card(card, metrics, config, command) -> ModelCard:
    if isinstance(card, ModelCard):
        return ModelCard.from_dict(card.to_dict())  # a copy: the pattern found is added to it
    if isinstance(card, dict):
        return ModelCard.from_dict(card)
    return ModelCard.from_run(metrics, config, command)


def _config_for(model: nn.Module, widths: LayerWidths, plan: PruningPlan, form: str):
    """The config to save and the form it gives: ``"stock"``, ``"per_layer"`` or ``"plan"`` (a non-LLaMA
    family with differing widths: the base config and the plan, readable by :func:`load_pruned` only)."""
    stock = stock_config(model.config, widths) if form in ("auto", "stock") else None
    if stock is not None:
        stock = _state_out_biases(stock, out_biases(model))
    if stock is not None:
        return stock, "stock"
    if form == "stock":
        raise ValueError(
            "the layers keep different widths (or the config cannot state them, e.g. o_proj/down_proj "
            "biases): no stock checkpoint; use form='per_layer'"
        )
    biases = biases_of(model)
    flags = out_biases(model)
    for per_layer, name in LAYER_BIAS_FIELDS.items():
        if any(flag != biases[name] for flag in flags[per_layer]):
            biases[per_layer] = flags[per_layer]
    try:
        return PrunedLlamaConfig(**per_layer_fields(model.config, widths, plan.geometry, biases)), "per_layer"
    except ValueError as e:
        log.warning("%s: saved with the base config and the plan; load it with loraprune.load_pruned", e)
        base = clean_config_dict(model.config)
        base.update(
            num_attention_heads=plan.geometry.num_heads,
            num_key_value_heads=plan.geometry.num_kv_heads,
            intermediate_size=plan.geometry.intermediate_size,
        )
        return type(model.config).from_dict(base), "plan"


def out_biases(model: nn.Module) -> dict[str, list[bool]]:
    """Whether each decoder layer's ``o_proj`` / ``down_proj`` has a bias, keyed by
    :data:`~loraprune.export.configuration_pruned_llama.LAYER_BIAS_FIELDS`."""
    layers = decoder_layers(model)
    return {
        "layer_o_proj_bias": [projection(layer, "o_proj").bias is not None for layer in layers],
        "layer_down_proj_bias": [projection(layer, "down_proj").bias is not None for layer in layers],
    }


def _state_out_biases(stock, flags: dict[str, list[bool]]):
    """``stock`` (a config of the model's own class) made to hold the output biases ``flags`` lists, or
    None where its class cannot: stock LLaMA by ``attention_bias`` / ``mlp_bias``."""
    for key in LAYER_BIAS_FIELDS:  # left over from a per-layer config
        stock.__dict__.pop(key, None)
    needs = {
        "attention_bias": any(flags["layer_o_proj_bias"]) and not getattr(stock, "attention_bias", False),
        "mlp_bias": any(flags["layer_down_proj_bias"]) and not getattr(stock, "mlp_bias", False),
    }
    if not any(needs.values()):
        return stock
    if getattr(stock, "model_type", None) != "llama":
        log.info("%s cannot state o_proj/down_proj biases: a per-layer checkpoint is written", type(stock))
        return None
    for name, needed in needs.items():
        if needed:
            setattr(stock, name, True)
    return stock


def _missing_biases(model: nn.Module, config) -> list[nn.Module]:
    """The projections that a stock LLaMA ``config`` gives a bias and ``model``'s lack."""
    names = (ATTENTION_MODULES if getattr(config, "attention_bias", False) else ()) + (
        MLP_MODULES if getattr(config, "mlp_bias", False) else ()
    )
    if getattr(config, "model_type", None) != "llama":
        return []
    modules = [projection(layer, name) for layer in decoder_layers(model) for name in names]
    return [m for m in modules if m.bias is None]


@contextmanager
def zero_biases(modules: list[nn.Module]) -> Iterator[None]:
    """Within the block each of ``modules`` (linear layers without a bias) has a zero bias."""
    try:
        for m in modules:
            m.bias = nn.Parameter(
                torch.zeros(m.weight.shape[0], dtype=m.weight.dtype, device=m.weight.device),
                requires_grad=False,
            )
        yield
    finally:
        for m in modules:
            m.bias = None


def load_pruned(
    path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None, with_tokenizer: bool = False
):
    """Load a model saved by :func:`save_pruned` (any form, also the older plan-only one).

    Returns the model (and its tokenizer when ``with_tokenizer``), in eval mode on ``device``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / PLAN_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {PLAN_FILE}: not a loraprune checkpoint")
    plan = PruningPlan.from_dict(json.loads((path / PLAN_FILE).read_text()))
    saved = json.loads((path / "config.json").read_text())
    if saved.get("model_type") == PrunedLlamaConfig.model_type:
        from loraprune.export.modeling_pruned_llama import PrunedLlamaForCausalLM

        model = PrunedLlamaForCausalLM.from_pretrained(path, dtype=dtype or "auto")
    elif plan.layers and _states_base_widths(saved, plan):
        model = _load_with_plan(path, plan, device, dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto")
    model.to(device).eval()
    return (model, AutoTokenizer.from_pretrained(path)) if with_tokenizer else model


def _states_base_widths(saved: dict, plan: PruningPlan) -> bool:
    """Whether a saved config keeps the base widths while the plan removes some (the plan-only form)."""
    g = plan.geometry
    return (
        saved.get("num_attention_heads") == g.num_heads
        and saved.get("intermediate_size") == g.intermediate_size
        and any(
            (keep.q_heads is not None and len(keep.q_heads) != g.num_heads)
            or (keep.channels is not None and len(keep.channels) != g.intermediate_size)
            for keep in plan.layers.values()
        )
    )


def _load_with_plan(path: Path, plan: PruningPlan, device: str, dtype: torch.dtype | None) -> nn.Module:
    """Empty model from the base config, the plan applied, the weights loaded."""
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    apply_plan(model, plan)
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(path.glob("*.safetensors")):
        state.update(load_file(shard, device=device))
    _add_saved_biases(model, state)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(
            f"checkpoint does not match its plan: missing {sorted(set(missing) - tied)}, "
            f"unexpected {sorted(unexpected)}"
        )
    if tied:
        model.tie_weights()
    return model


def _add_saved_biases(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every linear layer whose bias the saved weights hold and the model lacks (compensation
    biases) an empty one, for ``load_state_dict(assign=True)`` to fill."""
    modules = dict(model.named_modules())
    for key, value in state.items():
        owner = modules.get(key.removesuffix(".bias")) if key.endswith(".bias") else None
        if isinstance(owner, nn.Linear) and owner.bias is None:
            owner.bias = nn.Parameter(torch.empty_like(value, device="meta"), requires_grad=False)
