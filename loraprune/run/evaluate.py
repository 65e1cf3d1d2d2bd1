"""A run's perplexity evaluation: the sets tokenized once, each stage's per-window losses kept and written
to ``window_losses.json``, the dense model's losses cached across runs.

``window_losses.json`` (format ``loraprune.window_losses/1``) holds, per stage (``dense``,
``pruned_before_recovery``, ``pruned``) and set, the evaluated windows, the document each starts in and
its summed NLL (:class:`loraprune.evaluation.ppl.WindowLosses`); intervals and paired differences are
computed from it (:mod:`loraprune.evaluation.intervals`). It is rewritten after every stage, so a resumed
run keeps what it measured before the kill.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loraprune import data
from loraprune.config.schema import LoraPruneConfig
from loraprune.evaluation.intervals import bootstrap_ppl
from loraprune.evaluation.ppl import TokenStream, WindowLosses, tokenize_documents, window_losses
from loraprune.models.loading import cache_dir
from loraprune.train.checkpoint import write_json

log = logging.getLogger("loraprune")

WINDOW_LOSSES = "window_losses.json"
FORMAT = "loraprune.window_losses/1"
CACHE_FORMAT = "loraprune.dense_eval/1"


def load_eval_streams(cfg: LoraPruneConfig, tokenizer) -> dict[str, TokenStream]:
    """Every perplexity set, its documents tokenized once as one stream."""
    mirror = cfg.data.mirror
    return {
        n: tokenize_documents(data.load_eval_documents(n, mirror=mirror), tokenizer)
        for n in cfg.eval.ppl_sets
    }


# ------------------------------------------------------------------------------------ the dense cache
def weights_digest(model: nn.Module) -> str:
    """A content hash of every parameter and buffer (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted({**dict(model.named_parameters()), **dict(model.named_buffers())}.items()):
        t = tensor.detach()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def stream_digest(stream: TokenStream) -> str:
    """A content hash of a tokenized set (its ids and document starts: text and tokenizer together)."""
    h = hashlib.sha256(stream.ids.to(torch.int64).cpu().numpy().tobytes())
    h.update(json.dumps(list(stream.doc_starts)).encode())
    return h.hexdigest()


def cache_key(
    weights: str, stream: TokenStream, seq_len: int, max_windows: int | None, model: nn.Module
) -> str:
    """The cache key of one set's dense losses: weights, tokens, protocol, dtype, device kind, torch."""
    param = next(model.parameters())
    parts = [CACHE_FORMAT, weights, stream_digest(stream), str(seq_len), str(max_windows)]
    parts += [str(param.dtype), param.device.type, torch.__version__]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def dense_cache_dir() -> Path:
    """Where dense losses are cached (``$LORAPRUNE_CACHE/dense_eval``, default ``~/.cache/loraprune``)."""
    return cache_dir() / "dense_eval"


def _read_cache(path: Path, tokens_per_window: int) -> WindowLosses | None:
    try:
        return WindowLosses.from_dict(json.loads(path.read_text(encoding="utf-8")), tokens_per_window)
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------------------------------ a record
class EvalRecord:
    """The per-window losses of a run's stages, written to ``run_dir/window_losses.json``."""

    def __init__(self, run_dir: Path | None, seq_len: int, resume: bool = False) -> None:
        self.path = None if run_dir is None else Path(run_dir) / WINDOW_LOSSES
        self.seq_len = seq_len
        self.stages: dict[str, dict[str, WindowLosses]] = {}
        if resume and self.path is not None and self.path.exists():
            self.stages = read_window_losses(self.path)

    def add(self, stage: str, losses: dict[str, WindowLosses]) -> None:
        """Keep one stage's losses and rewrite the file."""
        self.stages[stage] = losses
        if self.path is not None:
            write_json(self.path, self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON content."""
        return {
            "format": FORMAT,
            "seq_len": self.seq_len,
            "tokens_per_window": self.seq_len - 1,
            "stages": {
                stage: {name: wl.to_dict() for name, wl in sets.items()}
                for stage, sets in self.stages.items()
            },
        }


def read_window_losses(path: str | Path) -> dict[str, dict[str, WindowLosses]]:
    """The stages of a ``window_losses.json`` file.

    Raises:
        ValueError: Not such a file.
    """
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    tpw = int(raw["tokens_per_window"])
    return {
        stage: {name: WindowLosses.from_dict(d, tpw) for name, d in sets.items()}
        for stage, sets in raw["stages"].items()
    }


# --------------------------------------------------------------------------------------- evaluation
def evaluate_ppl(
    model: nn.Module,
    cfg: LoraPruneConfig,
    streams: dict[str, TokenStream],
    tag: str,
    record: EvalRecord | None = None,
    *,
    cached: bool = False,
) -> dict[str, Any]:
    """Perplexity of every set, with its 95% document-bootstrap interval and the windows it covers.

    Args:
        tag: The stage (``dense``, ``pruned``, ``one-shot`` = before recovery).
        record: Where the per-window losses go.
        cached: Read and write the dense cache (:func:`dense_cache_dir`), keyed by content hashes.
    """
    e = cfg.eval
    weights = weights_digest(model) if cached and streams else None
    losses: dict[str, WindowLosses] = {}
    for name, stream in streams.items():
        path = None
        if weights is not None:
            path = dense_cache_dir() / f"{cache_key(weights, stream, e.seq_len, e.max_windows, model)}.json"
            hit = _read_cache(path, e.seq_len - 1)
            if hit is not None:
                log.info("%s ppl %s: from the dense cache (%s)", tag, name, path.name)
                losses[name] = hit
                continue
        losses[name] = window_losses(
            model, stream, e.seq_len, e.max_windows, e.batch_size, desc=f"{tag} ppl {name}"
        )
        if path is not None:
            write_json(path, losses[name].to_dict())
    if record is not None:
        record.add("pruned_before_recovery" if tag == "one-shot" else tag, losses)
    return summarize(losses, tag)


def summarize(losses: dict[str, WindowLosses], tag: str) -> dict[str, Any]:
    """``{"ppl": {set: value}, "ppl_ci": {set: [low, high]}}``, logged with the windows each covers."""
    ppl = {name: wl.ppl for name, wl in losses.items()}
    ci = {}
    for name, wl in losses.items():
        iv = bootstrap_ppl(wl.nll, wl.document, wl.tokens_per_window)
        ci[name] = [iv.low, iv.high]
    windows = {name: wl.coverage() for name, wl in losses.items()}
    log.info(
        "%s ppl: %s",
        tag,
        ", ".join(
            f"{k} {v:.3f} [{ci[k][0]:.2f}, {ci[k][1]:.2f}] ({_covers(windows[k])})" for k, v in ppl.items()
        ),
    )
    return {"ppl": ppl, "ppl_ci": ci}


def _covers(c: dict[str, int]) -> str:
    return f"{c['windows']}/{c['of']} windows, {c['documents']}/{c['of_documents']} docs"


def coverage(record: EvalRecord) -> dict[str, dict[str, int]]:
    """How many windows of how many, and of how many documents, each set's evaluation covers."""
    out: dict[str, dict[str, int]] = {}
    for sets in record.stages.values():
        for name, wl in sets.items():
            out.setdefault(name, wl.coverage())
    return out
