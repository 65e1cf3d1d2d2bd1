"""Uncertainty on a table's rows: seed spread, document-bootstrap intervals and paired differences.

For a table's perplexity sets: every row gets the geometric mean of its sets (multi-seed rows: the mean
over seeds of each seed's geometric mean, and its standard deviation); a single run with per-window losses
gets a 95% document-bootstrap interval on each set and on the geometric mean
(:mod:`loraprune.evaluation.intervals`).

With a reference row (``--reference``), every row of the same model at the reference's ratio (of the same
target, groups or params) gets the paired Δ% of its geometric-mean perplexity against it, on the same
windows, the same documents drawn for both in every replicate. Multi-seed rows are paired seed by seed:
when the two rows share seeds, only those seeds are used, each window's NLL averaged over them (so the
estimate is the ratio of the geometric means over seeds); when they share none, each row's windows are
averaged over all its seeds (means paired). The interval reflects the sampling of evaluation text only;
the seed spread is the ± std. The same pairing on one set at a time gives each set's Δ% (``per_set``).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from loraprune.evaluation.intervals import Interval, geomean_ppl, paired_geomean_delta
from loraprune.report.rows import Row
from loraprune.report.windows import StageLosses

N_BOOT = 2000
PAIRED_KINDS = ("run", "before_recovery")


class UncertaintyError(ValueError):
    """A reference that names no row (or several), or rows that cannot be paired."""


def _geo(ppl: dict[str, float | None], sets: Sequence[str]) -> float | None:
    values = [ppl.get(s) for s in sets]
    if not values or any(v is None or not v > 0 for v in values):
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _set_arrays(losses: StageLosses, name: str) -> tuple[np.ndarray, np.ndarray]:
    entry = losses.sets[name]
    return np.asarray(entry.nll), np.asarray(entry.document)


def with_spread(row: Row, sets: Sequence[str], *, n_boot: int = N_BOOT) -> Row:
    """``row`` with its geometric mean over ``sets`` and, for a single run with window losses, the
    bootstrap interval of every set and of the geometric mean."""
    if row.n_runs > 1:
        per_run = [g for g in (_geo(p, sets) for p in row.run_ppl) if g is not None]
        geo = statistics.fmean(per_run) if per_run else None
        std = statistics.stdev(per_run) if len(per_run) > 1 else None
        return replace(row, geo=geo, geo_std=std)
    geo = _geo(row.ppl, sets)
    losses = row.losses[0] if row.losses else None
    if losses is None or row.kind not in (*PAIRED_KINDS, "dense"):
        return replace(row, geo=geo)
    ci = {
        s: geomean_ppl([_set_arrays(losses, s)], losses.tokens_per_window, n_boot=n_boot)
        for s in sets
        if s in losses.sets and row.ppl.get(s) is not None
    }
    geo_ci = None
    if geo is not None and len(sets) > 1 and all(s in ci for s in sets):
        geo_ci = geomean_ppl([_set_arrays(losses, s) for s in sets], losses.tokens_per_window, n_boot=n_boot)
    return replace(row, ppl_ci=ci, geo=geo, geo_ci=geo_ci)


# --------------------------------------------------------------------------------- the reference row
def _ratio_of(text: str) -> tuple[float, str | None]:
    """``20%`` / ``0.2`` (any target), ``15% params`` / ``20% groups`` (that target only)."""
    number, _, target = text.strip().partition(" ")
    target = target.strip().lower() or None
    try:
        if target not in (None, "groups", "params"):
            raise ValueError(target)
        return (float(number[:-1]) / 100 if number.endswith("%") else float(number)), target
    except ValueError as err:
        raise UncertaintyError(
            f"--reference: {text.strip()!r} is not a ratio (e.g. 20%, 0.2 or 15% params)"
        ) from err


def _names(row: Row) -> set[str]:
    """What a ``--reference`` may call ``row``: its label, its label without ``n=k``, its method key."""
    names = {row.label, row.label_with(n=False)}
    if row.kind == "run":
        names.add(row.method)
    return {re.sub(r"\s+", " ", n).strip().lower() for n in names}


_QUALIFIED = re.compile(r"(?P<base>.+?)\s*\((?P<marks>[^()]*)\)")


def _answers(row: Row, key: str) -> bool:
    """Whether ``row`` answers to ``key`` (lower case): one of its :func:`_names`, or its method key or
    unqualified label followed by some of its settings in parentheses (``mask_fisher (no reconstruction)``
    names the same row however many other settings its label shows)."""
    if key in _names(row):
        return True
    match = _QUALIFIED.fullmatch(key)
    if match is None or row.kind != "run":
        return False
    marks = {m.strip() for m in match.group("marks").split(",") if m.strip()}
    shown = {value.lower() for _, value in row.settings}
    return match.group("base") in {row.method.lower(), row.name.lower()} and bool(marks) and marks <= shown


def find_references(rows: Sequence[Row], spec: str) -> dict[tuple, Row]:
    """The reference row of each block (:attr:`Row.block`: model, ratio and target, or pattern) that has one.

    Args:
        rows: the table's rows.
        spec: a Method cell as shown (``LoRA + mask Fisher (n=3)``), the same without ``n=k``, a method
            key (``mask_fisher``), or a method key or name with some of its settings
            (``mask_fisher (no reconstruction)``), case-insensitive; ``@RATIO`` (``@20%``, ``@0.2``) keeps
            one ratio only, ``@15% params`` one ratio of one target.

    Raises:
        UncertaintyError: no row answers to ``spec`` (the rows that exist are named), or two rows of one
            block do.
    """
    name, _, at = spec.partition("@")
    key = re.sub(r"\s+", " ", name).strip().lower()
    ratio, target = _ratio_of(at) if at else (None, None)
    found: dict[tuple, Row] = {}
    for row in rows:
        if row.kind not in PAIRED_KINDS or not _answers(row, key):
            continue
        if ratio is not None and (row.pattern or not math.isclose(row.ratio, ratio, abs_tol=1e-6)):
            continue
        if target is not None and row.target != target:
            continue
        block = row.block
        if block in found:
            raise UncertaintyError(
                f"--reference {spec!r} matches {found[block].label!r} and {row.label!r} at "
                f"{row.ratio_label}; name one of them as shown"
            )
        found[block] = row
    if not found:
        shown = "; ".join(sorted({f"{r.label}@{r.ratio_label}" for r in rows if r.kind in PAIRED_KINDS}))
        raise UncertaintyError(f"--reference {spec!r} matches no row; rows: {shown or 'none finished'}")
    return found


def _same_row(row: Row, ref: Row) -> bool:
    def key(r: Row) -> tuple:
        return (r.kind, r.method, r.settings, r.run_dirs)

    return key(row) == key(ref)


def _seed_runs(row: Row, other: Row) -> list[StageLosses | None]:
    """The runs of ``row`` to pair with ``other``: the shared seeds when there are any, else all."""
    shared = (set(row.seeds) & set(other.seeds)) - {None}
    if not shared:
        return list(row.losses)
    runs = sorted(zip(row.seeds, row.losses, strict=True), key=lambda p: str(p[0]))
    return [x for s, x in runs if s in shared]


def _mean_windows(
    row: Row, runs: list[StageLosses | None], name: str
) -> tuple[np.ndarray, np.ndarray, Sequence[int]]:
    """Each window's NLL averaged over ``runs``, the documents and the window indices of set ``name``."""
    if any(x is None or name not in x.sets for x in runs):
        raise UncertaintyError(
            f"{row.label} at {row.ratio_label} has no per-window losses for {name} "
            f"(window_losses.json) in {', '.join(row.run_dirs)}; --reference needs them"
        )
    entries = [x.sets[name] for x in runs]  # type: ignore[union-attr]
    if any((e.window, e.document) != (entries[0].window, entries[0].document) for e in entries):
        raise UncertaintyError(f"{row.label} at {row.ratio_label}: seeds evaluated on different windows")
    nll = np.mean([np.asarray(e.nll) for e in entries], axis=0)
    return nll, np.asarray(entries[0].document), entries[0].window


def paired_against(row: Row, ref: Row, sets: Sequence[str], *, n_boot: int = N_BOOT) -> Interval:
    """Δ% of ``row``'s geometric-mean perplexity over ``sets`` against ``ref``'s, paired (see the module).

    Raises:
        UncertaintyError: a run lacks window losses, or the two rows were evaluated on different windows.
    """
    runs, ref_runs = _seed_runs(row, ref), _seed_runs(ref, row)
    tokens = {x.tokens_per_window for x in [*runs, *ref_runs] if x is not None}
    if len(tokens) > 1:
        raise UncertaintyError(f"{row.label} and {ref.label} differ in tokens per window {sorted(tokens)}")
    pairs = []
    for name in sets:
        nll_b, document, window = _mean_windows(row, runs, name)
        nll_a, ref_document, ref_window = _mean_windows(ref, ref_runs, name)
        if window != ref_window or not np.array_equal(document, ref_document):
            raise UncertaintyError(
                f"{row.label} and {ref.label} at {row.ratio_label} were evaluated on different windows "
                f"of {name}; a paired difference needs the same"
            )
        pairs.append((nll_a, nll_b, document))
    return paired_geomean_delta(pairs, tokens.pop(), n_boot=n_boot)


def with_deltas(
    rows: Sequence[Row],
    refs: dict[tuple, Row],
    sets: Sequence[str],
    *,
    per_set: bool = False,
    n_boot: int = N_BOOT,
) -> list[Row]:
    """``rows`` with the paired Δ% against the reference of their block (from :func:`find_references`):
    of the geometric mean over ``sets`` and, with ``per_set``, of each set's perplexity alone.

    Raises:
        UncertaintyError: see :func:`paired_against`.
    """
    out = []
    for row in rows:
        ref = refs.get(row.block)
        if ref is None or row.kind not in PAIRED_KINDS:
            out.append(row)
        elif _same_row(row, ref):
            out.append(replace(row, is_reference=True))
        else:
            delta = paired_against(row, ref, sets, n_boot=n_boot)
            each = {s: paired_against(row, ref, [s], n_boot=n_boot) for s in sets} if per_set else {}
            out.append(replace(row, delta=delta, set_deltas=each))
    return out
