"""Evaluation throughput: perplexity tokens/s and zero-shot examples/s, through the project's own
evaluation code (:func:`loraprune.evaluation.ppl.perplexity`, lm-eval via
:func:`loraprune.evaluation.zeroshot.evaluate_zeroshot` on the offline task copies)."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from loraprune.evaluation.ppl import LOSS_CHUNK_TOKENS, perplexity
from loraprune.evaluation.zeroshot import ZeroShotSpec, evaluate_zeroshot


def _ppl_time(model: nn.Module, ids: torch.Tensor, seq_len: int, batch: int, chunk_tokens: int) -> float:
    perplexity(model, ids[: batch * seq_len], seq_len, None, batch, "warm-up", chunk_tokens)
    start = time.perf_counter()
    perplexity(model, ids, seq_len, None, batch, "ppl speed", chunk_tokens)
    return time.perf_counter() - start


def ppl_speed(model: nn.Module, *, windows: int, seq_len: int, batch: int) -> dict[str, float]:
    """Perplexity tokens/s of ``windows`` random-token windows of ``seq_len`` (the value means nothing;
    the time is that of any text), side by side: the earlier protocol (whole fp32 logits, then the loss;
    batch 8) and today's (the loss over chunks of positions, batch ``batch``), alternated twice so both
    see the same machine."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (windows * seq_len,), generator=gen)
    before, after = [], []
    for _ in range(2):
        before.append(_ppl_time(model, ids, seq_len, 8, 0))
        after.append(_ppl_time(model, ids, seq_len, batch, LOSS_CHUNK_TOKENS))
    tokens = windows * seq_len
    return {
        "ppl_tokens_per_s": tokens / min(after),
        "ppl_tokens_per_s_before": tokens / min(before),
        "ppl_speedup": min(before) / min(after),
        "ppl_windows": windows,
        "ppl_seconds": min(after),
        "ppl_seconds_before": min(before),
    }


def zeroshot_speed(
    model: nn.Module, tokenizer, *, tasks: list[str], limit: int, batch: int
) -> dict[str, Any]:
    """Zero-shot examples/s over ``tasks`` (``limit`` examples each, offline copies; lm-eval's task set-up
    is included, as in a run)."""
    start = time.perf_counter()
    out = evaluate_zeroshot(
        model, tokenizer, ZeroShotSpec(tasks=tasks, limit=limit, batch_size=batch, source="offline")
    )
    elapsed = time.perf_counter() - start
    examples = sum(t["n"] or 0 for t in out["tasks"].values())
    return {
        "zeroshot_examples_per_s": examples / elapsed,
        "zeroshot_examples": examples,
        "zeroshot_seconds": elapsed,
        "zeroshot_tasks": tasks,
    }


def measure_evaluation(
    model: nn.Module,
    tokenizer,
    *,
    seq_len: int,
    batch: int,
    windows: int,
    tasks: list[str],
    limit: int,
) -> dict[str, Any]:
    """Both figures for one model."""
    return {
        **ppl_speed(model, windows=windows, seq_len=seq_len, batch=batch),
        **zeroshot_speed(model, tokenizer, tasks=tasks, limit=limit, batch=batch),
        "settings": {"seq_len": seq_len, "batch": batch, "windows": windows, "limit": limit},
    }
