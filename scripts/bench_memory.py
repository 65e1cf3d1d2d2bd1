"""Benchmark: peak memory of one LoRA fine-tune-and-score step, LoRA-only criteria against the true ∂L/∂W.

Each criterion runs in its own subprocess (fresh allocator, fresh peak): load the model, add LoRA, one
forward/backward on a batch, the optimizer step (AdamW on LoRA) and the group scores of every prunable
layer. Prints the peak (CUDA max allocated on a GPU, peak RSS sampled on CPU) above the loaded model, the
gradient buffers held at the scoring point (the part that differs: LoRAPrune holds LoRA gradients only,
the true-gradient criterion a full ∂L/∂W of every pruned projection), and the ratios side by side.
``mask_fisher`` holds no gradient beyond LoRA's but keeps the inputs of ``o_proj`` / ``down_proj`` until
the backward (its scores are Σ_t h·∂L/∂h); its peak is the one to compare with ``loraprune``'s.

    python scripts/bench_memory.py                       # embedded SmolLM2, batch 4 x 128
    python scripts/bench_memory.py --model tiny --batch 2 --seq 32
    python scripts/bench_memory.py --criteria loraprune,mask_fisher

On CPU each child runs with ``MALLOC_MMAP_THRESHOLD_=65536`` (unless set): glibc then maps every large
tensor on its own and returns it when freed, so the peak RSS follows the live tensors; with glibc's
default the RSS depends on the order of allocations (the same step measured 1.6 or 2.5 GiB above the
model with the same saved tensors).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def measure(criterion: str, model_source: str, batch: int, seq: int) -> dict:
    import psutil
    import torch

    from loraprune.config.schema import LoraPruneConfig
    from loraprune.core.schedule import build_schedule
    from loraprune.core.structure import Geometry, default_excluded_layers
    from loraprune.criteria import build_criterion
    from loraprune.models.adapters import add_lora
    from loraprune.models.loading import load_model
    from loraprune.pruners import CalibrationData, GroupPruner, PrunerSettings
    from loraprune.train.memory import PeakMemory

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _ = load_model(model_source, dtype="auto", device=device)
    geo = Geometry.from_config(model.config)
    cfg = LoraPruneConfig()
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    base_rss = psutil.Process().memory_info().rss
    base_cuda = torch.cuda.memory_allocated() if device == "cuda" else 0
    with PeakMemory(interval=0.01) as mem:
        peft_model = add_lora(model, cfg.lora)
        excluded = default_excluded_layers(geo.num_layers)
        settings = PrunerSettings(ratio=0.2, excluded_layers=excluded)
        pruner = GroupPruner(
            peft_model, geo, build_criterion(criterion), settings, build_schedule("cubic", 0.2, 10)
        )
        pruner.prepare(CalibrationData([], 0))  # ∂L/∂W on for grad; mask_fisher's input hooks
        params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
        opt = torch.optim.AdamW(params, lr=1e-4)
        peft_model.train()
        peft_model(input_ids=ids, labels=ids).loss.backward()
        pruner.observe_micro_batch(0, 1)
        pruner.observe()
        grads = [p.grad for p in peft_model.parameters() if p.grad is not None]
        grad_bytes = sum(g.numel() * g.element_size() for g in grads)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
    gib = 1024**3
    out = {
        "criterion": criterion,
        "device": device,
        "peak_rss_above_model_gib": (mem.peak_rss - base_rss) / gib,
        "gradient_buffers_gib": grad_bytes / gib,
    }
    if mem.cuda_peak is not None:
        out["cuda_peak_above_model_gib"] = (mem.cuda_peak - base_cuda) / gib
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", choices=["embedded", "tiny"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--criteria", default="loraprune,grad,mask_fisher", help="comma-separated")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.model, args.batch, args.seq)))
        return
    results = {}
    for criterion in args.criteria.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            criterion,
            "--model",
            args.model,
            "--batch",
            str(args.batch),
            "--seq",
            str(args.seq),
        ]
        env = {"MALLOC_MMAP_THRESHOLD_": "65536", **os.environ}
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        results[criterion] = json.loads(proc.stdout.strip().splitlines()[-1])
    first = next(iter(results.values()))
    key = "cuda_peak_above_model_gib" if "cuda_peak_above_model_gib" in first else "peak_rss_above_model_gib"
    print(f"model={args.model} batch={args.batch}x{args.seq} device={first['device']} metric={key}")
    print(f"  {'criterion':12s} {'peak':>10s} {'grad buffers':>13s}")
    for name, r in results.items():
        print(f"  {name:12s} {r[key]:6.3f} GiB {r['gradient_buffers_gib']:9.4f} GiB")
    if "loraprune" not in results:
        return
    for name in (n for n in results if n != "loraprune"):
        for col in (key, "gradient_buffers_gib"):
            ratio = results[name][col] / max(results["loraprune"][col], 1e-9)
            print(f"  {name} / loraprune ({col}) = {ratio:.2f}x")


if __name__ == "__main__":
    main()
