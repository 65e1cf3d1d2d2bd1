"""The GPU check: the paper's setting at the 7B shape in bf16, in minutes, with nothing but torch,
transformers, peft and accelerate installed (no Hydra, datasets, lm-eval or W&B).

1. 20 fine-tune-and-prune steps with ``method=loraprune`` and with ``method=grad`` (the true ∂L/∂W),
   each in its own process: peak CUDA memory above the model and tokens/s, and their ratios;
2. the 2:4 path: dense against ``to_sparse_semi_structured`` forward time (per projection shape and the
   whole model), on the same shape with 2:4 masks by magnitude.

``scripts/gpu_check.sh`` runs it; on a CPU-only machine ``--model tiny --device cpu`` runs the same code
at tiny size (the 2:4 part then skips, saying why).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

METHODS = ("loraprune", "grad")


def run_loop(method: str, args: argparse.Namespace) -> dict:
    """One method's loop in its own process (its own peak)."""
    cmd = [sys.executable, "-m", "loraprune.bench.loop", "--method", method, "--model", args.model]
    cmd += ["--dtype", args.dtype, "--device", args.device, "--steps", str(args.steps)]
    cmd += ["--batch", str(args.batch), "--seq-len", str(args.seq_len)]
    if args.layers:
        cmd += ["--layers", str(args.layers)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{method} loop failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak(result: dict) -> float:
    """Peak memory of the loop above the model: CUDA max allocated, else the process's peak RSS."""
    cuda = result.get("cuda_peak_above_model_gib")
    return cuda if cuda is not None else result["cpu_peak_above_model_gib"]


def check_loops(args: argparse.Namespace) -> list[str]:
    results = {m: run_loop(m, args) for m in METHODS}
    unit = "CUDA max allocated" if args.device.startswith("cuda") else "CPU peak RSS"
    lines = [
        f"fine-tune-and-prune, {args.model} {args.dtype} {args.device}, {args.steps} steps of "
        f"{args.batch}x{args.seq_len} tokens ({unit}):"
    ]
    for m, r in results.items():
        lines.append(
            f"  {m:>10s}: peak {peak(r):8.3f} GiB above the model   {r['tokens_per_s']:9.1f} tokens/s"
        )
    a, b = results["loraprune"], results["grad"]
    speed = a["tokens_per_s"] / b["tokens_per_s"]
    lines.append(f"  loraprune / grad: memory {peak(a) / peak(b):.3f}x, speed {speed:.3f}x")
    return lines


def check_two_four(args: argparse.Namespace) -> list[str]:
    from loraprune.bench.loop import build_model
    from loraprune.evaluation.sparse_speed import measure, report_lines, two_four_by_magnitude

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    model = build_model(args.model, dtype, args.device, args.layers)
    masks = two_four_by_magnitude(model)
    name = "bfloat16" if dtype == torch.bfloat16 else "float16"
    result = measure(model, masks, batch_size=args.sparse_batch, seq_len=args.seq_len, dtype=name)
    if "skipped" in result:
        return [f"2:4 sparse kernels: skipped ({result['skipped']})"]
    return ["2:4 sparse kernels (to_sparse_semi_structured):", *report_lines(result, args.model)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="GPU check: loraprune vs grad at the 7B shape, and 2:4 speed")
    ap.add_argument("--model", default="shape:llama_7b")
    ap.add_argument("--layers", type=int, default=None, help="keep only this many layers of a shape")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--sparse-batch", type=int, default=8)
    args = ap.parse_args(argv)
    started = time.time()
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"torch {torch.__version__}, device {device}", flush=True)
    for line in check_loops(args):
        print(line, flush=True)
    for line in check_two_four(args):
        print(line, flush=True)
    print(f"gpu check done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
