"""The pruned model against the dense one: prefill tokens/s, decode ms/token, parameter and FLOP ratios.

A pruned model here is the dense one with the structure removed that a run at group ratio ``r`` removes
(every prunable layer, the default excluded layers kept; the groups chosen by weight magnitude, ``l2``:
which groups go does not change the speed). Prefill: ``batch × seq_len`` tokens in one forward, keeping
the last position's logits only (as ``generate`` does), the median of ``repeats`` timed runs after a
warm-up. Decode: greedy ``generate`` at batch 1 from a ``prompt_len``-token prompt; ms/token is
``(t(new_tokens) − t(1)) / (new_tokens − 1)``, so the prompt's prefill is not counted. FLOPs: torch's
``FlopCounterMode`` over one prefill forward at batch 1 (matmuls and attention), what the prefill speed-up
should approach.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from loraprune.core.schedule import build_schedule
from loraprune.core.structure import Geometry, default_excluded_layers
from loraprune.core.surgery import count_parameters
from loraprune.criteria import build_criterion
from loraprune.pruners import CalibrationData, PrunerSettings, build_pruner


def pruned_copy(model: nn.Module, ratio: float, round_to: int | None = None) -> nn.Module:
    """A copy of ``model`` with the groups of ratio ``ratio`` removed (by weight magnitude); ``round_to``:
    kept widths a multiple of it (``prune.round_to``)."""
    pruned = copy.deepcopy(model)
    geo = Geometry.from_config(pruned.config)
    settings = PrunerSettings(
        ratio=ratio, excluded_layers=default_excluded_layers(geo.num_layers), round_to=round_to
    )
    pruner = build_pruner(pruned, geo, build_criterion("l2"), settings, build_schedule("one_shot", ratio, 1))
    pruner.prepare(CalibrationData([], 0))
    return pruner.finalize().apply(pruned).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def prefill_flops(model: nn.Module, seq_len: int) -> int:
    """FLOPs of one prefill forward of ``seq_len`` tokens at batch 1."""
    device = next(model.parameters()).device
    ids = torch.randint(3, model.config.vocab_size, (1, seq_len), device=device)
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, logits_to_keep=1)
    return counter.get_total_flops()


@torch.inference_mode()
def speed(
    model: nn.Module, batch: int, seq_len: int, prompt_len: int, new_tokens: int, repeats: int
) -> dict[str, float]:
    """Prefill tokens/s at ``batch × seq_len`` and decode ms/token at batch 1."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (batch, seq_len), generator=gen).to(device)
    prefill_s = _timed(lambda: model(input_ids=ids, logits_to_keep=1), device, repeats)
    prompt = ids[:1, :prompt_len]

    def generate(n: int) -> None:
        model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=model.config.pad_token_id or 0,
        )

    one = _timed(lambda: generate(1), device, repeats)
    full = _timed(lambda: generate(new_tokens), device, repeats)
    return {
        "prefill_tokens_per_s": batch * seq_len / prefill_s,
        "decode_ms_per_token": 1000 * (full - one) / max(new_tokens - 1, 1),
    }


def measure_inference(
    model: nn.Module,
    ratios: list[float],
    *,
    batch: int = 8,
    seq_len: int = 512,
    prompt_len: int = 32,
    new_tokens: int = 128,
    repeats: int = 3,
    round_to: list[int | None] | None = None,
) -> dict[str, Any]:
    """Dense and pruned rows: speed, parameter and FLOP counts, and each ratio to the dense model.

    ``round_to``: each ratio once per value (``None``: widths as selected), side by side."""
    model.generation_config.eos_token_id = None  # generate exactly new_tokens
    rows = []
    for ratio, rounding in [(0.0, None), *((r, n) for r in ratios for n in (round_to or [None]))]:
        m = model if ratio == 0 else pruned_copy(model, ratio, rounding)
        row = {"ratio": ratio, "params": count_parameters(m), "prefill_flops": prefill_flops(m, seq_len)}
        row["round_to"] = rounding
        row.update(speed(m, batch, seq_len, prompt_len, new_tokens, repeats))
        rows.append(row)
        del m
    dense = rows[0]
    for row in rows:
        row["param_ratio"] = row["params"] / dense["params"]
        row["flop_ratio"] = row["prefill_flops"] / dense["prefill_flops"]
        row["prefill_speedup"] = row["prefill_tokens_per_s"] / dense["prefill_tokens_per_s"]
        row["decode_speedup"] = dense["decode_ms_per_token"] / row["decode_ms_per_token"]
        # the target: prefill speed-up >= 0.9 x what the FLOP count predicts (1 / flop_ratio)
        row["prefill_vs_flops"] = row["prefill_speedup"] * row["flop_ratio"]
    settings = {"batch": batch, "seq_len": seq_len, "prompt_len": prompt_len, "new_tokens": new_tokens}
    return {"settings": settings | {"repeats": repeats}, "rows": rows}
