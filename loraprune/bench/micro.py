"""Two side-by-side micro-benchmarks behind changes to the loop (each prints its ratio from one run):

- ``dropout``: a LoRA fine-tuning step (forward + backward) with torch's ``nn.Dropout`` against
  :class:`~loraprune.models.fast_dropout.FastDropout` on the LoRA branches, alternating step by step in one
  process on the same model and batch (the median of each, and CPU seconds per step);
- ``scoring``: LoRAPrune's channel scores of one decoder layer of a shape (all seven projections) with
  every full-size matrix materialised (G, W + s·B·A, their product) against the blocked
  :func:`~loraprune.criteria.lora_grad.lora_channel_sums` (seconds and minor page faults per layer).

``python -m loraprune.bench.micro dropout --model embedded --steps 8``
``python -m loraprune.bench.micro scoring --shape tinyllama_1b``
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from torch import nn

from loraprune.bench.loop import load, random_samples
from loraprune.bench.process import cpu_counters
from loraprune.config.schema import LoraConfig
from loraprune.core.lora import LoraTensors
from loraprune.criteria.lora_grad import estimated_weight_grad, lora_channel_sums
from loraprune.data import collate
from loraprune.models.adapters import add_lora
from loraprune.models.fast_dropout import FastDropout


def _cpu_seconds() -> float:
    c = cpu_counters()
    return c["user_s"] + c["sys_s"]


def dropout_ab(model: str = "embedded", steps: int = 8, batch: int = 4, seq_len: int = 128) -> dict[str, Any]:
    """Median seconds (wall and CPU) of a LoRA step with torch's dropout and with FastDropout, p = 0.05,
    the two alternating step by step after one warm-up step each."""
    torch.manual_seed(0)
    base = load(model)[0]
    peft_model = add_lora(base, LoraConfig(dropout=0.05, fast_dropout=False)).train()
    branches = [
        m.lora_dropout
        for m in peft_model.modules()
        if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)
    ]
    batch_ = collate(random_samples(base.config.vocab_size, batch, seq_len), 0)
    wall: dict[str, list[float]] = {"torch": [], "fast": []}
    cpu: dict[str, list[float]] = {"torch": [], "fast": []}
    for i in range(2 * (steps + 1)):
        kind = "fast" if i % 2 else "torch"
        for d in branches:
            for name in list(d.keys()):
                d[name] = FastDropout(0.05) if kind == "fast" else nn.Dropout(0.05)
        c, t = _cpu_seconds(), time.perf_counter()
        peft_model(**batch_).loss.backward()
        peft_model.zero_grad(set_to_none=True)
        if i >= 2:  # the first step of each is a warm-up
            wall[kind].append(time.perf_counter() - t)
            cpu[kind].append(_cpu_seconds() - c)
    out = {k: {"wall_s": statistics.median(wall[k]), "cpu_s": statistics.median(cpu[k])} for k in wall}
    out["fast/torch wall"] = out["fast"]["wall_s"] / out["torch"]["wall_s"]
    return out


def _layer_tensors(shape: str, r: int = 8) -> list[tuple[LoraTensors, int]]:
    from loraprune.models.shapes import shape_config

    cfg = shape_config(shape)
    h, i = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    dims = [
        (h, h, 0),
        (kv, h, 0),
        (kv, h, 0),
        (h, h, 1),
        (i, h, 0),
        (i, h, 0),
        (h, i, 1),
    ]  # q k v o gate up down
    g = torch.Generator().manual_seed(0)
    out = []
    for rows, cols, dim in dims:
        a, b = (
            nn.Parameter(torch.randn(r, cols, generator=g)),
            nn.Parameter(torch.randn(rows, r, generator=g)),
        )
        a.grad, b.grad = torch.randn(r, cols, generator=g), torch.randn(rows, r, generator=g)
        out.append((LoraTensors(torch.randn(rows, cols, generator=g), a, b, 2.0), dim))
    return out


def scoring_ab(shape: str = "tinyllama_1b", repeats: int = 3) -> dict[str, Any]:
    """Seconds and minor page faults to score one layer of ``shape``: materialised against blocked."""

    def materialised(t: LoraTensors, dim: int) -> torch.Tensor:
        g = estimated_weight_grad(t.lora_a.detach(), t.lora_b.detach(), t.lora_a.grad, t.lora_b.grad)
        return (g * t.effective_weight()).abs().sum(dim=1 - dim)

    def blocked(t: LoraTensors, dim: int) -> torch.Tensor:
        return lora_channel_sums(t, t.lora_a.grad, t.lora_b.grad, rows=dim == 0, columns=dim == 1)[dim]

    layer = _layer_tensors(shape)
    out: dict[str, Any] = {}
    for name, fn in (("materialised", materialised), ("blocked", blocked)):
        for t, dim in layer:  # warm-up
            fn(t, dim)
        faults, start = cpu_counters()["minor_faults"], time.perf_counter()
        for _ in range(repeats):
            for t, dim in layer:
                fn(t, dim)
        out[name] = {
            "s_per_layer": (time.perf_counter() - start) / repeats,
            "minor_faults_per_layer": (cpu_counters()["minor_faults"] - faults) / repeats,
        }
    out["blocked/materialised time"] = out["blocked"]["s_per_layer"] / out["materialised"]["s_per_layer"]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["dropout", "scoring"])
    ap.add_argument("--model", default="embedded", help="dropout: embedded | tiny | shape:<name> | ...")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument(
        "--shape", default="tinyllama_1b", help="scoring: a known shape (loraprune/models/shapes.py)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.what == "dropout":
        result = dropout_ab(args.model, args.steps, args.batch, args.seq_len)
    else:
        result = scoring_ab(args.shape, args.repeats)
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
