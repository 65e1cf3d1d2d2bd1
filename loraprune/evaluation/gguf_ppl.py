"""Perplexity of GGUF files in llama.cpp over the project's own windows (prune then quantize, measured).

The windows are those of :mod:`loraprune.evaluation.ppl` (the set's documents tokenized once by the
project's tokenizer, non-overlapping windows of ``seq_len`` tokens, ``max_windows`` spread evenly over
the stream); llama.cpp (llama-cpp-python, ``logits_all=True``) gets the same token ids, one window per
context with no BOS, and each window's summed NLL is computed from its logits as
:func:`~loraprune.evaluation.ppl.window_nll` does, so the numbers compare with a run's ``metrics.json``
and between files window by window. Example::

    python -m loraprune.cli.gguf_ppl dense-q4_k_m.gguf pruned-f16.gguf pruned-q4_k_m.gguf \\
        --sets wiki_embedded,news_embedded --max-windows 64
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from loraprune.evaluation.ppl import TokenStream, WindowLosses, stream_windows

BINDING_HINT = "pip install llama-cpp-python==0.3.36 (or 'loraprune[llamacpp]')"
KV_TYPES = {"f32": 0, "f16": 1}  # ggml types of llama.cpp's KV cache


def llama_cpp_module(what: str):
    """The ``llama_cpp`` module; a one-line ValueError naming the package when it is not installed."""
    try:
        import llama_cpp
    except ImportError:
        raise ValueError(f"{what} runs llama.cpp through llama-cpp-python: {BINDING_HINT}") from None
    return llama_cpp


def window_nll_from_logits(logits: np.ndarray, ids: np.ndarray) -> float:
    """Summed NLL (nats) of ``ids[1:]`` under ``logits[:-1]`` (float64 log-softmax)."""
    x = logits[:-1].astype(np.float64)
    top = x.max(-1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(x - top).sum(-1))
    return float((lse - x[np.arange(len(ids) - 1), ids[1:]]).sum())


def gguf_window_losses(
    path: str | Path,
    stream: TokenStream,
    seq_len: int = 128,
    max_windows: int | None = 64,
    *,
    threads: int | None = None,
    kv_cache: str = "f16",
) -> WindowLosses:
    """Every selected window's summed NLL under the GGUF model ``path`` in llama.cpp.

    Args:
        path: the ``.gguf`` file.
        stream: the tokenized set (:func:`~loraprune.evaluation.ppl.tokenize_documents`).
        seq_len, max_windows: the windows, as :func:`~loraprune.evaluation.ppl.stream_windows`.
        threads: llama.cpp's threads (None: its default).
        kv_cache: ``f16`` (llama.cpp's default, what a user runs) or ``f32`` (for parity checks).
    """
    llama_cpp = llama_cpp_module("GGUF perplexity")
    windows, info = stream_windows(stream, seq_len, max_windows)
    kv = KV_TYPES[kv_cache]
    llm = llama_cpp.Llama(
        str(path),
        n_ctx=seq_len,
        n_batch=seq_len,
        n_ubatch=seq_len,
        logits_all=True,
        n_threads=threads,
        n_threads_batch=threads,
        type_k=kv,
        type_v=kv,
        verbose=False,
    )
    try:
        for row in windows.numpy():
            llm.reset()
            llm.eval(row.tolist())
            info.nll.append(window_nll_from_logits(np.asarray(llm.scores[:seq_len]), row))
    finally:
        llm.close()
    return info


def gguf_info(path: str | Path) -> dict[str, Any]:
    """File size, architecture, type and parameter counts (``loraprune.*`` keys where written)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(name: str) -> Any:
        f = reader.fields.get(name)
        if f is None:
            return None
        return f.contents() if hasattr(f, "contents") else None

    params = sum(int(np.prod(t.shape)) for t in reader.tensors if not t.name.startswith("rope_freqs"))
    return {
        "file": str(path),
        "mib": Path(path).stat().st_size / 2**20,
        "arch": field("general.architecture"),
        "quant": field("loraprune.quantization"),
        "params": params,
    }


def gguf_perplexities(
    paths: list[str | Path],
    streams: dict[str, TokenStream],
    seq_len: int = 128,
    max_windows: int | None = 64,
    *,
    threads: int | None = None,
    kv_cache: str = "f16",
) -> list[dict[str, Any]]:
    """Per file: :func:`gguf_info` and, per set, the perplexity with its document-bootstrap interval and
    the per-window losses."""
    from loraprune.evaluation.intervals import bootstrap_ppl

    rows = []
    for path in paths:
        row = gguf_info(path) | {"ppl": {}, "interval": {}, "windows": {}}
        for name, stream in streams.items():
            losses = gguf_window_losses(
                path, stream, seq_len, max_windows, threads=threads, kv_cache=kv_cache
            )
            ci = bootstrap_ppl(losses.nll, losses.document, losses.tokens_per_window)
            row["ppl"][name] = losses.ppl
            row["interval"][name] = [ci.low, ci.high]
            row["windows"][name] = losses.to_dict()
        rows.append(row)
    return rows


def load_streams(sets: list[str], tokenizer) -> dict[str, TokenStream]:
    """The sets' documents tokenized once each, as a run does (:func:`loraprune.run.evaluate`)."""
    from loraprune import data
    from loraprune.evaluation.ppl import tokenize_documents

    return {n: tokenize_documents(data.load_eval_documents(n), tokenizer) for n in sets}


def render(rows: list[dict[str, Any]], sets: list[str]) -> str:
    """A Markdown table: file, architecture, type, size, parameters, perplexity [95% interval] per set."""
    head = ["file", "arch", "type", "MiB", "params", *(f"{s} ppl [95%]" for s in sets)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [Path(r["file"]).name, r["arch"], r["quant"], f"{r['mib']:.1f}", f"{r['params'] / 1e6:.2f}M"]
        cells += [f"{r['ppl'][s]:.3f} [{r['interval'][s][0]:.2f}, {r['interval'][s][1]:.2f}]" for s in sets]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
