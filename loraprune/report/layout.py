"""Rows grouped into tables: one per model, the columns its rows fill, the notes beneath it.

Columns follow the LoRAPrune / LLM-Pruner table: ratio, method, perplexity per evaluation set (WikiText2 /
PTB, or whatever sets the runs used), the seven zero-shot tasks and their average, then parameters
removed, peak memory and wall time, with a geometric mean over the perplexity sets when there are two or
more and, given a reference row, each row's paired Δ% against it (:mod:`loraprune.report.uncertainty`).
The published numbers are shown next to the runs, labelled ``[paper]``, when the runs are LLaMA-7B, and
as a separate block otherwise (``paper`` mode).

A sets spec (:func:`select_sets`: names, ``val``, ``test``) keeps some perplexity sets only; the geometric
mean and the Δ% are then over those. With a reference and two to four sets shown, a table carries a
companion (``per_set``): each row's paired Δ% on every set alone, rendered right under it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraprune.report.reference import REFERENCE_MODEL, load_reference, reference_notes, reference_rows
from loraprune.report.rows import Row, collect_rows, sort_rows
from loraprune.report.uncertainty import N_BOOT, find_references, with_deltas, with_spread
from loraprune.run.results import PPL_LABELS, PPL_ORDER, ordered, task_columns

PAPER_MODES = ("auto", "separate", "none")
REFERENCE_MODES = PAPER_MODES  # the former name
SET_GROUPS = ("val", "test")  # every set named *_val, every other set
PER_SET_MAX = 4  # the most sets shown for which a table gets its per-set Δ% companion


class SetsError(ValueError):
    """A sets spec that names a set the runs lack, or selects none."""


@dataclass
class Table:
    """Rows of one model (or the published reference block) with the columns they fill."""

    title: str
    model: str | None
    ppl_sets: list[str]
    tasks: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    reference: str | None = None  # the label of the row the Δ column compares against
    kind: str = "main"  # main | deltas (the per-set Δ% of a main table's rows)
    per_set: Table | None = None  # a main table's companion of kind deltas

    @property
    def has_zeroshot(self) -> bool:
        """Whether the table has zero-shot columns."""
        return bool(self.tasks)

    @property
    def has_geo_mean(self) -> bool:
        """Whether the table has a geometric-mean column (two perplexity sets or more)."""
        return len(self.ppl_sets) > 1


def is_validation(name: str) -> bool:
    """Whether perplexity set ``name`` is a validation set (defaults are chosen on those)."""
    return name.endswith("_val")


def select_sets(spec: str, available: Sequence[str], *, strict: bool = True) -> list[str]:
    """The sets of ``available`` a sets spec selects, in ``available``'s order.

    Args:
        spec: a comma list of set names and the groups ``val`` (every set whose name ends in ``_val``) and
            ``test`` (every other set).
        available: the sets there are.
        strict: refuse a name not in ``available`` (else it selects nothing).

    Raises:
        SetsError: (strict) a name not in ``available``, or a spec that selects none of them.
    """
    items = [item.strip() for item in spec.split(",") if item.strip()]
    unknown = [i for i in items if i not in SET_GROUPS and i not in available]
    have = ", ".join(available) or "no perplexity set"
    if strict and (unknown or not items):
        what = f"unknown set {unknown[0]!r}" if unknown else f"{spec!r} names no set"
        raise SetsError(f"--sets: {what}; the runs have {have}")
    chosen = [
        s
        for s in available
        if s in items or ("val" in items and is_validation(s)) or ("test" in items and not is_validation(s))
    ]
    if strict and not chosen:
        raise SetsError(f"--sets {spec!r} selects none of the runs' sets; they have {have}")
    return chosen


def columns_for(rows: Sequence[Row]) -> tuple[list[str], list[str]]:
    """The perplexity sets and zero-shot tasks that ``rows`` fill, in the paper's order."""
    ppl_sets = ordered((k for r in rows for k in r.ppl), PPL_ORDER)
    tasks = task_columns([r.tasks for r in rows], [r.average for r in rows])
    return ppl_sets, tasks


def run_notes(rows: Sequence[Row]) -> list[str]:
    """The notes under a table of runs: memory device, perplexity windows, zero-shot protocol, seeds."""
    notes = []
    devices = {r.memory_device for r in rows if r.kind == "run" and r.memory_gib is not None}
    if "cpu" in devices:
        notes.append(
            "Peak memory marked † is the CPU peak resident set (no CUDA device); others CUDA max allocated."
        )
    if any(r.resumed for r in rows if r.kind == "run"):
        notes.append(
            "‡ resumed from a checkpoint (in a row of several seeds: at least one): peak memory and wall "
            "time are those of the last process only, not comparable with the other rows'."
        )
    seqs = sorted({r.eval_seq_len for r in rows if r.kind != "paper" and r.eval_seq_len})
    if seqs:
        notes.append(f"Perplexity windows: {', '.join(map(str, seqs))} tokens.")
    if any(r.tasks for r in rows if r.kind != "paper"):
        notes.append(
            "Zero-shot: acc (BoolQ, PIQA, WinoGrande, ARC-e) or acc_norm (HellaSwag, ARC-c, OBQA), percent; "
            "Average over the tasks run."
        )
        protocols = sorted({r.zeroshot_protocol for r in rows if r.kind == "run" and r.zeroshot_protocol})
        if protocols:
            notes.append(f"Zero-shot data: {'; '.join(protocols)}.")
    if any(r.n_runs > 1 for r in rows):
        notes.append("(n=k): mean over k runs (seeds), ± their standard deviation.")
    return notes


def window_notes(rows: Sequence[Row], ppl_sets: Sequence[str]) -> list[str]:
    """How many windows and documents each perplexity set was evaluated on, and how intervals read."""
    notes = []
    losses = next((x for r in rows if r.kind != "paper" for x in r.losses if x is not None), None)
    if losses is not None:
        parts = []
        for name in ppl_sets:
            entry = losses.sets.get(name)
            if entry is None:
                continue
            n_docs = len(set(entry.document))
            of_w = f" of {entry.windows_total}" if entry.windows_total else ""
            of_d = f" of {entry.documents_total}" if entry.documents_total else ""
            parts.append(
                f"{PPL_LABELS.get(name, name)} {len(entry.window)}{of_w} windows ({n_docs}{of_d} documents)"
            )
        if parts:
            notes.append(f"Evaluated: {'; '.join(parts)}.")
    if any(r.ppl_ci or r.geo_ci for r in rows):
        notes.append(
            f"[a, b]: 95% bootstrap interval of a single run's perplexity, whole documents resampled "
            f"({N_BOOT} replicates)."
        )
    if any(r.tasks_stderr and r.n_runs <= 1 for r in rows if r.kind != "paper"):
        notes.append("± after a single run's accuracy: lm-eval's standard error (Average: of the mean).")
    if len(ppl_sets) > 1:
        notes.append("Geo. mean: geometric mean of the perplexities of the sets shown.")
    return notes


def per_set_table(table: Table) -> Table | None:
    """The companion of a table with a Δ column: its compared rows' paired Δ% on each set alone (None when
    no row was compared)."""
    rows = [r for r in table.rows if r.delta is not None or r.is_reference]
    if not any(r.set_deltas for r in rows):
        return None
    ref = table.reference
    note = (
        f"Each set alone: 100·(ppl/ppl_ref − 1) against {ref} at the same ratio, paired on the same windows "
        "and seeds as the main table's Δ column, 95% interval; * the interval excludes 0. Geo. mean: the "
        "main table's Δ%."
    )
    title = f"{table.title}: paired Δ% per set vs {ref}"
    return Table(title, table.model, list(table.ppl_sets), [], rows, [note], ref, kind="deltas")


def expand(tables: Sequence[Table]) -> list[Table]:
    """``tables`` with each one's per-set companion right after it: the order they are rendered in."""
    return [t for table in tables for t in (table, table.per_set) if t is not None]


def delta_notes(reference: str) -> list[str]:
    """The note under a table with a Δ column."""
    return [
        f"Δ vs {reference}: each row against {reference} at the same ratio, 100·(ppl/ppl_ref − 1) of the "
        "geometric-mean perplexity, paired on the same windows (documents resampled together), 95% "
        "interval; * the interval excludes 0. Seeds are paired where both rows have them (windows averaged "
        "over the shared seeds), else each row's mean over its seeds; the interval covers the evaluation "
        "text, not the seeds."
    ]


def _with_reference(
    rows: list[Row], notes: list[str], ref_data: dict[str, Any], ref_rows: list[Row], missing: list[str]
) -> tuple[list[Row], list[str]]:
    """A model's rows with the ``[paper]`` rows inline, its notes with the reference's (and a warning when
    the runs' perplexity windows differ from the paper's)."""
    rows = sort_rows([*rows, *ref_rows])
    notes = notes + reference_notes(ref_data, missing)
    seq = ref_data.get("protocol", {}).get("ppl_seq_len")
    lens = {r.eval_seq_len for r in rows if r.kind != "paper" and r.ppl}
    if lens and lens != {seq}:
        notes.append(
            f"Warning: these runs used {sorted(lens)}-token perplexity windows, the paper {seq}: "
            "perplexities are not comparable (use eval=paper)."
        )
    return rows, notes


def _reference_table(
    ref_data: dict[str, Any], ref_rows: list[Row], missing: list[str], sets: str | None
) -> Table:
    """The published rows as a block of their own (the sets of theirs that ``sets`` selects)."""
    ppl_sets, tasks = columns_for(ref_rows)
    if sets:
        ppl_sets = select_sets(sets, ppl_sets, strict=False)
    paper = ref_data["paper"]
    title = f"Published: {paper['title'].split(':')[0]} paper, {ref_data.get('model')} (not these runs)"
    rows = [with_spread(r, ppl_sets) for r in ref_rows]
    return Table(title, None, ppl_sets, tasks, rows, reference_notes(ref_data, missing))


def build_tables(
    rows: Sequence[Row],
    paper: str = "auto",
    *,
    reference: str | None = None,
    sets: str | None = None,
    n_boot: int = N_BOOT,
) -> list[Table]:
    """One table per model; the published rows inline for LLaMA-7B runs, else as their own block.

    Args:
        rows: aggregated rows (:func:`loraprune.report.rows.collect_rows`).
        paper: ``auto`` (published rows inline for LLaMA-7B, separate block otherwise), ``separate``
            (always a separate block) or ``none``.
        reference: a row to compare every row against (:func:`loraprune.report.uncertainty.find_references`).
        sets: the perplexity sets to show (:func:`select_sets`; default all): the geometric mean and the
            Δ% are over these.
        n_boot: bootstrap replicates of every interval.

    Raises:
        SetsError: ``sets`` names a set no run has, or selects none.
        loraprune.report.uncertainty.UncertaintyError: ``reference`` names no row, or rows cannot be paired.
    """
    if paper not in PAPER_MODES:
        raise ValueError(f"paper must be one of {PAPER_MODES}, got {paper!r}")
    if sets:
        select_sets(sets, columns_for([r for r in rows if r.kind != "paper"])[0])
    refs = find_references(rows, reference) if reference else {}
    ref_label = next(iter(refs.values())).label_with(n=False) if refs else None
    ref_data = load_reference() if paper != "none" else None
    ref_rows, missing = reference_rows(ref_data) if ref_data else ([], [])
    tables: list[Table] = []
    inlined = False
    for model in sorted({r.model for r in rows}):
        model_rows = [r for r in rows if r.model == model]
        notes = run_notes(model_rows)
        if ref_data and paper == "auto" and model == ref_data.get("model", REFERENCE_MODEL):
            model_rows, notes = _with_reference(model_rows, notes, ref_data, ref_rows, missing)
            inlined = True
        ppl_sets, tasks = columns_for(model_rows)
        if sets:
            ppl_sets = select_sets(sets, ppl_sets, strict=False)
        model_rows = [with_spread(r, ppl_sets, n_boot=n_boot) for r in model_rows]
        notes += window_notes(model_rows, ppl_sets)
        has_ref = bool(ppl_sets) and any(block[0] == model for block in refs)
        if has_ref:
            per_set = 1 < len(ppl_sets) <= PER_SET_MAX
            model_rows = with_deltas(model_rows, refs, ppl_sets, per_set=per_set, n_boot=n_boot)
            notes += delta_notes(ref_label or "")
        table = Table(model, model, ppl_sets, tasks, model_rows, notes, ref_label if has_ref else None)
        table.per_set = per_set_table(table) if has_ref else None
        tables.append(table)
    if ref_data and ref_rows and not inlined:
        tables.append(_reference_table(ref_data, ref_rows, missing, sets))
    return tables


def build_from_dir(
    roots: str | Path | Sequence[str | Path],
    *,
    paper: str = "auto",
    reference: str | None = None,
    sets: str | None = None,
    before_recovery: bool = False,
) -> list[Table]:
    """:func:`loraprune.report.rows.collect_rows` then :func:`build_tables`."""
    rows = collect_rows(roots, before_recovery=before_recovery)
    return build_tables(rows, paper, reference=reference, sets=sets)
