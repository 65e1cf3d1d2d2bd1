"""Speed of a 2:4 model on torch's semi-structured sparse kernels (``to_sparse_semi_structured``).

The kernels (CUTLASS or cuSPARSELt) exist on CUDA GPUs of compute capability 8.0 and up, for float16
and bfloat16 weights whose sizes meet the backend's minimum shapes. :func:`unsupported_reason` says why
they cannot run here (``None`` when they can); :func:`measure` times a forward of the model with dense
weights against the same model with its 2:4 projections converted, and every distinct projection shape
on its own, side by side in one process. :func:`two_four_by_magnitude` imposes magnitude 2:4 on a whole
model and :func:`report_lines` formats a result: the benchmark ``scripts/bench_semistructured.py``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from loraprune.core.nm import nm_keep_mask
from loraprune.core.structure import ALL_PROJECTIONS, decoder_layers, projection

SPARSE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _two_four(rows: int, cols: int, device, dtype) -> torch.Tensor:
    pattern = torch.tensor([1.0, 1.0, 0.0, 0.0], device=device, dtype=dtype)
    return torch.randn(rows, cols, device=device, dtype=dtype) * pattern.repeat(rows, cols // 4)


@torch.no_grad()
def two_four_by_magnitude(model: nn.Module) -> dict[tuple[int, str], torch.Tensor]:
    """Zero the 2 smallest ``|W|`` of every 4 consecutive inputs in every projection of every decoder
    layer, in place; returns the keep masks by ``(layer, projection)`` (what :func:`measure` takes)."""
    masks = {}
    for i, layer in enumerate(decoder_layers(model)):
        for name in ALL_PROJECTIONS:
            weight = projection(layer, name).weight
            keep = nm_keep_mask(weight.abs().float(), 2, 4)
            weight.mul_(keep.to(weight.dtype))
            masks[(i, name)] = keep
    return masks


def unsupported_reason(device: torch.device | str, dtype: torch.dtype = torch.float16) -> str | None:
    """Why 2:4 sparse matmuls cannot run on ``device`` in ``dtype`` (``None``: they can; probed)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"torch's semi-structured sparse kernels need a CUDA GPU (the model is on {device.type})"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"semi-structured sparsity needs compute capability >= 8.0, this GPU has {major}.{minor}"
    if dtype not in SPARSE_DTYPES.values():
        return f"semi-structured sparse kernels are timed in float16/bfloat16, not {dtype}"
    try:
        from torch.sparse import to_sparse_semi_structured

        weight = to_sparse_semi_structured(_two_four(128, 128, device, dtype))
        F.linear(torch.randn(64, 128, device=device, dtype=dtype), weight)
        torch.cuda.synchronize(device)
    except (RuntimeError, NotImplementedError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"torch cannot run 2:4 sparse matmuls here: {first}"
    return None


def _median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def convert_weights(model: nn.Module, keys) -> tuple[int, list[str]]:
    """Replace the weights of the ``(layer, projection)`` keys by semi-structured sparse tensors, in place.

    Returns how many were converted and, for those the backend refuses (shape), why they stay dense.
    """
    from torch.sparse import to_sparse_semi_structured

    layers = decoder_layers(model)
    converted, refused = 0, []
    for i, name in keys:
        linear = projection(layers[i], name)
        try:
            sparse = to_sparse_semi_structured(linear.weight.detach())
        except (RuntimeError, ValueError) as e:
            refused.append(f"layer {i} {name} {tuple(linear.weight.shape)}: {str(e).splitlines()[0]}")
            continue
        linear.weight = nn.Parameter(sparse, requires_grad=False)
        converted += 1
    return converted, refused


@torch.no_grad()
def measure(
    model: nn.Module,
    masks: Mapping[tuple[int, str], torch.Tensor],
    batch_size: int = 8,
    seq_len: int = 128,
    dtype: str = "float16",
    repeats: int = 20,
) -> dict[str, Any]:
    """Dense against 2:4-sparse forward time of ``model`` (its ``masks`` projections, already 2:4).

    Converts the model to ``dtype`` and its masked projections to sparse tensors **in place** (call it
    last). Where the kernels cannot run, returns ``{"skipped": reason}`` and leaves the model untouched.
    """
    device = next(model.parameters()).device
    torch_dtype = SPARSE_DTYPES.get(dtype)
    if torch_dtype is None:
        return {"skipped": f"dtype {dtype!r}: choose float16 or bfloat16"}
    reason = unsupported_reason(device, torch_dtype)
    if reason is not None:
        return {"skipped": reason}
    model.to(torch_dtype).eval()
    layers = decoder_layers(model)
    from torch.sparse import to_sparse_semi_structured

    tokens = batch_size * seq_len
    seen: set[tuple[int, ...]] = set()
    per_shape = []
    for i, name in masks:
        weight = projection(layers[i], name).weight
        shape = tuple(weight.shape)
        if shape in seen:
            continue
        seen.add(shape)
        x = torch.randn(tokens, shape[1], device=device, dtype=torch_dtype)
        dense_ms = _median_ms(lambda w=weight, x=x: F.linear(x, w), repeats)
        try:
            sparse_w = to_sparse_semi_structured(weight.detach())
        except (RuntimeError, ValueError) as e:
            per_shape.append({"shape": list(shape), "skipped": str(e).splitlines()[0]})
            continue
        sparse_ms = _median_ms(lambda w=sparse_w, x=x: F.linear(x, w), repeats)
        per_shape.append(
            {
                "shape": list(shape),
                "dense_ms": dense_ms,
                "sparse_ms": sparse_ms,
                "speedup": dense_ms / sparse_ms,
            }
        )
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch_size, seq_len), device=device)
    dense_logits = model(input_ids=ids).logits.float()
    dense_ms = _median_ms(lambda: model(input_ids=ids), repeats)
    converted, refused = convert_weights(model, list(masks))
    sparse_logits = model(input_ids=ids).logits.float()
    sparse_ms = _median_ms(lambda: model(input_ids=ids), repeats)
    rel_err = float((sparse_logits - dense_logits).abs().max() / dense_logits.abs().max().clamp_min(1e-12))
    return {
        "device": torch.cuda.get_device_name(device),
        "dtype": dtype,
        "batch": [batch_size, seq_len],
        "converted_projections": converted,
        "dense_projections_refused": refused,
        "model_dense_ms": dense_ms,
        "model_sparse_ms": sparse_ms,
        "model_speedup": dense_ms / sparse_ms,
        "max_rel_logit_diff": rel_err,
        "per_shape": per_shape,
    }


def report_lines(result: Mapping[str, Any], model: str) -> list[str]:
    """A :func:`measure` result as the benchmark prints it: per projection shape, then the whole forward."""
    batch, seq = result["batch"]
    lines = [
        f"model={model} batch={batch}x{seq} dtype={result['dtype']} device={result['device']}",
        f"  {'shape':>14s} {'dense ms':>9s} {'2:4 ms':>9s} {'speedup':>8s}",
    ]
    for row in result["per_shape"]:
        shape = "x".join(map(str, row["shape"]))
        if "skipped" in row:
            lines.append(f"  {shape:>14s}  skipped: {row['skipped']}")
            continue
        lines.append(f"  {shape:>14s} {row['dense_ms']:9.3f} {row['sparse_ms']:9.3f} {row['speedup']:7.2f}x")
    lines.append(
        f"  whole forward: dense {result['model_dense_ms']:.2f} ms, 2:4 {result['model_sparse_ms']:.2f} ms, "
        f"dense / 2:4 = {result['model_speedup']:.2f}x ({result['converted_projections']} projections "
        f"converted, max relative logit difference {result['max_rel_logit_diff']:.2e})"
    )
    lines += [f"  left dense: {line}" for line in result["dense_projections_refused"]]
    return lines
