"""Perplexity with LLM-Pruner's protocol: one token stream, non-overlapping windows, exp(mean NLL).

Every evaluated window keeps its own summed NLL and the document it starts in
(:class:`WindowLosses`), so intervals can resample whole documents and two runs can be paired window by
window (:mod:`loraprune.evaluation.intervals`). ``max_windows=None`` evaluates every window of the
stream; a cap takes windows spread evenly over the whole stream (:func:`select_windows`), never the
first N. The loss is computed from the final hidden states in chunks of positions
(:func:`window_nll`), so the ``[batch, seq, vocab]`` logits are never materialised in fp32 whole.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

LOSS_CHUNK_TOKENS = 1024
"""Positions whose logits are computed at once by :func:`window_nll`."""


@dataclass(frozen=True)
class TokenStream:
    """A tokenized evaluation set: the token ids and the token index where each document starts.

    Attributes:
        ids: The whole split as one stream (1-D, long).
        doc_starts: Ascending token offsets of the documents; ``doc_starts[0] == 0``. One entry when the
            document boundaries are unknown: every window then counts as its own document.
    """

    ids: torch.Tensor
    doc_starts: tuple[int, ...] = (0,)

    @property
    def num_documents(self) -> int:
        """Documents in the stream."""
        return len(self.doc_starts)

    def document_of(self, token: int) -> int:
        """Index of the document that holds token ``token``."""
        return bisect.bisect_right(self.doc_starts, token) - 1


@dataclass
class WindowLosses:
    """The evaluated windows of one set and their losses.

    Attributes:
        window: Index of each evaluated window in the set's stream.
        document: Index of the document each window starts in.
        nll: Summed NLL (nats) over each window's ``tokens_per_window`` predicted tokens.
        tokens_per_window: Predicted tokens per window (``seq_len - 1``).
        windows_total: Windows in the whole stream.
        documents_total: Documents in the whole stream.
    """

    window: list[int]
    document: list[int]
    nll: list[float] = field(default_factory=list)
    tokens_per_window: int = 0
    windows_total: int = 0
    documents_total: int = 0

    @property
    def ppl(self) -> float:
        """exp(mean NLL per predicted token) over the evaluated windows."""
        return math.exp(sum(self.nll) / (len(self.nll) * self.tokens_per_window))

    @property
    def documents(self) -> int:
        """Distinct documents the evaluated windows start in."""
        return len(set(self.document))

    def coverage(self) -> dict[str, int]:
        """How many windows of how many, and of how many documents (for logs and metrics.json)."""
        return {
            "windows": len(self.window),
            "of": self.windows_total,
            "documents": self.documents,
            "of_documents": self.documents_total,
        }

    def to_dict(self) -> dict:
        """The JSON form written to ``window_losses.json`` (per stage and set)."""
        return {
            "windows_total": self.windows_total,
            "documents_total": self.documents_total,
            "window": list(self.window),
            "document": list(self.document),
            "nll": [round(float(v), 6) for v in self.nll],
        }

    @classmethod
    def from_dict(cls, d: dict, tokens_per_window: int) -> WindowLosses:
        """Inverse of :meth:`to_dict`."""
        return cls(
            window=list(d["window"]),
            document=list(d["document"]),
            nll=[float(v) for v in d["nll"]],
            tokens_per_window=tokens_per_window,
            windows_total=int(d["windows_total"]),
            documents_total=int(d["documents_total"]),
        )


def tokenize_stream(text: str, tokenizer) -> torch.Tensor:
    """Tokenize a whole split once, without special tokens (no BOS / chat markers inside the stream)."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def tokenize_documents(docs: Sequence[str], tokenizer, sep: str = "\n\n") -> TokenStream:
    """The documents joined by ``sep`` and tokenized once (the same ids as :func:`tokenize_stream` of the
    joined text), with the token offset where each document starts.

    The offsets come from the fast tokenizer's character offsets; a tokenizer without them gives one
    document (intervals then treat every window as independent).
    """
    text = sep.join(docs)
    if not getattr(tokenizer, "is_fast", False) or len(docs) < 2:
        return TokenStream(tokenize_stream(text, tokenizer), (0,))
    enc = tokenizer(text, add_special_tokens=False, return_attention_mask=False, return_offsets_mapping=True)
    char_starts, pos = [], 0
    for doc in docs:
        char_starts.append(pos)
        pos += len(doc) + len(sep)
    token_ends = [end for _, end in enc["offset_mapping"]]
    doc_starts = [0]
    for c in char_starts[1:]:
        doc_starts.append(max(doc_starts[-1], bisect.bisect_right(token_ends, c)))
    return TokenStream(torch.tensor(enc["input_ids"], dtype=torch.long), tuple(doc_starts))


def select_windows(total: int, max_windows: int | None) -> list[int]:
    """Indices of the windows to evaluate: all of them, or ``max_windows`` spread evenly over the stream
    (window ``floor(i * total / max_windows)`` for ``i < max_windows``)."""
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"eval.max_windows must be >= 1 or null (every window), got {max_windows}")
    if max_windows is None or max_windows >= total:
        return list(range(total))
    return [i * total // max_windows for i in range(max_windows)]


def stream_windows(
    stream: TokenStream, seq_len: int, max_windows: int | None
) -> tuple[torch.Tensor, WindowLosses]:
    """The selected non-overlapping windows of ``seq_len`` tokens (the remainder is dropped) and their
    bookkeeping, losses still empty."""
    if seq_len < 2:
        raise ValueError(f"eval seq_len must be >= 2, got {seq_len}")
    total = stream.ids.numel() // seq_len
    if total == 0:
        raise ValueError(f"text of {stream.ids.numel()} tokens is shorter than one window of {seq_len}")
    chosen = select_windows(total, max_windows)
    windows = stream.ids[: total * seq_len].view(total, seq_len)[chosen]
    if stream.num_documents == 1:  # boundaries unknown (or one text): every window counts on its own
        document, documents_total = list(chosen), total
    else:
        document = [stream.document_of(i * seq_len) for i in chosen]
        documents_total = sum(1 for s in stream.doc_starts if s < total * seq_len)
    info = WindowLosses(
        window=chosen,
        document=document,
        tokens_per_window=seq_len - 1,
        windows_total=total,
        documents_total=documents_total,
    )
    return windows, info


def _decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The model's decoder (hidden states) and output layer, when it exposes them (HF causal LMs, also
    behind a peft wrapper); None otherwise."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder = getattr(base, "get_decoder", None)
    get_head = getattr(base, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    decoder, head = get_decoder(), get_head()
    if decoder is None or head is None or getattr(base.config, "final_logit_softcapping", None):
        return None
    return decoder, head


def window_nll(model: nn.Module, batch: torch.Tensor, chunk_tokens: int = LOSS_CHUNK_TOKENS) -> torch.Tensor:
    """Summed NLL of every window of ``batch`` ([B, S] ids): one value per window, fp32.

    Runs the decoder once and the output layer over ``chunk_tokens`` positions at a time, so the full
    logits never exist in fp32 at once; ``chunk_tokens=0`` and models that do not expose decoder and
    head take the full forward (all logits, then the loss).
    """
    targets = batch[:, 1:]
    parts = _decoder_and_head(model) if chunk_tokens > 0 else None
    if parts is None:
        logits = model(input_ids=batch).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        return nll.sum(dim=1)
    decoder, head = parts
    hidden = decoder(input_ids=batch, use_cache=False).last_hidden_state[:, :-1]
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_t = targets.reshape(-1)
    losses = torch.empty(flat_t.numel(), dtype=torch.float32, device=batch.device)
    for start in range(0, flat_t.numel(), chunk_tokens):
        sl = slice(start, start + chunk_tokens)
        logits = head(flat_h[sl]).float()
        losses[sl] = F.cross_entropy(logits, flat_t[sl], reduction="none")
    return losses.view(targets.shape).sum(dim=1)


@torch.no_grad()
def window_losses(
    model: nn.Module,
    stream: TokenStream | torch.Tensor,
    seq_len: int = 128,
    max_windows: int | None = None,
    batch_size: int = 8,
    desc: str = "ppl",
    chunk_tokens: int = LOSS_CHUNK_TOKENS,
) -> WindowLosses:
    """Every selected window's summed NLL (see :func:`stream_windows`, :func:`window_nll`)."""
    if isinstance(stream, torch.Tensor):
        stream = TokenStream(stream)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    windows, info = stream_windows(stream, seq_len, max_windows)
    nll: list[float] = []
    for start in tqdm(range(0, windows.shape[0], batch_size), desc=desc, leave=False):
        nll += window_nll(model, windows[start : start + batch_size].to(device), chunk_tokens).tolist()
    model.train(was_training)
    info.nll = nll
    return info


def perplexity(
    model: nn.Module,
    ids: TokenStream | torch.Tensor,
    seq_len: int = 128,
    max_windows: int | None = None,
    batch_size: int = 8,
    desc: str = "ppl",
    chunk_tokens: int = LOSS_CHUNK_TOKENS,
) -> float:
    """PPL = exp(mean NLL over every predicted token of every selected window)."""
    return window_losses(model, ids, seq_len, max_windows, batch_size, desc, chunk_tokens).ppl
