"""Benchmark: forward time of a 2:4 model on torch's semi-structured sparse kernels against dense.

Imposes magnitude 2:4 on every projection of every decoder layer (the kernels' speed does not depend on
which weights were kept), then times, side by side in one process, the dense forward and the forward
with the projections converted by ``torch.sparse.to_sparse_semi_structured``, and each distinct
projection shape alone (``F.linear`` on batch × seq tokens). Needs a CUDA GPU of compute capability
8.0+; anywhere else it prints why it is skipped and exits 0.

    python scripts/bench_semistructured.py                          # embedded SmolLM2, 8 x 128, fp16
    python scripts/bench_semistructured.py --model hub --path meta-llama/Llama-2-7b-hf --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json

import torch


def two_four_by_magnitude(model) -> dict:
    """Zero the 2 smallest |W| of every 4 consecutive inputs in every projection; the keep masks."""
    from loraprune.core.nm import nm_keep_mask
    from loraprune.core.structure import ALL_PROJECTIONS, decoder_layers, projection

    masks = {}
    with torch.no_grad():
        for i, layer in enumerate(decoder_layers(model)):
            for name in ALL_PROJECTIONS:
                weight = projection(layer, name).weight
                keep = nm_keep_mask(weight.abs().float(), 2, 4)
                weight.mul_(keep.to(weight.dtype))
                masks[(i, name)] = keep
    return masks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", choices=["embedded", "hub", "tiny"])
    parser.add_argument("--path", help="hub id or local directory (--model hub)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    args = parser.parse_args(argv)

    from loraprune.evaluation.sparse_speed import SPARSE_DTYPES, measure, unsupported_reason

    device = "cuda" if torch.cuda.is_available() else "cpu"
    reason = unsupported_reason(device, SPARSE_DTYPES[args.dtype])
    if reason is not None:  # before loading anything
        print(f"skipped: {reason}")
        return 0
    from loraprune.run.models import load_model

    model, _ = load_model(args.model, args.path, dtype=args.dtype, device=device)
    result = measure(model, two_four_by_magnitude(model), args.batch, args.seq, args.dtype, args.repeats)
    if args.json or "skipped" in result:
        print(json.dumps(result, indent=2))
        return 0
    print(f"model={args.model} batch={args.batch}x{args.seq} dtype={args.dtype} device={result['device']}")
    print(f"  {'shape':>14s} {'dense ms':>9s} {'2:4 ms':>9s} {'speedup':>8s}")
    for row in result["per_shape"]:
        shape = "x".join(map(str, row["shape"]))
        if "skipped" in row:
            print(f"  {shape:>14s}  skipped: {row['skipped']}")
            continue
        print(f"  {shape:>14s} {row['dense_ms']:9.3f} {row['sparse_ms']:9.3f} {row['speedup']:7.2f}x")
    print(
        f"  whole forward: dense {result['model_dense_ms']:.2f} ms, 2:4 {result['model_sparse_ms']:.2f} ms, "
        f"dense / 2:4 = {result['model_speedup']:.2f}x ({result['converted_projections']} projections "
        f"converted, max relative logit difference {result['max_rel_logit_diff']:.2e})"
    )
    for line in result["dense_projections_refused"]:
        print(f"  left dense: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
