"""Bootstrap intervals on perplexity from per-window losses, resampling whole documents.

Windows of one document share its topic and style, so they are not independent draws: every replicate
draws documents with replacement and keeps all the windows of each drawn document. A set's perplexity is
``exp(sum(nll) / (windows * tokens_per_window))``; several sets are combined by their geometric mean
(the mean of the log perplexities), each set resampled on its own within a replicate. Paired differences
draw the same documents for both runs, so the difficulty the runs share cancels. Intervals are
percentile intervals of the replicates; the estimate is the value on all windows. Pure numpy, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

_CHUNK = 256  # replicates drawn at once (bounds the (replicates, documents) index array)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval."""

    estimate: float
    low: float
    high: float

    @property
    def width(self) -> float:
        """``high - low``."""
        return self.high - self.low

    @property
    def excludes_zero(self) -> bool:
        """Whether 0 lies outside ``[low, high]`` (a difference whose sign the data settle)."""
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class _Docs:
    """Per-document sums of one set: NLL of each run (rows) and window counts."""

    nll: np.ndarray  # (runs, documents)
    windows: np.ndarray  # (documents,)


def _by_document(nlls: Sequence[ArrayLike], document: ArrayLike) -> _Docs:
    """Sum each run's window NLLs per document (documents in order of first id)."""
    doc = np.asarray(document)
    arrays = [np.asarray(n, dtype=np.float64) for n in nlls]
    if doc.ndim != 1 or any(a.shape != doc.shape for a in arrays):
        shapes = ", ".join(str(a.shape) for a in arrays)
        raise ValueError(f"nll arrays {shapes} and document {doc.shape} must be 1-D and of one length")
    if doc.size == 0:
        raise ValueError("no windows: a perplexity needs at least one window")
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError("nll holds non-finite values")
    _, inverse = np.unique(doc, return_inverse=True)
    sums = np.stack([np.bincount(inverse, weights=a) for a in arrays])
    return _Docs(sums, np.bincount(inverse).astype(np.float64))


def _replicates(sets: Sequence[_Docs], tokens_per_window: int, n_boot: int, seed: int) -> np.ndarray:
    """Mean per-token NLL of every run, averaged over the sets: ``(n_boot, runs)``.

    Each replicate draws each set's documents with replacement (the same draw for every run of a set).
    """
    rng = np.random.default_rng(seed)
    out = np.zeros((n_boot, sets[0].nll.shape[0]))
    for start in range(0, n_boot, _CHUNK):
        size = min(_CHUNK, n_boot - start)
        for docs in sets:
            n_docs = docs.windows.size
            draw = rng.integers(0, n_docs, size=(size, n_docs))
            windows = docs.windows[draw].sum(axis=1)  # (size,)
            nll = docs.nll[:, draw].sum(axis=2).T  # (size, runs)
            out[start : start + size] += nll / (windows[:, None] * tokens_per_window)
    return out / len(sets)


def _point(sets: Sequence[_Docs], tokens_per_window: int) -> np.ndarray:
    """Mean per-token NLL of every run on all windows, averaged over the sets: ``(runs,)``."""
    return sum(d.nll.sum(axis=1) / (d.windows.sum() * tokens_per_window) for d in sets) / len(sets)


def _check(tokens_per_window: int, n_boot: int, level: float) -> None:
    if tokens_per_window < 1:
        raise ValueError(f"tokens_per_window must be >= 1, got {tokens_per_window}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def _bounds(values: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval of ``values`` at ``level``."""
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def _same_windows(windows: tuple[ArrayLike, ArrayLike] | None) -> None:
    if windows is None:
        return
    a, b = (np.asarray(w) for w in windows)
    if a.shape != b.shape or not np.array_equal(a, b):
        raise ValueError("the two runs were evaluated on different windows; pairing needs the same ones")


def geomean_ppl(
    sets: Sequence[tuple[ArrayLike, ArrayLike]],
    tokens_per_window: int,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """The geometric mean of the sets' perplexities, with its percentile bootstrap interval.

    Args:
        sets: ``(nll, document)`` per set: summed NLL of each window, the document each window starts in.
        tokens_per_window: predicted tokens per window.
        n_boot: bootstrap replicates; level: the interval's coverage; seed: the generator's seed.

    Raises:
        ValueError: no set, an empty set, arrays of different lengths, or a bad parameter.
    """
    _check(tokens_per_window, n_boot, level)
    if not sets:
        raise ValueError("geomean_ppl needs at least one set")
    docs = [_by_document([nll], document) for nll, document in sets]
    low, high = _bounds(np.exp(_replicates(docs, tokens_per_window, n_boot, seed)[:, 0]), level)
    return Interval(float(np.exp(_point(docs, tokens_per_window)[0])), low, high)


def bootstrap_ppl(
    nll: ArrayLike,
    document: ArrayLike,
    tokens_per_window: int,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """A set's perplexity on all windows and its percentile bootstrap interval over documents.

    Args:
        nll: summed NLL (nats) of each window's predicted tokens.
        document: the document each window starts in (any integer ids).
        tokens_per_window: predicted tokens per window.
        n_boot: bootstrap replicates; level: the interval's coverage; seed: the generator's seed.
    """
    return geomean_ppl([(nll, document)], tokens_per_window, n_boot=n_boot, level=level, seed=seed)


def paired_geomean_delta(
    pairs: Sequence[tuple[ArrayLike, ArrayLike, ArrayLike]],
    tokens_per_window: int,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Run b against reference a on the same windows: ``100 * (geo_b / geo_a - 1)`` percent.

    ``geo`` is the geometric mean of the sets' perplexities. A replicate draws each set's documents once
    and uses the draw for both runs.

    Args:
        pairs: ``(nll_a, nll_b, document)`` per set, window by window.
        tokens_per_window: predicted tokens per window.
        n_boot: bootstrap replicates; level: the interval's coverage; seed: the generator's seed.

    Raises:
        ValueError: no set, an empty set, arrays of different lengths, or a bad parameter.
    """
    _check(tokens_per_window, n_boot, level)
    if not pairs:
        raise ValueError("paired_geomean_delta needs at least one set")
    docs = [_by_document([a, b], document) for a, b, document in pairs]
    reps = _replicates(docs, tokens_per_window, n_boot, seed)
    point = _point(docs, tokens_per_window)
    low, high = _bounds(100 * np.expm1(reps[:, 1] - reps[:, 0]), level)
    return Interval(100 * math.expm1(point[1] - point[0]), low, high)


def paired_delta(
    nll_a: ArrayLike,
    nll_b: ArrayLike,
    document: ArrayLike,
    tokens_per_window: int,
    *,
    windows: tuple[ArrayLike, ArrayLike] | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """One set: run b against reference a, ``100 * (ppl_b / ppl_a - 1)`` percent, paired by document.

    Args:
        nll_a, nll_b: each run's summed NLL per window, the same windows in the same order.
        document: the document each window starts in.
        tokens_per_window: predicted tokens per window.
        windows: each run's window indices; when given they must be equal.
        n_boot: bootstrap replicates; level: the interval's coverage; seed: the generator's seed.

    Raises:
        ValueError: the arrays differ in length, or ``windows`` differ.
    """
    _same_windows(windows)
    return paired_geomean_delta(
        [(nll_a, nll_b, document)], tokens_per_window, n_boot=n_boot, level=level, seed=seed
    )
