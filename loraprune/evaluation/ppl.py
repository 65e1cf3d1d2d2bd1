"""Perplexity with LLM-Pruner's protocol: one token stream, non-overlapping windows, exp(mean NLL)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


def tokenize_stream(text: str, tokenizer) -> torch.Tensor:
    """Tokenize a whole split once, without special tokens (no BOS / chat markers inside the stream)."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def windows(ids: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of ``seq_len`` tokens; the remainder is dropped."""
    if seq_len < 2:
        raise ValueError(f"eval seq_len must be >= 2, got {seq_len}")
    n = ids.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"text of {ids.numel()} tokens is shorter than one window of {seq_len}")
    return ids[: n * seq_len].view(n, seq_len)


@torch.no_grad()
def perplexity(
    model: nn.Module,
    ids: torch.Tensor,
    seq_len: int = 128,
    max_windows: int | None = None,
    batch_size: int = 8,
    desc: str = "ppl",
) -> float:
    """PPL = exp(mean NLL over every predicted token of every window)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    w = windows(ids, seq_len, max_windows)
    nll_sum, count = 0.0, 0
    for start in tqdm(range(0, w.shape[0], batch_size), desc=desc, leave=False):
        batch = w[start : start + batch_size].to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        nll_sum += nll.item()
        count += batch[:, 1:].numel()
    model.train(was_training)
    return math.exp(nll_sum / count)
