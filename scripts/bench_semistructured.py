"""Benchmark: forward time of a 2:4 model on torch's semi-structured sparse kernels against dense.

Imposes magnitude 2:4 on every projection of every decoder layer (the kernels' speed does not depend on
which weights were kept), then times, side by side in one process, the dense forward and the forward
with the projections converted by ``torch.sparse.to_sparse_semi_structured``, and each distinct
projection shape alone (``F.linear`` on batch × seq tokens). Needs a CUDA GPU of compute capability
8.0+; anywhere else it prints why it is skipped and exits 0. The work is done by
:mod:`loraprune.evaluation.sparse_speed`; this script loads the model and prints.

    python scripts/bench_semistructured.py                          # embedded SmolLM2, 8 x 128, fp16
    python scripts/bench_semistructured.py --model hub --path meta-llama/Llama-2-7b-hf --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json

import torch

from loraprune.evaluation.sparse_speed import (
    SPARSE_DTYPES,
    measure,
    report_lines,
    two_four_by_magnitude,
    unsupported_reason,
)


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

    device = "cuda" if torch.cuda.is_available() else "cpu"
    reason = unsupported_reason(device, SPARSE_DTYPES[args.dtype])
    if reason is not None:  # before loading anything
        print(f"skipped: {reason}")
        return 0
    from loraprune.models.loading import load_model

    model, _ = load_model(args.model, args.path, dtype=args.dtype, device=device)
    result = measure(model, two_four_by_magnitude(model), args.batch, args.seq, args.dtype, args.repeats)
    if args.json or "skipped" in result:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(report_lines(result, args.model)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
