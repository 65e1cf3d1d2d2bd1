"""A pruned LLaMA-family model as a GGUF file for llama.cpp (``loraprune-export RUN_DIR --form gguf``).

Architecture: ``llama`` when every layer keeps the same widths; else ``deci`` (llama.cpp's DeciLM /
Nemotron-NAS support: the LLaMA block, built per layer from ``head_count``, ``head_count_kv`` and
``feed_forward_length`` arrays). llama.cpp's ``llama`` reads those arrays too but sizes every layer's
tensors from layer 0, so it cannot hold differing widths. ``key_length``/``value_length`` are written
explicitly (a pruned layer's heads no longer divide the hidden size). q and k rows are permuted into
llama.cpp's rotary order (pairs of adjacent dimensions, where transformers rotates the two halves of a
head), as llama.cpp's ``convert_hf_to_gguf.py`` does for LLaMA: :func:`rotary_order`.

Zero widths mean something else in ``deci`` than in transformers, so they are written only where the
result is the same function:

* no heads (``head_count = 0``): llama.cpp skips the attention block, transformers adds ``o_proj``'s
  output of nothing, i.e. zero, or its bias: written when ``o_proj`` has no nonzero bias, else refused.
* no MLP channels: ``feed_forward_length = 0`` makes llama.cpp skip the rest of the layer (its attention
  output too), so the layer gets one all-zero channel instead (``silu(0)·0 = 0``: the same function).
* neither: the layer is the identity (with no biases) and is left out of the file.

Quantized types (``q4_k_m`` ...) are made by llama.cpp's own quantizer from a float file
(:mod:`loraprune.export.gguf_quant`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from torch import nn

from loraprune.core.structure import decoder_layers
from loraprune.core.widths import LLAMA_FAMILY, LayerWidths
from loraprune.export.gguf_errors import GGUFExportError
from loraprune.export.gguf_quant import FLOAT_TYPES, QUANT_TYPES, parse_type, quantize
from loraprune.export.gguf_vocab import add_tokenizer

log = logging.getLogger(__name__)

T = gguf.MODEL_TENSOR
_ATTN = {"q_proj": T.ATTN_Q, "k_proj": T.ATTN_K, "v_proj": T.ATTN_V, "o_proj": T.ATTN_OUT}
_MLP = {"gate_proj": T.FFN_GATE, "up_proj": T.FFN_UP, "down_proj": T.FFN_DOWN}


@dataclass(frozen=True)
class GGUFLayout:
    """What the GGUF holds: its architecture and, per block written, the widths it states.

    Attributes:
        arch: ``"llama"`` (uniform widths) or ``"deci"``.
        layers: the model's decoder layers written, in order (block ``i`` is ``layers[i]``).
        q_heads, kv_heads, channels: per block, as written (a zero-channel MLP padded to one channel).
        head_dim: the size of every head.
        padded: blocks given one all-zero MLP channel; ``dropped``: identity layers left out.
    """

    arch: str
    layers: tuple[int, ...]
    q_heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    channels: tuple[int, ...]
    head_dim: int
    padded: tuple[int, ...] = field(default=())
    dropped: tuple[int, ...] = field(default=())


def _nonzero_bias(module: nn.Linear) -> bool:
    return module.bias is not None and bool(module.bias.detach().abs().max() > 0)


def layout_of(model: nn.Module) -> GGUFLayout:
    """The GGUF layout of ``model`` (a physically pruned LLaMA-family causal LM).

    Raises:
        GGUFExportError: a layer whose zero widths llama.cpp would compute differently.
    """
    widths = LayerWidths.of(model)
    layers, q_out, kv_out, ch_out, padded, dropped = [], [], [], [], [], []
    for i, layer in enumerate(decoder_layers(model)):
        q, kv, ch = widths.q_heads[i], widths.kv_heads[i], widths.channels[i]
        attn, mlp = layer.self_attn, layer.mlp
        if q and not kv:
            raise GGUFExportError(f"layer {i} keeps {q} query heads and no KV head: not a valid attention")
        if not q and _nonzero_bias(attn.o_proj):
            raise GGUFExportError(
                f"layer {i} keeps no attention head but o_proj has a bias: llama.cpp's deci skips the "
                "attention block of such a layer (its bias too), transformers adds the bias"
            )
        if not q and not ch and not _nonzero_bias(mlp.down_proj):
            dropped.append(i)  # the identity
            continue
        if not ch:
            padded.append(len(layers))
        layers.append(i)
        q_out.append(q)
        kv_out.append(kv if q else 0)
        ch_out.append(ch or 1)
    if not layers:
        raise GGUFExportError("every decoder layer is empty: nothing to write")
    uniform = len(set(zip(q_out, kv_out, ch_out, strict=True))) == 1 and min(q_out) > 0
    return GGUFLayout(
        "llama" if uniform else "deci",
        tuple(layers),
        tuple(q_out),
        tuple(kv_out),
        tuple(ch_out),
        widths.head_dim,
        tuple(padded),
        tuple(dropped),
    )


def rotary_order(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q/k rows (or bias) of ``n_heads`` heads from transformers' rotary order (halves: dimension ``j``
    with ``j + d/2``) into llama.cpp's (adjacent pairs: ``2j`` with ``2j + 1``)."""
    if n_heads == 0:
        return weight
    rest = weight.shape[1:]
    return (
        weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *rest)
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def hf_order(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of :func:`rotary_order`."""
    if n_heads == 0:
        return weight
    rest = weight.shape[1:]
    return (
        weight.reshape(n_heads, weight.shape[0] // n_heads // 2, 2, *rest)
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def rope_settings(config) -> dict[str, Any]:
    """RoPE parameters of a config under transformers 4.57 (``rope_theta``/``rope_scaling``) or 5.x
    (``rope_parameters``), with ``rope_type`` always set."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        out = dict(params)
    else:
        out = {
            "rope_theta": getattr(config, "rope_theta", 10000.0),
            **(getattr(config, "rope_scaling", None) or {}),
        }
    out["rope_type"] = out.get("rope_type") or out.get("type") or "default"
    return out


def llama3_rope_factors(rope: dict[str, Any], head_dim: int) -> np.ndarray:
    """The per-frequency factors llama.cpp applies for ``rope_type = llama3`` (its ``rope_freqs``)."""
    base = rope["rope_theta"]
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    factor, low, high = (
        rope.get("factor", 8.0),
        rope.get("low_freq_factor", 1.0),
        rope.get("high_freq_factor", 4.0),
    )
    old = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _name(kind: gguf.MODEL_TENSOR, bid: int | None = None, suffix: str = "weight") -> str:
    return f"{gguf.TENSOR_NAMES[kind].format(bid=bid)}.{suffix}"


def gguf_tensors(model: nn.Module, layout: GGUFLayout) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, float32 tensor in transformers' (out, in) layout)`` of every tensor the GGUF holds."""
    inner = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    f32 = lambda t: t.detach().to(torch.float32).cpu()  # noqa: E731
    yield _name(T.TOKEN_EMBD), f32(embed)
    layers = decoder_layers(model)
    for bid, i in enumerate(layout.layers):
        layer = layers[i]
        attn, mlp = layer.self_attn, layer.mlp
        q, kv = layout.q_heads[bid], layout.kv_heads[bid]
        if q:
            yield _name(T.ATTN_NORM, bid), f32(layer.input_layernorm.weight)
            for proj, kind in _ATTN.items():
                module = getattr(attn, proj)
                heads = {"q_proj": q, "k_proj": kv}.get(proj, 0)
                for suffix, tensor in (("weight", module.weight), ("bias", module.bias)):
                    if tensor is not None:
                        yield _name(kind, bid, suffix), rotary_order(f32(tensor), heads)
        yield _name(T.FFN_NORM, bid), f32(layer.post_attention_layernorm.weight)
        for proj, kind in _MLP.items():
            module = getattr(mlp, proj)
            weight = f32(module.weight)
            bias = None if module.bias is None else f32(module.bias)
            if bid in layout.padded:  # one all-zero channel (down_proj's bias, on the hidden side, stays)
                down = proj == "down_proj"
                weight = torch.zeros((weight.shape[0], 1) if down else (1, weight.shape[1]))
                if bias is not None and not down:
                    bias = torch.zeros(1)
            yield _name(kind, bid), weight
            if bias is not None:
                yield _name(kind, bid, "bias"), bias
    yield _name(T.OUTPUT_NORM), f32(inner.norm.weight)
    if head.data_ptr() != embed.data_ptr():
        yield _name(T.OUTPUT), f32(head)
    rope = rope_settings(model.config)
    if rope["rope_type"] == "llama3":
        yield _name(T.ROPE_FREQS), torch.from_numpy(llama3_rope_factors(rope, layout.head_dim))


def _check_model(model: nn.Module) -> None:
    from loraprune.export.files import nm_pattern

    family = getattr(model.config, "model_type", None)
    if family not in LLAMA_FAMILY:
        raise GGUFExportError(f"GGUF export holds LLaMA-family decoders, not {family!r}")
    sparsity = nm_pattern(model)
    if sparsity is not None:
        raise GGUFExportError(
            f"the model is {sparsity['pattern']} sparse: GGUF cannot express the sparsity (the zeros would "
            "be stored and computed densely); export it with --form stock instead"
        )
    rope = rope_settings(model.config)
    if rope["rope_type"] not in ("default", "linear", "llama3"):
        raise GGUFExportError(
            f"RoPE type {rope['rope_type']!r} is not written to GGUF (default, linear, llama3)"
        )
    if getattr(model.config, "sliding_window", None) and getattr(model.config, "use_sliding_window", True):
        log.warning("the base model uses sliding-window attention; the GGUF attends to the full context")


def add_hparams(writer: gguf.GGUFWriter, model: nn.Module, layout: GGUFLayout, ftype: int) -> None:
    """The architecture's keys: depth, widths (arrays for ``deci``), head sizes, norms, RoPE."""
    cfg = model.config
    scalar = layout.arch == "llama"
    writer.add_vocab_size(model.get_input_embeddings().weight.shape[0])
    writer.add_context_length(int(cfg.max_position_embeddings))
    writer.add_embedding_length(int(cfg.hidden_size))
    writer.add_block_count(len(layout.layers))
    writer.add_feed_forward_length(layout.channels[0] if scalar else list(layout.channels))
    writer.add_head_count(layout.q_heads[0] if scalar else list(layout.q_heads))
    writer.add_head_count_kv(layout.kv_heads[0] if scalar else list(layout.kv_heads))
    writer.add_key_length(layout.head_dim)
    writer.add_value_length(layout.head_dim)
    writer.add_rope_dimension_count(layout.head_dim)
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    rope = rope_settings(cfg)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_file_type(int(ftype))


def add_card(writer: gguf.GGUFWriter, card, quant: str, layout: GGUFLayout, plan=None) -> None:
    """``general.*`` keys and ``loraprune.*`` keys saying what the file is (base, method, ratio, type)."""
    writer.add_type("model")
    base = (card.base_model or card.base_name) if card else None
    method = card.method if card else None
    run = card.run if card else {}
    ratio = run.get("ratio")
    what = f"{method} {ratio:.0%}" if method and isinstance(ratio, (int, float)) else (method or "pruned")
    writer.add_name(f"{(base or 'model').split('/')[-1]} pruned ({what}, {quant})")
    params = card.params if card else {}
    removed = params.get("removed_fraction_total")
    description = f"Structurally pruned by loraprune ({what}) from {base or 'an unnamed base'}"
    if isinstance(removed, (int, float)):
        description += f", {removed:.1%} of the parameters removed"
    writer.add_description(description + f"; {layout.arch} architecture, {quant}.")
    if card and card.license:
        writer.add_license(card.license)
    tags = ["pruned", "structured-pruning", "loraprune", *([method] if method else [])]
    writer.add_tags(tags + [t for t in (card.tags if card else []) if t not in tags])
    if base:
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, base)
        if card.base_model and "/" in card.base_model and not Path(card.base_model).exists():
            writer.add_base_model_repo_url(0, f"https://huggingface.co/{card.base_model}")
    writer.add_string("loraprune.quantization", quant)
    writer.add_string(
        "loraprune.architecture_reason", "uniform widths" if layout.arch == "llama" else "per-layer widths"
    )
    for key in ("method", "criterion"):
        if card and getattr(card, key):
            writer.add_string(f"loraprune.{key}", str(getattr(card, key)))
    for key in ("ratio", "group_ratio"):
        if isinstance(run.get(key), (int, float)):
            writer.add_float32(f"loraprune.{key}", float(run[key]))
    for key in ("target", "attention_unit", "selection"):
        if run.get(key):
            writer.add_string(f"loraprune.{key}", str(run[key]))
    for key, value in params.items():
        if isinstance(value, int):
            writer.add_uint64(f"loraprune.params.{key}", value)
        elif isinstance(value, float):
            writer.add_float32(f"loraprune.params.{key}", value)
    for tag, sets in (card.ppl if card else {}).items():
        for name, value in sets.items():
            if isinstance(value, (int, float)):
                writer.add_float32(f"loraprune.ppl.{tag}.{name}", float(value))
    writer.add_array("loraprune.layers", list(layout.layers))
    if layout.dropped:
        writer.add_array("loraprune.identity_layers_dropped", list(layout.dropped))
    if plan is not None:
        writer.add_string("loraprune.plan", json.dumps(plan.to_dict(), separators=(",", ":")))


def _write_float(
    model, tokenizer, path: Path, quant: str, layout: GGUFLayout, card, plan, label: str | None = None
) -> dict[str, Any]:
    """Write the float GGUF (``quant`` in :data:`FLOAT_TYPES`) to ``path``; returns the tokenizer summary.

    ``label``: the type the metadata names (the final quantized type when this file is the quantizer's
    source, whose metadata llama.cpp copies); default ``quant``."""
    writer = gguf.GGUFWriter(str(path), layout.arch)
    add_hparams(writer, model, layout, FLOAT_TYPES[quant])
    add_card(writer, card, label or quant, layout, plan)
    vocab = add_tokenizer(writer, tokenizer, model.get_input_embeddings().weight.shape[0])
    for name, tensor in gguf_tensors(model, layout):
        data = tensor.numpy()
        if data.ndim < 2 or quant == "f32" or name.endswith(".bias"):
            writer.add_tensor(name, data.astype(np.float32))
        elif quant == "f16":
            writer.add_tensor(name, data.astype(np.float16))
        else:
            raw = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.BF16)
            writer.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return vocab


def write_gguf(
    model: nn.Module,
    tokenizer,
    out: str | Path,
    *,
    quant: str = "f16",
    card=None,
    plan=None,
) -> dict[str, Any]:
    """Write ``model`` (physically pruned, LLaMA family) and ``tokenizer`` to the GGUF file ``out``.

    Args:
        model: the pruned model (any float dtype; not changed).
        tokenizer: its fast byte-level BPE tokenizer.
        out: the ``.gguf`` file; replaced atomically (nothing is left behind on failure).
        quant: ``f32``, ``f16``, ``bf16`` (written here) or a llama.cpp type (``q8_0``, ``q4_k_m`` ...: made
            by llama.cpp's quantizer from a float file, needs llama-cpp-python).
        card: the run's :class:`~loraprune.export.card.ModelCard` (metadata: base, method, ratio ...).
        plan: the pruning plan (stored as ``loraprune.plan``).

    Returns:
        A summary: ``path``, ``arch``, ``quant``, ``layers``, the layout and the tokenizer written.

    Raises:
        GGUFExportError: an unknown type, a 2:4 model, zero widths llama.cpp would read differently, a
            tokenizer llama.cpp cannot reproduce, a quantized type without the binding.
    """
    quant = parse_type(quant)
    out = Path(out)
    _check_model(model)
    layout = layout_of(model)
    if quant in QUANT_TYPES:
        from loraprune.export.gguf_quant import binding

        binding()  # fail before writing anything
    out.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        dtype = next(model.parameters()).dtype  # the quantizer's source: the model's own precision
        source = {torch.float16: "f16", torch.bfloat16: "bf16"}.get(dtype, "f32")
        float_path = tmpdir / f"model-{source if quant in QUANT_TYPES else quant}.gguf"
        vocab = _write_float(
            model, tokenizer, float_path, quant if quant in FLOAT_TYPES else source, layout, card, plan, quant
        )
        if quant in QUANT_TYPES:
            final = tmpdir / f"model-{quant}.gguf"
            quantize(float_path, final, quant)
        else:
            final = float_path
        os.replace(final, out)
    finally:
        for leftover in tmpdir.iterdir() if tmpdir.exists() else ():
            leftover.unlink(missing_ok=True)
        if tmpdir.exists():
            tmpdir.rmdir()
    log.info("wrote %s (%s, %s, %d blocks)", out, layout.arch, quant, len(layout.layers))
    return {"path": str(out), "arch": layout.arch, "quant": quant, "layout": layout, "tokenizer": vocab}
