"""Peak memory and tokens/s of the fine-tune-and-prune loop for one method, in this process.

``python -m loraprune.bench.loop --model shape:llama_7b --dtype bf16 --method loraprune --steps 20`` prints
one JSON line. Each variant runs in its own process where peaks are compared (see
:mod:`loraprune.bench.gpu_check`). Needs neither Hydra nor any data set: the batches are random token ids
(memory and speed do not depend on their values).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import psutil
import torch

from loraprune.core.schedule import build_schedule
from loraprune.core.structure import Geometry, default_excluded_layers
from loraprune.criteria import build_criterion
from loraprune.pruners import CalibrationData, PrunerSettings, build_pruner
from loraprune.run.adapters import add_lora
from loraprune.run.config import LoraConfig, TrainerConfig
from loraprune.run.memory import PeakMemory
from loraprune.run.train import PruningHooks, StepHooks, finetune

LORA_ONLY = "lora"  # plain LoRA fine-tuning, no pruner: the reference loop


def build_model(spec: str, dtype: torch.dtype, device: str, layers: int | None = None):
    """``shape:<name>`` (random weights of a known architecture), ``tiny`` or ``embedded``."""
    if spec.startswith("shape:"):
        from loraprune.run import shapes

        overrides = {"num_hidden_layers": layers} if layers else {}
        config = shapes.shape_config(spec.split(":", 1)[1], **overrides)
        return shapes.random_model(config, dtype, device)
    from loraprune.run.models import TinySpec, load_model

    name = "float32" if dtype == torch.float32 else "bfloat16" if dtype == torch.bfloat16 else "float16"
    model, _ = load_model(spec, tiny=TinySpec(), dtype=name, device=device)
    return model


def random_samples(vocab: int, n: int, seq_len: int, seed: int = 0) -> list[dict[str, list[int]]]:
    ids = torch.randint(3, vocab, (n, seq_len), generator=torch.Generator().manual_seed(seed)).tolist()
    return [{"input_ids": row, "labels": row} for row in ids]


def measure_loop(
    model, method: str, *, steps: int, batch: int, seq_len: int, ratio: float = 0.2, device: str = "cpu"
) -> dict[str, Any]:
    """Fine-tune (and prune, unless ``method == "lora"``) for ``steps`` steps of ``batch × seq_len``
    tokens; peak memory of the whole loop and tokens/s after the first step (warm-up)."""
    samples = random_samples(model.config.vocab_size, max(batch * 2, 4), seq_len)
    trainer = TrainerConfig(batch_size=batch, micro_batch_size=batch, warmup_steps=0, seed=0)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if cuda else 0
    base_rss = psutil.Process().memory_info().rss
    times: list[float] = []
    with PeakMemory() as mem:
        peft_model = add_lora(model, LoraConfig())
        hooks: StepHooks = StepHooks()
        if method != LORA_ONLY:
            geo = Geometry.from_config(model.config)
            settings = PrunerSettings(ratio=ratio, excluded_layers=default_excluded_layers(geo.num_layers))
            schedule = build_schedule("cubic", ratio, steps, 0.05, 0.5)
            pruner = build_pruner(peft_model, geo, build_criterion(method), settings, schedule)
            pruner.prepare(CalibrationData(samples, 0, batch, device))
            hooks = PruningHooks(pruner, steps)
        timer = _Timer(hooks, times, cuda)
        finetune(peft_model, samples, trainer, steps, 0, timer)
    per_step = times[1:] or times
    out = {
        "method": method,
        "steps": steps,
        "tokens_per_step": batch * seq_len,
        "tokens_per_s": batch * seq_len * len(per_step) / sum(per_step),
        **mem.as_dict(),
        "cpu_peak_above_model_gib": (mem.peak_rss - base_rss) / 1024**3,
    }
    if cuda:
        out["cuda_peak_above_model_gib"] = (torch.cuda.max_memory_allocated() - base) / 1024**3
    return out


class _Timer(StepHooks):
    """Times each optimizer step (forward, backward, scoring, mask updates) around the inner hooks."""

    def __init__(self, inner: StepHooks, times: list[float], cuda: bool) -> None:
        self.inner, self.times, self.cuda, self.start = inner, times, cuda, time.perf_counter()

    def after_accumulation(self, step: int) -> None:
        self.inner.after_accumulation(step)

    def after_step(self, step: int) -> dict[str, float]:
        extra = self.inner.after_step(step)
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times.append(now - self.start)
        self.start = now
        return extra


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="shape:<name> | tiny | embedded")
    ap.add_argument("--layers", type=int, default=None, help="shape: keep only this many layers")
    ap.add_argument("--method", default="loraprune", help="a criterion name, or 'lora' (no pruning)")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--ratio", type=float, default=0.2)
    args = ap.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    torch.manual_seed(0)
    model = build_model(args.model, dtype, args.device, args.layers)
    result = measure_loop(
        model,
        args.method,
        steps=args.steps,
        batch=args.batch,
        seq_len=args.seq_len,
        ratio=args.ratio,
        device=args.device,
    )
    print(json.dumps({"model": args.model, "dtype": args.dtype, "device": args.device, **result}))


if __name__ == "__main__":
    main()
