"""The ``gguf`` figure: dense and pruned GGUFs in llama.cpp, side by side at each GGUF type.

Every model (the dense one; pruned copies at each ``--ratios`` value, by weight magnitude as the
``inference`` figure builds them, once per ``--round-to`` value; a finished run's saved model with
``--gguf-run``) is written with :func:`loraprune.export.gguf_model.write_gguf` at each type (``f16``,
``q4_k_m`` ...) and loaded by llama.cpp through llama-cpp-python. Measured per file: its size, prompt
processing tokens/s (one ``Llama.eval`` of ``pp_tokens`` random ids, last position's logits only, the
median of ``repeats`` after a warm-up) and generation tokens/s (greedy, one token per ``eval`` after a
``prompt_len``-token prompt, ``new_tokens`` tokens; the prompt is not timed), next to the model's
parameter count and its ratio to the dense model. With ``ppl_sets``, also the perplexity of each file
over the project's windows (:mod:`loraprune.evaluation.gguf_ppl`): which combination of pruning and
quantization gives the smallest file at a given quality.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from loraprune.core.surgery import count_parameters
from loraprune.evaluation.gguf_ppl import gguf_window_losses, llama_cpp_module, load_streams

log = logging.getLogger("loraprune")


def check_gguf_figure(quants: list[str]) -> None:
    """Fail before any work: the binding missing, an unknown GGUF type (one-line ValueErrors)."""
    from loraprune.export.gguf_quant import parse_type

    llama_cpp_module("the gguf figure")
    for q in quants:
        parse_type(q)


def llama_cpp_speed(
    path: str | Path,
    *,
    pp_tokens: int = 512,
    prompt_len: int = 32,
    new_tokens: int = 128,
    repeats: int = 3,
    threads: int | None = None,
) -> dict[str, float]:
    """Prompt-processing and greedy generation tokens/s of the GGUF ``path`` in llama.cpp."""
    llama_cpp = llama_cpp_module("the gguf figure")
    llm = llama_cpp.Llama(
        str(path),
        n_ctx=max(pp_tokens, prompt_len + new_tokens) + 8,
        n_batch=pp_tokens,
        n_ubatch=pp_tokens,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    vocab = llm.n_vocab()
    ids = np.random.default_rng(0).integers(3, vocab, pp_tokens).tolist()

    def prompt() -> None:
        llm.reset()
        llm.eval(ids)

    def generate() -> None:
        tok = int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,)).argmax())
        llm.eval([tok])

    try:
        prompt()  # warm-up
        pp = []
        for _ in range(repeats):
            start = time.perf_counter()
            prompt()
            pp.append(time.perf_counter() - start)
        tg = []
        for _ in range(repeats):
            llm.reset()
            llm.eval(ids[:prompt_len])
            start = time.perf_counter()
            for _ in range(new_tokens):
                generate()
            tg.append(time.perf_counter() - start)
    finally:
        llm.close()
    return {
        "pp_tokens_per_s": pp_tokens / statistics.median(pp),
        "tg_tokens_per_s": new_tokens / statistics.median(tg),
    }


def _models(model: nn.Module, ratios: list[float], round_to: list[int | None], run: str | None):
    """``(name, ratio, round_to, build)`` per model; ``build()`` returns ``(model, tokenizer or None)``."""
    from loraprune.bench.inference import pruned_copy

    yield "dense", 0.0, None, lambda: model
    for ratio in ratios:
        for n in round_to:
            name = f"pruned {ratio:.0%}" + (f", round_to {n}" if n else "")
            yield name, ratio, n, lambda r=ratio, n=n: pruned_copy(model, r, n)
    if run:
        yield f"run {Path(run).name}", None, None, None


def _run_model(run: str) -> nn.Module:
    from loraprune.run.exporting import model_dir_of
    from loraprune.train.checkpoint import load_pruned

    return load_pruned(model_dir_of(Path(run)))


def _measure_file(
    model: nn.Module | None,
    tokenizer,
    run: str | None,
    path: Path,
    quant: str,
    *,
    keep: bool,
    speed: dict[str, Any],
    streams: dict,
    seq_len: int,
    ppl_windows: int,
) -> dict[str, Any]:
    """One GGUF written (from ``model``, else the run's saved model), its size, llama.cpp speed and
    perplexity per stream; the file removed after unless ``keep``."""
    from loraprune.export.gguf_model import write_gguf
    from loraprune.run.exporting import export_gguf

    log.info("bench: gguf %s %s", path.stem, quant)
    if model is not None:
        arch = write_gguf(model, tokenizer, path, quant=quant)["arch"]
    else:
        arch = export_gguf(run, path, quant)["arch"]
    row: dict[str, Any] = {"arch": arch, "mib": path.stat().st_size / 2**20}
    row |= llama_cpp_speed(path, **speed)
    row["ppl"] = {
        s: gguf_window_losses(path, st, seq_len, ppl_windows, threads=speed["threads"]).ppl
        for s, st in streams.items()
    }
    if not keep:
        path.unlink()
    return row


def _relative_to_dense(rows: list[dict[str, Any]]) -> None:
    """Each row's parameters, size and speeds as ratios to the dense file of the same type."""
    dense = {r["quant"]: r for r in rows if r["model"] == "dense"}
    for r in rows:
        d = dense[r["quant"]]
        r["param_ratio"] = r["params"] / d["params"]
        r["size_ratio"] = r["mib"] / d["mib"]
        r["pp_speedup"] = r["pp_tokens_per_s"] / d["pp_tokens_per_s"]
        r["tg_speedup"] = r["tg_tokens_per_s"] / d["tg_tokens_per_s"]


def measure_gguf(
    model: nn.Module,
    tokenizer,
    *,
    ratios: list[float],
    quants: list[str],
    round_to: list[int | None] | None = None,
    run: str | None = None,
    pp_tokens: int = 512,
    prompt_len: int = 32,
    new_tokens: int = 128,
    repeats: int = 3,
    threads: int | None = None,
    ppl_sets: list[str] | None = None,
    ppl_windows: int = 32,
    seq_len: int = 128,
    keep_dir: str | Path | None = None,
    streams: dict | None = None,
) -> dict[str, Any]:
    """Rows of (model, type): parameters and their ratio to the dense model, file size, llama.cpp speed
    and each ratio to the dense file of the same type; perplexity per set with ``ppl_sets``.

    ``run``: a finished run directory whose saved model joins the rows (exported with its card, as
    ``loraprune-export --form gguf`` does). ``keep_dir``: write the files there (default: a temporary
    folder, removed after). ``streams``: tokenized sets (default: ``ppl_sets`` tokenized by
    ``tokenizer``).
    """
    check_gguf_figure(quants)
    if ppl_sets and streams is None:
        streams = load_streams(ppl_sets, tokenizer)
    tmp = None if keep_dir else tempfile.TemporaryDirectory(prefix="loraprune-gguf-")
    folder = Path(keep_dir or tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    try:
        for name, ratio, rounding, build in _models(model, ratios, round_to or [None], run):
            m = build() if build else _run_model(run)
            for quant in quants:
                row = {"model": name, "ratio": ratio, "round_to": rounding, "quant": quant}
                row |= _measure_file(
                    m if build else None,
                    tokenizer,
                    run,
                    folder / f"{name.replace(' ', '').replace(',', '-').replace('%', '')}-{quant}.gguf",
                    quant,
                    keep=bool(keep_dir),
                    speed={
                        "pp_tokens": pp_tokens,
                        "prompt_len": prompt_len,
                        "new_tokens": new_tokens,
                        "repeats": repeats,
                        "threads": threads,
                    },
                    streams=streams or {},
                    seq_len=seq_len,
                    ppl_windows=ppl_windows,
                )
                row["params"] = count_parameters(m)
                rows.append(row)
            del m
    finally:
        if tmp is not None:
            tmp.cleanup()
    _relative_to_dense(rows)
    import llama_cpp

    settings = {
        "quants": quants,
        "pp_tokens": pp_tokens,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "threads": threads,
        "ppl_sets": list(streams or {}),
        "ppl_windows": ppl_windows,
        "seq_len": seq_len,
        "llama_cpp_python": getattr(llama_cpp, "__version__", None),
    }
    return {"settings": settings, "rows": rows}
